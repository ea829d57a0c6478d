"""NomadSampler: faithful to PyNomad, parallel blocks, failures, replay, exhaustion."""

import math
import os
import warnings

import optuna
import PyNomad
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from lorahpo import NomadSampler
from lorahpo.samplers.nomad import POINT_ATTR

MIXED = {"a": IntDistribution(0, 10), "b": FloatDistribution(-2.0, 2.0), "c": FloatDistribution(-3.0, 3.0)}
X0 = {"a": 1, "b": 0.0, "c": 0.0}


def f(a, b, c):
    return (a - 3) ** 2 + (b - 0.5) ** 2 + (c + 1) ** 2 + 0.1 * a * b


def objective(trial):
    return f(trial.suggest_int("a", 0, 10), trial.suggest_float("b", -2, 2), trial.suggest_float("c", -3, 3))


def native_sequence(sampler, n, fn=lambda p: f(*p)):
    """The points PyNomad.optimize evaluates, with the sampler's own problem definition."""
    evaluated = []

    def bb(x):
        p = tuple(x.get_coord(i) for i in range(x.size()))
        evaluated.append(p)
        x.setBBO(repr(fn(p)).encode())
        return 1

    x0, lower, upper, params = sampler.nomad_problem()
    PyNomad.optimize(bb, x0, lower, upper, params + [f"MAX_BB_EVAL {n}"])
    return evaluated


def study_sequence(study):
    return [tuple(t.system_attrs[POINT_ATTR]) for t in study.trials]


@pytest.mark.parametrize("seed", [0, 7])
def test_sequence_equals_native_pynomad(seed):
    sampler = NomadSampler(MIXED, x0=X0, seed=seed)
    expected = native_sequence(NomadSampler(MIXED, x0=X0, seed=seed), 80)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=80)
    assert len(expected) == 80
    assert study_sequence(study) == expected
    assert study.best_value < 0.5  # and it optimises: the minimum is about -0.15


def test_params_decode_to_the_distributions():
    sampler = NomadSampler(MIXED, x0=X0, seed=1)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=20)
    for t in study.trials:
        assert isinstance(t.params["a"], int) and 0 <= t.params["a"] <= 10
        assert -2 <= t.params["b"] <= 2 and -3 <= t.params["c"] <= 3
        a, b, c = t.system_attrs[POINT_ATTR]
        assert (t.params["a"], t.params["b"], t.params["c"]) == (int(a), b, c)


def test_encoded_types_categorical_log_and_step():
    space = {
        "rank": CategoricalDistribution([4, 8, 16, 32, 64, 128]),
        "lr": FloatDistribution(1e-6, 1e-3, log=True),
        "alpha": IntDistribution(2, 64, step=2),
        "frac": FloatDistribution(0.1, 1.0, step=0.1),
    }
    sampler = NomadSampler(space, x0={"rank": 8, "lr": 1e-5, "alpha": 32, "frac": 0.5}, seed=0)
    assert sampler.nomad_problem()[0] == [2, -5.0, 16, 5]
    assert "BB_INPUT_TYPE ( I R I I )" in sampler.nomad_problem()[3]

    def obj(t):
        rank = t.suggest_categorical("rank", [4, 8, 16, 32, 64, 128])
        lr = t.suggest_float("lr", 1e-6, 1e-3, log=True)
        alpha = t.suggest_int("alpha", 2, 64, step=2)
        frac = t.suggest_float("frac", 0.1, 1.0, step=0.1)
        return (math.log10(lr) + 4) ** 2 + abs(alpha / rank - 2) + (frac - 0.7) ** 2

    study = optuna.create_study(sampler=sampler)
    study.optimize(obj, n_trials=60)
    first = study.trials[0].params
    assert first == {"rank": 8, "lr": pytest.approx(1e-5), "alpha": 32, "frac": pytest.approx(0.5)}
    for t in study.trials:
        assert t.params["alpha"] % 2 == 0 and t.params["rank"] in (4, 8, 16, 32, 64, 128)
    assert study.best_value < 0.6


def test_parallel_blocks_hand_out_no_point_twice():
    sampler = NomadSampler(MIXED, x0=X0, seed=0, block_size=4)
    study = optuna.create_study(sampler=sampler)
    seen, concurrent_max = [], 0
    while len(study.trials) < 60:
        batch = []
        while sampler.ready(study):
            batch.append(study.ask(MIXED))
        assert batch, "NOMAD proposed nothing although no trial is running"
        if not seen:  # the first block: x0 and 3 more starting points, not x0 alone
            assert len(batch) == 4 and batch[0].params == X0
        concurrent_max = max(concurrent_max, len(batch))
        for t in batch:
            seen.append(tuple(study._storage.get_trial(t._trial_id).system_attrs[POINT_ATTR]))
        for t in reversed(batch):  # results arrive in any order
            study.tell(t, f(t.params["a"], t.params["b"], t.params["c"]))
    assert len(seen) == len(set(seen))
    assert 1 < concurrent_max <= 4
    assert study.best_value < 1.0


