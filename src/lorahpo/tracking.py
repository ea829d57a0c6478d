"""Experiment tracking: every trial a run in MLflow, Weights & Biases and/or TensorBoard (off unless
``tracking:`` names one).

Two halves, so that a trial killed halfway still shows its partial curve and its final status:

* The study process (:class:`StudyTracker`) opens the study's run (MLflow: a parent run; W&B: a
  group named after the study), then a
  run for each trial as it starts, with its hyperparameters and tags (study, trial number,
  optimizer), and records the outcome the study settles: status, reason and final metrics,
  whether the trial returned, failed, timed out, was pruned or was interrupted.
* The trial process (:class:`CurveLogger`) logs the curves by step into that run as they are
  measured: a LoRA trial's training loss, learning rate and validation loss, or the values a
  Python objective reports.

Tracking never fails a trial or a study: a backend that raises is turned off, with one warning
line on stderr, and the study goes on. See docs/tracking.md.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lorahpo.result import TrialRecord

if TYPE_CHECKING:
    from lorahpo.config import StudyConfig, TrackingConfig

#: What the study tells of a trial's status, as MLflow's run states.
_MLFLOW_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "interrupted": "KILLED"}


def warn(backend: str, what: str, exc: BaseException) -> None:
    """The one warning of a backend that failed; the study goes on without it."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    print(f"lorahpo: warning: {backend} tracking failed ({what}: {type(exc).__name__}: {text}); "
          "the study goes on without it", file=sys.stderr, flush=True)


class _Backend(Protocol):
    name: str

    def start_trial(self, number: int, params: dict[str, Any]) -> dict[str, Any]: ...

    def finish_trial(self, record: TrialRecord) -> None: ...

    def close(self, stopped: str) -> None: ...


