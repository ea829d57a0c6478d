"""Learning-curve extrapolation: where a trial's curve is heading, and a pruner that acts on it.

:class:`CurvePruner` (``pruner: curve``) fits a small ensemble of parametric curves to a running
trial's intermediate values and stops the trial when even the most hopeful member of the
ensemble predicts a final value worse than the ``top_k``-th best complete trial's, by more
than ``margin``. Asking all members to agree makes the rule cautious: one curve family that
fits badly cannot stop a good trial, only keep a bad one running longer.

The ensemble (``x`` is the step, ``s`` the last step reported):

- ``power``: ``a + b * x^-c`` (the classic power law of learning curves);
- ``exponential``: ``a + b * exp(-c * x / s)`` (a curve levelling off quickly);
- ``inverse_log``: ``a + b / log(x + 1)`` (a slow, logarithmic approach).

The module imports Optuna: :mod:`lorahpo.pruners` loads it only when ``pruner: curve`` is made.

Each is linear in ``a`` and ``b`` once ``c`` is fixed, so it is fitted by linear least squares at
each ``c`` of a fixed grid and the best ``c`` kept. That needs only numpy, always finds the
global fit on the grid, and gives the same answer on every machine: no start point, no
convergence to check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

Basis = Callable[[np.ndarray, float, float], np.ndarray]  # (steps, c, last step) -> the non-constant term

_POWER_C = np.linspace(0.05, 3.0, 60)
_EXP_C = np.linspace(0.1, 10.0, 100)
_MODELS: dict[str, tuple[Basis, np.ndarray]] = {
    "power": (lambda x, c, s: x**-c, _POWER_C),
    "exponential": (lambda x, c, s: np.exp(-c * x / s), _EXP_C),
    "inverse_log": (lambda x, c, s: 1.0 / np.log(x + 1.0), np.array([1.0])),
}
#: The curve families of the ensemble.
MODELS = tuple(_MODELS)


def fit(steps: Sequence[float], values: Sequence[float], model: str) -> Callable[[float], float]:
    """The least-squares curve of family ``model`` through ``(steps, values)``, as a function of the step.

    Steps must be positive; at least two points are needed.
    """
    basis, grid = _MODELS[model]
    x = np.asarray(steps, dtype=float)
    y = np.asarray(values, dtype=float)
    last = float(x.max())
    best: tuple[float, float, float, float] | None = None  # (error, a, b, c)
    for c in grid:
        design = np.column_stack([np.ones_like(x), basis(x, float(c), last)])
        (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
        error = float(np.sum((design @ np.array([a, b]) - y) ** 2))
        if best is None or error < best[0] - 1e-12:
            best = (error, float(a), float(b), float(c))
    assert best is not None
    _, a, b, c = best
    return lambda step: a + b * float(basis(np.array([float(step)]), c, last)[0])


def predictions(steps: Sequence[float], values: Sequence[float], final_step: float) -> dict[str, float]:
    """Each family's prediction of the value at ``final_step``, from a curve measured at ``steps``."""
    out = {}
    for model in MODELS:
        value = fit(steps, values, model)(final_step)
        if math.isfinite(value):
            out[model] = value
    return out


class CurvePruner(BasePruner):
    """Stops a trial whose curve, extrapolated to the end, cannot reach the best complete trials.

    Args:
        min_points: Finite reports a trial needs before it can be stopped (at least 3: the
            curves have three parameters).
        top_k: The trial is compared with the ``top_k``-th best final value among complete
            trials that meet their constraints; nothing is stopped until ``top_k`` such trials
            are complete. 1 stops whatever
            will not beat the best; a larger k keeps more trials that may come close.
        margin: Relative slack: stop only when the most hopeful prediction is worse than that
            reference by more than ``margin`` times its magnitude (0.01: 1% worse).
        final_step: The step at which trials end. Default: the last step of the longest
            complete trial.
    """

    def __init__(
        self, min_points: int = 4, top_k: int = 1, margin: float = 0.0, final_step: int | None = None
    ) -> None:
        _check_integer("min_points", min_points, 3)
        _check_integer("top_k", top_k, 1)
        if final_step is not None:
            _check_integer("final_step", final_step, 1)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < math.inf:
            raise ValueError(f"margin must be a number >= 0, got {margin!r}")
        self.min_points = min_points
        self.top_k = top_k
        self.margin = float(margin)
        self.final_step = final_step

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Whether to stop ``trial`` now (Optuna's pruner interface)."""
        curve = sorted((s, v) for s, v in trial.intermediate_values.items() if s > 0 and math.isfinite(v))
        if len(curve) < self.min_points:
            return False
        # The reference: complete trials that meet their constraints (one that breaks them cannot
        # be the best, so it must not set the bar a trial has to reach).
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.values and all(c <= 0 for c in t.constraints.values())]
        if len(complete) < self.top_k:
            return False
        final_step = self.final_step or max((t.last_step or 0 for t in complete), default=0)
        if max(trial.intermediate_values) >= final_step:  # its last report, finite or not
            return False  # at its end already: nothing to extrapolate, nothing to save
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0  # costs: lower is better
        reference = sorted(sign * t.values[0] for t in complete)[self.top_k - 1]
        predicted = predictions([s for s, _ in curve], [v for _, v in curve], final_step)
        if not predicted:
            return False
        hopeful = min(sign * v for v in predicted.values())
        return hopeful > reference + self.margin * abs(reference)


def _check_integer(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
