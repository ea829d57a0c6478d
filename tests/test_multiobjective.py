"""Several objectives (NOMAD's DMultiMADS, NSGA-II, TPE) and constraints on metrics."""

import json

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from lorahpo import config as cfg
from lorahpo import toys
from lorahpo.cli import main as cli_main
from lorahpo.result import VIOLATED
from lorahpo.samplers import make_sampler
from lorahpo.study import Study

XY = {"x": FloatDistribution(-5, 5), "y": FloatDistribution(-5, 5)}
# The true Pareto front of toys.two_objectives, densely sampled: (2 t^2, 2 (2 - t)^2), t in [0, 2].
T = np.linspace(0, 2, 2001)
FRONT = np.stack([2 * T**2, 2 * (2 - T) ** 2], axis=1)


def run_in_process(sampler, n_trials, directions, cost_bound=None):
    study = optuna.create_study(directions=directions, sampler=sampler)

    def objective(trial):
        metrics = toys.two_objectives({n: trial.suggest_float(n, -5, 5) for n in XY})
        if cost_bound is not None:
            trial.set_constraint("cost", metrics["cost"] - cost_bound)  # as a lorahpo study sets it
        trial.set_user_attr("metrics", metrics)
        return [metrics["value"], metrics["cost"]] if len(directions) == 2 else metrics["value"]

    study.optimize(objective, n_trials=n_trials)
    if hasattr(sampler, "close"):
        sampler.close()
    return study


def front_distances(study):
    points = np.array([t.values for t in study.best_trials])
    return points, np.min(np.linalg.norm(points[:, None, :] - FRONT[None, :, :], axis=2), axis=1)


# Tolerances from seeds 0-3: median distance NOMAD 0.003-0.010, NSGA-II 0.033-0.062.
@pytest.mark.parametrize("optimizer, budget, median", [("nomad", 200, 0.03), ("nsga2", 600, 0.1)])
def test_a_known_pareto_front_is_recovered(optimizer, budget, median):
    sampler = make_sampler(optimizer, XY, x0={"x": 4.0, "y": -4.0}, seed=0, n_objectives=2)
    study = run_in_process(sampler, budget, ["minimize", "minimize"])
    points, distance = front_distances(study)
    assert len(points) >= 10
    # The non-dominated points found lie on the true front (objective units; the front spans
    # 0..8); a few near its steep ends may still be off it ...
    assert np.median(distance) < median and np.quantile(distance, 0.8) < 3 * median
    # ... and they cover it, from near one end to near the other.
    assert points[:, 0].min() < 0.5 and points[:, 1].min() < 0.5


@pytest.mark.parametrize("optimizer, tolerance", [("nomad", 0.05), ("tpe", 0.3)])
def test_constraints_hold_at_the_best_point(optimizer, tolerance):
    # Minimise x^2 + y^2 subject to cost = (x-2)^2 + (y-2)^2 <= 2 (a disc around (2, 2)):
    # the optimum is x = y = 1, value 2, on the disc's edge.
    sampler = make_sampler(optimizer, XY, x0={"x": 4.0, "y": -4.0}, seed=0, constraints=["cost"])
    study = run_in_process(sampler, 120, ["minimize"], cost_bound=2.0)
    feasible = [t for t in study.trials if t.state.name == "COMPLETE" and t.user_attrs["metrics"]["cost"] <= 2.0]
    best = min(feasible, key=lambda t: t.value)
    assert best.value == pytest.approx(2.0, abs=tolerance)
    assert best.constraints["cost"] <= 0


def study_config(**kw):
    data = {
        "name": "mo",
        "optimizer": "random",
        "budget": 12,
        "space": {"params": {"x": {"type": "real", "low": -1, "high": 3, "x0": 0.5},
                             "y": {"type": "real", "low": -1, "high": 3, "x0": 0.5}}},
        "objective": {"python": "lorahpo.toys:two_objectives", "secondary": {"cost": "minimize"}},
    }
    data.update(kw)
    return cfg.parse(data)


