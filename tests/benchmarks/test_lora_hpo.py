"""``benchmarks/lora_hpo.py`` on a synthetic blackbox: the cache of measured points and exact replay."""

import json

import pytest

from lorahpo.toys import lora_surface


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("lora_hpo")


def synthetic(calls):
    def blackbox(trial, stop):
        calls.append(trial)
        params = {**trial["lora"], "learning_rate": trial["training"]["learning_rate"]}
        if params["learning_rate"] > 5e-3:
            return {"status": "failed", "value": None, "reason": "diverged", "duration_s": 2.0}
        value = lora_surface(params)["validation_loss"]
        return {"status": "complete", "value": value, "reason": None, "duration_s": 2.0}

    return blackbox


def test_searches_are_cached_replayed_and_summarized(bench, tmp_path):
    files = ["--cache", str(tmp_path / "cache.jsonl"), "--out", str(tmp_path / "r.json")]
    args = ["--seeds", "0", "1", "--budget", "6", *files]
    calls = []
    first = bench.main(args, blackbox=synthetic(calls))

    runs = first["runs"]
    assert [(r["optimizer"], r["seed"]) for r in runs] == [(o, s) for s in (0, 1) for o in ("nomad", "tpe", "random")]
    # Every search starts from the space's x0, measured once and read back five times.
    assert len({r["keys"][0] for r in runs}) == 1
    lines = (tmp_path / "cache.jsonl").read_text().splitlines()
    assert len(lines) == len(calls) == len({k for r in runs for k in r["keys"]}) < 6 * 6
    assert all(json.loads(line)["measured_at"]["cpu"] is not None for line in lines)
    for r in runs:
        assert len(r["values"]) == 6
        assert r["best_so_far"] == [min(v for v in r["values"][: i + 1] if v is not None) for i in range(6)]
        assert r["eval_s"] == 2.0 * 6  # durations count whether measured or read back

    # A replay trains nothing and gives the same searches, value for value.
    again = bench.main([*args, "--replay"], blackbox=None)
    assert [r["values"] for r in again["runs"]] == [r["values"] for r in runs]
    assert all(r["new_measurements"] == 0 for r in again["runs"])
    assert len(calls) == len(lines)

    summary = {row["optimizer"]: row for row in again["summary"]}
    x0 = runs[0]["values"][0]
    for optimizer, row in summary.items():
        mine = [r["values"] for r in runs if r["optimizer"] == optimizer]
        # Over two seeds, the median is the mean of the two runs' best values.
        median_best = sum(min(v for v in values if v is not None) for values in mine) / 2
        assert row["curve"][-1][1] == pytest.approx(median_best)
        assert row["gain_over_x0"][1] == pytest.approx(x0 - median_best)
        assert row["failed"] == sum(v is None for values in mine for v in values)
    table = (tmp_path / "r.md").read_text()
    assert "| nomad |" in table and "| random |" in table
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_replay_refuses_an_unmeasured_point(bench, tmp_path):
    files = ["--cache", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "r.json")]
    with pytest.raises(LookupError, match="never measured"):
        bench.main(["--seeds", "0", "--budget", "2", *files, "--replay"], blackbox=None)



def test_the_committed_cache_still_holds_the_start_point_of_every_search(load_benchmark):
    """Trial configs gained fields since the cache was measured: the key of a measured point must not move."""
    from lorahpo.executors.replay import Measurements, config_key

    bench = load_benchmark("lora_hpo")
    cache = Measurements(bench.RESULTS / "lora_hpo_cache.jsonl")
    for optimizer in bench.OPTIMIZERS:
        conf = bench.study_config(bench.PRESETS["cpu"], optimizer, 0, 20)
        x0 = conf.space.x0()
        assert x0 is not None
        assert cache.get(config_key(bench.trial_config(conf, x0))) is not None


def test_an_added_field_joins_the_key_only_when_it_leaves_its_default(load_benchmark):
    from lorahpo.finetune.config import LoraTrialConfig, apply_hyperparameters

    bench = load_benchmark("lora_hpo")
    conf = bench.study_config(bench.PRESETS["cpu"], "nomad", 0, 20)
    x0 = conf.space.x0()
    plain = bench.trial_config(conf, x0)
    assert "use_dora" not in plain["lora"] and "quantization" not in plain["model"]
    # the blackbox reads the keyed config back with the defaults filled in: the same trial
    assert LoraTrialConfig.model_validate(plain) == apply_hyperparameters(conf.objective.lora, x0)
    dora = bench.trial_config(conf, {**x0, "use_dora": True})
    assert dora["lora"]["use_dora"] is True
    assert {k: v for k, v in dora["lora"].items() if k != "use_dora"} == plain["lora"]
