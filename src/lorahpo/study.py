"""A study: one folder, one store, one loop of ask -> execute -> tell.

The folder holds the resolved ``config.yaml``, the Optuna store (``study.db``, SQLite, unless
another storage URL is configured) and ``trials/<number>/`` for each evaluation. The store is
the truth: the budget counts the finished evaluations it holds, so running ``tune`` again after
a crash or Ctrl-C finishes the same budget, and every optimizer resumes from it.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, Trial, TrialState

from lorahpo import config as cfg
from lorahpo import warmstart
from lorahpo.artifacts import TrialUploader
from lorahpo.executors import Executor, TrialTask, make_executor
from lorahpo.files import write_atomic
from lorahpo.pruners import make_pruner
from lorahpo.result import (
    DURATION_ATTR,
    INTERRUPTED_ATTR,
    METRICS_ATTR,
    REASON_ATTR,
    STATUS_ATTR,
    UNFINISHED,
    Report,
    TrialRecord,
    TrialResult,
    TrialStatus,
    settle,
)
from lorahpo.samplers import protocol
from lorahpo.samplers.nomad import FALLBACK_ATTR
from lorahpo.samplers.registry import OPTIMIZERS
from lorahpo.store import TrialStore

CONFIG_FILE = "config.yaml"
#: What the data of a LoRA study gave (rows read, used, malformed, truncated; the split), written once per run.
DATA_FILE = "data.json"
_STATE_STATUS: dict[TrialState, TrialStatus] = {
    TrialState.COMPLETE: "complete",
    TrialState.FAIL: "failed",
    TrialState.PRUNED: "pruned",
}


@dataclass
class RunSummary:
    """What one call of :meth:`Study.run` did."""

    finished: int
    budget: int
    new_trials: int
    stopped: str  # budget, exhausted, interrupted, stop_when
    wall_s: float
    best: TrialRecord | None = None
    x0: TrialRecord | None = None
    errors: list[str] = field(default_factory=list)


class Study:
    """A lorahpo study folder and its Optuna study."""

    def __init__(self, directory: str | Path, config: cfg.StudyConfig) -> None:
        self.directory = Path(directory)
        self.config = config
        self._store: TrialStore | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, directory: str | Path, config: cfg.StudyConfig, *, new: bool = False) -> Study:
        """Create a study in ``directory``, or resume the one there.

        A folder holding a study with a different config is refused unless ``new`` is given;
        then the old folder is kept, renamed with a time stamp, and a fresh study starts.

        Raises:
            ConfigError: The folder holds a different study.
        """
        directory = Path(directory)
        saved = directory / CONFIG_FILE
        if saved.exists():
            old = cfg.parse(yaml.safe_load(saved.read_text()), str(saved))
            if old.identity() != config.identity():
                if not new:
                    diff = _differences(old.identity(), config.identity()) or ["config"]
                    raise cfg.ConfigError(
                        f"{directory} holds a different study (changed: {', '.join(diff)}); "
                        "use another --study-dir, or --new to start over (the old folder is kept)"
                    )
                stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
                directory.rename(directory.with_name(f"{directory.name}.{stamp}"))
        if not saved.exists() or new:
            warmstart.check_sources(config)  # a missing earlier study: nothing written, no trial run
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(saved, config.to_yaml())
        return cls(directory, config)

    @classmethod
    def load(cls, directory: str | Path) -> Study:
        """Open an existing study folder (for status, best, reports)."""
        directory = Path(directory)
        saved = directory / CONFIG_FILE
        if not saved.exists():
            raise cfg.ConfigError(f"{directory} is not a lorahpo study folder (no {CONFIG_FILE})")
        return cls(directory, cfg.parse(yaml.safe_load(saved.read_text()), str(saved)))

    @property
    def storage_url(self) -> str:
        return self.config.storage or f"sqlite:///{(self.directory / 'study.db').resolve()}"

    @property
    def shared(self) -> bool:
        """Whether other processes may run trials of this study (an explicit storage URL)."""
        return self.config.storage is not None

    @property
    def store(self) -> TrialStore:
        """The study's Optuna store, opened on first use."""
        if self._store is None:
            conf = self.config
            self._store = TrialStore.open(self.storage_url, conf.name, conf.objective.directions, self.shared)
        return self._store

    @property
    def optuna_study(self) -> optuna.Study:
        return self.store.study

    # ------------------------------------------------------------------ reading

    def records(self) -> list[TrialRecord]:
        """All trials in order of their number."""
        return [self._record(t) for t in self.optuna_study.get_trials(deepcopy=False)]

    def best(self, k: int = 1) -> list[TrialRecord]:
        """The ``k`` best completed trials that meet the constraints.

        With several objectives: the Pareto front (no other such trial is at least as good in
        every objective and better in one), ordered by the main objective, at most ``k``.
        """
        conf = self.config
        done = [
            r for r in self.records() if r.status == "complete" and r.value is not None and conf.feasible(r.metrics)
        ]
        signs = [-1 if d == "maximize" else 1 for d in conf.objective.directions]
        names = conf.objective.metric_names
        costs = {r.number: [s * r.metrics[m] for s, m in zip(signs, names, strict=True)] for r in done}
        if len(signs) > 1:
            done = [r for r in done if not any(_dominates(costs[o.number], costs[r.number]) for o in done)]
        return sorted(done, key=lambda r: (costs[r.number][0], r.number))[:k]

    def trial_dir(self, number: int) -> Path:
        return self.directory / "trials" / str(number)

    def x0_record(self) -> TrialRecord | None:
        """The trial that evaluated the starting point (the first trial's point), once it has ended."""
        record = self._x0(self.records())
        return record if record is not None and record.status != "running" else None

    @staticmethod
    def _x0(records: list[TrialRecord]) -> TrialRecord | None:
        """The first trial, or when it was interrupted the first later one that evaluates its point
        again (a resumed study does), running or not."""
        if not records:
            return None
        return next((r for r in records if r.status != "interrupted" and r.params == records[0].params), None)

    def finished_count(self) -> int:
        return self._census(set())[0]

    def data_summary(self) -> str | None:
        """What the training data gave, in one paragraph (a LoRA study that has run), else None."""
        from lorahpo.finetune.data import DataReport

        path = self.directory / DATA_FILE
        if not path.is_file():
            return None
        return DataReport.from_dict(json.loads(path.read_text())).summary()

    def _record(self, t: FrozenTrial) -> TrialRecord:
        status: TrialStatus = t.user_attrs.get(STATUS_ATTR) or _STATE_STATUS.get(t.state, "running")
        if t.system_attrs.get(INTERRUPTED_ATTR):
            status = "interrupted"
        return TrialRecord(
            number=t.number,
            status=status,
            params=dict(t.params),
            value=t.values[0] if t.state == TrialState.COMPLETE else None,
            reason=t.user_attrs.get(REASON_ATTR),
            metrics=dict(t.user_attrs.get(METRICS_ATTR, {})),
            start=t.datetime_start,
            end=t.datetime_complete,
            directory=self.trial_dir(t.number),
            last_step=max(t.intermediate_values, default=None),
            fallback=t.system_attrs.get(FALLBACK_ATTR),
        )

    # ------------------------------------------------------------------ running

    def run(
        self,
        on_event: Callable[[str, Any], None] | None = None,
        *,
        executor: Executor | None = None,
        stop_when: Callable[[], bool] | None = None,
    ) -> RunSummary:
        """Run trials until the store holds ``budget`` finished evaluations.

        ``on_event(kind, payload)`` reports progress: ``("start", TrialRecord)`` and
        ``("finish", TrialRecord)``. Ctrl-C (KeyboardInterrupt) ends running trials, marks them
        interrupted and returns; the next run resumes. Any other error in the loop ends and marks
        them the same way, at once (not after they finish, their results unrecorded), and propagates.

        Trials run on ``executor`` (default: the one the config names; a benchmark gives a
        :class:`~lorahpo.executors.replay.ReplayExecutor`), shut down when the run ends. Once
        ``stop_when()`` is true, no trial is asked any more (a benchmark's budget in other units
        than trials); the summary's ``stopped`` is then ``stop_when``.

        With a shared store, other processes may run trials of the same study at once: the
        budget counts their running trials too, and only trials whose process stopped marking
        them alive are taken as interrupted (:mod:`lorahpo.store`).
        """
        notify = on_event or (lambda kind, payload: None)
        conf = self.config
        store = self.store
        study = store.study
        store.interrupt_lost()
        dists = conf.space.distributions()
        sampler = attach_sampler(study, conf)
        study.pruner = make_pruner(conf.pruner, conf.pruner_options)
        pruning = conf.pruner != "none"
        executor = executor or make_executor(conf)
        tracker = _tracker(conf, self.directory)
        uploader = TrialUploader(self.directory)
        running: dict[Future[TrialResult], Trial] = {}
        start, new, stopped = time.monotonic(), 0, "budget"
        try:
            while True:
                store.keep_alive(running.values())
                finished, elsewhere = self._census({t.number for t in running.values()})
                asking = stop_when is None or not stop_when()
                while asking and len(running) < conf.parallel and finished + elsewhere + len(running) < conf.budget:
                    if not protocol.ready(sampler, study):
                        break  # the sampler waits for running trials, or has nothing left
                    trial = store.ask(dists)
                    if store.surplus(trial, conf.budget):
                        break
                    task = TrialTask(
                        trial.number,
                        dict(trial.params),
                        conf.objective.model_dump(mode="json"),
                        self.trial_dir(trial.number),
                        conf.trial_timeout,
                        pruning=pruning,
                        tracking=tracker.start_trial(trial.number, dict(trial.params)) if tracker else {},
                    )
                    running[executor.submit(task)] = trial
                    new += 1
                    notify("start", self._record(store.snapshot(trial)))
                if not running:
                    if elsewhere:  # trials of other processes may yet be lost and leave budget
                        time.sleep(1.0)
                        continue
                    if not asking:
                        stopped = "stop_when"
                    elif finished < conf.budget:
                        stopped = "exhausted"
                    break
                done, _ = wait(list(running), timeout=0.05 if pruning else 1.0, return_when=FIRST_COMPLETED)
                for fut, trial in running.items():
                    if fut not in done:
                        self._watch(trial, executor, pruning)
                for fut in done:
                    trial = running.pop(fut)
                    result = fut.result()
                    self._report(trial, executor.reports(trial.number))  # reported just before the end
                    try:
                        record = self._tell(trial, result, uploader)
                    except optuna.exceptions.UpdateFinishedTrialError:
                        continue  # another process took it for dead and interrupted it
                    if tracker:
                        tracker.finish_trial(record)
                    notify("finish", record)
                if done and conf.objective.lora is not None:
                    self._prune_adapters()
        except BaseException as error:  # Ctrl-C, or an error: the running trials' results would be lost
            executor.shutdown(kill=True)
            for trial in running.values():
                store.tell_interrupted(trial)
                if tracker:
                    tracker.finish_trial(self._record(store.snapshot(trial)))
            stopped = "interrupted"
            if not isinstance(error, KeyboardInterrupt):
                raise
        finally:
            executor.shutdown()
            protocol.close(sampler)
            if tracker:
                tracker.close(stopped)
        best = self.best(1)
        return RunSummary(
            finished=self.finished_count(),
            budget=conf.budget,
            new_trials=new,
            stopped=stopped,
            wall_s=time.monotonic() - start,
            best=best[0] if best else None,
            x0=self.x0_record(),
        )

    def _census(self, own: set[int]) -> tuple[int, int]:
        """Finished evaluations in the store, and trials running in other processes.

        An enqueued trial (waiting: a warm start's point, an x0) runs nowhere yet: the next ask takes it.
        """
        trials = self.optuna_study.get_trials(deepcopy=False)
        records = [self._record(t) for t in trials]
        finished = sum(r.status not in UNFINISHED for r in records)
        elsewhere = sum(
            t.state == TrialState.RUNNING and r.status == "running" and r.number not in own
            for t, r in zip(trials, records, strict=True)
        )
        return finished, elsewhere

    def _watch(self, trial: Trial, executor: Executor, pruning: bool) -> None:
        """Record a running trial's new intermediate values; tell the executor whether it goes on."""
        reports = executor.reports(trial.number)
        if reports:
            self._report(trial, reports)
            executor.decide(trial.number, go_on=not (pruning and trial.should_prune()))

    def _report(self, trial: Trial, reports: list[Report]) -> None:
        """Record intermediate values of a running trial in the store."""
        for step, value in reports:
            self.store.report(trial, step, value)

    def _tell(self, trial: Trial, result: TrialResult, uploader: TrialUploader | None = None) -> TrialRecord:
        """Record a trial's final status, reason, metrics and values: the one place that decides them.

        Its files become Optuna artifacts (:mod:`lorahpo.artifacts`) once its outcome is recorded
        and before its values are told, the last moment Optuna takes them.
        """
        study = self.optuna_study
        result, values = settle(result, self.config.objective.metric_names)
        trial.set_user_attr(STATUS_ATTR, result.status)
        trial.set_user_attr(METRICS_ATTR, result.metrics)
        trial.set_user_attr(DURATION_ATTR, result.duration_s)
        if result.reason:
            trial.set_user_attr(REASON_ATTR, result.reason)
        if uploader is not None:
            kept = values is not None and self._kept(trial.number, result.metrics)
            uploader.upload(trial, self.trial_dir(trial.number), adapter=kept)
        if values is not None:
            for name, value in self.config.constraint_values(result.metrics).items():
                trial.set_constraint(name, value)  # where every sampler reads it
            study.tell(trial, values)
        else:
            study.tell(trial, state=TrialState.PRUNED if result.status == "pruned" else TrialState.FAIL)
        return self._record(self.store.snapshot(trial))

    def _kept(self, number: int, metrics: dict[str, float]) -> bool:
        """Whether a complete trial's adapter is kept now: the start point, or among the ``keep_adapters``
        best so far by the main objective (feasible ones only)."""
        x0 = self._x0(self.records())
        if x0 is not None and x0.number == number:  # the start point, kept as _prune_adapters does
            return True
        keep = self.config.keep_adapters
        if keep == 0 or not self.config.feasible(metrics):
            return False
        best = self.best(keep)
        if len(best) < keep:
            return True
        name = self.config.objective.metric_names[0]
        sign = -1 if self.config.objective.directions[0] == "maximize" else 1
        return sign * metrics[name] < sign * best[-1].metrics[name]

    def _prune_adapters(self) -> None:
        """Keep adapters of the ``keep_adapters`` best trials and of the start point only."""
        keep = {r.number for r in self.best(self.config.keep_adapters)}
        x0 = self.x0_record()
        if x0 is not None:
            keep.add(x0.number)
        for record in self.records():
            adapter = record.directory / "adapter"
            if record.number not in keep and record.status != "running" and adapter.is_dir():
                shutil.rmtree(adapter)


