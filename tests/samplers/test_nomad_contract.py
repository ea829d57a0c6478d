"""NomadSampler keeps Optuna's sampler contract in plain Optuna studies, as an Optuna user runs it.

One test per way a plain study can meet the sampler: fixed parameters, trials evaluated away
from NOMAD's point, more pending trials than the block, pickling, small discrete spaces,
``reseed_rng``, and the NOMAD process's files.
"""

import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import joblib
import optuna
import PyNomad
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import PartialFixedSampler
from optuna.trial import TrialState

from lorahpo import NomadSampler
from lorahpo.samplers.nomad import FALLBACK_ATTR, MAX_SEARCHES, POINT_ATTR

SPACE = {"a": IntDistribution(0, 10), "b": FloatDistribution(-2.0, 2.0), "c": FloatDistribution(-3.0, 3.0)}
X0 = {"a": 1, "b": 0.0, "c": 0.0}
SRC = Path(__file__).resolve().parents[2] / "src"


def f(a, b, c):
    return (a - 3) ** 2 + (b - 0.5) ** 2 + (c + 1) ** 2 + 0.1 * a * b


def objective(trial):
    return f(trial.suggest_int("a", 0, 10), trial.suggest_float("b", -2, 2), trial.suggest_float("c", -3, 3))


def native_points(n, seed=0):
    """The points native PyNomad.optimize evaluates on ``f`` with the sampler's own problem."""
    points = []

    def bb(x):
        p = tuple(x.get_coord(i) for i in range(x.size()))
        points.append(p)
        x.setBBO(repr(f(*p)).encode())
        return 1

    x0, lower, upper, params = NomadSampler(SPACE, x0=X0, seed=seed).nomad_problem()
    PyNomad.optimize(bb, x0, lower, upper, [*params, f"MAX_BB_EVAL {n}"])
    return points


def evaluated_at_its_point(trial):
    """Whether the trial carries a NOMAD point and was evaluated at exactly that point."""
    point = trial.system_attrs.get(POINT_ATTR)
    if point is None or set(trial.params) != set(SPACE):
        return False
    return (trial.params["a"], trial.params["b"], trial.params["c"]) == (int(point[0]), point[1], point[2])


def answered(study):
    """NOMAD's points in the order their trials finished at them."""
    return [tuple(t.system_attrs[POINT_ATTR]) for t in study.trials if evaluated_at_its_point(t)]


# 1 ------------------------------------------------------------------------- fixed parameters


def test_partial_fixed_sampler_searches_the_other_parameters_with_nomad():
    sampler = NomadSampler(SPACE, x0=X0, seed=0)
    study = optuna.create_study(sampler=PartialFixedSampler({"a": 3}, sampler))
    study.optimize(objective, n_trials=30)  # main: "a was sampled by sample_relative ... not contained"
    assert all(t.state == TrialState.COMPLETE and t.params["a"] == 3 for t in study.trials)
    # Every trial is NOMAD's (no random fallback), at its point, with a fixed at 3.
    for t in study.trials:
        assert FALLBACK_ATTR not in t.system_attrs
        point = t.system_attrs[POINT_ATTR]
        assert point[0] == 3 and (t.params["b"], t.params["c"]) == (point[1], point[2])
    assert len({(t.params["b"], t.params["c"]) for t in study.trials}) == 30
    assert study.best_params["b"] == pytest.approx(0.35, abs=0.05)  # argmin of f over b, c with a = 3
    assert study.best_params["c"] == pytest.approx(-1.0, abs=0.05)


def test_sample_relative_returns_exactly_the_keys_it_is_given():
    sampler = NomadSampler(SPACE, x0=X0, seed=0)
    study = optuna.create_study(sampler=sampler)
    trial = study.ask()
    given = {"b": SPACE["b"], "c": SPACE["c"]}
    assert set(sampler.sample_relative(study, study._storage.get_trial(trial._trial_id), given)) == {"b", "c"}


