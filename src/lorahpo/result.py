"""What one evaluation of a blackbox returns.

A failure is a result, not an exception: every executor and every blackbox turns whatever
happened into a :class:`TrialResult` with a status and a reason, and the study records it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["complete", "failed", "timeout", "pruned"]
STATUSES: tuple[str, ...] = ("complete", "failed", "timeout", "pruned")

#: An intermediate value of the objective: ``(step, value)``.
Report = tuple[int, float]
#: ``report(step, value)``: an intermediate value of the objective while a trial runs; True asks
#: the trial to stop.
Reporter = Callable[[int, float], bool]


@dataclass
class TrialResult:
    """Outcome of one blackbox evaluation.

    Attributes:
        status: ``complete`` when the objective value is usable; ``failed`` (exception,
            crash, non-finite value, out of memory, divergence), ``timeout`` or ``pruned``.
        metrics: Named numbers measured by the blackbox; the objective is one of them.
        reason: Why the trial did not complete (exception type and message, last stderr lines).
        intermediate: ``(step, value)`` pairs of the objective measured during the run.
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

    def objective(self, names: list[str]) -> list[float] | None:
        """The values of the named objectives, or None when any is missing or not finite."""
        values = []
        for name in names:
            v = self.metrics.get(name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                return None
            values.append(float(v))
        return values

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialResult:
        return cls(**d)

    def save(self, path: Path) -> None:
        """Write atomically: a reader never sees half a file."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, default=_jsonable))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> TrialResult:
        return cls.from_dict(json.loads(path.read_text()))


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