class StudyTracker:
    """The study process's half: runs of the study and of its trials, and their outcomes."""

    def __init__(self, backends: list[Any]) -> None:
        self._backends: list[_Backend] = backends

    @classmethod
    def open(cls, conf: StudyConfig, directory: Path) -> StudyTracker:
        """Open the study's run in each backend ``conf.tracking`` names (a failing one is warned about and left out)."""
        tracking = conf.tracking
        backends: list[Any] = []
        openers = [("mlflow", tracking.mlflow, _MlflowStudy), ("wandb", tracking.wandb, _WandbStudy),
                   ("tensorboard", tracking.tensorboard, _TensorboardStudy)]
        for name, options, opener in openers:
            if options is None:
                continue
            try:
                backends.append(opener(options, conf, directory))
            except Exception as exc:  # tracking never stops a study
                warn(name, "opening the study's run", exc)
        return cls(backends)

    def start_trial(self, number: int, params: dict[str, Any]) -> dict[str, Any]:
        """Open the trial's runs; return what its process needs to log curves into them (trial.json)."""
        handles = {}
        for backend in list(self._backends):
            handle = self._guard(backend, f"starting trial {number}", backend.start_trial, number, params)
            if handle is not None:
                handles[backend.name] = handle
        return handles

    def finish_trial(self, record: TrialRecord) -> None:
        """Record the trial's settled status, reason and final metrics, and end its runs."""
        for backend in list(self._backends):
            self._guard(backend, f"finishing trial {record.number}", backend.finish_trial, record)

    def close(self, stopped: str) -> None:
        """End the study's run: finished, or killed when the study was interrupted."""
        for backend in list(self._backends):
            self._guard(backend, "closing the study's run", backend.close, stopped)

    def _guard(self, backend: _Backend, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            warn(backend.name, what, exc)
            self._backends.remove(backend)
            return None


class CurveLogger:
    """The trial process's half: ``log(step, values)`` into the runs the study opened for this trial."""

    def __init__(self, handles: dict[str, Any]) -> None:
        self._sinks: dict[str, Any] = {}
        for name, handle in handles.items():
            try:
                self._sinks[name] = _CURVES[name](handle)
            except Exception as exc:
                warn(name, "opening the trial's run", exc)

    def log(self, step: int, values: dict[str, float]) -> None:
        finite = {k: float(v) for k, v in values.items() if math.isfinite(v)}
        for name, sink in list(self._sinks.items()):
            try:
                sink.log(step, finite)
            except Exception as exc:
                warn(name, f"logging step {step}", exc)
                del self._sinks[name]

    def close(self) -> None:
        for name, sink in self._sinks.items():
            try:
                sink.close()
            except Exception as exc:
                warn(name, "closing the trial's run", exc)


def _tags(conf: StudyConfig) -> dict[str, str]:
    return {"lorahpo.study": conf.name, "lorahpo.optimizer": conf.optimizer}


def _final_metrics(record: TrialRecord) -> dict[str, float]:
    return {k: float(v) for k, v in record.metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


# --------------------------------------------------------------------------- MLflow


class _MlflowStudy:
    """The study as a parent run (reused when the study resumes), each trial a child run."""

    name = "mlflow"

    def __init__(self, options: Any, conf: StudyConfig, directory: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = options.tracking_uri
        self.client = MlflowClient(tracking_uri=self.uri)
        name = options.experiment or conf.name
        experiment = self.client.get_experiment_by_name(name)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.tags = _tags(conf)
        where = str(directory.resolve())
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`lorahpo.study_dir` = '{where}'", max_results=1
        )
        if found:
            self.parent = found[0].info.run_id
            self.client.update_run(self.parent, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=conf.name,
                                         tags={**self.tags, "lorahpo.study_dir": where})
            self.parent = run.info.run_id
            from mlflow.entities import Param

            settings = {"optimizer": conf.optimizer, "seed": conf.seed, "metric": conf.objective.metric_name,
                        "direction": conf.objective.direction}
            self.client.log_batch(self.parent, params=[Param(k, str(v)) for k, v in settings.items()])
        self.runs: dict[int, str] = {}

    def start_trial(self, number: int, params: dict[str, Any]) -> dict[str, Any]:
        from mlflow.entities import Param

        tags = {**self.tags, "lorahpo.trial": str(number), "mlflow.parentRunId": self.parent}
        run = self.client.create_run(self.experiment_id, run_name=f"trial {number}", tags=tags)
        self.runs[number] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return {"tracking_uri": self.uri, "run_id": run.info.run_id}

    def finish_trial(self, record: TrialRecord) -> None:
        from mlflow.entities import Metric

        run_id = self.runs.pop(record.number)
        now = int(time.time() * 1000)
        step = record.last_step or 0  # the end of the curves: a metric's latest value is its final one
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in _final_metrics(record).items()])
        self.client.set_tag(run_id, "lorahpo.status", record.status)
        if record.reason:
            self.client.set_tag(run_id, "lorahpo.reason", record.reason[:5000])
        self.client.set_terminated(run_id, _MLFLOW_STATUS.get(record.status, "FAILED"))

    def close(self, stopped: str) -> None:
        self.client.set_terminated(self.parent, "KILLED" if stopped == "interrupted" else "FINISHED")


class _MlflowCurve:
    def __init__(self, handle: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=handle["tracking_uri"])
        self.run_id = handle["run_id"]

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- TensorBoard


class _TensorboardStudy:
    """``<dir>/<study>/trial-<N>/``: one TensorBoard run per trial, its hyperparameters in the HParams tab."""

    name = "tensorboard"

    def __init__(self, options: Any, conf: StudyConfig, directory: Path) -> None:
        import tensorboard  # noqa: F401  # fail here, once, when it is missing

        self.root = Path(options.dir) / conf.name
        self.study = conf.name
        self.steps: dict[int, int] = {}

    def folder(self, number: int) -> Path:
        return self.root / f"trial-{number}"

    def start_trial(self, number: int, params: dict[str, Any]) -> dict[str, Any]:
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}
        with _events(self.folder(number)) as write:
            write(0, hparams_pb(hparams, trial_id=f"{self.study}/{number}"))
        return {"dir": str(self.folder(number))}

    def finish_trial(self, record: TrialRecord) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.text.summary_v2 import text_pb

        step = record.last_step or 0
        final = [Summary.Value(tag=f"final/{k}", simple_value=v) for k, v in _final_metrics(record).items()]
        status = record.status + (f": {record.reason}" if record.reason else "")
        with _events(self.folder(record.number)) as write:
            write(step, Summary(value=final))
            write(step, text_pb("status", status))

    def close(self, stopped: str) -> None:
        pass


