"""Rank correlation for the report: Spearman's rho and its bootstrap confidence interval.

numpy only (an Optuna dependency): scipy is not a lorahpo dependency.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Bootstrap resamples of :func:`spearman_ci`: enough for stable 2.5 % and 97.5 % percentiles.
RESAMPLES = 2000


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get their average rank); None below 3 points or without variation."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    return _rho(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float))


def spearman_ci(
    xs: Sequence[float], ys: Sequence[float], level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of :func:`spearman`, resampling ``(x, y)`` pairs.

    The seed is fixed so that a report is the same every time it is written. Resamples without
    variation (all pairs drawn the same) have no rho and are left out.

    Returns:
        ``(low, high)``, or None where :func:`spearman` is None.
    """
    if spearman(xs, ys) is None:
        return None
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(x), size=(resamples, len(x)))
    rhos = [rho for idx in draws if (rho := _rho(x[idx], y[idx])) is not None]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(rhos, [tail, 100 - tail])
    return float(low), float(high)


def _rho(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's correlation of the ranks; None when either side has no variation."""
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    vx, vy = float(rx @ rx), float(ry @ ry)
    if vx == 0 or vy == 0:
        return None
    return float(rx @ ry / np.sqrt(vx * vy))


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1; tied values share the average of the ranks they span."""
    _, group, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the highest rank of each group of equal values
    return (last - (counts - 1) / 2)[group]
