"""The tabular blackbox: a table of measured fine-tunes answers studies through the ordinary loop."""

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from optuna.trial import create_trial

from lorahpo import config as cfg
from lorahpo.result import DURATION_ATTR
from lorahpo.study import Study
from lorahpo.tabular import CURVE_FIELDS, GridAxis, Table, TableError, grid_order, load_table, write_table

GRID = {
    "rank": GridAxis([4, 16, 64], log=True),
    "alpha": GridAxis([4, 32], log=True),
    "dropout": GridAxis([0.0, 0.1]),
    "learning_rate": GridAxis([1e-5, 1e-4, 1e-3, 1e-2], log=True),
}
STEPS = (3, 6, 9, 12)
TOKENS_PER_STEP = 800.0
COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "tabular_main.jsonl.gz"


def final_loss(p):
    """A loss with its minimum at learning rate 1e-3, rank 16, alpha 32, no dropout."""
    return 1.0 + (math.log10(p["learning_rate"]) + 3) ** 2 + 0.1 * abs(math.log2(p["rank"] / 16)) \
        + 0.05 * (p["alpha"] == 4) + p["dropout"]


def measured(p):
    """One table line: curves that fall to the final loss and never cross; lr 1e-2 with alpha 32 diverged."""
    if p["learning_rate"] == 1e-2 and p["alpha"] == 32:
        return {"params": p, "status": "failed", "value": None, "reason": "diverged", "duration_s": 4.0,
                "curve": [[3, 9.0, 3 * TOKENS_PER_STEP, 2.0]], "metrics": {}}
    final = final_loss(p)
    curve = [[s, final + 3.0 / s - 3.0 / STEPS[-1], s * TOKENS_PER_STEP, 1.0 + s] for s in STEPS]
    metrics = {"validation_loss": final, "train_tokens": STEPS[-1] * TOKENS_PER_STEP, "retention": 0.4}
    return {"params": p, "status": "complete", "value": final, "reason": None, "duration_s": 20.0,
            "curve": curve, "metrics": metrics}


@pytest.fixture
def table_path(tmp_path):
    path = tmp_path / "table.jsonl.gz"
    meta = {"grid": {n: {"values": a.values, "log": a.log} for n, a in GRID.items()},
            "curve_fields": list(CURVE_FIELDS)}
    write_table(path, meta, [measured(p) for p in grid_order(GRID)])
    return path


def tabular_config(path, optimizer="random", seed=0, budget=12, **more):
    space = {n: {"type": "choice", "values": a.values} for n, a in GRID.items() if n != "learning_rate"}
    space["learning_rate"] = {"type": "real", "low": 1e-5, "high": 1e-2, "log": True}
    return cfg.parse({"name": "tabular", "optimizer": optimizer, "seed": seed, "budget": budget,
                      "space": {"params": space}, "objective": {"tabular": {"table": str(path)}}, **more})


def run(folder, conf):
    study = Study.open(folder, conf)
    study.run()
    return study


def test_the_grid_order_holds_every_point_once_and_starts_by_spanning_the_grid():
    order = grid_order(GRID)
    assert len(order) == 3 * 2 * 2 * 4 and len({json.dumps(p, sort_keys=True) for p in order}) == len(order)
    assert order[0] == {"rank": 16, "alpha": 4, "dropout": 0.0, "learning_rate": 1e-4}  # the centre
    first = order[:8]
    for name, axis in GRID.items():  # the first few points already reach both ends of every axis
        assert {p[name] for p in first} >= {axis.values[0], axis.values[-1]}


def test_a_proposal_snaps_to_the_nearest_grid_point_on_each_axis_scale(table_path):
    table = Table.load(table_path)
    assert table.snap({"rank": 16, "alpha": 10, "dropout": 0.04, "learning_rate": 2.5e-4}) == {
        "rank": 16, "alpha": 4, "dropout": 0.0, "learning_rate": 1e-4}  # alpha 10 < sqrt(4 * 32) = 11.3
    assert table.snap({"rank": 16, "alpha": 12, "dropout": 0.06, "learning_rate": 3.5e-4}) == {
        "rank": 16, "alpha": 32, "dropout": 0.1, "learning_rate": 1e-3}
    assert table.snap({"rank": 2, "alpha": 1000, "dropout": 0.0, "learning_rate": 1.0}) == {
        "rank": 4, "alpha": 32, "dropout": 0.0, "learning_rate": 1e-2}  # clamped to the grid


