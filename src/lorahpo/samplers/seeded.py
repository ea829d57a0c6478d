"""Per-trial seeding for Optuna's stateless samplers, so a resumed study repeats itself.

Optuna's TPE, random and grid samplers keep no state but their random generator, which advances
with every trial: a study resumed in a new process would draw different points than an
uninterrupted one. :class:`TrialSeededSampler` gives the ``n``-th trial a fresh inner sampler
seeded with :func:`trial_seed` ``(seed, n)``, where ``n`` counts the trials before it that were
not interrupted (an interrupted trial is evaluated again under the same seed). The per-trial
seeds of different study seeds are unrelated: ``seed + n`` would make the study with seed 2
repeat the one with seed 0, two trials later. Everything else the sampler
needs, it reads from the study.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from lorahpo.samplers.nomad import INTERRUPTED_ATTR


class TrialSeededSampler(BaseSampler):
    """Wraps ``factory(seed) -> sampler``; the ``n``-th trial is sampled by ``factory(trial_seed(seed, n))``."""

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int = 0) -> None:
        self._factory = factory
        self._seed = seed
        self._inner: dict[int, BaseSampler] = {}

    def _for(self, study: Study, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._inner:
            earlier = study.get_trials(deepcopy=False)[: trial.number]
            n = sum(not t.system_attrs.get(INTERRUPTED_ATTR) for t in earlier)
            self._inner[trial.number] = self._factory(trial_seed(self._seed, n))
        return self._inner[trial.number]

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._for(study, trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._for(study, trial).before_trial(study, trial)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._for(study, trial).after_trial(study, trial, state, values)
        self._inner.pop(trial.number, None)

    def reseed_rng(self) -> None:
        """Nothing to do: every trial is seeded from the study seed and its number."""


def trial_seed(seed: int, n: int) -> int:
    """The seed of the ``n``-th trial of a study seeded with ``seed``: a hash of both."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, n]).generate_state(1)[0])
