"""benchmarks/downstream.py on a synthetic blackbox: the design, the three arms, the JSON, and replay."""

import json

import pytest

from lorahpo import toys


def fake_blackbox(trial, stop):
    """``toys.forgetting`` at the trial's hyperparameters, with the metrics a real trial reports."""
    params = {**trial["lora"], **trial["training"]}
    m = toys.forgetting(params)
    metrics = {
        "validation_loss": m["validation_loss"],
        "initial_validation_loss": 2.9,
        "retention": m["retention"],
        "retention_se": 0.05,
        "retention_base": 0.5,
        "retention_drop": m["retention_drop"],
        "retention_logprob": -3 - m["retention_drop"],
        "retention_logprob_drop": m["retention_drop"],
        "retention_0shot": m["retention"] + 0.01,
        "retention_0shot_logprob": -2 - m["retention_drop"],
    }
    return {
        "status": "complete",
        "value": metrics["validation_loss"],
        "reason": None,
        "duration_s": 1.0,
        "metrics": metrics,
    }


@pytest.fixture
def bench(load_benchmark, monkeypatch):
    module = load_benchmark("downstream")
    # bbh-bigbench falls as retention falls: the guard helps downstream, by construction.
    base = {"key": "base", "bbh": 0.25, "bbh_se": 0.03, "rows": 240}

    def fake_bbh(self, key, conf, params, measure=True):
        if key == "base":
            return base
        drop = toys.forgetting(params)["retention_drop"]
        return {"key": key, "bbh": 0.25 - drop, "bbh_se": 0.03, "rows": 240}

    monkeypatch.setattr(module.BbhScores, "get", fake_bbh)
    return module


def test_the_benchmark_writes_its_results_and_replays_them(bench, tmp_path):
    args = ["--design", "8", "--bbh-design", "5", "--seeds", "0", "--budget", "8", "--guard", "retention_drop",
            "--bound", "0.02",
            "--cache", str(tmp_path / "cache.jsonl"), "--bbh-cache", str(tmp_path / "bbh.jsonl"),
            "--out", str(tmp_path / "downstream.json")]
    result = bench.main(args, blackbox=fake_blackbox)
    saved = json.loads((tmp_path / "downstream.json").read_text())
    assert set(saved) >= {"spearman", "base", "arms", "machine", "summary"}
    assert set(saved["spearman"]) == {"retention", "retention_logprob", "retention_0shot", "retention_0shot_logprob",
                                      "bbh-bigbench"}
    # bbh-bigbench is made to fall as retention falls: the retention metrics predict it perfectly here.
    assert saved["predicts_bbh"]["retention"]["rho"] == pytest.approx(1.0)
    assert saved["predicts_bbh"]["validation_loss"]["n"] == 5
    for s in saved["spearman"].values():
        assert -1 <= s["ci"][0] <= s["rho"] <= s["ci"][1] <= 1
    assert saved["spearman"]["retention"]["n"] == 8 and saved["spearman"]["bbh-bigbench"]["n"] == 5
    assert saved["base"]["bbh"] == 0.25 and saved["base"]["retention"] == 0.5 and saved["base"]["bbh_se"] == 0.03
    assert set(saved["arms"]) == {"loss", "guarded", "front"}
    for arm, runs in saved["arms"].items():
        (run,) = runs
        assert set(run) >= {"seed", "val_loss", "retention", "bbh", "bbh_se"}
        if arm != "loss":
            assert run["retention_drop"] <= 0.02
    assert saved["arms"]["loss"][0]["val_loss"] <= saved["arms"]["guarded"][0]["val_loss"]
    measured = len((tmp_path / "cache.jsonl").read_text().splitlines())
    again = bench.main([*args, "--replay"], blackbox=None)
    assert again["arms"] == result["arms"] and again["spearman"] == result["spearman"]
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == measured


