"""The Ray executor: each trial a Ray task, on any machine of a Ray cluster.

The task runs the trial exactly as the local executor does (a fresh subprocess, on the GPUs Ray
gave the task) in a temporary folder on its node, then sends the folder back packed with the
result; the driver unpacks it into the study's ``trials/<number>/``. So the store and the trial
folders live where the driver runs, and the nodes need no shared disk. The nodes need lorahpo
installed (the same version); the objective's own code reaches them through ``runtime_env``
(e.g. ``working_dir``).

Intermediate values travel through a small Ray actor of the study, a :class:`ReportBoard`: the
task passes on its trial's reports as they come, and the study's verdicts back to the trial, so
early stopping works as on the local executor (a trial to stop is killed on its node and
returns as ``pruned`` with its folder).

A trial lost with its Ray worker or node (killed, out of memory, machine gone) is run again up
to ``max_retries`` times, then recorded as failed; the study goes on.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from lorahpo.config import RayOptions
from lorahpo.executors.local import LocalExecutor, TrialTask
from lorahpo.objectives import tail
from lorahpo.result import Report, TrialResult

#: The name Ray shows for a running trial (``ray::lorahpo_trial`` in ``ps``).
TASK_NAME = "lorahpo_trial"

#: How often a task looks for its trial's reports and the study's verdict (seconds).
_POLL_S = 0.05


class ReportBoard:
    """A Ray actor between running trials and the study: reports go up, verdicts come down."""

    def __init__(self) -> None:
        self._reports: dict[int, list[Report]] = {}
        self._verdicts: dict[int, bool] = {}

    def push(self, number: int, reports: list[Report]) -> None:
        self._reports.setdefault(number, []).extend(reports)

    def take(self, number: int) -> list[Report]:
        return self._reports.pop(number, [])

    def decide(self, number: int, go_on: bool) -> None:
        self._verdicts[number] = go_on

    def verdict(self, number: int) -> bool | None:
        return self._verdicts.pop(number, None)


def run_on_node(spec: dict[str, Any], num_cpus: float, board: Any) -> dict[str, Any]:
    """Body of the Ray task: run one trial in a subprocess here, return its result and folder.

    While the trial runs, its reports go to ``board`` (a :class:`ReportBoard` handle) and the
    study's verdicts come back from it.
    """
    with tempfile.TemporaryDirectory(prefix="lorahpo-trial-") as folder:
        task = TrialTask(trial_dir=Path(folder), **spec)
        if not os.environ.get("CUDA_VISIBLE_DEVICES"):
            os.environ["LORAHPO_NUM_THREADS"] = str(max(1, int(num_cpus)))
        executor = LocalExecutor(1)
        try:
            future = executor.submit(task)
            _relay(executor, task.number, future, board)
            result = future.result()
        finally:
            executor.shutdown()
        return {"result": result.to_dict(), "files": _pack(Path(folder))}


def _relay(executor: LocalExecutor, number: int, future: Future[TrialResult], board: Any) -> None:
    """Pass the trial's reports on to ``board`` and its verdicts back, until the trial ends."""
    import ray

    awaiting = False  # a verdict on reports passed on
    while True:
        ended = future.done()  # looked at before reading: the last reports are passed on too
        reports = executor.reports(number)
        if reports:
            ray.get(board.push.remote(number, reports))
            awaiting = True
        if ended:
            return
        if awaiting:
            go_on = ray.get(board.verdict.remote(number))
            if go_on is not None:
                executor.decide(number, go_on)
                awaiting = False
        wait([future], timeout=_POLL_S)


class RayExecutor:
    """Runs up to ``slots`` trials at once as Ray tasks."""

    def __init__(self, slots: int, options: RayOptions) -> None:
        import ray

        self.slots = slots
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(
                address=options.address,
                runtime_env=options.runtime_env or None,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        self._board: Any = ray.remote(ReportBoard).options(num_cpus=0).remote()  # a handle; it takes no CPU
        self._remote = ray.remote(run_on_node).options(
            name=TASK_NAME,
            num_cpus=options.num_cpus,
            num_gpus=options.num_gpus,
            max_retries=options.max_retries,
            retry_exceptions=False,
        )
        self._num_cpus = options.num_cpus
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="ray-trial")
        self._refs: dict[int, Any] = {}  # running tasks by trial number
        self._lock = threading.Lock()

    def submit(self, task: TrialTask) -> Future[TrialResult]:
        task.write()  # the driver's copy of what the trial runs
        spec = {
            "number": task.number,
            "params": task.params,
            "objective": task.objective,
            "timeout": task.timeout,
            "pruning": task.pruning,
            "tracking": task.tracking,
        }
        ref = self._remote.remote(spec, self._num_cpus, self._board)
        with self._lock:
            self._refs[task.number] = ref
        return self._pool.submit(self._wait, task, ref)

    def reports(self, number: int) -> list[Report]:
        """Trial ``number``'s ``(step, value)`` reports since the last call (once it ended: its last)."""
        return self._ray.get(self._board.take.remote(number))

    def decide(self, number: int, go_on: bool) -> None:
        """Let trial ``number`` go on past the reports taken, or stop it now (it returns as ``pruned``)."""
        self._board.decide.remote(number, go_on)

    def shutdown(self, kill: bool = False) -> None:
        """Wait for running trials, or with ``kill`` cancel them at once."""
        if kill:
            with self._lock:
                for ref in self._refs.values():
                    self._ray.cancel(ref, force=True)
        self._pool.shutdown(wait=True, cancel_futures=kill)
        if self._ray.is_initialized():
            self._ray.kill(self._board)
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False

    def _wait(self, task: TrialTask, ref: Any) -> TrialResult:
        from ray.exceptions import RayError, TaskCancelledError

        try:
            out = self._ray.get(ref)
        except TaskCancelledError:
            return TrialResult.failure("cancelled")
        except RayError as e:
            return TrialResult.failure(f"lost on Ray ({type(e).__name__}): {tail(str(e), 3)}")
        finally:
            with self._lock:
                self._refs.pop(task.number, None)
        _unpack(out["files"], task.trial_dir)
        return TrialResult(**out["result"])


def _pack(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=".")
    return buf.getvalue()


def _unpack(data: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(folder, filter="data")
