"""The Python API: run, resume and read studies from a notebook or a script (docs/python.md).

::

    import lorahpo

    study = lorahpo.tune("examples/toy.yaml", study_dir="runs/toy", budget=20)
    study.best                  # the best trial (a TrialRecord), or None
    study.to_dataframe()        # one row per trial (pandas)
    lorahpo.load("runs/toy")    # the same study, read later

``lorahpo tune``, ``worker``, ``status``, ``best``, ``export``, ``report`` and ``evaluate`` are thin
commands over these functions: the same folder, the same store, the same checks and errors
(:class:`~lorahpo.errors.UserError`, one line each).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorahpo import config as cfg
from lorahpo.errors import UserError
from lorahpo.extras import require
from lorahpo.files import write_atomic
from lorahpo.result import UNFINISHED, TrialRecord, TrialResult, records_table
from lorahpo.study import DATA_FILE, RunSummary, Study

if TYPE_CHECKING:
    import pandas

    from lorahpo.finetune.config import LoraTrialConfig
    from lorahpo.finetune.data import DataReport

#: What :func:`tune` takes as its config: a file, a mapping of settings, a parsed config, or None (built-in).
ConfigSource = cfg.StudyConfig | str | Path | dict[str, Any] | None


def default_config_path() -> Path:
    """The built-in LoRA study: SmolLM2-135M on the bigbench-instruct data, sized for a CPU."""
    from importlib import resources

    return Path(str(resources.files("lorahpo") / "defaults" / "default.yaml"))


def study_config(config: ConfigSource = None, **overrides: Any) -> tuple[cfg.StudyConfig, Path]:
    """The validated config of ``config`` with ``overrides`` set, and its default study folder.

    The default folder is ``runs/<file name without .yaml>`` for a file, ``runs/default`` for the
    built-in study and ``runs/<name>`` for a mapping or a parsed config. Overrides are top-level
    settings (``budget=50``, ``optimizer="tpe"``); None leaves a setting as it is.

    Raises:
        ConfigError: The file is missing or not valid YAML, or a setting is refused.
    """
    if config is None or isinstance(config, (str, os.PathLike)):
        path = Path(config) if config is not None else default_config_path()
        conf = cfg.load(path, overrides)
        return conf, Path("runs") / (path.stem if config is not None else "default")
    if isinstance(config, cfg.StudyConfig):
        config = config.model_dump(mode="json")
    conf = cfg.parse(cfg.with_overrides(config, overrides))
    return conf, Path("runs") / conf.name


def tune(
    config: ConfigSource = None,
    study_dir: str | Path | None = None,
    *,
    new: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> StudyResults:
    """Run a study, or resume the one in ``study_dir``, exactly as ``lorahpo tune`` does.

    Args:
        config: A YAML file, a mapping of settings, a :class:`~lorahpo.config.StudyConfig`, or
            None for the built-in LoRA study.
        study_dir: The study folder (default: see :func:`study_config`).
        new: Start over when the folder holds a different study (the old folder is kept,
            renamed with a time stamp).
        progress: Show live progress on stderr.
        **overrides: Top-level settings to change: ``budget``, ``optimizer``, ``seed``,
            ``parallel``, ``executor``, ``storage``...

    Returns:
        The study, with ``run`` (what this call did: :class:`~lorahpo.study.RunSummary`).
        KeyboardInterrupt (Ctrl-C, a notebook's interrupt) stops the study cleanly: running
        trials are ended and recorded as interrupted, and the study is returned with
        ``run.stopped == "interrupted"``; calling ``tune`` again resumes it.

    Raises:
        UserError: A refused config, a folder holding a different study, a missing extra, or
            unusable model or data (one line each; nothing is written).
    """
    conf, default_dir = study_config(config, **overrides)
    directory = Path(study_dir) if study_dir is not None else default_dir
    if conf.executor == "ray":
        require("cluster", "ray")
    for tracker in ("mlflow", "wandb", "tensorboard"):
        if getattr(conf.tracking, tracker) is not None:
            require("tracking", tracker)
    data = _prepare_lora(conf) if conf.objective.lora is not None else None
    study = Study.open(directory, conf, new=new)
    where = f" · {conf.executor}" if conf.executor != "local" else ""
    print(f"study {directory} · {conf.optimizer} · budget {conf.budget} · parallel {conf.parallel}{where}",
          file=sys.stderr)
    if data is not None:
        write_atomic(directory / DATA_FILE, json.dumps(data.to_dict(), indent=1))
        print(data.summary(), file=sys.stderr)  # once, before the first trial
    if not progress:
        return StudyResults(study, study.run())
    from lorahpo.progress import Progress

    best = study.best(1)
    with Progress(conf.budget, study.finished_count(), best[0] if best else None, conf.objective.direction,
                  conf.feasible, conf.evaluators) as bar:
        summary = study.run(on_event=bar)
    return StudyResults(study, summary)


def _prepare_lora(conf: cfg.StudyConfig) -> DataReport:
    """Check the model and data once, before any trial runs (one-line errors)."""
    from lorahpo.finetune.prepare import prepare

    require("lora")
    lora = conf.objective.lora
    assert lora is not None
    tuned = conf.space.resolved().get("batch_size")
    smallest = None
    if tuned is not None:  # the smallest batch a trial may get must still fit the data
        smallest = int(min(tuned.values) if tuned.values else (tuned.low or 1))
    try:
        return prepare(lora, smallest)
    except (ValueError, OSError) as e:
        raise cfg.ConfigError(str(e)) from None


def load(study_dir: str | Path) -> StudyResults:
    """Open an existing study folder, to read it, export, report or evaluate.

    Raises:
        ConfigError: The folder holds no lorahpo study.
    """
    return StudyResults(Study.load(study_dir))


def run_trial(
    config: LoraTrialConfig | dict[str, Any],
    trial_dir: str | Path | None = None,
    reporter: Callable[[int, float], bool] | None = None,
    curve: Callable[[int, dict[str, float]], None] | None = None,
) -> TrialResult:
    """Fine-tune one LoRA configuration in this process and measure it (no study, no store).

    Args:
        config: A :class:`~lorahpo.finetune.config.LoraTrialConfig`, or the mapping of one
            (the ``objective.lora`` section of a study config).
        trial_dir: Where to write ``train_log.jsonl`` and the ``adapter/``; nothing is written when None.
        reporter: Called with ``(step, validation_loss)`` at each validation; True stops the trial.
        curve: Called with ``(step, values)`` as the curves are measured: ``train_loss``,
            ``learning_rate`` and ``train_tokens`` at each step, ``validation_loss`` at each validation.

    Returns:
        The :class:`~lorahpo.result.TrialResult`: a failure is a result with its reason, never an exception.
    """
    from lorahpo.finetune.config import LoraTrialConfig

    require("lora")
    if not isinstance(config, LoraTrialConfig):
        try:
            config = LoraTrialConfig.model_validate(config)
        except ValueError as e:
            raise cfg.ConfigError(f"trial config: {str(e).splitlines()[0]}") from None
    from lorahpo.finetune.train import run_trial as train

    return train(config, Path(trial_dir) if trial_dir is not None else None, reporter, curve)


class StudyResults:
    """A study folder, read from its store: its trials, the best, the Pareto front; exports, reports, evaluations.

    Every property reads the store again, so a study that another process is running shows
    its latest trials.

    Attributes:
        study: The underlying :class:`~lorahpo.study.Study` (folder, config, Optuna study).
        run: What the :func:`tune` call that returned this object did; None from :func:`load`.
    """

    def __init__(self, study: Study, run: RunSummary | None = None) -> None:
        self.study = study
        self.run = run

    @property
    def directory(self) -> Path:
        return self.study.directory

    @property
    def config(self) -> cfg.StudyConfig:
        return self.study.config

    @property
    def trials(self) -> list[TrialRecord]:
        """Every trial, in order of number: status, hyperparameters, value, metrics, reason, times, folder."""
        return self.study.records()

    @property
    def best(self) -> TrialRecord | None:
        """The best complete trial that meets the constraints (by the main objective), or None."""
        best = self.study.best(1)
        return best[0] if best else None

    @property
    def pareto_front(self) -> list[TrialRecord]:
        """The feasible trials no other is better than in every objective, by the main objective.

        With one objective: the best trial alone (ties kept out), or nothing yet.
        """
        if len(self.config.objective.metric_names) == 1:
            return self.study.best(1)
        return self.study.best(len(self.trials))

    @property
    def finished(self) -> int:
        """Finished evaluations (what the budget counts)."""
        return sum(t.status not in UNFINISHED for t in self.trials)

    @property
    def data_summary(self) -> str | None:
        """What the training data of a LoRA study gave (read, used, malformed, truncated, split), else None."""
        return self.study.data_summary()

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per trial: ``number``, ``status``, ``value``, ``duration_s``, ``params_<name>``,
        ``metrics_<name>``, ``reason``, ``start``, ``end``.

        Raises:
            MissingExtra: pandas is not installed.
        """
        require("dataframe")
        import pandas

        columns, rows = records_table(self.trials)
        return pandas.DataFrame(rows, columns=columns)

    def export(self, out: str | Path, trial: int | None = None, merge: bool = False) -> Path:
        """Write a trial's LoRA adapter (PEFT format), or the base model with it merged, to ``out``.

        Args:
            out: Destination folder (created).
            trial: Trial number (default: the best trial).
            merge: Fold the adapter into the base model and save the whole model and tokenizer.

        Raises:
            UserError: ``out`` is a file; no such trial, or it kept no adapter; a missing extra.
        """
        return export(self.directory, out, trial=trial, merge=merge)

    def report(self, out: str | Path | None = None, top: int = 5) -> dict[str, Path]:
        """Write the study's report (``report.html``, ``report.md``, PNG plots) into ``out``
        (default ``<study>/report``) and return the paths by kind (``html``, ``markdown``, plots)."""
        return report(self.directory, out, top=top)

    def evaluate(
        self,
        tasks: list[str] | None = None,
        *,
        top: int = 3,
        limit: int | None = None,
        device: str = "auto",
        batch_size: int = 8,
        on_result: Callable[[Any], None] | None = None,
        progress: bool = False,
        allow_unsandboxed: bool = False,
    ) -> dict[str, dict[str, float | None]]:
        """Downstream scores of the ``top`` best trials, the start point and the base model
        (``lorahpo evaluate``; stored in ``<study>/evaluation`` and reused). ``allow_unsandboxed``:
        where the sandbox (bubblewrap) cannot run, run HumanEval's generated code without it
        instead of refusing (only for models you trust).

        Returns:
            ``{model: {task: score}}`` for every model evaluated so far (``base``, ``trial-N``).
        """
        return evaluate(self.directory, tasks, top=top, limit=limit, device=device, batch_size=batch_size,
                        on_result=on_result, progress=progress, allow_unsandboxed=allow_unsandboxed)

    def __repr__(self) -> str:
        best = self.best
        text = f"{self.directory}: {self.finished}/{self.config.budget} finished"
        if best is not None:
            text += f", best {self.config.objective.metric_name} = {best.value:.6g} (trial {best.number})"
        return f"<StudyResults {text}>"


def export(study_dir: str | Path, out: str | Path, *, trial: int | None = None,
           merge: bool = False) -> Path:
    """:meth:`StudyResults.export` of the study in ``study_dir``."""
    from lorahpo.finetune.export import export_adapter
    from lorahpo.study import resolve_model_spec

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a folder")
    if merge:
        require("lora")
    model, adapter = resolve_model_spec(study_dir, "best" if trial is None else f"trial:{trial}")
    assert adapter is not None
    return export_adapter(adapter.parent, out, merge=merge, model_cfg=model)


def report(study_dir: str | Path, out: str | Path | None = None, *,
           top: int = 5) -> dict[str, Path]:
    """:meth:`StudyResults.report` of the study in ``study_dir``."""
    if top < 1:
        raise UserError("--top must be at least 1")
    folder = Path(out) if out is not None else Path(study_dir) / "report"
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out: {folder} exists and is not a folder")
    require("report")
    from lorahpo.report.data import study_report
    from lorahpo.report.render import write_report

    return write_report(study_report(study_dir, top=top), folder)


def evaluate(
    study_dir: str | Path,
    tasks: list[str] | None = None,
    *,
    top: int = 3,
    limit: int | None = None,
    device: str = "auto",
    batch_size: int = 8,
    on_result: Callable[[Any], None] | None = None,
    progress: bool = False,
    allow_unsandboxed: bool = False,
) -> dict[str, dict[str, float | None]]:
    """:meth:`StudyResults.evaluate` of the study in ``study_dir``."""
    from lorahpo.evaluation.runner import evaluate as run_tasks
    from lorahpo.evaluation.store import EvaluationStore

    specs = evaluation_tasks(tasks, top=top, limit=limit, batch_size=batch_size)
    require("eval")
    run_tasks(Path(study_dir), specs, top=top, limit=limit, device=device, batch_size=batch_size,
              on_result=on_result, progress=progress, allow_unsandboxed=allow_unsandboxed)
    return EvaluationStore(Path(study_dir)).scores()


def evaluation_tasks(tasks: list[str] | None, *, top: int, limit: int | None, batch_size: int) -> list[Any]:
    """The downstream tasks named (default bbh-bigbench and humaneval-offline), the settings checked.

    When every task is offline, the hub is not asked at all (no waiting on network time-outs).
    """
    from lorahpo.evaluation.tasks import parse_tasks

    if top < 0 or (limit is not None and limit < 1) or batch_size < 1:
        raise UserError("--top must be >= 0, --limit and --batch-size >= 1")
    try:
        specs = parse_tasks(tasks)
    except ValueError as exc:
        raise UserError(f"--tasks: {exc}") from None
    if all(spec.offline for spec in specs):
        # Nothing needs the hub: fail fast instead of waiting on network time-outs.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return specs
