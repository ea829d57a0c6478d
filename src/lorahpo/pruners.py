"""Early stopping: Optuna pruners by name.

A trial reports ``(step, value)`` of its objective while it runs (a LoRA trial: the validation
loss every ``training.eval_every`` steps, or each epoch). The reports reach the study through
its executor (``Executor.reports``); the study records them in the store (``trial.report``),
asks its pruner, and gives the executor its verdict (``Executor.decide``). A trial to stop is
ended at once, so its GPU is free for the next one; it is recorded as ``pruned`` with its last
reported value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Optuna takes 0.2 s to import: only when a pruner is made
    import optuna

PRUNERS = ("none", "median", "asha", "hyperband", "curve")


def make_pruner(name: str, options: dict[str, Any] | None = None) -> optuna.pruners.BasePruner:
    """The pruner called ``name``: none, median, asha (successive halving), hyperband, curve.

    ``options`` are the keyword arguments of Optuna's ``NopPruner``, ``MedianPruner``,
    ``SuccessiveHalvingPruner`` or ``HyperbandPruner``, or of lorahpo's learning-curve
    extrapolation, :class:`lorahpo.curves.CurvePruner`.

    Raises:
        ValueError: Unknown name or bad options.
    """
    import optuna

    classes: dict[str, type[optuna.pruners.BasePruner]] = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "asha": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }
    if name == "curve":
        from lorahpo.curves import CurvePruner

        classes["curve"] = CurvePruner
    if name not in classes:
        raise ValueError(f"unknown pruner {name!r}; choose from {', '.join(PRUNERS)}")
    try:
        return classes[name](**(options or {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: {e}") from None