def test_an_enqueued_partial_point_fixes_its_values_and_nomad_chooses_the_rest():
    sampler = NomadSampler(SPACE, x0=X0, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=5)
    study.enqueue_trial({"a": 7})
    study.optimize(objective, n_trials=1)
    enqueued = study.trials[-1]
    assert enqueued.params["a"] == 7
    point = enqueued.system_attrs[POINT_ATTR]  # main: no NOMAD point, b and c were random
    assert point[0] == 7 and (enqueued.params["b"], enqueued.params["c"]) == (point[1], point[2])
    # The main search goes on as if the enqueued trial had not been there.
    study.optimize(objective, n_trials=10)
    main = [tuple(t.system_attrs[POINT_ATTR]) for t in study.trials if t.number != 5 and evaluated_at_its_point(t)]
    assert main == native_points(15)


def test_many_sets_of_fixed_values_keep_a_few_nomad_processes_and_the_main_search_exact():
    sampler = NomadSampler(SPACE, x0=X0, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=5)
    for a in range(4, 10):  # six searches with a fixed: the main one ends, and resumes from the study
        study.enqueue_trial({"a": a})
        study.optimize(objective, n_trials=1)
        assert len(sampler._searches) <= MAX_SEARCHES
    study.optimize(objective, n_trials=10)
    sampler.close()
    main = [tuple(t.system_attrs[POINT_ATTR]) for t in study.trials if not 5 <= t.number < 11]
    assert main == native_points(15)
    assert [t.params["a"] for t in study.trials[5:11]] == list(range(4, 10))


def test_an_enqueued_value_outside_the_space_is_an_explicit_fallback():
    study = optuna.create_study(sampler=NomadSampler(SPACE, x0=X0, seed=0))
    study.enqueue_trial({"a": 50})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.params["a"] == 50 and trial.system_attrs[FALLBACK_ATTR] == "outside"
    assert POINT_ATTR not in trial.system_attrs
    assert any("outside the sampler's space" in str(w.message) for w in caught)


# 2 ---------------------------------------------------- a trial evaluated away from NOMAD's point


