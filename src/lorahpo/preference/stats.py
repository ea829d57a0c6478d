"""Statistics of preference votes: win rates, Bradley–Terry ranking, rater agreement, votes needed.

Pure functions of a list of :class:`~lorahpo.preference.store.Vote`; the web page and the
terminal both show :func:`summarise`, so they always print the same numbers.

Conventions:

* A tie counts as half a win for each model, in win rates and in the Bradley–Terry fit alike.
* The bootstrap is seeded, so the same votes always give the same confidence intervals.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from lorahpo.preference.store import Vote


@dataclass(frozen=True)
class WinRate:
    """How often a model's answer was preferred.

    Attributes:
        model: Model name.
        wins: Votes for this model.
        ties: Tied votes involving this model.
        losses: Votes for its opponent.
        rate: ``(wins + ties / 2) / votes``.
        low: Lower end of the bootstrap confidence interval of ``rate``.
        high: Upper end of the bootstrap confidence interval of ``rate``.
    """

    model: str
    wins: int
    ties: int
    losses: int
    rate: float
    low: float
    high: float

    @property
    def votes(self) -> int:
        """Votes on pairs that include this model."""
        return self.wins + self.ties + self.losses


@dataclass(frozen=True)
class Strength:
    """A model's Bradley–Terry strength; strengths sum to 1 over all models."""

    rank: int
    model: str
    strength: float


@dataclass(frozen=True)
class Agreement:
    """How often a rater agreed with the other raters (see :func:`rater_agreement`)."""

    rater: str
    votes: int
    items: int
    agreed: int

    @property
    def rate(self) -> float | None:
        """Share of comparable items where the rater agreed; None when there are none."""
        return self.agreed / self.items if self.items else None


@dataclass(frozen=True)
class Alpha:
    """Krippendorff's alpha of the votes (see :func:`krippendorff_alpha`).

    Attributes:
        value: Alpha, or None when it is undefined (fewer than two values on shared items, or
            all of them alike).
        items: Items judged by at least two raters (the only ones alpha uses).
        values: Votes on those items.
    """

    value: float | None
    items: int
    values: int


@dataclass(frozen=True)
class VotesNeeded:
    """Votes a model needs so that a true win rate of ``rate`` is told apart from 50%."""

    rate: float
    votes: int


#: True win rates for which the results show the votes needed (:func:`votes_needed`).
TARGET_RATES = (0.55, 0.6, 0.65, 0.7, 0.75, 0.8)


@dataclass(frozen=True)
class Summary:
    """Everything the results page and ``lorahpo preference results`` show."""

    votes: int
    raters: int
    win_rates: list[WinRate]
    ranking: list[Strength]
    agreement: list[Agreement]
    alpha: Alpha
    votes_needed: list[VotesNeeded]