def test_a_partial_table_answers_with_the_nearest_configuration_it_measured(tmp_path):
    order = grid_order(GRID)
    path = tmp_path / "partial.jsonl.gz"
    write_table(path, {"grid": {n: {"values": a.values, "log": a.log} for n, a in GRID.items()}},
                [measured(p) for p in order[:5]])
    table = Table.load(path)
    for p in order:
        snapped = table.snap(p)
        assert snapped in order[:5]
        assert snapped == p or p not in order[:5]


def test_on_the_grid_as_its_space_every_optimizer_proposes_grid_points_only(table_path):
    table = Table.load(table_path)
    space = table.grid_space(x0={"rank": 10, "alpha": 20, "dropout": 0.06, "learning_rate": 2e-4})
    assert space.x0() == {"rank": 16, "alpha": 32, "dropout": 0.1, "learning_rate": 1e-4}
    raw = tabular_config(table_path).model_dump(mode="json")
    for optimizer in ("nomad", "tpe", "optuna.samplers:CmaEsSampler"):
        conf = cfg.parse({**raw, "optimizer": optimizer, "budget": 6, "space": space.model_dump(mode="json")})
        for record in run(table_path.parent / optimizer.replace(":", "-"), conf).records():
            assert table.snap(record.params) == record.params


def test_the_tabular_objective_returns_the_measured_values_and_curves_exactly(table_path):
    table = Table.load(table_path)
    study = run(table_path.parent / "study", tabular_config(table_path, budget=20))
    trials = {t.number: t for t in study.optuna_study.trials}
    records = study.records()
    assert len(records) == 20
    for record in records:
        point = table.lookup(record.params)
        assert record.status == point["status"]
        assert record.value == point["value"]
        if point["status"] == "complete":
            assert record.metrics == point["metrics"]
            assert trials[record.number].user_attrs[DURATION_ATTR] == point["duration_s"]
        assert trials[record.number].intermediate_values == {s: v for s, v, *_ in point["curve"]}
        assert table.curve(record.params)[-1]["step"] == point["curve"][-1][0]


def test_a_study_on_the_table_is_reproducible_per_seed(table_path):
    for optimizer in ("tpe", "nomad"):
        runs = [run(table_path.parent / f"{optimizer}-{i}", tabular_config(table_path, optimizer, seed=s, budget=6))
                for i, s in enumerate((3, 3, 4))]
        trails = [[(r.params, r.value) for r in study.records()] for study in runs]
        assert trails[0] == trails[1]
        assert trails[0] != trails[2]


def test_asha_prunes_on_the_tables_curves_and_a_pruned_trial_costs_what_it_trained(table_path):
    conf = tabular_config(table_path, budget=16, pruner="asha",
                          pruner_options={"min_resource": 3, "reduction_factor": 2})
    study = run(table_path.parent / "asha", conf)
    trials = {t.number: t for t in study.optuna_study.trials}
    pruned = [r for r in study.records() if r.status == "pruned"]
    assert pruned
    for record in pruned:
        curve = Table.load(table_path).lookup(record.params)["curve"]
        last = max(trials[record.number].intermediate_values)
        entry = next(e for e in curve if e[0] == last)
        assert last < STEPS[-1]
        assert record.metrics == {"train_tokens": entry[2], "steps": last}
        assert trials[record.number].user_attrs[DURATION_ATTR] == entry[3]


def test_a_verdict_to_stop_at_the_last_validation_comes_too_late_a_replayed_trial_finishes(table_path, monkeypatch):
    import optuna

    import lorahpo.study

    # A pruner that stops every trial at its last validation (step 12), and only there.
    monkeypatch.setattr(lorahpo.study, "make_pruner",
                        lambda name, options: optuna.pruners.ThresholdPruner(upper=0.0, n_warmup_steps=STEPS[-1]))
    study = run(table_path.parent / "late", tabular_config(table_path, budget=6, pruner="median"))
    trials = {t.number: t for t in study.optuna_study.trials}
    for record in study.records():
        point = Table.load(table_path).lookup(record.params)
        assert record.status == point["status"]  # complete, or failed as measured: never pruned
        assert sorted(trials[record.number].intermediate_values) == [e[0] for e in point["curve"]]
        if record.status == "complete":
            assert record.metrics["train_tokens"] == point["curve"][-1][2]


