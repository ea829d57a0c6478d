"""Trials answered from measurements made before: benchmarks replay real searches on any machine.

A benchmark measures each point of the blackbox once, keeps the measurement in a cache file, and
then replays whole searches through the ordinary study loop: :class:`ReplayExecutor` is the
executor of such a study. A measurement is one JSON line:

- ``key``: a hash of the blackbox's complete config for the point (:func:`config_key`), and
  ``params``, the point;
- ``status``: ``complete``, ``failed``, ``timeout``, or ``stopped`` (a pruner stopped it there);
- ``value`` (of the study's main metric), ``reason``, ``duration_s``;
- ``curve``: ``[step, value, ...]`` at each intermediate evaluation (optional; anything after
  the value, such as the tokens trained on so far, is the benchmark's);
- anything else the blackbox returned, e.g. when and where it was measured.

A replayed trial reports its curve through the trial folder's intermediate file, the path a live
trial reports through (:mod:`lorahpo.executors.intermediate`), so the study's pruner sees every value and may
stop the trial at any of them. A point not measured, or measured only as far as an earlier
pruner let it go while this one lets it go further, is measured by the live blackbox when one
is given (from scratch, its stop rule answered by the study's pruner), and otherwise raises
LookupError.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorahpo.executors.intermediate import VERDICT_FILE, IntermediateReader, allowed_step, reporter
from lorahpo.executors.local import TrialTask
from lorahpo.objectives import ObjectiveSpec
from lorahpo.result import Report, Status, TrialResult
from lorahpo.space import same_point

Measurement = dict[str, Any]
#: ``stop(step, value, ...)``, called with each curve entry as it is measured: True to stop there.
Stop = Callable[..., bool]
#: Measures the blackbox at a complete config, asking ``stop`` at each intermediate evaluation;
#: returns a measurement without key and params (status ``stopped`` where ``stop`` said so).
Blackbox = Callable[[dict[str, Any], Stop], Measurement]


def config_key(config: dict[str, Any]) -> str:
    """The key of a measurement: a hash of the blackbox's complete config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:20]


