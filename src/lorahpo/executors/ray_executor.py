"""The Ray executor: each trial a Ray task, on any machine of a Ray cluster.

The task runs the trial exactly as the local executor does (a fresh subprocess, on the GPUs Ray
gave the task) in a temporary folder on its node, then sends the folder back packed with the
result; the driver unpacks it into the study's ``trials/<number>/``. So the store and the trial
folders live where the driver runs, and the nodes need no shared disk. The nodes need lorahpo
installed (the same version); the objective's own code reaches them through ``runtime_env``
(e.g. ``working_dir``).

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
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lorahpo.config import RayOptions
from lorahpo.executors.local import LocalExecutor, TrialTask
from lorahpo.objectives import tail
from lorahpo.result import TrialResult

#: The name Ray shows for a running trial (``ray::lorahpo_trial`` in ``ps``).
TASK_NAME = "lorahpo_trial"


def run_on_node(spec: dict[str, Any], num_cpus: float) -> dict[str, Any]:
    """Body of the Ray task: run one trial in a subprocess here, return its result and folder."""
    with tempfile.TemporaryDirectory(prefix="lorahpo-trial-") as folder:
        task = TrialTask(trial_dir=Path(folder), **spec)
        if not os.environ.get("CUDA_VISIBLE_DEVICES"):
            os.environ["LORAHPO_NUM_THREADS"] = str(max(1, int(num_cpus)))
        executor = LocalExecutor(1)
        try:
            result = executor.submit(task).result()
        finally:
            executor.shutdown()
        return {"result": result.to_dict(), "files": _pack(Path(folder))}


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
        self._pruned: set[int] = set()
        self._lock = threading.Lock()

    def submit(self, task: TrialTask) -> Future[TrialResult]:
        task.write()  # the driver's copy of what the trial runs
        spec = {
            "number": task.number,
            "params": task.params,
            "objective": task.objective,
            "timeout": task.timeout,
            "pruning": task.pruning,
        }
        ref = self._remote.remote(spec, self._num_cpus)
        with self._lock:
            self._refs[task.number] = ref
        return self._pool.submit(self._wait, task, ref)

    def prune(self, number: int) -> None:
        """Stop trial ``number`` now (its Ray task is cancelled); it returns as ``pruned``."""
        with self._lock:
            ref = self._refs.get(number)
            if ref is not None:
                self._pruned.add(number)
                self._ray.cancel(ref, force=True)

    def shutdown(self, kill: bool = False) -> None:
        """Wait for running trials, or with ``kill`` cancel them at once."""
        if kill:
            with self._lock:
                for ref in self._refs.values():
                    self._ray.cancel(ref, force=True)
        self._pool.shutdown(wait=True, cancel_futures=kill)
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False

    def _wait(self, task: TrialTask, ref: Any) -> TrialResult:
        from ray.exceptions import RayError, TaskCancelledError

        try:
            out = self._ray.get(ref)
        except TaskCancelledError:
            if task.number in self._pruned:
                return TrialResult("pruned", reason="stopped early by the pruner")
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
