"""Spearman's rho and its bootstrap confidence interval, on examples worked out by hand."""

from __future__ import annotations

import math

import pytest

from lorahpo.report.stats import spearman, spearman_ci


def test_spearman_uses_ranks_and_averages_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 1, 0, -5]) == pytest.approx(-1.0)
    # ranks x: 1 2 3 4, y with a tie: 1 2.5 2.5 4 -> Pearson of the ranks
    assert spearman([1, 2, 3, 4], [5, 7, 7, 9]) == pytest.approx(4.5 / math.sqrt(5 * 4.5))
    assert spearman([1, 2], [2, 1]) is None  # too few points
    assert spearman([1, 2, 3], [4, 4, 4]) is None  # no variation


def test_rho_and_its_interval_on_a_hand_made_example():
    # Two neighbouring pairs swapped: rank differences -1, 1, -1, 1, 0, so
    # rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 4 / (5 * 24) = 0.8.
    losses, scores = [1.0, 2.0, 3.0, 4.0, 5.0], [0.2, 0.1, 0.4, 0.3, 0.5]
    assert spearman(losses, scores) == pytest.approx(0.8)
    low, high = spearman_ci(losses, scores)
    assert -1 <= low < 0.8 < high <= 1
    assert spearman_ci(losses, scores) == (low, high)  # a fixed seed: the same report every time


def test_the_interval_is_a_point_for_a_perfect_order_and_narrows_with_more_data():
    assert spearman_ci([1, 2, 3, 4], [10, 20, 30, 40]) == (1.0, 1.0)  # every resample keeps the order
    assert spearman_ci([1, 2], [2, 1]) is None
    few = spearman_ci([1.0, 2.0, 3.0, 4.0, 5.0], [0.2, 0.1, 0.4, 0.3, 0.5])
    # The same pattern (neighbours swapped) repeated along a longer axis: same trend, more evidence.
    xs = [float(i) for i in range(40)]
    ys = [float(i + 1 if i % 2 == 0 else i - 1) for i in range(40)]
    many = spearman_ci(xs, ys)
    assert few is not None and many is not None
    assert many[1] - many[0] < few[1] - few[0]
    assert many[0] > 0.9