def test_shards_fill_the_caches_that_one_process_would_and_replay_counts_what_is_missing(bench, tmp_path):
    def args(folder, *more):
        return ["--design", "6", "--bbh-design", "4", "--budget", "6",
                "--cache", str(folder / "cache.jsonl"), "--bbh-cache", str(folder / "bbh.jsonl"),
                "--out", str(folder / "downstream.json"), *more]

    alone, shared = tmp_path / "alone", tmp_path / "shared"
    shared.mkdir()
    whole = bench.main(args(alone, "--seeds", "0", "1"), blackbox=fake_blackbox)
    bench.main(args(shared, "--shard", "0/2", "--parts", "design"), blackbox=fake_blackbox)
    assert not (shared / "downstream.json").exists()  # a shard writes no results
    half = bench.main(args(shared, "--replay", "--seeds", "0", "1"), blackbox=None)
    assert half["missing"] == {"design": 3, "bbh": 0, "arms": 6}  # points 1, 3, 5; no search replays whole
    assert half["spearman"]["retention"]["n"] == 3 and "bbh-bigbench" not in half["spearman"]
    assert "Not measured yet: 3 design points, 6 arm runs." in (shared / "downstream.md").read_text()
    bench.main(args(shared, "--shard", "1/2", "--seeds", "1"), blackbox=fake_blackbox)
    bench.main(args(shared, "--shard", "0/2", "--seeds", "0"), blackbox=fake_blackbox)
    again = bench.main(args(shared, "--replay", "--seeds", "0", "1"), blackbox=None)
    assert again["missing"] == {"design": 0, "bbh": 0, "arms": 0}
    assert again["spearman"] == whole["spearman"] and again["arms"] == whole["arms"]


def test_a_shard_is_k_of_n(bench):
    assert bench.parse_args(["--shard", "1/3"]).shard == (1, 3)
    for bad in ("3/3", "a/2", "1"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--shard", bad])


def test_points_not_measured_keep_their_place_among_those_scored_on_bbh(bench):
    ok, failed = {"status": "complete"}, {"status": "failed"}
    assert [i for i, _ in bench.bbh_scored([ok, failed, None, ok, ok], 3)] == [0, 3]
    assert [i for i, _ in bench.bbh_scored([ok, failed, ok, ok, ok], 3)] == [0, 2, 3]


def test_spearman_is_the_reports(bench):
    out = bench.spearman([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0])
    assert out["rho"] == pytest.approx(1 - 6 * 4 / (5 * 24))  # rank differences -1, 1, -1, 1, 0
    assert out["n"] == 5 and out["ci"][0] <= out["rho"] <= out["ci"][1]


def test_evaluator_cost_is_the_evaluation_share_of_the_rest_of_a_trial(load_benchmark, tmp_path):
    import datetime as dt

    from lorahpo.result import TrialRecord

    cost = load_benchmark("evaluator_cost")
    t0 = dt.datetime(2026, 1, 1)

    def record(number, wall, evaluation, status="complete"):
        metrics = {"evaluation_s": evaluation} if evaluation is not None else {}
        return TrialRecord(number, status, {}, 1.0, None, metrics, t0, t0 + dt.timedelta(seconds=wall), tmp_path)

    rows = cost.costs([record(0, 130, 20), record(1, 110, 10), record(2, 5, None, "failed"), record(3, 120, 30)])
    assert [r["trial"] for r in rows] == [0, 1, 3]
    assert [r["overhead"] for r in rows] == [pytest.approx(20 / 110), pytest.approx(10 / 100), pytest.approx(30 / 90)]
    summary = cost.summarize(rows)
    assert summary["first"]["trial"] == 0  # it also measured the base model: not in the median
    assert summary["median_overhead"] == pytest.approx((10 / 100 + 30 / 90) / 2)
    assert summary["max_overhead"] == pytest.approx(30 / 90)


def test_every_committed_measurement_is_found_again_by_its_params(bench):
    """Trial configs gained fields since the points were measured: what each trained must keep
    its training key (its adapter and bbh-bigbench score are found by it), whichever evaluators
    measured it then."""
    conf = bench.study_config("loss", 0, 20, 0.02)
    lines = (bench.RESULTS / "downstream_cache.jsonl").read_text().splitlines()
    assert lines
    for line in lines:
        point = json.loads(line)
        assert bench.training_key(bench.trial_config(conf, point["params"])) == point["train_key"], point["params"]