def _tracker(conf: cfg.StudyConfig, directory: Path) -> Any:
    """The study's experiment trackers (lorahpo.tracking, loaded only when the config names one), or None."""
    from lorahpo import tracking

    return tracking.StudyTracker.open(conf, directory) if tracking.enabled(conf.tracking) else None


def _dominates(a: list[float], b: list[float]) -> bool:
    """Whether costs ``a`` are nowhere worse than ``b`` and somewhere better (minimisation)."""
    pairs = list(zip(a, b, strict=True))
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def attach_sampler(study: optuna.Study, conf: cfg.StudyConfig) -> BaseSampler:
    """Give ``study`` the optimizer of ``conf`` and return it.

    Every optimizer starts from the space's x0 when it has one: NOMAD as its X0, TPE, GP,
    NSGA-II and random as their trial of index 0, another Optuna sampler as the first trial of a
    new study (a grid has its own points).

    A warm start's points (:mod:`lorahpo.warmstart`) come first: NOMAD starts from them, then
    x0; any other optimizer gets them enqueued, then x0, once, when the study has no trial yet.
    """
    x0 = conf.space.x0()
    starts = warmstart.points(study, conf)
    sampler = conf.make_sampler(starts)
    study.sampler = sampler
    if study.trials:
        return sampler
    if conf.optimizer != "nomad":
        for point in starts:  # skip_if_exists: workers sharing a store may start it at once
            study.enqueue_trial(point, skip_if_exists=True)
    if x0 is not None and (conf.optimizer not in OPTIMIZERS or (starts and conf.optimizer != "nomad")):
        study.enqueue_trial(x0, skip_if_exists=True)
    return sampler


