"""Cheap objectives with known optima, for trying lorahpo in seconds and for its own tests.

``lora_surface`` imitates the shape of validation loss over the paper's LoRA space (a valley in
log learning rate that shifts with alpha/rank, a mild optimum in rank, a penalty for heavy
dropout), so studies on it behave like real ones without any training.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

from lorahpo import result


def lora_surface(params: dict[str, Any]) -> dict[str, float]:
    """A synthetic validation loss over rank, alpha, dropout and learning_rate (minimum ~1.2)."""
    rank = float(params.get("rank", 8))
    alpha = float(params.get("alpha", 16))
    dropout = float(params.get("dropout", 0.05))
    lr = float(params.get("learning_rate", 2e-4))
    scale = alpha / rank
    # The best learning rate falls as the adapter's scale grows (updates are scaled by alpha/r).
    best_log_lr = -3.7 - 0.5 * math.log10(max(scale, 1e-3))
    loss = 1.2 + 0.35 * (math.log10(lr) - best_log_lr) ** 2
    loss += 0.04 * (math.log2(rank) - 4) ** 2 / 4
    loss += 0.6 * dropout**2 + (0.5 if dropout >= 1.0 else 0.0)
    return {"validation_loss": loss, "trainable_params": 4 * 2 * rank * 576 * 30}


def sphere(params: dict[str, Any]) -> float:
    """Sum of squares of all numeric parameters (minimum 0 at the origin)."""
    return float(sum(float(v) ** 2 for v in params.values()))


def timed_sphere(params: dict[str, Any]) -> float:
    """:func:`sphere` after sleeping ``$LORAHPO_TOY_SLEEP_S`` seconds (default 1): a blackbox of known
    cost, for parallel runs and their benchmark."""
    time.sleep(float(os.environ.get("LORAHPO_TOY_SLEEP_S", "1")))
    return sphere(params)


def two_objectives(params: dict[str, Any]) -> dict[str, float]:
    """Two conflicting objectives with a known Pareto front, and a constraint metric.

    ``value`` = x^2 + y^2 and ``cost`` = (x - 2)^2 + (y - 2)^2: the Pareto-optimal points are
    x = y = t for t in [0, 2], where (value, cost) = (2 t^2, 2 (2 - t)^2). ``size`` = x + y.
    """
    x, y = float(params["x"]), float(params["y"])
    return {"value": x * x + y * y, "cost": (x - 2) ** 2 + (y - 2) ** 2, "size": x + y}


def learning_curve(params: dict[str, Any], report: Callable[..., bool] | None = None) -> float:
    """A loss curve with a known end: ``final + 2 / step`` over ``steps`` steps (default 8).

    ``final`` is :func:`sphere` of the parameters other than ``steps`` plus 1. Every curve
    falls by the same amount, so curves never cross: the order of trials at any step is the
    order of their final values, and a sound pruner never stops the best one. Each step's
    value goes to ``report`` (as a trial's validation loss would), the last one with ``final=True``
    when ``report`` takes it.
    """
    steps = int(params.pop("steps", 8))
    final = 1.0 + sphere(params)
    for step in range(1, steps + 1):
        if report is not None and result.report(report, step, final + 2.0 / step, final=step == steps):
            break
    return final + 2.0 / steps


def timed_learning_curve(params: dict[str, Any], report: Callable[..., bool] | None = None) -> float:
    """:func:`learning_curve` taking ``$LORAHPO_TOY_SLEEP_S`` seconds (default 1) spread over its
    steps, each step's share after its report (as a LoRA trial trains after a validation, and
    evaluates after its last): a trial stopped early ends early, measurably."""
    steps = int(params.get("steps", 8))
    pause = float(os.environ.get("LORAHPO_TOY_SLEEP_S", "1")) / steps

    def slow_report(step: int, value: float, final: bool = False) -> bool:
        stop = report is not None and result.report(report, step, value, final=final)
        time.sleep(pause)
        return stop

    return learning_curve(params, slow_report)


def forgetting(params: dict[str, Any]) -> dict[str, float]:
    """:func:`lora_surface` with a downstream score that falls as the adapter changes the model more.

    ``retention`` starts at the base model's 0.5 and drops with the size of the update, which
    grows with the learning rate and alpha/rank: the lowest validation losses (high learning
    rates) forget the most, as real fine-tunes do. ``retention_drop`` = 0.5 - ``retention``.
    """
    metrics = lora_surface(params)
    lr = float(params.get("learning_rate", 2e-4))
    scale = float(params.get("alpha", 16)) / float(params.get("rank", 8))
    update = lr * math.sqrt(scale) / 1e-3
    retention = 0.5 - 0.3 * update / (1 + update)
    return {**metrics, "retention": retention, "retention_base": 0.5, "retention_drop": 0.5 - retention}
