"""Optimizers by name, their options, and per-trial seeding."""

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import QMCSampler

from lorahpo import NomadSampler
from lorahpo.result import INTERRUPTED_ATTR
from lorahpo.samplers import make_sampler
from lorahpo.samplers.registry import grid_values
from lorahpo.samplers.seeded import TrialSeededSampler

SPACE = {"x": FloatDistribution(-1, 1), "k": IntDistribution(0, 3)}


def test_names():
    assert isinstance(make_sampler("nomad", SPACE, parallel=3), NomadSampler)
    for name in ("tpe", "random"):
        assert isinstance(make_sampler(name, SPACE), TrialSeededSampler)
    assert isinstance(make_sampler("optuna.samplers:QMCSampler", SPACE), QMCSampler)
    assert isinstance(make_sampler("optuna.samplers.QMCSampler", SPACE, options={"scramble": True}), QMCSampler)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("annealing", None, "unknown optimizer"),
        ("tpe", {"n_startup": 3}, "unknown tpe options"),
        ("nomad", {"block": 2}, "unknown nomad options"),
        ("grid", None, "continuous"),
        ("os:path", None, "not an Optuna sampler"),
    ],
)
def test_errors(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_sampler(name, SPACE, options=options)


def test_grid_values_and_limit():
    grid = grid_values({"r": CategoricalDistribution([4, 8]), "a": IntDistribution(1, 5, step=2),
                        "f": FloatDistribution(0.0, 1.0, step=0.5)})
    assert grid == {"r": [4, 8], "a": [1, 3, 5], "f": [0.0, 0.5, 1.0]}
    with pytest.raises(ValueError, match="more than"):
        grid_values({"a": IntDistribution(0, 1000), "b": IntDistribution(0, 1000)})


def _run(sampler, n, interrupt_at=None):
    study = optuna.create_study(sampler=sampler)
    points = []
    while len(points) < n:
        t = study.ask(SPACE)
        if t.number == interrupt_at:
            study._storage.set_trial_system_attr(t._trial_id, INTERRUPTED_ATTR, True)
            study.tell(t, state=optuna.trial.TrialState.FAIL)
            continue
        points.append(dict(t.params))
        study.tell(t, t.params["x"] ** 2 + t.params["k"])
    return points


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_trial_seeding_is_reproducible_and_skips_interrupted_trials(name):
    a = _run(make_sampler(name, SPACE, seed=3), 14)
    b = _run(make_sampler(name, SPACE, seed=3), 14)
    c = _run(make_sampler(name, SPACE, seed=3), 14, interrupt_at=5)
    assert a == b == c
    assert a != _run(make_sampler(name, SPACE, seed=4), 14)


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_different_seeds_give_unrelated_sequences(name):
    # Not the same points shifted: per-trial seeds of seed 0 and seed 2 must not coincide.
    a = _run(make_sampler(name, SPACE, seed=0), 12)
    b = _run(make_sampler(name, SPACE, seed=2), 12)
    assert not any(p in a for p in b)


def test_an_interrupted_trial_behind_finished_ones_repeats_no_point():
    # Two trials at once: trial 3 is interrupted after trials 4 and 5 have finished; the point
    # of index 3 is evaluated again, once, and no finished point comes back.
    study = optuna.create_study(sampler=make_sampler("random", SPACE, seed=1))
    held = study.ask(SPACE)  # trial 0, held running
    trials = [study.ask(SPACE) for _ in range(5)]  # trials 1-5
    for t in trials:
        study.tell(t, 0.0)
    study._storage.set_trial_system_attr(held._trial_id, INTERRUPTED_ATTR, True)
    study.tell(held, state=optuna.trial.TrialState.FAIL)
    again = [study.ask(SPACE) for _ in range(3)]
    points = [tuple(t.params.values()) for t in trials + again]
    assert len(set(points)) == len(points)
    assert again[0].params == held.params  # index 0 is x0-free here: the interrupted point itself


def test_x0_is_the_first_trial_and_shared_studies_seed_by_number():
    x0 = {"x": 0.25, "k": 2}
    study = optuna.create_study(sampler=make_sampler("tpe", SPACE, seed=1, x0=x0))
    assert study.ask(SPACE).params == x0
    shared = optuna.create_study(sampler=make_sampler("random", SPACE, seed=1, x0=x0, shared=True))
    first, second = shared.ask(SPACE), shared.ask(SPACE)
    shared._storage.set_trial_system_attr(first._trial_id, INTERRUPTED_ATTR, True)
    shared.tell(first, state=optuna.trial.TrialState.FAIL)
    third = shared.ask(SPACE)
    assert first.params == x0 and len({tuple(t.params.values()) for t in (first, second, third)}) == 3