def test_nomad_is_told_only_values_measured_at_its_points():
    """Trials whose objective samples b elsewhere (another range) never answer NOMAD's point."""

    def sometimes_elsewhere(trial):
        if trial.number < 5 or trial.number % 4 == 3:  # a dynamic space: b drawn from another range
            return (trial.suggest_int("a", 0, 10) - 3) ** 2 + trial.suggest_float("b", 20, 30)
        return objective(trial)

    study = optuna.create_study(sampler=NomadSampler(SPACE, x0=X0, seed=0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(sometimes_elsewhere, n_trials=60)
    points = answered(study)
    assert len(points) >= 40
    # NOMAD saw only honest values: its trajectory is native NOMAD's, point for point, and the
    # point of a trial evaluated elsewhere was proposed again (x0 first, after 5 such trials).
    assert study.trials[5].params == X0
    assert points == native_points(len(points))
    assert sum("evaluated away from" in str(w.message) for w in caught) == 1  # said once, not silently


# 3 --------------------------------------------------------- more pending trials than the block


def test_any_number_of_pending_trials_gets_nomad_points():
    sampler = NomadSampler(SPACE, x0=X0, seed=0)  # block_size 1
    study = optuna.create_study(sampler=sampler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            pending = [study.ask(SPACE) for _ in range(11)]
            for t in pending:
                study.tell(t, f(t.params["a"], t.params["b"], t.params["c"]))
    frozen = study.trials
    assert all(POINT_ATTR in t.system_attrs and FALLBACK_ATTR not in t.system_attrs for t in frozen)
    points = [tuple(t.system_attrs[POINT_ATTR]) for t in frozen]
    assert len(set(points)) == 44  # no point handed out twice
    assert not [w for w in caught if "random" in str(w.message)]
    assert study.best_value < 1.0


def test_n_jobs_above_the_block_size_runs_nomad_points_only():
    study = optuna.create_study(sampler=NomadSampler(SPACE, x0=X0, seed=0, block_size=2))
    study.optimize(objective, n_trials=40, n_jobs=4)
    assert len(study.trials) == 40
    assert all(evaluated_at_its_point(t) and FALLBACK_ATTR not in t.system_attrs for t in study.trials)
    assert len(set(answered(study))) == 40


# 4 ------------------------------------------------------------------------------------ pickling


def test_the_sampler_and_the_study_pickle_and_resume_like_a_new_sampler(tmp_path):
    uninterrupted = optuna.create_study(sampler=NomadSampler(SPACE, x0=X0, seed=3))
    uninterrupted.optimize(objective, n_trials=30)

    study = optuna.create_study(sampler=NomadSampler(SPACE, x0=X0, seed=3))
    study.optimize(objective, n_trials=12)
    copy = pickle.loads(pickle.dumps(study.sampler))  # main: cannot pickle '_thread.RLock' object
    assert isinstance(copy, NomadSampler)
    joblib.dump(study, tmp_path / "study.pkl")  # as Optuna's FAQ saves a study
    study.sampler.close()
    restored = joblib.load(tmp_path / "study.pkl")
    restored.optimize(objective, n_trials=18)
    restored.sampler.close()
    assert answered(restored) == answered(uninterrupted)


# 5 --------------------------------------------------------------------- small discrete spaces


CHOICES = ["a", "b", "c", "d", "e", "f", "g", "h"]


@pytest.mark.parametrize(
    "dist, size, suggest",
    [
        (IntDistribution(1, 12), 12, lambda t: t.suggest_int("p", 1, 12)),
        (FloatDistribution(0.0, 2.0, step=0.1), 21, lambda t: t.suggest_float("p", 0.0, 2.0, step=0.1) * 10),
        (CategoricalDistribution(CHOICES), 8, lambda t: CHOICES.index(t.suggest_categorical("p", CHOICES))),
        (IntDistribution(1, 10, log=True), 10, lambda t: t.suggest_int("p", 1, 10, log=True)),
    ],
    ids=["int", "stepped-float", "categorical", "log-int"],
)
def test_a_small_one_dimensional_space_is_searched_to_its_last_point(dist, size, suggest):
    sampler = NomadSampler({"p": dist}, seed=0)
    study = optuna.create_study(sampler=sampler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(lambda t: (suggest(t) - 5) ** 2, n_trials=size + 1)
    assert not [w for w in caught if "NOMAD ended with an error" in str(w.message)]
    first = study.trials[:size]
    assert all(POINT_ATTR in t.system_attrs for t in first)  # NOMAD's points, not random ones
    assert len({t.params["p"] for t in first}) == size  # every value, each once
    assert sampler.exhausted and study.trials[-1].system_attrs[FALLBACK_ATTR] == "exhausted"
    assert sum("exhausted" in str(w.message) for w in caught) == 1


# 6 ------------------------------------------------------------------------------- reseed_rng


def test_reseed_rng_before_nomad_starts_changes_its_seed_and_after_changes_nothing():
    def points(reseed_at):
        sampler = NomadSampler(SPACE, x0=X0, seed=0)
        study = optuna.create_study(sampler=sampler)
        for n in range(25):
            if n == reseed_at:
                sampler.reseed_rng()
            study.optimize(objective, n_trials=1)
        sampler.close()
        return answered(study)

    plain = points(reseed_at=None)
    assert points(reseed_at=0) != plain  # main: NOMAD's seed never changed
    assert points(reseed_at=10) == plain  # NOMAD runs on with the seed it started with


# 7 --------------------------------------------------------------------- the process's files


def test_a_study_leaves_no_resource_warning():
    script = textwrap.dedent(
        """
        import gc, optuna
        from optuna.distributions import CategoricalDistribution, FloatDistribution
        from lorahpo import NomadSampler
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        # A continuous space, closed by hand, and a small categorical one that NOMAD finishes
        # and restarts several times, left to the garbage collector.
        space = {"x": FloatDistribution(-1, 1), "y": FloatDistribution(-1, 1)}
        study = optuna.create_study(sampler=NomadSampler(space, seed=0))
        study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2 + t.suggest_float("y", -1, 1) ** 2, n_trials=30)
        study.sampler.close()
        choices = CategoricalDistribution(list("abcdef"))
        study = optuna.create_study(sampler=NomadSampler({"c": choices}, seed=0))
        study.optimize(lambda t: "abcdef".index(t.suggest_categorical("c", list("abcdef"))), n_trials=30)
        del study
        gc.collect()
        print("done")
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr
    assert "ResourceWarning" not in done.stderr and "unclosed" not in done.stderr, done.stderr

