"""Early stopping: trials report intermediate values, pruners stop the unpromising ones at once."""

import itertools
import math
import threading
import time

import optuna
import pytest

from lorahpo import config as cfg
from lorahpo import toys
from lorahpo.executors.intermediate import IntermediateReader, reporter
from lorahpo.executors.replay import Measurements, ReplayExecutor
from lorahpo.pruners import make_pruner
from lorahpo.samplers.nomad import EXTRAPOLATED_ATTR, NomadSampler
from lorahpo.study import Study

STEPS = 8  # of toys.learning_curve


def curve_config(optimizer, pruner, budget=10, **options):
    return cfg.parse(
        {
            "name": "curves",
            "optimizer": optimizer,
            "budget": budget,
            "pruner": pruner,
            "pruner_options": options,
            "space": {"params": {"x": {"type": "int", "low": -4, "high": 4, "x0": 3},
                                 "y": {"type": "int", "low": -4, "high": 4, "x0": -3}}},
            "objective": {"python": "lorahpo.toys:learning_curve"},
        }
    )


def final_value(params):
    return 1.0 + params["x"] ** 2 + params["y"] ** 2 + 2.0 / STEPS


# Over 20 s each; NOMAD, which is told where a stopped trial's curve would end, runs by default.
@pytest.mark.parametrize("optimizer", [pytest.param("random", marks=pytest.mark.slow), "nomad"])
def test_asha_stops_trials_early_and_keeps_the_true_best(tmp_path, optimizer):
    study = Study.open(tmp_path / "s", curve_config(optimizer, "asha", min_resource=1, reduction_factor=2))
    summary = study.run()
    assert summary.finished == 10
    trials = study.optuna_study.get_trials(deepcopy=False)
    records = {r.number: r for r in study.records()}
    pruned = [t for t in trials if records[t.number].status == "pruned"]
    complete = [t for t in trials if records[t.number].status == "complete"]
    assert pruned and complete
    for t in pruned:  # killed mid-curve, recorded with the last value it reported
        assert 1 <= len(t.intermediate_values) < STEPS
        assert t.value == t.intermediate_values[t.last_step]
        assert records[t.number].reason == "stopped early by the pruner"
    for t in complete:
        assert sorted(t.intermediate_values) == list(range(1, STEPS + 1))
        assert t.value == pytest.approx(final_value(t.params))
    # Curves never cross, so the trial with the best final value must never have been stopped.
    truly_best = min(trials, key=lambda t: final_value(t.params))
    assert records[truly_best.number].status == "complete"
    assert summary.best.value == pytest.approx(final_value(truly_best.params))


def test_without_a_pruner_every_trial_runs_to_the_end_and_reports(tmp_path):
    study = Study.open(tmp_path / "s", curve_config("random", "none", budget=4))
    study.run()
    trials = study.optuna_study.get_trials(deepcopy=False)
    assert [len(t.intermediate_values) for t in trials] == [STEPS] * 4
    assert all(r.status == "complete" for r in study.records())


