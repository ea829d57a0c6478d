"""In-trial downstream metrics in a report: each evaluator against validation loss, over complete trials.

A LoRA trial with ``evaluate: [...]`` reports, per evaluator ``N``, ``N`` (higher is better),
``N_base`` and ``N_drop = N_base - N`` (:mod:`lorahpo.evaluation.in_trial`). This module
collects them per evaluator, with the base model's value, the bound a constraint puts on the
metric, and Spearman's rho of validation loss against the metric with its bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from lorahpo.report.stats import spearman, spearman_ci

LOSS = "validation_loss"


class _Trial(Protocol):
    """What is read of a trial: the store's ``TrialRecord``."""

    @property
    def number(self) -> int: ...

    @property
    def status(self) -> str: ...

    @property
    def metrics(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class EvaluatorSummary:
    """One in-trial evaluator over the complete trials of a study.

    Attributes:
        name: The evaluator's metric name (``retention``).
        points: ``(trial number, validation loss, value)`` of each complete trial that measured it.
        base: The base model's value (measured once per study), None if no trial reported it.
        bound: The lowest value the constraints allow (from a bound on ``<name>_drop``), or the
            highest (from a bound on ``<name>`` itself); None without a constraint on it.
        constraint: The constraint as the config states it, e.g. ``retention_drop <= 0.02``.
        rho: Spearman's rho of validation loss against the value; None below 3 points or without variation.
        ci: 95 % percentile bootstrap interval of ``rho`` (:data:`~lorahpo.report.stats.RESAMPLES` resamples).
    """

    name: str
    points: list[tuple[int, float, float]]
    base: float | None
    bound: float | None
    constraint: str | None
    rho: float | None
    ci: tuple[float, float] | None

    @property
    def missing_reason(self) -> str | None:
        """Why ``rho`` is None: too few trials, or all losses or all values equal."""
        if self.rho is not None:
            return None
        return "fewer than 3 trials" if len(self.points) < 3 else "no variation"


def evaluator_summaries(
    names: Iterable[str], trials: Iterable[_Trial], constraints: Mapping[str, float]
) -> list[EvaluatorSummary]:
    """One :class:`EvaluatorSummary` per evaluator name, over the complete ``trials``."""
    complete = [t for t in trials if t.status == "complete"]
    return [_summary(name, complete, constraints) for name in names]


def _summary(name: str, trials: list[_Trial], constraints: Mapping[str, float]) -> EvaluatorSummary:
    points = [(t.number, t.metrics[LOSS], t.metrics[name]) for t in trials if LOSS in t.metrics and name in t.metrics]
    # Every trial measures the same base model; the first report of it stands for all.
    base = next((t.metrics[f"{name}_base"] for t in trials if f"{name}_base" in t.metrics), None)
    bound, constraint = None, None
    if f"{name}_drop" in constraints:
        limit = constraints[f"{name}_drop"]
        constraint = f"{name}_drop <= {limit:g}"
        bound = base - limit if base is not None else None
    elif name in constraints:
        bound = constraints[name]
        constraint = f"{name} <= {bound:g}"
    losses, values = [p[1] for p in points], [p[2] for p in points]
    return EvaluatorSummary(name, points, base, bound, constraint, spearman(losses, values),
                            spearman_ci(losses, values))
