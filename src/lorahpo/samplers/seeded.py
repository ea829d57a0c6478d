"""Per-trial seeding for Optuna's stateless samplers, so a resumed study repeats itself.

Optuna's TPE, random and grid samplers keep no state but their random generator, which advances
with every trial: a study resumed in a new process would draw different points than an
uninterrupted one. :class:`TrialSeededSampler` gives each trial a fresh inner sampler seeded
with :func:`trial_seed` ``(seed, n)``. The per-trial seeds of different study seeds are
unrelated: ``seed + n`` would make the study with seed 2 repeat the one with seed 0, two trials
later. Everything else the sampler needs, it reads from the study.

``n`` (the trial's *index*, kept in the store) is the smallest index that no other trial holds,
interrupted trials excepted: an interrupted trial is evaluated again under the same seed, and
no two evaluated trials share one (so random search never repeats a point). Index 0 is the
starting point ``x0``. When several processes ask trials of one study at once (``shared``), the
index is the trial's number instead: the store numbers trials without races, and an
interrupted trial is not repeated.
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

#: System attribute of a trial: its index (see the module's docstring).
INDEX_ATTR = "lorahpo:seed_index"


class TrialSeededSampler(BaseSampler):
    """Wraps ``factory(seed) -> sampler``; the trial of index ``n`` is sampled by ``factory(trial_seed(seed, n))``.

    With ``x0``, the trial of index 0 evaluates ``x0`` instead.
    """

    def __init__(
        self,
        factory: Callable[[int], BaseSampler],
        seed: int = 0,
        *,
        x0: dict[str, Any] | None = None,
        shared: bool = False,
    ) -> None:
        self._factory = factory
        self._seed = seed
        self._x0 = x0
        self._shared = shared
        self._inner: dict[int, tuple[int, BaseSampler]] = {}  # trial number -> (index, sampler)

    def _for(self, study: Study, trial: FrozenTrial) -> BaseSampler:
        return self._entry(study, trial)[1]

    def _entry(self, study: Study, trial: FrozenTrial) -> tuple[int, BaseSampler]:
        if trial.number not in self._inner:
            n = trial.system_attrs.get(INDEX_ATTR)
            if n is None:
                n = trial.number if self._shared else _free_index(study, trial)
                study._storage.set_trial_system_attr(trial._trial_id, INDEX_ATTR, n)
            self._inner[trial.number] = (n, self._factory(trial_seed(self._seed, n)))
        return self._inner[trial.number]

    def _at_x0(self, study: Study, trial: FrozenTrial) -> bool:
        return self._x0 is not None and self._entry(study, trial)[0] == 0

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self._at_x0(study, trial):
            return {}
        return self._for(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if self._at_x0(study, trial) and self._x0 is not None and param_name in self._x0:
            return self._x0[param_name]
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


def _free_index(study: Study, trial: FrozenTrial) -> int:
    """The smallest index no other trial holds, interrupted trials excepted."""
    taken = {
        t.system_attrs.get(INDEX_ATTR)
        for t in study.get_trials(deepcopy=False)
        if t.number != trial.number and not t.system_attrs.get(INTERRUPTED_ATTR)
    }
    return next(n for n in range(len(taken) + 1) if n not in taken)


def trial_seed(seed: int, n: int) -> int:
    """The seed of the ``n``-th trial of a study seeded with ``seed``: a hash of both."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, n]).generate_state(1)[0])