def test_block_result_is_order_independent():
    """Within a block NOMAD waits for every result, so the order of tells does not matter."""
    runs = []
    for reverse in (False, True):
        sampler = NomadSampler(MIXED, x0=X0, seed=3, block_size=3)
        study = optuna.create_study(sampler=sampler)
        while len(study.trials) < 30:
            batch = []
            while sampler.ready(study):
                batch.append(study.ask(MIXED))
            for t in reversed(batch) if reverse else batch:
                study.tell(t, f(t.params["a"], t.params["b"], t.params["c"]))
        runs.append(sorted(map(tuple, (t.params.values() for t in study.trials))))
    assert runs[0] == runs[1]


def test_failed_and_pruned_trials_are_failed_points_and_nomad_goes_on():
    sampler = NomadSampler(MIXED, x0=X0, seed=0)
    study = optuna.create_study(sampler=sampler)

    def flaky(trial):
        value = objective(trial)
        if trial.number % 3 == 1:
            raise RuntimeError("simulated crash")
        if trial.number % 3 == 2 and trial.number > 10:
            raise optuna.TrialPruned()
        return value

    study.optimize(flaky, n_trials=60, catch=(RuntimeError,))
    states = [t.state for t in study.trials]
    assert len(states) == 60
    assert states.count(TrialState.FAIL) == 20 and TrialState.PRUNED in states
    points = study_sequence(study)
    assert len(points) == len(set(points))
    assert study.best_value < 1.0


def test_a_failing_start_point_does_not_stop_the_search():
    sampler = NomadSampler(MIXED, x0=X0, seed=0)
    study = optuna.create_study(sampler=sampler)

    def fails_at_x0(trial):
        value = objective(trial)
        if trial.number == 0:
            raise RuntimeError("x0 crashed")
        return value

    study.optimize(fails_at_x0, n_trials=25, catch=(RuntimeError,))
    assert len(study.trials) == 25
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 24


def test_new_sampler_replays_the_store_and_continues_exactly():
    full = optuna.create_study(sampler=NomadSampler(MIXED, x0=X0, seed=5))
    full.optimize(objective, n_trials=50)

    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(storage=storage, study_name="s", sampler=NomadSampler(MIXED, x0=X0, seed=5))
    first.optimize(objective, n_trials=23)
    first.sampler.close()
    resumed = optuna.load_study(storage=storage, study_name="s", sampler=NomadSampler(MIXED, x0=X0, seed=5))
    resumed.optimize(objective, n_trials=27)
    assert study_sequence(resumed) == study_sequence(full)


def test_a_study_resumed_on_another_cpu_knows_its_points_one_ulp_off():
    """NOMAD's arithmetic may differ in the last bits between CPUs: stored points still count."""
    full = optuna.create_study(sampler=NomadSampler(MIXED, x0=X0, seed=5))
    full.optimize(objective, n_trials=40)

    first = optuna.create_study(sampler=NomadSampler(MIXED, x0=X0, seed=5))
    first.optimize(objective, n_trials=23)
    first.sampler.close()
    elsewhere = optuna.create_study()  # the same trials, every nonzero real one ulp off
    for t in first.trials:
        point = [x and math.nextafter(x, math.inf) for x in t.system_attrs[POINT_ATTR]]
        elsewhere.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.value,
                                                      system_attrs={POINT_ATTR: point}))
    assert study_sequence(elsewhere) != study_sequence(first)
    elsewhere.sampler = NomadSampler(MIXED, x0=X0, seed=5)
    elsewhere.optimize(objective, n_trials=17)
    assert study_sequence(elsewhere)[23:] == study_sequence(full)[23:]


def test_restart_policy_when_nomad_converges_early():
    # A small integer space (28 points): NOMAD converges, is restarted from the best point with
    # the next seed, then from points not tried yet; once every point is tried, it is exhausted.
    space = {"i": IntDistribution(0, 6), "j": IntDistribution(0, 3)}
    sampler = NomadSampler(space, x0={"i": 0, "j": 3}, seed=0)
    study = optuna.create_study(sampler=sampler)
    proposed = []
    for _ in range(60):
        if not sampler.ready(study):
            break
        t = study.ask(space)
        proposed.append((t.params["i"], t.params["j"]))
        study.tell(t, (t.params["i"] - 4) ** 2 + (t.params["j"] - 1) ** 2)
    assert sampler.exhausted
    assert len(proposed) == len(set(proposed)) == 28
    assert (4, 1) in proposed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = study.ask(space)  # plain Optuna users get a random point and a warning
    assert 0 <= t.params["i"] <= 6
    assert any("exhausted" in str(w.message) for w in caught)


