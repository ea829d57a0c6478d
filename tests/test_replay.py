"""The replay executor: studies answered from measurements, through the study's own loop."""

import pytest

from lorahpo import config as cfg
from lorahpo.executors.replay import Measurements, ReplayExecutor, config_key
from lorahpo.study import Study

STEPS = 6


def curve_config(pruner="none", budget=12):
    return cfg.parse(
        {
            "name": "replayed",
            "optimizer": "random",
            "budget": budget,
            "pruner": pruner,
            "pruner_options": {"min_resource": 1, "reduction_factor": 2} if pruner == "asha" else {},
            "space": {
                "params": {"x": {"type": "real", "low": -4, "high": 4}, "y": {"type": "int", "low": -4, "high": 4}}
            },
            "objective": {"python": "lorahpo.toys:learning_curve"},
        }
    )


def curves(calls):
    """Measures curves that fall to 1 + x^2 + y^2 and never cross; stops where ``stop`` says."""

    def blackbox(config, stop):
        calls.append(config)
        final = 1.0 + config["x"] ** 2 + config["y"] ** 2
        curve = []
        for step in range(1, STEPS + 1):
            curve.append([step, final + (STEPS - step) / STEPS, 10.0 * step])
            if stop(*curve[-1]) and step < STEPS:
                return {"status": "stopped", "value": None, "reason": None, "duration_s": 1.0, "curve": curve}
        return {"status": "complete", "value": curve[-1][1], "reason": None, "duration_s": 1.0, "curve": curve}

    return blackbox


def history(study):
    return [(r.number, r.params, r.status, r.value) for r in study.records()]


def test_a_pruned_search_is_measured_once_then_replayed_exactly(tmp_path):
    calls = []
    cache = Measurements(tmp_path / "cache.jsonl")
    measured = Study.open(tmp_path / "measured", curve_config("asha"))
    summary = measured.run(executor=ReplayExecutor(cache, blackbox=curves(calls)))
    assert summary.finished == 12 and len(calls) == 12
    pruned = [t for t in measured.optuna_study.trials if t.user_attrs["status"] == "pruned"]
    assert pruned  # the pruner saw the values as they were measured, and stopped trials at once
    assert all(len(t.intermediate_values) < STEPS and t.value == t.intermediate_values[t.last_step] for t in pruned)

    executor = ReplayExecutor(Measurements(tmp_path / "cache.jsonl"))  # no blackbox: replay only
    replayed = Study.open(tmp_path / "replayed", curve_config("asha"))
    replayed.run(executor=executor)
    assert history(replayed) == history(measured)
    for a, b in zip(replayed.optuna_study.trials, measured.optuna_study.trials, strict=True):
        assert a.intermediate_values == b.intermediate_values
    assert not any(answer.measured for answer in executor.answers.values())
    stopped_at = {n: a.reached for n, a in executor.answers.items()}
    assert all(stopped_at[t.number] == len(t.intermediate_values) for t in pruned)


def test_a_curve_stopped_earlier_is_measured_further_when_the_pruner_lets_it(tmp_path):
    calls = []
    cache = Measurements(tmp_path / "cache.jsonl")
    Study.open(tmp_path / "asha", curve_config("asha")).run(executor=ReplayExecutor(cache, blackbox=curves(calls)))
    stopped = {p["key"] for p in cache.points.values() if p["status"] == "stopped"}
    assert stopped

    with pytest.raises(LookupError, match="not measured far enough"):
        unmeasured = ReplayExecutor(Measurements(tmp_path / "cache.jsonl"))
        Study.open(tmp_path / "replay", curve_config()).run(executor=unmeasured)
    full = Study.open(tmp_path / "full", curve_config())
    full.run(executor=ReplayExecutor(cache, blackbox=curves(calls)))
    assert all(r.status == "complete" for r in full.records())
    assert all(cache.points[key]["status"] == "complete" for key in stopped)  # the longer curve replaced it


def test_a_point_never_measured_stops_a_replay_with_its_name(tmp_path):
    study = Study.open(tmp_path / "s", curve_config())
    with pytest.raises(LookupError, match=r"point 0 \{'x': .*\} was never measured"):
        study.run(executor=ReplayExecutor(Measurements(tmp_path / "empty.jsonl")))


def test_stop_when_ends_the_search_in_the_benchmarks_units(tmp_path):
    executor = ReplayExecutor(Measurements(tmp_path / "cache.jsonl"), blackbox=curves([]))
    study = Study.open(tmp_path / "s", curve_config(budget=100))
    summary = study.run(executor=executor, stop_when=lambda: len(executor.answers) * STEPS * 10.0 >= 250)
    assert summary.stopped == "stop_when" and summary.finished == 5


def test_a_point_proposed_in_other_last_bits_finds_its_measurement(tmp_path):
    def key_of(params):
        return config_key({"blackbox": "a", **params})

    params = {"rank": 8, "dropout": 0.05, "learning_rate": 0.0004950654691183206}
    cache = Measurements(tmp_path / "c.jsonl")
    cache.add({"key": key_of(params), "params": params, "status": "complete", "value": 1.5, "duration_s": 1.0})
    one_ulp = {**params, "learning_rate": 0.0004950654691183205}  # TPE's proposal on another CPU
    assert key_of(one_ulp) != key_of(params) and cache.find(one_ulp, key_of)["value"] == 1.5
    assert cache.find({**params, "learning_rate": params["learning_rate"] * (1 + 1e-6)}, key_of) is None
    assert cache.find({**params, "rank": 16}, key_of) is None
    assert cache.find(params, lambda p: config_key({"blackbox": "b", **p})) is None  # another blackbox's