def test_a_study_reports_its_feasible_pareto_front(tmp_path, capsys):
    conf = study_config(constraints={"size": 3.0})
    study = Study.open(tmp_path / "s", conf)
    study.run()
    records = [r for r in study.records() if r.status == "complete"]
    front = study.best(100)
    assert front and all(r.metrics["size"] <= 3.0 for r in front)
    for t in study.optuna_study.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
        assert t.constraints == {"size": pytest.approx(t.user_attrs["metrics"]["size"] - 3.0)}
    costs = {r.number: (r.metrics["value"], r.metrics["cost"]) for r in records if r.metrics["size"] <= 3.0}
    for r in front:  # nothing feasible dominates a front member ...
        a = costs[r.number]
        assert not any(b[0] <= a[0] and b[1] <= a[1] and b != a for b in costs.values())
    for n, a in costs.items():  # ... and every feasible trial off the front is dominated
        if n not in {r.number for r in front}:
            assert any(costs[r.number][0] <= a[0] and costs[r.number][1] <= a[1] for r in front)
    assert [r.value for r in front] == sorted(r.value for r in front)

    from lorahpo.report.data import study_report
    from lorahpo.report.render import write_report

    report = study_report(tmp_path / "s")
    assert [t.number for t in report.pareto] == [r.number for r in front]
    assert set(report.infeasible) == {r.number for r in records if r.metrics["size"] > 3.0}
    paths = write_report(report, tmp_path / "report")
    assert 'id="fig-pareto_front"' in paths["html"].read_text() and paths["pareto_front"].stat().st_size > 5000

    assert cli_main(["best", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert f"Pareto front of value, cost: {len(front)} trial(s)" in out
    for r in front:  # each trial of the front, with the constraint it meets
        assert f"trial {r.number}: value = {r.value:.6g}" in out
        assert f"    meets size = {r.metrics['size']:.4g} <= 3\n" in out
    assert cli_main(["best", str(tmp_path / "s"), "--json"]) == 0
    assert [d["number"] for d in json.loads(capsys.readouterr().out)] == [r.number for r in front]


def test_a_constrained_single_objective_study_never_reports_an_infeasible_best(tmp_path):
    conf = study_config(objective={"python": "lorahpo.toys:two_objectives"}, constraints={"size": 0.5}, budget=10)
    study = Study.open(tmp_path / "s", conf)
    study.run()
    complete = [r for r in study.records() if r.status == "complete"]
    feasible = sorted((r for r in complete if r.metrics["size"] <= 0.5), key=lambda r: r.value)
    # Some infeasible trial beats every feasible one: ranking by value alone would report it.
    assert any(r.metrics["size"] > 0.5 and r.value < feasible[0].value for r in complete)
    assert [r.number for r in study.best(3)] == [r.number for r in feasible[:3]]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"pruner": "asha"}, "pruner: early stopping needs a single objective"),
        ({"optimizer": "grid", "space": {"params": {"x": {"type": "int", "low": 0, "high": 3},
                                                     "y": {"type": "int", "low": 0, "high": 3}}}},
         "grid search has a single objective"),
        ({"objective": {"python": "lorahpo.toys:two_objectives", "secondary": {"value": "minimize"}}},
         "secondary repeats the main metric 'value'"),
    ],
)
def test_bad_multi_objective_configs_are_one_line_errors(kw, message):
    with pytest.raises(cfg.ConfigError) as caught:
        study_config(**kw)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_constraints_are_upper_bounds_and_a_missing_metric_violates_them():
    conf = study_config(constraints={"peak_memory_mb": 4000.0, "runtime_s": 60.0})
    values = conf.constraint_values({"peak_memory_mb": 3000.0})
    assert values["peak_memory_mb"] == -1000.0 and values["runtime_s"] >= VIOLATED - 60
    assert not conf.feasible({"peak_memory_mb": 3000.0})
    assert conf.feasible({"peak_memory_mb": 4000.0, "runtime_s": 12.0})


def test_nomad_sees_an_unset_constraint_as_violated():
    from lorahpo.samplers.nomad import NomadSampler

    sampler = NomadSampler({"i": IntDistribution(0, 3)}, x0={"i": 2}, constraints=["mem"])
    study = optuna.create_study(sampler=sampler)
    trial = optuna.trial.create_trial(value=1.0, params={"i": 1}, distributions={"i": IntDistribution(0, 3)})
    assert sampler._nomad_value(study, trial, trial.state, trial.values) == (1.0, VIOLATED)
    trial.set_constraint("mem", -3.0)
    assert sampler._nomad_value(study, trial, trial.state, trial.values) == (1.0, -3.0)
    assert "BB_OUTPUT_TYPE OBJ PB" in sampler.nomad_problem()[3]


def test_the_progress_line_never_calls_an_infeasible_trial_best(tmp_path, capsys):
    from lorahpo.progress import Progress
    from lorahpo.result import TrialRecord

    def record(number, value, size):
        return TrialRecord(number, "complete", {}, value, None, {"value": value, "size": size}, None, None, tmp_path)

    conf = study_config(constraints={"size": 3.0})
    bar = Progress(3, 0, None, "minimize", conf.feasible)
    for r in (record(0, 5.0, 1.0), record(1, 0.5, 4.0), record(2, 4.0, 2.0)):
        bar("finish", r)
    assert bar.best.number == 2
    assert "trial 1: 0.5 (over a constraint)" in capsys.readouterr().err