def test_restarts_continue_past_nomad_convergence_on_a_continuous_space():
    space = {"x": FloatDistribution(-1.0, 1.0), "y": FloatDistribution(-1.0, 1.0)}
    sampler = NomadSampler(space, seed=0, nomad_params=["MIN_FRAME_SIZE * 0.01"])
    study = optuna.create_study(sampler=sampler)
    study.optimize(
        lambda t: (t.suggest_float("x", -1, 1) - 0.3141) ** 2 + (t.suggest_float("y", -1, 1) + 0.2718) ** 2,
        n_trials=120,
    )
    assert len(study.trials) == 120
    assert not sampler.exhausted
    points = study_sequence(study)
    assert len(points) == len(set(points))
    assert study.best_value < 1e-3


def test_maximize_is_negated_for_nomad():
    space = {"x": FloatDistribution(-3.0, 3.0)}
    study = optuna.create_study(direction="maximize", sampler=NomadSampler(space, x0={"x": -2.0}, seed=0))
    study.optimize(lambda t: -((t.suggest_float("x", -3, 3) - 1.5) ** 2), n_trials=40)
    assert study.best_params["x"] == pytest.approx(1.5, abs=0.05)


def test_enqueued_trials_keep_their_params_and_unknown_params_are_random():
    space = {"x": FloatDistribution(-3.0, 3.0)}
    study = optuna.create_study(sampler=NomadSampler(space, seed=0))
    study.enqueue_trial({"x": 2.5})
    t = study.ask()
    assert t.suggest_float("x", -3, 3) == 2.5
    assert 0 <= t.suggest_int("other", 0, 5) <= 5  # outside the NOMAD space: independent sampling
    study.tell(t, 1.0)
    study.optimize(lambda t: t.suggest_float("x", -3, 3) ** 2, n_trials=10)
    assert len(study.trials) == 11


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"search_space": {}}, "non-empty"),
        ({"search_space": MIXED, "block_size": 0}, "block_size"),
        ({"search_space": MIXED, "x0": {"a": 1}}, "lacks"),
        ({"search_space": MIXED, "x0": {"a": 11, "b": 0.0, "c": 0.0}}, "outside"),
        ({"search_space": {"i": IntDistribution(0, 3), "j": IntDistribution(0, 3)}, "x0": {"i": 0, "j": 0}}, "origin"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NomadSampler(**kwargs)


def test_a_multi_objective_study_runs_dmultimads():
    sampler = NomadSampler(MIXED, x0=X0)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
    study.optimize(
        lambda t: (t.suggest_int("a", 0, 10), t.suggest_float("b", -2.0, 2.0) + t.suggest_float("c", -3.0, 3.0)),
        n_trials=5,
    )
    sampler.close()
    params = sampler._params(0, 1)
    assert "BB_OUTPUT_TYPE OBJ OBJ" in params and "DMULTIMADS_OPTIMIZATION yes" in params
    assert "DIRECTION_TYPE ORTHO 2N" in params
    assert len({tuple(t.params.values()) for t in study.trials}) == 5


def test_nomad_process_is_out_of_reach_of_the_studys_ctrl_c():
    # NOMAD ends its run on SIGINT; a Ctrl-C sent to the study's process group must not reach it
    # (the search would quietly restart elsewhere): the NOMAD process has a session of its own.
    sampler = NomadSampler(MIXED, x0=X0, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=2)
    proc = sampler._searches[()].process
    try:
        assert proc.poll() is None and os.getsid(proc.pid) == proc.pid != os.getsid(0)
    finally:
        sampler.close()


def test_a_study_with_hyperband_resumes_from_every_bracket_exactly():
    # Optuna shows a sampler only the trials of the asking trial's Hyperband bracket; a new NOMAD
    # sampler still replays every trial of the store, or it would propose points evaluated in
    # other brackets again. (A Hyperband pruner that has not judged a trial yet has no brackets:
    # here the study goes on with the pruner it started with.)
    def reporting(trial):
        value = objective(trial)
        trial.report(value, 1)
        trial.should_prune()  # sets Hyperband's brackets up; the verdict is not needed here
        return value

    def study(storage, pruner):
        return optuna.create_study(storage=storage, study_name="s", pruner=pruner, load_if_exists=True,
                                   sampler=NomadSampler(MIXED, x0=X0, seed=5))

    def hyperband():
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=4, reduction_factor=2)

    full = study(optuna.storages.InMemoryStorage(), hyperband())
    full.optimize(reporting, n_trials=30)
    storage, pruner = optuna.storages.InMemoryStorage(), hyperband()
    first = study(storage, pruner)
    first.optimize(reporting, n_trials=15)
    first.sampler.close()
    resumed = study(storage, pruner)
    resumed.optimize(reporting, n_trials=15)
    assert study_sequence(resumed) == study_sequence(full)
