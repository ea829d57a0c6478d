"""Cheap objectives with known optima, for trying lorahpo in seconds and for its own tests.

``lora_surface`` imitates the shape of validation loss over the paper's LoRA space (a valley in
log learning rate that shifts with alpha/rank, a mild optimum in rank, a penalty for heavy
dropout), so studies on it behave like real ones without any training.
"""

from __future__ import annotations

import math
import time
from typing import Any


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


def slow_sphere(params: dict[str, Any]) -> float:
    """:func:`sphere` after sleeping ``params['sleep']`` seconds (default 1): for parallel tests."""
    time.sleep(float(params.pop("sleep", 1.0)))
    return sphere(params)