@pytest.mark.slow  # 160 NOMAD trials; by default ASHA with NOMAD above covers a pruned NOMAD search
def test_nomad_with_pruning_still_reaches_the_optimum():
    # NOMAD is told where a pruned trial's curve would end, judged by the complete trials' curves.
    # That must not keep it from the known optimum (0, 0).
    dists = {n: optuna.distributions.IntDistribution(-6, 6) for n in ("x", "y")}
    results = {}
    for pruner in ("none", "median"):
        sampler = NomadSampler(dists, x0={"x": 5, "y": -4}, seed=1)
        stopper = make_pruner(pruner, {"n_startup_trials": 3}) if pruner != "none" else None
        study = optuna.create_study(sampler=sampler, pruner=stopper)

        def objective(trial):
            params = {"x": trial.suggest_int("x", -6, 6), "y": trial.suggest_int("y", -6, 6)}

            def report(step, value):
                trial.report(value, step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
                return False

            return toys.learning_curve(params, report)

        study.optimize(objective, n_trials=80)
        sampler.close()
        states = [t.state for t in study.trials]
        results[pruner] = (study.best_trial.params, study.best_value, states.count(optuna.trial.TrialState.PRUNED))
    assert results["median"][:2] == ({"x": 0, "y": 0}, 1.0 + 2.0 / STEPS)
    assert results["none"][:2] == results["median"][:2]
    assert results["median"][2] > 20  # the pruner did stop many trials


def test_reports_travel_through_the_trial_folder(tmp_path):
    reader = IntermediateReader(tmp_path)
    report = reporter(tmp_path, wait=False)
    assert reader.new() == []
    report(1, 3.5)
    report(2, 2.5)
    assert reader.new() == [(1, 3.5), (2, 2.5)]
    with (tmp_path / "intermediate.jsonl").open("a") as f:
        f.write('{"step": 3, "va')  # a line still being written waits for the next read
    assert reader.new() == []
    with (tmp_path / "intermediate.jsonl").open("a") as f:
        f.write('lue": 1.5}\n')
    assert reader.new() == [(3, 1.5)]


def test_the_final_report_is_marked_and_does_not_wait_for_a_verdict(tmp_path):
    reader = IntermediateReader(tmp_path)
    report = reporter(tmp_path, wait=True)
    threading.Timer(0.2, lambda: (reader.new(), reader.let_continue())).start()
    report(1, 2.0)  # waits until the study lets it go on
    assert not reader.final
    report(2, 1.5, final=True)  # no one answers: the last report does not wait
    assert reader.new() == [(2, 1.5)] and reader.final


def test_a_trial_is_never_stopped_for_its_last_report(tmp_path, monkeypatch):
    # The median rule at the last step only: every trial worse than the median before it would be
    # stopped there, while it still works (0.15 s after each report, as a LoRA trial evaluates
    # after its last validation), losing its final result. Its last report cannot stop it.
    monkeypatch.setenv("LORAHPO_TOY_SLEEP_S", str(0.15 * STEPS))
    conf = curve_config("random", "median", budget=4, n_startup_trials=1, n_warmup_steps=STEPS)
    conf.objective.python = "lorahpo.toys:timed_learning_curve"
    # The start point is the optimum: every later trial ends worse than the median before it.
    for name in ("x", "y"):
        conf.space.params[name].x0 = 0
    study = Study.open(tmp_path / "s", conf)
    study.run()
    records = study.records()
    assert records[0].params == {"x": 0, "y": 0} and all(r.value > records[0].value for r in records[1:])
    assert [r.status for r in records] == ["complete"] * 4
    trials = study.optuna_study.get_trials(deepcopy=False)
    assert all(sorted(t.intermediate_values) == list(range(1, STEPS + 1)) for t in trials)


def test_a_waiting_trial_goes_on_once_let_continue(tmp_path):
    reader = IntermediateReader(tmp_path)
    report = reporter(tmp_path, wait=True)
    thread = threading.Thread(target=report, args=(1, 3.5))
    thread.start()
    deadline = time.monotonic() + 10
    while not (reports := reader.new()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reports == [(1, 3.5)]
    thread.join(0.3)
    assert thread.is_alive()  # waits for the verdict
    reader.let_continue()
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.parametrize(
    "pruner, options, message",
    [
        ("sha", {}, "pruner: unknown pruner 'sha'; choose from none, median, asha, hyperband, curve"),
        ("asha", {"rungs": 3}, "pruner: asha: "),
        ("curve", {"min_points": 2}, "pruner: curve: min_points must be an integer >= 3, got 2"),
        ("curve", {"margin": -0.1}, "pruner: curve: margin must be a number >= 0, got -0.1"),
        ("curve", {"final_step": 2.5}, "pruner: curve: final_step must be an integer >= 1, got 2.5"),
        ("curve", {"confidence": 0.9}, "pruner: curve: "),
    ],
)
def test_bad_pruners_are_one_line_config_errors(pruner, options, message):
    with pytest.raises(cfg.ConfigError) as caught:
        curve_config("random", pruner, **options)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_learning_curve_ends_at_its_known_value():
    seen = []
    value = toys.learning_curve({"x": 1, "y": 2}, lambda s, v: seen.append((s, v)) or False)
    assert value == pytest.approx(6.25) and len(seen) == STEPS and seen[-1] == (STEPS, value)
    assert all(a[1] > b[1] for a, b in itertools.pairwise(seen))
    assert math.isclose(toys.learning_curve({"x": 0, "y": 0, "steps": 2}), 2.0)


def falling_curves(config, stop):
    """Replayed curves ending at 1 + x^2 + y^2, each falling by the same amount (they never cross)."""
    final = 1.0 + config["x"] ** 2 + config["y"] ** 2
    curve = []
    for step in range(1, STEPS + 1):
        curve.append([step, final + 2.0 / step - 2.0 / STEPS])
        if stop(*curve[-1]) and step < STEPS:
            return {"status": "stopped", "value": None, "reason": None, "duration_s": 0.0, "curve": curve}
    return {"status": "complete", "value": final, "reason": None, "duration_s": 0.0, "curve": curve}


def nomad_points(folder, pruner, **options):
    study = Study.open(folder, curve_config("nomad", pruner, budget=8, **options))
    study.run(executor=ReplayExecutor(Measurements(folder / "cache.jsonl"), blackbox=falling_curves))
    return study, [r.params for r in study.records()]


def test_nomad_is_told_where_a_pruned_trials_curve_would_end(tmp_path):
    # The curves fall by the same amount after each step, so the complete trials' curves tell the
    # pruned trials' final values exactly: NOMAD then searches as if nothing were pruned. Told a
    # pruned trial's early value instead, it takes good points stopped early for bad ones.
    _, unpruned = nomad_points(tmp_path / "none", "none")
    study, pruned = nomad_points(tmp_path / "asha", "asha", min_resource=1, reduction_factor=2)
    stopped = [t for t in study.optuna_study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert stopped
    for t in stopped:
        told = t.system_attrs[EXTRAPOLATED_ATTR]
        assert told is not None and told == pytest.approx(final_value(t.params) - 2.0 / STEPS)
        assert t.value > told  # the study records the value it reported last
    assert pruned == unpruned


def test_the_curve_pruner_stops_a_curve_heading_above_the_best_and_keeps_one_heading_below(tmp_path):
    # Trial 0 sets the bar (final 2); trial 1's curve heads for 33 and is stopped once it has
    # min_points reports; trial 2's heads for 1, below the bar, and runs to the end.
    conf = curve_config("random", "curve", budget=3, min_points=3)
    study = Study.open(tmp_path / "s", conf)
    for params in ({"x": 1, "y": 0}, {"x": 4, "y": 4}, {"x": 0, "y": 0}):
        study.optuna_study.enqueue_trial(params)
    study.run(executor=ReplayExecutor(Measurements(tmp_path / "cache.jsonl"), blackbox=falling_curves))
    trials = study.optuna_study.trials
    assert [r.status for r in study.records()] == ["complete", "pruned", "complete"]
    assert sorted(trials[1].intermediate_values) == [1, 2, 3]
    assert [t.value for t in (trials[0], trials[2])] == [pytest.approx(2.0), pytest.approx(1.0)]


def test_the_curve_pruner_waits_for_top_k_complete_trials(tmp_path):
    conf = curve_config("random", "curve", budget=3, min_points=3, top_k=3)
    study = Study.open(tmp_path / "s", conf)
    for params in ({"x": 0, "y": 0}, {"x": 4, "y": 4}, {"x": 4, "y": 3}):
        study.optuna_study.enqueue_trial(params)
    study.run(executor=ReplayExecutor(Measurements(tmp_path / "cache.jsonl"), blackbox=falling_curves))
    assert [r.status for r in study.records()] == ["complete"] * 3


def crossing_curves(config, stop):
    """Curves ``final + slope * (1/step - 1/STEPS)``: a steep one starts high and may end low."""
    final, slope = 1.0 + config["x"] ** 2 / 4, 1.0 + abs(config["y"])
    curve = []
    for step in range(1, STEPS + 1):
        curve.append([step, final + slope * (1.0 / step - 1.0 / STEPS)])
        if stop(*curve[-1]) and step < STEPS:
            return {"status": "stopped", "value": None, "reason": None, "duration_s": 0.0, "curve": curve}
    return {"status": "complete", "value": final, "reason": None, "duration_s": 0.0, "curve": curve}


@pytest.mark.parametrize(
    "pruner, options, second",
    [("asha", {"min_resource": 1, "reduction_factor": 2}, "pruned"), ("curve", {"min_points": 3}, "complete")],
)
def test_a_slow_starter_heading_below_the_best_is_kept_by_the_curve_pruner_only(tmp_path, pruner, options, second):
    # Trial 0 ends at 2.0 on a shallow curve; trial 1 starts far above it (5.63 at step 1, 2.29
    # at step 3, against 2.88 and 2.21) but ends at 1.25. ASHA compares the two at step 1 and
    # stops trial 1; the curve pruner sees where its curve is heading and lets it finish.
    study = Study.open(tmp_path / "s", curve_config("random", pruner, budget=2, **options))
    for params in ({"x": 2, "y": 0}, {"x": 1, "y": 4}):
        study.optuna_study.enqueue_trial(params)
    study.run(executor=ReplayExecutor(Measurements(tmp_path / "cache.jsonl"), blackbox=crossing_curves))
    assert [r.status for r in study.records()] == ["complete", second]
    if second == "complete":
        assert study.best(1)[0].value == pytest.approx(1.25)


def _complete_curves(changes):
    """Complete trials that report at steps 1, 2 and 4 and end ``changes`` below their value at step 1."""
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    return [optuna.trial.create_trial(params={"x": i / 10}, distributions=dist, value=2.0 + change,
                                      intermediate_values={1: 2.0, 2: 2.0 + change / 2, 4: 2.0 + change})
            for i, change in enumerate(changes)]


def _pruned_at_step_1(trials, pruner=None):
    """A NOMAD study holding ``trials``, then a trial pruned after reporting 3.0 at step 1; that trial."""
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study = optuna.create_study(study_name="s", sampler=NomadSampler(dist), pruner=pruner)
    study.add_trials(trials)
    study.enqueue_trial({"x": 0.95})
    trial = study.ask()
    trial.report(3.0, 1)
    if pruner is not None:
        trial.should_prune()  # Hyperband sets up its brackets on its first verdict
        others = {pruner._get_bracket_id(study, t) for t in study.trials[:-1]}
        assert pruner._get_bracket_id(study, study.trials[-1]) not in others
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return study.trials[-1]


def test_nomad_extrapolates_from_every_complete_trial_whatever_the_hyperband_bracket():
    # Optuna shows a sampler only the trials of the trial's own Hyperband bracket; the pruned
    # trial's curve is still judged by every complete curve of the study. Trial 8 is alone in
    # its bracket: judged by its bracket, it would be a failed evaluation for NOMAD.
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=4, reduction_factor=2)
    pruned = _pruned_at_step_1(_complete_curves([-0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8]), pruner)
    assert pruned.system_attrs[EXTRAPOLATED_ATTR] == pytest.approx(3.0 - 0.45)


@pytest.mark.parametrize("where", [0, 1, 3])
def test_a_complete_trial_without_a_finite_value_at_the_step_is_left_out_of_the_extrapolation(where):
    trials = _complete_curves([0.0, -0.5, -0.2])  # their median change: -0.2
    trials.insert(where, optuna.trial.create_trial(
        params={"x": 0.5}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)}, value=1.0,
        intermediate_values={1: math.nan, 2: 1.0, 4: 1.0}))
    assert _pruned_at_step_1(trials).system_attrs[EXTRAPOLATED_ATTR] == pytest.approx(3.0 - 0.2)
