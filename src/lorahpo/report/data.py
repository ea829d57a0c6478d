"""What a report shows, as plain data read from a study folder; no plotting, no HTML.

:func:`study_report` reads one study (its store, config and downstream results) into a
:class:`StudyReport`; :func:`compare_report` reads several into a :class:`CompareReport`. The
helpers :func:`best_so_far` and :func:`axis_position` are pure functions; Spearman's rho is in
:mod:`.stats`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorahpo.evaluation.store import BASE, EvaluationStore, model_key, trial_of
from lorahpo.report.in_trial import EvaluatorSummary, evaluator_summaries
from lorahpo.report.stats import spearman
from lorahpo.result import UNFINISHED, TrialRecord


@dataclass(frozen=True)
class ParamInfo:
    """One hyperparameter axis.

    Attributes:
        name: The parameter's name.
        scale: ``log`` (a real searched in log10), ``linear`` (int or real) or ``choice``.
        low: Lower bound (``log``/``linear``).
        high: Upper bound (``log``/``linear``).
        values: The ordered values of a ``choice``.
    """

    name: str
    scale: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()


@dataclass(frozen=True)
class ModelRow:
    """A model with downstream results: ``base``, or a trial (its roles say why it was evaluated).

    Attributes:
        key: ``base`` or ``trial-<number>``.
        roles: ``base``, ``x0``, ``top-1``... (``trial`` for an evaluated trial no longer among the best).
        trial: The trial, None for the base model.
        scores: ``{task: score}``; a task missing here was not evaluated for this model.
        rows: ``{task: rows scored}``.
    """

    key: str
    roles: tuple[str, ...]
    trial: TrialRecord | None
    scores: dict[str, float | None]
    rows: dict[str, int]


@dataclass(frozen=True)
class Correlation:
    """Validation loss against one downstream score, over the evaluated trials.

    Attributes:
        task: The task.
        metric: What its score measures.
        points: ``(trial number, validation loss, score)``.
        rho: Spearman's rank correlation; None with fewer than 3 points or no variation.
        base_score: The base model's score, drawn as a reference line.
    """

    task: str
    metric: str
    points: list[tuple[int, float, float]]
    rho: float | None
    base_score: float | None

    @property
    def missing_reason(self) -> str | None:
        """Why ``rho`` is None: too few trials, or all losses or all scores equal."""
        if self.rho is not None:
            return None
        return "fewer than 3 trials" if len(self.points) < 3 else "no variation"


@dataclass(frozen=True)
class StudyReport:
    """Everything the report of one study shows."""

    name: str
    directory: Path
    optimizer: str
    seed: int
    budget: int
    direction: str
    metric: str
    params: list[ParamInfo]
    trials: list[TrialRecord]
    curve: list[tuple[int, int, float | None, float | None]]
    top: list[TrialRecord]
    x0: TrialRecord | None
    models: list[ModelRow]
    tasks: dict[str, str]
    limits: dict[str, int | None]
    correlations: list[Correlation]
    failures: list[TrialRecord]
    timing: dict[str, Any]
    config_yaml: str
    status_counts: dict[str, int] = field(default_factory=dict)
    objectives: list[tuple[str, str]] = field(default_factory=list)  # (metric, direction), main first
    pareto: list[TrialRecord] = field(default_factory=list)  # with several objectives: the feasible front
    infeasible: list[int] = field(default_factory=list)  # completed trials over a constraint
    evaluators: list[EvaluatorSummary] = field(default_factory=list)  # in-trial downstream metrics
    data_summary: str | None = None  # what a LoRA study's training data gave (read, used, malformed, split)

    @property
    def best(self) -> TrialRecord | None:
        return self.top[0] if self.top else None

    @property
    def finished(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.status not in UNFINISHED]


def best_so_far(values: list[float | None], direction: str = "minimize") -> list[float | None]:
    """The best value among the first 1, 2, ... evaluations (None until one completes)."""
    better = min if direction == "minimize" else max
    out: list[float | None] = []
    best: float | None = None
    for value in values:
        if value is not None and math.isfinite(value):
            best = value if best is None else better(best, value)
        out.append(best)
    return out


def axis_position(param: ParamInfo, value: Any) -> float | None:
    """Where ``value`` lies on the parameter's axis, from 0 (low) to 1 (high); None when off the axis."""
    if param.scale == "choice":
        for i, choice in enumerate(param.values):
            if choice == value:
                return i / (len(param.values) - 1) if len(param.values) > 1 else 0.5
        return None
    if not isinstance(value, (int, float)) or param.low is None or param.high is None:
        return None
    low, high, x = float(param.low), float(param.high), float(value)
    if param.scale == "log":
        if x <= 0 or low <= 0:
            return None
        low, high, x = math.log10(low), math.log10(high), math.log10(x)
    return 0.5 if high == low else (x - low) / (high - low)