class Measurements:
    """Measurements, one JSON object per line of ``path``, appended as they are made.

    Several processes may share the file (e.g. one per core, each on other seeds): a key missing
    here is looked for again among the lines others appended since. Of several lines for a key,
    a finished measurement beats a stopped one and a longer curve a shorter one; otherwise the
    first stands.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.points: dict[str, Measurement] = {}
        self._offset = 0
        self._read_new()

    def get(self, key: str) -> Measurement | None:
        if key not in self.points:
            self._read_new()
        return self.points.get(key)

    def find(self, params: dict[str, Any], key_of: Callable[[dict[str, Any]], str]) -> Measurement | None:
        """The measurement of the point ``params``, whose key is ``key_of(params)``.

        A sampler may propose a measured point in other last bits on another CPU (TPE's
        vectorised math): a measurement whose params are the same point by
        :func:`lorahpo.space.same_point` (reals within a relative 1e-9, the rest exactly), and
        whose key is its own params' key (the same blackbox), is the point's measurement too.
        """
        point = self.get(key_of(params))
        if point is None:
            point = next((p for p in self.points.values()
                          if same_point(p["params"], params) and key_of(p["params"]) == p["key"]), None)
        return point

    def add(self, point: Measurement) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:  # one write of one line: appends from several processes do not mix
            f.write(json.dumps(point, sort_keys=True) + "\n")
        self._read_new()

    def _read_new(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        self._offset += len(complete)
        for line in complete.decode().splitlines():
            if line.strip():
                point = json.loads(line)
                old = self.points.get(point["key"])
                if old is None or _further(point) > _further(old):
                    self.points[point["key"]] = point


def _further(point: Measurement) -> tuple[bool, int]:
    """How far a measurement went: finished or stopped, then the length of its curve."""
    return point["status"] != "stopped", len(point.get("curve", []))


@dataclass
class Answer:
    """How a trial was answered: the measurement, how many curve entries the trial went
    through before it ended or was stopped, and whether it was measured for this trial."""

    measurement: Measurement
    reached: int
    measured: bool


class ReplayExecutor:
    """Answers each trial from ``measurements``; measures a missing point with ``blackbox``.

    Args:
        measurements: The cache of measurements; new ones are appended to it.
        trial_config: The blackbox's complete config for a point's params (its hash is the
            measurement's key). Default: the params themselves.
        blackbox: Measures a point not measured (far enough) yet; None to replay only.

    :attr:`answers` holds, by trial number, how each finished trial was answered.
    """

    def __init__(
        self,
        measurements: Measurements,
        trial_config: Callable[[dict[str, Any]], dict[str, Any]] = dict,
        blackbox: Blackbox | None = None,
    ) -> None:
        self.measurements = measurements
        self.trial_config = trial_config
        self.blackbox = blackbox
        self.answers: dict[int, Answer] = {}
        self._pool = ThreadPoolExecutor(thread_name_prefix="replay")
        self._pruned: dict[int, threading.Event] = {}
        self._readers: dict[int, IntermediateReader] = {}

    def submit(self, task: TrialTask) -> Future[TrialResult]:
        task.write()
        self._pruned[task.number] = threading.Event()
        self._readers[task.number] = IntermediateReader(task.trial_dir)
        return self._pool.submit(self._run, task)

    def reports(self, number: int) -> list[Report]:
        """Trial ``number``'s replayed ``(step, value)`` reports since the last call."""
        reader = self._readers.get(number)
        return reader.new() if reader is not None else []

    def decide(self, number: int, go_on: bool) -> None:
        """Let trial ``number`` go on past the reports taken, or stop it at the value it reported last."""
        if go_on:
            self._readers[number].let_continue()
        else:
            self._pruned[number].set()

    def shutdown(self, kill: bool = False) -> None:
        """Wait for running trials; with ``kill``, stop replayed ones at their next value."""
        if kill:
            for event in self._pruned.values():
                event.set()
        self._pool.shutdown()

    def _run(self, task: TrialTask) -> TrialResult:
        def key_of(params: dict[str, Any]) -> str:
            return config_key(self.trial_config(params))

        stop = self._reporter(task)
        point = self.measurements.find(task.params, key_of)
        if point is not None:
            curve = point.get("curve", [])
            for i, entry in enumerate(curve, 1):
                # The last entry of a finished measurement is its end: a pruner's verdict there comes too late.
                if stop(*entry) and (point["status"] == "stopped" or i < len(curve)):
                    return self._answer(task, Answer(point, i, measured=False), pruned=True)
            if point["status"] != "stopped":
                return self._answer(task, Answer(point, len(curve), measured=False), pruned=False)
        if self.blackbox is None:
            missing = "was never measured" if point is None else "was not measured far enough"
            raise LookupError(f"point {task.number} {task.params} {missing}")
        config = self.trial_config(task.params)
        key = config_key(config) if point is None else point["key"]
        self.measurements.add({"key": key, "params": task.params, **self.blackbox(config, stop)})
        point = self.measurements.get(key)  # the one kept, should another process have measured it too
        assert point is not None
        return self._answer(task, Answer(point, len(point.get("curve", [])), measured=True), pruned=False)

    def _reporter(self, task: TrialTask) -> Stop:
        """``stop`` for one trial: reports each new step as a live trial does and, with
        pruning, waits for the study's verdict; True once the study pruned the trial."""
        report = reporter(task.trial_dir, wait=False)
        pruned = self._pruned[task.number]
        reported: set[int] = set()

        def stop(step: int, value: float, *more: Any) -> bool:
            if step in reported:  # measured again from scratch: the study has this value
                return False
            reported.add(step)
            report(step, value)
            while task.pruning and not pruned.is_set() and allowed_step(task.trial_dir / VERDICT_FILE) < step:
                pruned.wait(0.01)
            return pruned.is_set()

        return stop

    def _answer(self, task: TrialTask, answer: Answer, pruned: bool) -> TrialResult:
        point = answer.measurement
        status: Status = "pruned" if pruned or point["status"] == "stopped" else point["status"]
        metric = ObjectiveSpec.model_validate(task.objective).metric_name
        self.answers[task.number] = answer
        return TrialResult(
            status=status,
            # every metric the blackbox measured (constraints and secondary objectives read them), else the value
            metrics=(point.get("metrics") or {metric: point["value"]}) if status == "complete" else {},
            reason=point.get("reason"),
            intermediate=[(entry[0], entry[1]) for entry in point.get("curve", [])[: answer.reached]],
            duration_s=point["duration_s"],
        )
