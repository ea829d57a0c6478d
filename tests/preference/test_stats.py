"""Statistics of votes, checked against values computed by hand."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from lorahpo.preference.stats import (
    bradley_terry,
    krippendorff_alpha,
    percent,
    rater_agreement,
    summarise,
    votes_csv,
    votes_needed,
    win_rates,
)

from .conftest import vote


def _votes(outcomes: list[tuple[str, str, str]]) -> list:
    return [vote("r", f"p{i}", left, right, choice, id=i) for i, (left, right, choice) in enumerate(outcomes)]


def test_win_rate_counts_ties_as_half_and_bootstrap_matches_hand_rolled_computation():
    # A wins twice (once shown on each side), one tie, B wins once.
    votes = _votes([("A", "B", "A"), ("B", "A", "B"), ("A", "B", "tie"), ("A", "B", "B")])
    rates = {r.model: r for r in win_rates(votes, n_boot=500, seed=7)}

    a, b = rates["A"], rates["B"]
    assert (a.wins, a.ties, a.losses, a.votes) == (2, 1, 1, 4)
    assert a.rate == pytest.approx(2.5 / 4) and b.rate == pytest.approx(1.5 / 4)

    # The same bootstrap by hand: resample the 4 votes, A's mean score per replicate.
    scores_a = np.array([1.0, 1.0, 0.5, 0.0])
    rng = np.random.default_rng(7)
    replicates = [scores_a[rng.integers(0, 4, 4)].mean() for _ in range(500)]
    low, high = np.percentile(replicates, [2.5, 97.5])
    assert (a.low, a.high) == pytest.approx((low, high))
    assert a.low <= a.rate <= a.high and b.low <= b.rate <= b.high
    # Two models share every vote, so B's interval mirrors A's.
    assert (b.low, b.high) == pytest.approx((1 - a.high, 1 - a.low))


def test_bootstrap_interval_of_two_split_votes_is_closed_form():
    # Replicates of one win and one loss give 0, 1/2, 1 with chance 1/4, 1/2, 1/4:
    # the 2.5% and 97.5% percentiles are exactly 0 and 1.
    rates = {r.model: r for r in win_rates(_votes([("A", "B", "A"), ("A", "B", "B")]), n_boot=2000, seed=0)}
    assert (rates["A"].low, rates["A"].rate, rates["A"].high) == (0.0, 0.5, 1.0)


def test_unanimous_votes_give_a_degenerate_interval():
    rates = win_rates(_votes([("A", "B", "A"), ("B", "A", "B"), ("A", "B", "A")]))
    assert [(r.model, r.rate, r.low, r.high) for r in rates] == [("A", 1.0, 1.0, 1.0), ("B", 0.0, 0.0, 0.0)]


def test_bootstrap_ignores_replicates_without_a_model_and_is_seeded():
    votes = _votes([("A", "B", "A"), ("A", "B", "B"), ("A", "B", "A"), ("A", "C", "B")])
    first, again = win_rates(votes, seed=3), win_rates(votes, seed=3)
    assert first == again
    c = next(r for r in first if r.model == "C")
    assert (c.rate, c.low, c.high) == (1.0, 1.0, 1.0)  # C won its only vote in every replicate that has it
    assert win_rates([]) == []


def test_bradley_terry_recovers_strengths_that_fit_the_counts_exactly():
    # Strengths 4 : 2 : 1 predict A beats B 2/3, A beats C 4/5, B beats C 2/3 of the time; with
    # exactly those counts the expected wins equal the observed ones, so 4:2:1 is the MLE.
    outcomes = [("A", "B", "A")] * 2 + [("A", "B", "B")] + [("A", "C", "A")] * 4 + [("C", "A", "A")]
    outcomes += [("B", "C", "A")] * 2 + [("B", "C", "B")]
    ranking = bradley_terry(_votes(outcomes))
    assert [(s.rank, s.model) for s in ranking] == [(1, "A"), (2, "B"), (3, "C")]
    assert [s.strength for s in ranking] == pytest.approx([4 / 7, 2 / 7, 1 / 7], abs=1e-9)


def test_bradley_terry_two_models_closed_form_with_a_tie_as_half_win():
    # p_A / p_B = W_A / W_B = 1.5 / 0.5 for one win of A and one tie.
    ranking = bradley_terry(_votes([("A", "B", "A"), ("B", "A", "tie")]))
    assert [(s.model, s.strength) for s in ranking] == [("A", pytest.approx(0.75)), ("B", pytest.approx(0.25))]


def test_bradley_terry_symmetric_cycle_and_a_model_that_never_wins():
    cycle = bradley_terry(_votes([("A", "B", "A"), ("B", "C", "A"), ("C", "A", "A")]))
    assert [s.strength for s in cycle] == pytest.approx([1 / 3] * 3)

    never = bradley_terry(_votes([("A", "B", "A"), ("A", "C", "A"), ("B", "C", "A"), ("C", "B", "B")]))
    assert [s.model for s in never] == ["A", "B", "C"]
    assert never[0].strength > 0.99 and sum(s.strength for s in never) == pytest.approx(1)


def test_rater_agreement_with_the_majority_of_other_raters():
    votes = [
        # q1, A vs B: r1 and r2 prefer A (r2 saw it on the right), r3 first A then B.
        vote("r1", "q1", "A", "B", "A", id=1),
        vote("r2", "q1", "B", "A", "B", id=2),
        vote("r3", "q1", "A", "B", "A", id=3),
        vote("r3", "q1", "B", "A", "A", id=4),  # r3's latest vote on q1: B
        # q2, A vs B: r1 and r2 both call it a tie.
        vote("r1", "q2", "A", "B", "tie", id=5),
        vote("r2", "q2", "B", "A", "tie", id=6),
        # q3, A vs C: only r1; no other rater to agree with.
        vote("r1", "q3", "A", "C", "A", id=7),
    ]
    # q1: for r1 the others are split (A by r2, B by r3): no majority, not counted; same for r2.
    # For r3 the others say A twice: counted, disagreed. q2: r1 and r2 agree with each other.
    result = {a.rater: (a.votes, a.items, a.agreed, a.rate) for a in rater_agreement(votes)}
    assert result == {"r1": (3, 1, 1, 1.0), "r2": (2, 1, 1, 1.0), "r3": (2, 1, 0, 0.0)}


def test_krippendorff_alpha_by_hand():
    votes = [
        # q1, A vs B: r1 and r2 prefer A (r2 saw it on the right), r3 prefers B.
        vote("r1", "q1", "A", "B", "A"),
        vote("r2", "q1", "B", "A", "B"),
        vote("r3", "q1", "A", "B", "B"),
        # q2: both call it a tie.
        vote("r1", "q2", "B", "A", "tie"),
        vote("r2", "q2", "A", "B", "tie"),
        # q3: one rater only, left out.
        vote("r1", "q3", "A", "C", "A"),
    ]
    # Coincidences (first, second, tie): q1 has values first, first, second (m = 3), giving
    # first-first 2/2, first-second 2/2, second-first 2/2; q2 gives tie-tie 2/1. Row sums
    # n = (2, 1, 2), total 5. Observed disagreement 2, expected sum n_c n_k = 25 - 9 = 16:
    # alpha = 1 - 4 * 2 / 16 = 0.5.
    alpha = krippendorff_alpha(votes)
    assert (alpha.value, alpha.items, alpha.values) == (pytest.approx(0.5), 2, 5)


def test_krippendorff_alpha_extremes():
    agree = [vote(r, p, "A", "B", c) for p, c in [("q1", "A"), ("q2", "B"), ("q3", "tie")] for r in ("r1", "r2")]
    assert krippendorff_alpha(agree).value == pytest.approx(1.0)
    # Each item split between its two raters: disagreement exceeds chance, alpha < 0.
    split = [vote("r1", p, "A", "B", "A") for p in ("q1", "q2")] + [vote("r2", p, "A", "B", "B") for p in ("q1", "q2")]
    assert krippendorff_alpha(split).value == pytest.approx(1 - 3 * 4 / 8)
    # Everyone always says A: no variation, alpha undefined; no shared items: undefined.
    assert krippendorff_alpha([vote(r, "q1", "A", "B", "A") for r in ("r1", "r2")]).value is None
    assert krippendorff_alpha(_votes([("A", "B", "A")])).value is None


def test_votes_needed_matches_the_normal_approximation():
    # (1.959964 * 0.5 + 0.841621 * sqrt(0.6 * 0.4)) / 0.1 = 13.923; squared 193.85 -> 194.
    assert votes_needed(0.6) == 194
    assert votes_needed(0.4) == 194  # symmetric about 50%
    assert votes_needed(0.7) == 47 and votes_needed(0.55) == 783
    assert votes_needed(0.6, power=0.5) == math.ceil((1.959964 * 0.5 / 0.1) ** 2)  # z_0.5 = 0
    with pytest.raises(ValueError):
        votes_needed(0.5)


def test_summary_and_csv_export():
    votes = _votes([("A", "B", "A"), ("B", "A", "tie")])
    summary = summarise(votes)
    assert (summary.votes, summary.raters) == (2, 1)
    assert [r.model for r in summary.win_rates] == [s.model for s in summary.ranking] == ["A", "B"]
    assert summary.alpha.value is None and [(n.rate, n.votes) for n in summary.votes_needed][1] == (0.6, 194)

    rows = list(csv.DictReader(io.StringIO(votes_csv(votes))))
    assert [(r["left_model"], r["right_model"], r["choice"], r["winner"]) for r in rows] == [
        ("A", "B", "A", "A"),
        ("B", "A", "tie", ""),
    ]


def test_percent_format():
    assert [percent(0.625), percent(1.0), percent(None), percent(float("nan"))] == ["62.5%", "100.0%", "–", "–"]