class _TensorboardCurve:
    def __init__(self, handle: dict[str, Any]) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.writer = EventFileWriter(handle["dir"])

    def log(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
        self.writer.flush()  # a killed trial keeps every step logged so far

    def close(self) -> None:
        self.writer.close()


class _events:
    """An event file of its own in ``folder``, written and closed (TensorBoard merges a run's files)."""

    def __init__(self, folder: Path) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.writer = EventFileWriter(str(folder))

    def __enter__(self) -> Any:
        from tensorboard.compat.proto.event_pb2 import Event

        def write(step: int, summary: Any) -> None:
            self.writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

        return write

    def __exit__(self, *exc: object) -> None:
        self.writer.close()


# --------------------------------------------------------------------------- Weights & Biases


class _WandbStudy:
    """Each trial a W&B run in the study's group. The trial process writes the run's curves; the
    study process then resumes the same run id to write its outcome (in offline mode these are two
    run folders of one id, which ``wandb sync`` uploads into one run)."""

    name = "wandb"

    def __init__(self, options: Any, conf: StudyConfig, directory: Path) -> None:
        import wandb  # noqa: F401  # fail here, once, when it is missing

        self.options = options
        self.study = conf.name
        self.tags = [conf.name, conf.optimizer]
        self.runs: dict[int, dict[str, Any]] = {}

    def start_trial(self, number: int, params: dict[str, Any]) -> dict[str, Any]:
        import uuid

        unique = f"{self.study}-{number}-{uuid.uuid4().hex[:8]}"  # trial numbers repeat across studies
        run_id = "".join(c if c.isalnum() or c in "-_" else "-" for c in unique)
        handle = {
            "project": self.options.project, "mode": self.options.mode, "dir": self.options.dir, "id": run_id,
            "group": self.study, "name": f"trial {number}", "tags": [*self.tags, f"trial-{number}"],
            "config": {**params, "lorahpo.trial": number},
        }
        self.runs[number] = handle
        return handle

    def finish_trial(self, record: TrialRecord) -> None:
        handle = self.runs.pop(record.number)
        run = _wandb_run(handle)
        try:
            run.summary.update({**_final_metrics(record), "status": record.status, "reason": record.reason or ""})
        finally:
            run.finish(exit_code=0 if record.status == "complete" else 1)

    def close(self, stopped: str) -> None:
        pass


def _wandb_run(handle: dict[str, Any]) -> Any:
    import wandb

    if handle["dir"]:
        Path(handle["dir"]).mkdir(parents=True, exist_ok=True)
    # Flushed to the run's file every second: a trial killed later keeps its curve.
    settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True,
                              x_transaction_log_flush_interval=1.0)
    return wandb.init(**handle, resume="allow", reinit="create_new", settings=settings)


class _WandbCurve:
    def __init__(self, handle: dict[str, Any]) -> None:
        import os

        # The study process's W&B service, inherited through the environment, would hold this run
        # open after a kill; a service of the trial's own dies with it and lets the study resume the run.
        os.environ.pop("WANDB_SERVICE", None)
        self.run = _wandb_run(handle)
        # The trial's own step is the x axis: every row is written at once (a row of W&B's step
        # waits for the next step), and two rows may share a step (training, then validation).
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log({"step": step, **values})

    def close(self) -> None:
        self.run.finish()


_CURVES: dict[str, Any] = {"mlflow": _MlflowCurve, "wandb": _WandbCurve, "tensorboard": _TensorboardCurve}


def enabled(tracking: TrackingConfig) -> bool:
    """Whether ``tracking`` names any backend."""
    return any(getattr(tracking, name) is not None for name in _CURVES)