def _scores(votes: list[Vote], models: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per model and vote: the model's score (1, 0.5 or 0) and whether it took part (0/1)."""
    score = np.zeros((len(models), len(votes)))
    played = np.zeros((len(models), len(votes)))
    index = {model: i for i, model in enumerate(models)}
    for j, vote in enumerate(votes):
        for model in (vote.left, vote.right):
            played[index[model], j] = 1
            score[index[model], j] = 0.5 if vote.winner is None else float(vote.winner == model)
    return score, played


def win_rates(votes: list[Vote], *, n_boot: int = 2000, seed: int = 0) -> list[WinRate]:
    """Win rate of every model, with a 95% percentile bootstrap confidence interval.

    Each bootstrap replicate draws ``len(votes)`` votes with replacement (all models at once,
    so the replicate is a plausible repeat of the whole survey) and recomputes every rate;
    the interval is the central 95% of the replicates (``numpy.percentile``, linear
    interpolation). A replicate with no vote on a model is left out for that model.

    Args:
        votes: The votes.
        n_boot: Number of bootstrap replicates.
        seed: Seed of ``numpy.random.default_rng``.

    Returns:
        One entry per model, best rate first (then by name).
    """
    models = sorted({m for v in votes for m in (v.left, v.right)})
    if not models:
        return []
    score, played = _scores(votes, models)
    rng = np.random.default_rng(seed)
    replicates = np.empty((n_boot, len(models)))
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 -> nan: model absent from a replicate
        for b in range(n_boot):
            idx = rng.integers(0, len(votes), len(votes))
            replicates[b] = score[:, idx].sum(axis=1) / played[:, idx].sum(axis=1)
    low, high = np.nanpercentile(replicates, [2.5, 97.5], axis=0)

    rates = []
    for i, model in enumerate(models):
        mine = score[i][played[i] == 1]
        rates.append(
            WinRate(
                model=model,
                wins=int((mine == 1).sum()),
                ties=int((mine == 0.5).sum()),
                losses=int((mine == 0).sum()),
                rate=float(mine.mean()),
                low=float(low[i]),
                high=float(high[i]),
            )
        )
    return sorted(rates, key=lambda r: (-r.rate, r.model))


def bradley_terry(votes: list[Vote]) -> list[Strength]:
    """Bradley–Terry strengths by the MM algorithm of Hunter (2004).

    The model says ``P(i beats j) = p_i / (p_i + p_j)``. The MM update is
    ``p_i <- W_i / sum_j n_ij / (p_i + p_j)``, with ``W_i`` the wins of ``i`` and ``n_ij`` the
    votes between ``i`` and ``j``; strengths are rescaled to sum to 1 after each step. A tie
    counts as half a win for each side, which keeps the likelihood of a tie-free fit.

    The maximum-likelihood strengths are all positive and finite only when, however the models
    are split into two groups, each group has won (or tied) against the other at least once
    (Hunter's condition). Otherwise the fit sits on the boundary: a model that never won gets
    0 and one that never lost heads towards 1, which still orders them correctly.

    The fit stops when no strength changes by more than 1e-12 in one step, or after 2000 steps
    (only a fit that heads for the boundary needs them all).

    Args:
        votes: The votes.

    Returns:
        One entry per model, strongest first (then by name).
    """
    models = sorted({m for v in votes for m in (v.left, v.right)})
    if not models:
        return []
    index = {model: i for i, model in enumerate(models)}
    wins = np.zeros(len(models))
    games = np.zeros((len(models), len(models)))
    for vote in votes:
        i, j = index[vote.left], index[vote.right]
        games[i, j] += 1
        games[j, i] += 1
        if vote.winner is None:
            wins[i] += 0.5
            wins[j] += 0.5
        else:
            wins[index[vote.winner]] += 1

    p = np.full(len(models), 1 / len(models))
    for _ in range(2000):
        # Only pairs that met count. A model that never won has p = 0, but each of its opponents
        # won against it, so p_i + p_j > 0 wherever n_ij > 0.
        total = p[:, None] + p[None, :]
        new = wins / np.divide(games, total, out=np.zeros_like(games), where=games > 0).sum(axis=1)
        new /= new.sum()
        converged = np.abs(new - p).max() < 1e-12
        p = new
        if converged:
            break
    order = sorted(range(len(models)), key=lambda i: (-p[i], models[i]))
    return [Strength(rank=r, model=models[i], strength=float(p[i])) for r, i in enumerate(order, 1)]


def rater_agreement(votes: list[Vote]) -> list[Agreement]:
    """How often each rater agrees with the majority of the other raters.

    An item is a prompt with an unordered pair of models, and its outcome is the preferred model
    or a tie (so left/right order does not matter). For each rater and each item they judged
    (their latest vote if they judged it more than once), the other raters' most frequent
    outcome is the majority; the item counts for this rater when that majority is unique (no
    other rater, or two outcomes equally frequent, leave the item out), and it is agreed when
    the rater's outcome equals it. Agreement is agreed items / counted items.

    Returns:
        One entry per rater, by name.
    """
    latest: dict[tuple[str, str, str], dict[str, str | None]] = defaultdict(dict)
    for vote in votes:  # oldest first, so a later vote replaces an earlier one
        latest[vote.item][vote.rater] = vote.winner
    n_votes = Counter(v.rater for v in votes)
    counted: Counter[str] = Counter()
    agreed: Counter[str] = Counter()
    for outcomes in latest.values():
        for rater, mine in outcomes.items():
            others = Counter(o for r, o in outcomes.items() if r != rater).most_common(2)
            if not others or (len(others) == 2 and others[0][1] == others[1][1]):
                continue
            counted[rater] += 1
            agreed[rater] += others[0][0] == mine
    return [Agreement(rater, n_votes[rater], counted[rater], agreed[rater]) for rater in sorted(n_votes)]


def krippendorff_alpha(votes: list[Vote]) -> Alpha:
    """Agreement of all raters beyond chance: Krippendorff's alpha for nominal data.

    A unit is an item (a prompt and an unordered pair of models) and a rater's value is the
    outcome they chose, coded as the alphabetically first model, the second one or a tie (a
    rater's latest vote, if several). Alpha handles any number of raters per item: only items
    with two or more values count. With ``o[c][k]`` the coincidences (over items ``u`` with
    ``m_u`` values, each ordered pair of values from different raters adds ``1 / (m_u - 1)``),
    ``n_c`` their row sums and ``n`` their total,
    ``alpha = 1 - (n - 1) * sum_{c != k} o[c][k] / sum_{c != k} n_c * n_k``
    (Krippendorff, *Computing Krippendorff's Alpha-Reliability*, 2011). 1 is perfect
    agreement, 0 agreement by chance alone; it is undefined when all values are alike.
    """
    latest: dict[tuple[str, str, str], dict[str, str]] = defaultdict(dict)
    for vote in votes:  # oldest first, so a later vote replaces an earlier one
        winner = vote.winner
        latest[vote.item][vote.rater] = "tie" if winner is None else ("first" if winner == vote.item[1] else "second")
    codes = ("first", "second", "tie")
    coincidences = np.zeros((3, 3))
    shared = [list(outcomes.values()) for outcomes in latest.values() if len(outcomes) >= 2]
    for values in shared:
        counts = np.array([values.count(code) for code in codes], dtype=float)
        coincidences += (np.outer(counts, counts) - np.diag(counts)) / (len(values) - 1)
    n_c = coincidences.sum(axis=1)
    n = n_c.sum()
    observed = coincidences.sum() - np.trace(coincidences)
    expected = n_c.sum() ** 2 - (n_c**2).sum()
    value = None if n < 2 or expected == 0 else float(1 - (n - 1) * observed / expected)
    return Alpha(value=value, items=len(shared), values=int(n))


def votes_needed(rate: float, *, baseline: float = 0.5, confidence: float = 0.95, power: float = 0.8) -> int:
    """Votes on a model needed to tell a true win rate ``rate`` from ``baseline``.

    The one-sample test of a proportion, normal approximation, two-sided at ``confidence``:
    ``n = ((z_(1 - a/2) sqrt(p0 (1 - p0)) + z_power sqrt(p (1 - p))) / (p - p0))^2``, rounded up,
    with ``a = 1 - confidence``. It treats votes as independent yes/no outcomes; ties, which
    count half, only lower the variance, so the number errs on the safe side.
    For 60% against 50%: 194 votes.
    """
    if not 0 < rate < 1 or rate == baseline:
        raise ValueError(f"rate must lie in (0, 1) and differ from the baseline {baseline}, not {rate}")
    z = NormalDist()
    spread = z.inv_cdf(1 - (1 - confidence) / 2) * math.sqrt(baseline * (1 - baseline))
    spread += z.inv_cdf(power) * math.sqrt(rate * (1 - rate))
    return math.ceil((spread / (rate - baseline)) ** 2 - 1e-9)  # - 1e-9: an exact integer stays itself


def summarise(votes: list[Vote], *, n_boot: int = 2000, seed: int = 0) -> Summary:
    """All statistics of the votes, as shown on the results page and in the terminal."""
    return Summary(
        votes=len(votes),
        raters=len({v.rater for v in votes}),
        win_rates=win_rates(votes, n_boot=n_boot, seed=seed),
        ranking=bradley_terry(votes),
        agreement=rater_agreement(votes),
        alpha=krippendorff_alpha(votes),
        votes_needed=[VotesNeeded(rate, votes_needed(rate)) for rate in TARGET_RATES],
    )


def votes_csv(votes: list[Vote]) -> str:
    """The votes as CSV, one row each, with the preferred model spelled out (empty for a tie)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "time", "rater", "prompt_id", "left_model", "right_model", "choice", "winner"])
    for v in votes:
        writer.writerow([v.id, v.time, v.rater, v.prompt_id, v.left, v.right, v.choice, v.winner or ""])
    return out.getvalue()


def percent(value: float | None) -> str:
    """A share as the pages print it: ``62.5%``, or an en dash for no value."""
    return "–" if value is None or np.isnan(value) else f"{100 * value:.1f}%"
