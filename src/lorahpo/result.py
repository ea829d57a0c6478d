"""What one evaluation of a blackbox returns, and how the study records a trial.

A failure is a result, not an exception: every executor and every blackbox turns whatever
happened into a :class:`TrialResult` with a status and a reason. The study settles it
(:func:`settle`) and records it in its store, with the names below; :class:`TrialRecord` is a
trial as the store holds it. This module is the one vocabulary of trial states.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from lorahpo.files import write_atomic

#: How an evaluation ended.
Status = Literal["complete", "failed", "timeout", "pruned"]
STATUSES: tuple[str, ...] = get_args(Status)
#: A trial's state in the store: how its evaluation ended, or that it is still running, or that
#: it never ended because its process was stopped or died (``interrupted``: evaluated again).
TrialStatus = Literal["complete", "failed", "timeout", "pruned", "running", "interrupted"]
#: Trial states that are not (yet) an evaluation: they do not count towards the budget.
UNFINISHED: tuple[str, ...] = ("running", "interrupted")

#: User attributes the study stores with each trial.
STATUS_ATTR = "status"
REASON_ATTR = "reason"
METRICS_ATTR = "metrics"
DURATION_ATTR = "duration_s"
#: System attribute of an interrupted trial (optimizers never learn from one).
INTERRUPTED_ATTR = "lorahpo:interrupted"

#: The value of a constraint whose metric was not measured (finite: NOMAD reads no infinities).
VIOLATED = 1e30

#: An intermediate value of the objective: ``(step, value)``.
Report = tuple[int, float]
#: ``report(step, value)``: an intermediate value of the objective while a trial runs; True asks
#: the trial to stop. lorahpo's own reporters also take ``final=True``: the trial's last report,
#: which the study records but never stops the trial for (:func:`report`).
Reporter = Callable[..., bool]


def takes_final(reporter: Reporter) -> bool:
    """Whether ``reporter`` accepts ``final`` (lorahpo's do; a user's ``(step, value)`` one need not)."""
    try:
        params = inspect.signature(reporter).parameters
    except (TypeError, ValueError):
        return False
    return "final" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def report(reporter: Reporter, step: int, value: float, final: bool) -> bool:
    """Report ``(step, value)``, saying ``final`` to a reporter that accepts it; True asks to stop."""
    if final and takes_final(reporter):
        return bool(reporter(step, value, final=True))
    return bool(reporter(step, value))


@dataclass
class TrialResult:
    """Outcome of one blackbox evaluation.

    Attributes:
        status: ``complete`` when the objective value is usable; ``failed`` (exception,
            crash, non-finite value, out of memory, divergence), ``timeout`` or ``pruned``.
        metrics: Named numbers measured by the blackbox; the objective is one of them.
        reason: Why the trial did not complete (exception type and message, last stderr lines).
        intermediate: ``(step, value)`` pairs of the objective measured during the run (kept in
            ``result.json``; the study takes them as they come, through its executor).
        duration_s: Wall time of the evaluation in seconds.
    """

    status: Status = "complete"
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    intermediate: list[Report] = field(default_factory=list)
    duration_s: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown trial status {self.status!r}")
        self.intermediate = [(int(s), float(v)) for s, v in self.intermediate]

    @classmethod
    def failure(cls, reason: str, *, status: Status = "failed", **kw: Any) -> TrialResult:
        return cls(status=status, reason=reason, **kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialResult:
        return cls(**d)

    def save(self, path: Path) -> None:
        """Write atomically: a reader never sees half a file."""
        write_atomic(path, json.dumps(self.to_dict(), indent=1, default=_jsonable))

    @classmethod
    def load(cls, path: Path) -> TrialResult:
        return cls.from_dict(json.loads(path.read_text()))


def settle(result: TrialResult, objectives: list[str]) -> tuple[TrialResult, list[float] | None]:
    """The result the study records for a trial, and its objective values (None unless complete).

    A complete result whose objectives are not all finite numbers is recorded as a failure
    naming the first such objective: no optimizer is ever told a NaN.
    """
    if result.status != "complete":
        return result, None
    values = []
    for name in objectives:
        value = result.metrics.get(name, "nothing")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            reason = f"objective {name!r} is not a finite number (got {value!r})"
            return TrialResult.failure(reason, metrics=result.metrics, duration_s=result.duration_s), None
        values.append(float(value))
    return result, values


@dataclass
class TrialRecord:
    """One trial as the store holds it, in human units."""

    number: int
    status: TrialStatus
    params: dict[str, Any]
    value: float | None  # of the main objective
    reason: str | None
    metrics: dict[str, float]
    start: dt.datetime | None
    end: dt.datetime | None
    directory: Path
    last_step: int | None = None  # of its last intermediate value, if it reported any
    fallback: str | None = None  # why the optimizer gave no point: the params were sampled at random

    @property
    def duration_s(self) -> float | None:
        return (self.end - self.start).total_seconds() if self.start and self.end else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "status": self.status,
            "params": self.params,
            "value": self.value,
            "reason": self.reason,
            "metrics": self.metrics,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "duration_s": self.duration_s,
            "directory": str(self.directory),
            "fallback": self.fallback,
        }


def records_table(records: list[TrialRecord]) -> tuple[list[str], list[dict[str, Any]]]:
    """Trials as flat rows, one column per hyperparameter and per metric (``lorahpo status --format csv``,
    ``to_dataframe``).

    Columns: ``number``, ``status``, ``value``, ``duration_s``, ``params_<name>`` and
    ``metrics_<name>`` in the order they first appear, then ``reason``, ``fallback`` (why its
    point was sampled at random, if it was), ``start`` and ``end`` (ISO 8601). A trial without a
    hyperparameter or metric has no entry for it.
    """
    params: dict[str, None] = {}
    metrics: dict[str, None] = {}
    for r in records:
        params.update(dict.fromkeys(f"params_{k}" for k in r.params))
        metrics.update(dict.fromkeys(f"metrics_{k}" for k in r.metrics))
    columns = ["number", "status", "value", "duration_s", *params, *metrics, "reason", "fallback", "start", "end"]
    rows = []
    for r in records:
        row: dict[str, Any] = {"number": r.number, "status": r.status, "value": r.value, "duration_s": r.duration_s}
        row.update({f"params_{k}": v for k, v in r.params.items()})
        row.update({f"metrics_{k}": v for k, v in r.metrics.items()})
        row.update(reason=r.reason, fallback=r.fallback, start=_iso(r.start), end=_iso(r.end))
        rows.append(row)
    return columns, rows


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat() if when else None


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