def study_report(directory: str | Path, top: int = 10) -> StudyReport:
    """Read a study folder into a :class:`StudyReport` (``top``: how many best trials to list)."""
    from lorahpo.study import Study

    study = Study.load(directory)
    conf = study.config
    trials = study.records()
    by_number = {t.number: t for t in trials}
    best = study.best(top)
    x0 = study.x0_record()
    finished = [t for t in trials if t.status not in UNFINISHED]
    values = [t.value if t.status == "complete" else None for t in finished]
    bests = best_so_far(values, conf.objective.direction)
    curve = [(i, t.number, v, b) for i, (t, v, b) in enumerate(zip(finished, values, bests, strict=True), 1)]

    store = EvaluationStore(directory)
    results = store.results()
    tasks = {r.task: r.metric for r in results}
    limits = {r.task: r.settings.get("limit") for r in results}
    models = _models(results, by_number, best, x0)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    return StudyReport(
        name=conf.name,
        directory=Path(directory),
        optimizer=conf.optimizer,
        seed=conf.seed,
        budget=conf.budget,
        direction=conf.objective.direction,
        metric=conf.objective.metric_name,
        params=param_infos(conf.space.resolved()),
        trials=trials,
        curve=curve,
        top=best,
        x0=x0,
        models=models,
        tasks=tasks,
        limits=limits,
        correlations=_correlations(models, tasks),
        failures=[t for t in finished if t.status != "complete"],
        timing=_timing(trials),
        config_yaml=conf.to_yaml(),
        status_counts=counts,
        objectives=list(zip(conf.objective.metric_names, conf.objective.directions, strict=True)),
        pareto=study.best(len(trials)) if conf.objective.secondary else [],
        infeasible=[t.number for t in trials if t.status == "complete" and not conf.feasible(t.metrics)],
        evaluators=evaluator_summaries(conf.evaluators, trials, conf.constraints),
        data_summary=study.data_summary(),
    )


def param_infos(space: dict[str, Any]) -> list[ParamInfo]:
    """Axis descriptions of a resolved search space (``SpaceSpec.resolved()``)."""
    infos = []
    for name, p in space.items():
        if p.type == "choice":
            infos.append(ParamInfo(name, "choice", values=tuple(p.values or ())))
        else:
            infos.append(ParamInfo(name, "log" if p.log else "linear", p.low, p.high))
    return infos


def _models(
    results: list[Any], trials: dict[int, TrialRecord], top: list[TrialRecord], x0: TrialRecord | None
) -> list[ModelRow]:
    """One row per model with results: base first, then x0, then by rank, then other trials."""
    scores: dict[str, dict[str, float | None]] = {}
    rows: dict[str, dict[str, int]] = {}
    for r in results:
        scores.setdefault(r.model, {})[r.task] = r.score
        rows.setdefault(r.model, {})[r.task] = r.n
    ranks = {t.number: i for i, t in enumerate(top, 1)}
    out = []
    for key in scores:
        number = trial_of(key)
        roles = ["base"] if key == BASE else []
        if x0 is not None and number == x0.number:
            roles.append("x0")
        if number in ranks:
            roles.append(f"top-{ranks[number]}")
        out.append(ModelRow(key, tuple(roles or ["trial"]), trials.get(number) if number is not None else None,
                            scores[key], rows[key]))

    def order(m: ModelRow) -> tuple[int, int]:
        number = trial_of(m.key)
        if m.key == BASE:
            return (0, 0)
        if "x0" in m.roles:
            return (1, 0)
        return (2, ranks[number]) if number in ranks else (3, number or 0)

    return sorted(out, key=order)


