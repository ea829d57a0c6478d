"""The local executor: each trial in its own subprocess, ``parallel`` at a time.

A subprocess per trial frees all (GPU) memory when the trial ends and keeps a crash, a segfault
or an out-of-memory kill from taking the study down. With GPUs, each running trial gets its own
(``CUDA_VISIBLE_DEVICES``). A trial's intermediate values come through its folder
(:mod:`lorahpo.executors.intermediate`); a trial the study stops is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorahpo.executors.intermediate import IntermediateReader
from lorahpo.objectives import tail
from lorahpo.result import Report, TrialResult

#: The pid of the process that started a trial, given to the trial: one whose study process
#: died while it was still starting up must notice too (``worker._die_with_parent``).
PARENT_ENV = "LORAHPO_PARENT_PID"


@dataclass
class TrialTask:
    """One evaluation to run: its number, hyperparameters, objective and folder."""

    number: int
    params: dict[str, Any]
    objective: dict[str, Any]
    trial_dir: Path
    timeout: float | None = None
    pruning: bool = False  # the trial waits for the study's verdict after each report
    tracking: dict[str, Any] = field(default_factory=dict)  # the runs it logs its curves into (lorahpo.tracking)

    def write(self) -> None:
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        spec = {"number": self.number, "params": self.params, "objective": self.objective, "pruning": self.pruning,
                "tracking": self.tracking}
        (self.trial_dir / "trial.json").write_text(json.dumps(spec, indent=1))


def visible_gpus() -> list[str]:
    """GPU ids this process may use, found without importing torch."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


class LocalExecutor:
    """Runs up to ``slots`` trials at once, each in a fresh Python process.

    With GPUs, each running trial gets ``gpus_per_trial`` of them (``CUDA_VISIBLE_DEVICES``);
    when there are more slots than GPU groups, slots share the groups round robin.
    """

    def __init__(self, slots: int = 1, gpus: list[str] | None = None, gpus_per_trial: int = 1) -> None:
        self.slots = slots
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="trial")
        self._gpus: queue.Queue[str] | None = None
        gpus = visible_gpus() if gpus is None else gpus
        if gpus and len(gpus) < gpus_per_trial:
            raise ValueError(f"gpus_per_trial is {gpus_per_trial} but only {len(gpus)} GPU(s) are visible")
        if gpus:
            starts = range(0, len(gpus) - gpus_per_trial + 1, gpus_per_trial)
            groups = [",".join(gpus[i : i + gpus_per_trial]) for i in starts]
            self._gpus = queue.Queue()
            for i in range(slots):
                self._gpus.put(groups[i % len(groups)])
        self._procs: dict[int, subprocess.Popen[bytes]] = {}  # by trial number
        self._readers: dict[int, IntermediateReader] = {}  # of trials whose last reports are not yet taken
        self._ended: set[int] = set()
        self._pruned: set[int] = set()
        self._lock = threading.Lock()
        self._closing = False

    def submit(self, task: TrialTask) -> Future[TrialResult]:
        task.write()
        with self._lock:
            self._readers[task.number] = IntermediateReader(task.trial_dir)
        return self._pool.submit(self._run, task)

    def reports(self, number: int) -> list[Report]:
        """Trial ``number``'s ``(step, value)`` reports since the last call (once it ended: its last)."""
        with self._lock:
            reader = self._readers.get(number)
            ended = number in self._ended  # looked at before reading: no report written after is missed
        if reader is None:
            return []
        reports = reader.new()
        if ended:
            with self._lock:
                self._readers.pop(number, None)
                self._ended.discard(number)
        return reports

    def decide(self, number: int, go_on: bool) -> None:
        """Let trial ``number`` go on past the reports taken, or stop it now (it returns as
        ``pruned``); a trial that made its final report is never stopped: it finishes."""
        with self._lock:
            reader = self._readers.get(number)
            proc = self._procs.get(number)
            if reader is not None and reader.final:
                return
            if go_on and reader is not None:
                reader.let_continue()
            elif not go_on and proc is not None:
                self._pruned.add(number)
                _kill_group(proc)

    def shutdown(self, kill: bool = False) -> None:
        """Wait for running trials, or with ``kill`` end them at once."""
        self._closing = kill
        if kill:
            with self._lock:
                for proc in self._procs.values():
                    _kill_group(proc)
        self._pool.shutdown(wait=True, cancel_futures=kill)

    def _run(self, task: TrialTask) -> TrialResult:
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        gpu = self._gpus.get() if self._gpus else None
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        elif self.slots > 1:
            # Trials share the CPU: split its cores instead of oversubscribing them.
            env.setdefault("LORAHPO_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.slots)))
        start = time.monotonic()
        try:
            with open(task.trial_dir / "stdout.log", "wb") as out, open(task.trial_dir / "stderr.log", "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "lorahpo.executors.worker", str(task.trial_dir)],
                    stdout=out,
                    stderr=err,
                    env=env,
                    start_new_session=True,  # its own process group: a timeout kills all it started
                )
                with self._lock:
                    self._procs[task.number] = proc
                try:
                    proc.wait(timeout=task.timeout)
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
                    return TrialResult.failure(
                        f"timed out after {task.timeout:g} s", status="timeout", duration_s=time.monotonic() - start
                    )
                finally:
                    with self._lock:
                        self._procs.pop(task.number, None)
            if task.number in self._pruned:
                return TrialResult("pruned", reason="stopped early by the pruner", duration_s=time.monotonic() - start)
            return self._collect(task, proc.returncode, time.monotonic() - start)
        finally:
            with self._lock:
                self._ended.add(task.number)
            if gpu is not None and self._gpus is not None:
                self._gpus.put(gpu)

    def _collect(self, task: TrialTask, code: int, elapsed: float) -> TrialResult:
        path = task.trial_dir / "result.json"
        if code == 0 and path.exists():
            result = TrialResult.load(path)
            result.duration_s = result.duration_s or elapsed
            return result
        stderr = (task.trial_dir / "stderr.log").read_text(errors="replace")
        if code < 0:
            name = _signal_name(-code)
            hint = " (out of memory?)" if name == "SIGKILL" and not self._closing else ""
            reason = f"killed by {name}{hint}: {tail(stderr, 3)}"
        else:
            reason = f"worker exited with code {code}: {tail(stderr)}"
        return TrialResult.failure(reason, duration_s=elapsed)


def _signal_name(number: int) -> str:
    """``SIGKILL``, or ``signal 36`` for one Python has no name for (a real-time signal)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