def resolve_model_spec(study_dir: str | Path, name: str) -> tuple[Any, Path | None]:
    """A model of a LoRA study by name: ``base``, ``best``, ``x0`` or ``trial:N``.

    Returns the base model config and the adapter folder (None for ``base``).

    Raises:
        ConfigError: Not a LoRA study, an unknown name, or a trial without a kept adapter.
    """
    study = Study.load(study_dir)
    lora = study.config.objective.lora
    if lora is None:
        raise cfg.ConfigError(f"{study_dir} is not a LoRA study: it has no models")
    if name == "base":
        return lora.model, None
    record: TrialRecord | None
    if name == "best":
        best = study.best(1)
        if not best:
            raise cfg.ConfigError(f"{study_dir} has no completed trial yet")
        record = best[0]
    elif name == "x0":
        record = study.x0_record()
        if record is None:
            raise cfg.ConfigError(f"{study_dir} has not evaluated its starting point yet")
    elif name.startswith("trial:") and name[6:].isdigit():
        number = int(name[6:])
        record = next((r for r in study.records() if r.number == number), None)
        if record is None:
            raise cfg.ConfigError(f"{study_dir} has no trial {number}")
    else:
        raise cfg.ConfigError(f"unknown model {name!r}; use base, best, x0 or trial:N")
    adapter = record.directory / "adapter"
    if not adapter.is_dir():
        raise cfg.ConfigError(
            f"trial {record.number} has no adapter on disk (only the top `keep_adapters` trials keep theirs)"
        )
    return lora.model, adapter


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two config dumps."""
    out: list[str] = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def dump_records(records: list[TrialRecord]) -> str:
    return json.dumps([r.to_dict() for r in records], indent=1, default=str)
