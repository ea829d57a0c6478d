"""benchmarks/tabular.py on a synthetic blackbox: the grid, sharded resumable measurement, the packed table."""

import json

import pytest

from lorahpo import toys
from lorahpo.tabular import CURVE_FIELDS, Table


def fake_blackbox(calls):
    """``toys.lora_surface`` at the trial's hyperparameters, as a curve over its validations."""

    def blackbox(trial, stop):
        calls.append(trial)
        params = {**trial["lora"], **trial["training"]}
        final = toys.lora_surface(params)["validation_loss"]
        steps, every = trial["training"]["max_steps"], trial["training"]["eval_every"]
        curve = [[s, final + 1.0 / s - 1.0 / steps, 100.0 * s, 2.0 * s] for s in range(every, steps + 1, every)]
        for entry in curve:
            stop(*entry)
        metrics = {"validation_loss": final, "train_tokens": 100.0 * steps, "retention": 0.4}
        return {"status": "complete", "value": final, "reason": None, "duration_s": 2.0 * steps + 1,
                "curve": curve, "metrics": metrics}

    return blackbox


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("tabular")


def test_the_grid_covers_the_default_space_with_at_least_500_points(bench):
    from lorahpo.space import PRESETS

    points = bench.preset_points("main")
    assert len(points) == len({json.dumps(p, sort_keys=True) for p in points}) == 504
    space = PRESETS["default"]
    for name, axis in bench.GRID.items():
        spec = space[name]
        if spec.type == "choice":
            assert set(axis.values) <= set(spec.values)
        else:
            assert axis.values[0] >= spec.low and axis.values[-1] <= spec.high
    lrs = bench.GRID["learning_rate"].values
    assert lrs[0] == 1e-5 and lrs[-1] == 1e-2 and set(bench.GRID["rank"].values) == set(space["rank"].values)
    assert bench.preset_points("long") == points[::5]


def test_shards_measure_each_point_once_and_a_rerun_measures_nothing(bench, tmp_path):
    alone, shared = tmp_path / "alone.jsonl", tmp_path / "shared.jsonl"
    calls_alone, calls_shared = [], []
    bench.main(["--limit", "7", "--cache", str(alone)], blackbox=fake_blackbox(calls_alone))
    for shard in ("0/2", "1/2"):
        bench.main(["--limit", "7", "--shard", shard, "--cache", str(shared)], blackbox=fake_blackbox(calls_shared))
    assert len(calls_alone) == len(calls_shared) == 7
    rows = [json.loads(line) for line in shared.read_text().splitlines()]
    assert {r["key"] for r in rows} == {json.loads(line)["key"] for line in alone.read_text().splitlines()}
    for row in rows:
        assert row["preset"] == "main" and row["measured_at"]["cores"] and "torch" in row["versions"]
        assert row["curve"] and row["metrics"]["validation_loss"] == row["value"]
    bench.main(["--limit", "9", "--cache", str(shared)], blackbox=fake_blackbox(calls_shared))
    assert len(calls_shared) == 9  # only the two points not measured yet


def test_the_packed_table_holds_the_measured_points_in_order_with_its_header(bench, tmp_path):
    cache, out = tmp_path / "cache.jsonl", tmp_path / "table.jsonl.gz"
    calls = []
    bench.main(["--preset", "long", "--limit", "6", "--cache", str(cache)], blackbox=fake_blackbox(calls))
    assert [c["training"]["max_steps"] for c in calls] == [24] * 6
    bench.main(["--preset", "long", "--pack", "--cache", str(cache), "--out", str(out)])
    table = Table.load(out)
    assert [p["params"] for p in table.points] == bench.preset_points("long")[:6]
    meta = table.meta
    assert (meta["preset"], meta["planned"], meta["measured"], meta["every"]) == ("long", 101, 6, 5)
    assert meta["blackbox"]["training"]["precision"] == "fp32" and meta["curve_fields"] == list(CURVE_FIELDS)
    assert len(meta["machines"]) == 1 and "date" not in meta["machines"][0] and meta["versions"]
    assert [e[0] for e in table.points[0]["curve"]] == [6, 12, 18, 24]
    first = out.read_bytes()
    bench.main(["--preset", "long", "--pack", "--cache", str(cache), "--out", str(out)])
    assert out.read_bytes() == first  # packing the same cache again changes nothing


def test_speed_times_studies_on_the_packed_table(bench, tmp_path):
    cache, out = tmp_path / "cache.jsonl", tmp_path / "table.jsonl.gz"
    bench.main(["--limit", "4", "--cache", str(cache)], blackbox=fake_blackbox([]))
    bench.main(["--pack", "--cache", str(cache), "--out", str(out)])
    bench.main(["--speed", "3", "--out", str(out)])
    result = json.loads((tmp_path / "tabular_speed.json").read_text())
    assert result["budget"] == 3 and result["configurations"] == 4
    assert set(result["seconds"]) == set(result["cpu_seconds"]) == {"nomad", "tpe", "random"}
    assert all(s > 0 for s in result["seconds"].values()) and result["machine"]["cores"]