def test_a_warm_start_on_a_table_takes_each_grid_point_once(table_path, tmp_path):
    # The earlier study's three best trials: the first two snap to the same grid point.
    earlier = Study.open(tmp_path / "earlier", tabular_config(table_path, budget=3))
    dists = earlier.config.space.distributions()
    base = {"rank": 16, "alpha": 32, "dropout": 0.0}
    for lr, value in ((1.1e-3, 1.0), (0.9e-3, 1.01), (1e-4, 2.0)):
        earlier.optuna_study.add_trial(create_trial(params={**base, "learning_rate": lr}, distributions=dists,
                                                    values=[value]))
    study = run(tmp_path / "new", tabular_config(table_path, budget=2, warm_start=[str(tmp_path / "earlier")],
                                                 warm_start_points=3))
    chosen = study.optuna_study.user_attrs["lorahpo:warm_start"]
    assert [p["learning_rate"] for p in chosen] == [1.1e-3, 1e-4]  # 0.9e-3 is the grid point of 1.1e-3 again
    assert [r.params["learning_rate"] for r in study.records()] == [1.1e-3, 1e-4]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"space": {"params": {"rank": {"type": "choice", "values": [4, 16]}}}}, "space: the table"),
        ({"objective": {"tabular": {"table": "x"}, "metric": "bbh"}}, "does not hold 'bbh'"),
        ({"constraints": {"peak_memory_mb": 1.0}}, "does not hold 'peak_memory_mb'"),
        ({"executor": "ray"}, "executor: a tabular objective"),
    ],
)
def test_a_tabular_study_that_does_not_fit_its_table_is_refused_in_one_line(table_path, change, message):
    raw = tabular_config(table_path).model_dump(mode="json")
    if "objective" in change:
        change["objective"]["tabular"]["table"] = str(table_path)
    with pytest.raises(cfg.ConfigError, match=message) as e:
        cfg.parse({**raw, **change})
    assert "\n" not in str(e.value)


def test_a_file_that_is_not_a_table_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write('{"format": "something else"}\n')
    for path, message in [(tmp_path / "none.jsonl.gz", "cannot be read"), (bad, "header")]:
        with pytest.raises(TableError, match=message):
            load_table(path)
    off_grid = tmp_path / "off.jsonl.gz"
    write_table(off_grid, {"grid": {"x": {"values": [1, 2]}}},
                [{"params": {"x": 3}, "status": "complete", "value": 1.0, "curve": []}])
    with pytest.raises(TableError, match="x=3 is not on the grid"):
        Table.load(off_grid)
    unordered = tmp_path / "unordered.jsonl.gz"
    write_table(unordered, {"grid": {"x": {"values": [2, 1]}}}, [])
    with pytest.raises(TableError, match="grid x: `values` must be increasing numbers"):
        Table.load(unordered)


@pytest.mark.skipif(not COMMITTED.exists(), reason="no packed table committed yet")
def test_the_committed_table_loads_and_has_the_documented_shape():
    table = Table.load(COMMITTED)
    assert table.meta["preset"] == "main" and table.meta["planned"] == 504
    assert {n: len(a.values) for n, a in table.grid.items()} == {
        "rank": 6, "alpha": 4, "dropout": 3, "learning_rate": 7}
    assert table.curve_fields == list(CURVE_FIELDS)
    assert len(table.points) == table.meta["measured"] >= 2
    assert table.meta["blackbox"]["training"]["precision"] == "fp32" and table.meta["machines"]
    for point in table.points:
        if point["status"] == "complete":
            steps = [e[0] for e in point["curve"]]
            assert steps == [3, 6, 9, 12] and point["curve"][-1][1] == point["value"]
            assert point["metrics"]["train_tokens"] == point["curve"][-1][2] and "retention" in point["metrics"]


def test_lorahpo_tune_runs_a_study_on_a_table_and_refuses_a_missing_one_in_one_line(table_path, tmp_path):
    raw = tabular_config(table_path, budget=4).model_dump(mode="json")
    config = tmp_path / "table.yaml"
    config.write_text(yaml.safe_dump(raw))

    def tune(folder):
        return subprocess.run([sys.executable, "-m", "lorahpo.cli", "tune", str(config), "--study-dir", str(folder)],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)

    done = tune(tmp_path / "study")
    assert done.returncode == 0, done.stderr
    assert len(Study.load(tmp_path / "study").records()) == 4
    raw["objective"]["tabular"]["table"] = str(tmp_path / "missing.jsonl.gz")
    config.write_text(yaml.safe_dump(raw))
    refused = tune(tmp_path / "refused")
    assert refused.returncode == 2 and "missing.jsonl.gz: cannot be read" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "refused").exists()