def _correlations(models: list[ModelRow], tasks: dict[str, str]) -> list[Correlation]:
    base = next((m for m in models if m.key == BASE), None)
    out = []
    for task, metric in tasks.items():
        points = [
            (m.trial.number, m.trial.value, score)
            for m in models
            if m.trial is not None and m.trial.value is not None and (score := m.scores.get(task)) is not None
        ]
        rho = spearman([p[1] for p in points], [p[2] for p in points])
        out.append(Correlation(task, metric, points, rho, base.scores.get(task) if base else None))
    return out


def _timing(trials: list[TrialRecord]) -> dict[str, Any]:
    starts = [t.start for t in trials if t.start is not None]
    ends = [t.end for t in trials if t.end is not None]
    durations = [t.duration_s for t in trials if t.duration_s is not None]
    return {
        "first_start": min(starts).isoformat(timespec="seconds") if starts else None,
        "last_end": max(ends).isoformat(timespec="seconds") if ends else None,
        "span_s": (max(ends) - min(starts)).total_seconds() if starts and ends else None,
        "trial_s_total": sum(durations),
        "trial_s_mean": statistics.fmean(durations) if durations else None,
        "trial_s_max": max(durations) if durations else None,
    }


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class StudySummary:
    """One study in a comparison.

    Attributes:
        label: How the study is named in plots and tables (its folder name, made unique).
        report: The study's full report data.
        reached_best_at: The evaluation number at which the final best value was first reached.
        best_scores: Downstream scores of the study's best trial, where it was evaluated.
    """

    label: str
    report: StudyReport
    reached_best_at: int | None
    best_scores: dict[str, float | None]


@dataclass(frozen=True)
class CompareReport:
    """Several studies of the same blackbox, side by side."""

    studies: list[StudySummary]
    tasks: list[str]
    metric: str
    direction: str
    warnings: list[str]
    evaluators: list[str] = field(default_factory=list)  # in-trial evaluators of any of the studies


def compare_report(directories: list[str | Path]) -> CompareReport:
    """Read several study folders for :func:`lorahpo.report.render.write_compare`."""
    reports = [study_report(d, top=1) for d in directories]
    labels = _labels([Path(d) for d in directories])
    studies, tasks, evaluators = [], [], []
    for label, rep in zip(labels, reports, strict=True):
        best = rep.best
        reached = None
        if best is not None:
            reached = next((i for i, _, _, b in rep.curve if b == best.value), None)
        scores = {}
        if best is not None:
            model = next((m for m in rep.models if m.key == model_key(best.number)), None)
            scores = dict(model.scores) if model else {}
        tasks += [t for t in scores if t not in tasks]
        evaluators += [e.name for e in rep.evaluators if e.name not in evaluators]
        studies.append(StudySummary(label, rep, reached, scores))
    warnings = []
    metrics = {r.metric for r in reports}
    if len(metrics) > 1:
        warnings.append(f"the studies optimise different metrics: {', '.join(sorted(metrics))}")
    identities = {_blackbox(r) for r in reports}
    if len(identities) > 1:
        warnings.append("the studies do not share one blackbox (objective or search space differ)")
    return CompareReport(studies, tasks, reports[0].metric, reports[0].direction, warnings, evaluators)


def _labels(paths: list[Path]) -> list[str]:
    """Folder names, with parent folders added until they are unique."""
    depth = 1
    while True:
        labels = ["/".join(p.resolve().parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels) or depth > 8:
            return labels
        depth += 1


def _blackbox(report: StudyReport) -> str:
    import yaml

    data = yaml.safe_load(report.config_yaml)
    return repr((data.get("objective"), data.get("space")))
