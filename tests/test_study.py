"""The study loop: store, budget, failures as results, resume and config identity."""

import math
import signal
import sys
import time

import pytest

from lorahpo import config as cfg
from lorahpo.result import TrialResult, settle
from lorahpo.study import Study


def make_config(objective, **kw):
    data = {
        "name": "t",
        "optimizer": "nomad",
        "budget": 6,
        "space": {"params": {"x": {"type": "real", "low": -2, "high": 2, "x0": -1.0},
                             "y": {"type": "int", "low": -3, "high": 3, "x0": 2}}},
        "objective": objective,
    }
    data.update(kw)
    return cfg.parse(data)


def test_records_hold_params_value_status_times_and_folders(tmp_path, objectives_module):
    study = Study.open(tmp_path / "s", make_config({"python": "testobj:quad"}))
    summary = study.run()
    records = study.records()
    assert summary.stopped == "budget" and summary.finished == 6 and len(records) == 6
    first = records[0]
    assert first.params == {"x": -1.0, "y": 2}  # NOMAD starts at X0
    assert first.value == pytest.approx(4.0 + 1.0)
    assert first.status == "complete" and first.reason is None
    assert first.start <= first.end and first.duration_s > 0
    assert (first.directory / "trial.json").exists() and (first.directory / "result.json").exists()
    assert (tmp_path / "s" / "config.yaml").exists() and (tmp_path / "s" / "study.db").exists()
    assert summary.best.value == min(r.value for r in records)


@pytest.mark.parametrize(
    "objective, reason",
    [
        ({"python": "testobj:boom"}, "ValueError: x must not be positive"),
        ({"python": "testobj:nan_when_positive"}, "not a finite number"),
        ({"python": "testobj:crash"}, "worker exited with code 3"),
        ({"command": f"{sys.executable} -c \"import json,sys; p=json.load(sys.stdin); "
                     "sys.exit(4) if p['x'] > 0 else print(json.dumps({'value': p['x']**2}))\""},
         "command exited with code 4"),
    ],
)
def test_failures_are_recorded_and_the_study_finishes(tmp_path, objectives_module, objective, reason):
    study = Study.open(tmp_path / "s", make_config(objective, budget=8, optimizer="random"))
    summary = study.run()
    records = study.records()
    assert summary.finished == 8 and len(records) == 8
    failed = [r for r in records if r.params["x"] > 0]
    ok = [r for r in records if r.params["x"] <= 0]
    assert failed and ok
    assert all(r.status == "failed" and reason in r.reason for r in failed)
    assert all(r.status == "complete" and math.isfinite(r.value) for r in ok)


@pytest.mark.parametrize(
    "metrics, reason",
    [
        ({"loss": float("nan"), "size": 1.0}, "objective 'loss' is not a finite number (got nan)"),
        ({"loss": 1.0, "size": True}, "objective 'size' is not a finite number (got True)"),
        ({"loss": 1.0}, "objective 'size' is not a finite number (got 'nothing')"),
    ],
)
def test_a_complete_result_without_finite_objectives_is_settled_as_failed(metrics, reason):
    settled, values = settle(TrialResult(metrics=metrics, duration_s=2.0), ["loss", "size"])
    assert (settled.status, settled.reason, settled.metrics, settled.duration_s) == ("failed", reason, metrics, 2.0)
    assert values is None
    assert settle(TrialResult(metrics={"loss": 1, "size": 2.5}), ["loss", "size"])[1] == [1.0, 2.5]
    pruned = TrialResult("pruned", {"loss": 3.0})
    assert settle(pruned, ["loss"]) == (pruned, None)


def test_timeout_kills_the_trial_and_is_recorded(tmp_path, objectives_module):
    space = {"params": {"x": {"type": "real", "low": -2, "high": 2, "x0": 1.0},  # x0 sleeps
                        "y": {"type": "int", "low": -3, "high": 3, "x0": 2}}}
    conf = make_config({"python": "testobj:sleepy"}, budget=3, optimizer="random", trial_timeout=3, space=space)
    summary = Study.open(tmp_path / "s", conf).run()
    records = Study.load(tmp_path / "s").records()
    assert summary.finished == 3 and len(records) == 3
    assert records[0].params["x"] == 1.0
    for r in records:  # a sleeper is stopped at its time-out; the study goes on with the others
        if r.params["x"] > 0:
            assert r.status == "timeout" and r.reason == "timed out after 3 s" and 3 <= r.duration_s < 15
        else:
            expected = (r.params["x"] - 1) ** 2 + (r.params["y"] - 1) ** 2
            assert r.status == "complete" and r.value == pytest.approx(expected)


def test_command_objective_receives_params_and_reports_metrics(tmp_path, objectives_module):
    cmd = f"{sys.executable} -c \"import json,os,sys; p=json.load(sys.stdin); " \
          "e=json.loads(os.environ['LORAHPO_PARAMS']); " \
          "assert p == e; print('noise'); print(json.dumps({'loss': (p['x']-1)**2 + p['y']**2, 'other': 1}))\""
    conf = make_config({"command": cmd, "metric": "loss"}, budget=4)
    study = Study.open(tmp_path / "s", conf)
    study.run()
    r = study.records()[0]
    assert r.status == "complete" and r.value == pytest.approx(4.0 + 4.0)
    assert r.metrics == {"loss": pytest.approx(8.0), "other": 1.0}


def test_budget_counts_the_whole_study_across_runs(tmp_path, objectives_module):
    conf = make_config({"python": "testobj:quad"}, budget=4)
    assert Study.open(tmp_path / "s", conf).run().new_trials == 4
    again = Study.open(tmp_path / "s", conf).run()
    assert again.new_trials == 0 and again.finished == 4
    more = Study.open(tmp_path / "s", make_config({"python": "testobj:quad"}, budget=7)).run()
    assert more.new_trials == 3 and more.finished == 7


def test_a_different_config_is_refused_unless_new(tmp_path, objectives_module):
    Study.open(tmp_path / "s", make_config({"python": "testobj:quad"}, budget=2)).run()
    other = make_config({"python": "testobj:quad"}, budget=2, seed=5)
    with pytest.raises(cfg.ConfigError, match=r"different study \(changed: seed\)"):
        Study.open(tmp_path / "s", other)
    study = Study.open(tmp_path / "s", other, new=True)
    assert study.records() == []
    archived = [p for p in tmp_path.iterdir() if p.name.startswith("s.")]
    assert len(archived) == 1 and (archived[0] / "study.db").exists()


@pytest.mark.parametrize("optimizer", ["tpe", "random", "grid", "optuna.samplers.QMCSampler"])
def test_other_optimizers_start_from_x0_and_finish(tmp_path, objectives_module, optimizer):
    space = {"params": {"x": {"type": "choice", "values": [-1, 0, 1, 2], "x0": 2},
                        "y": {"type": "int", "low": 0, "high": 2, "x0": 0}}}
    study = Study.open(tmp_path / "s", make_config({"python": "testobj:quad"}, optimizer=optimizer, space=space))
    summary = study.run()
    records = study.records()
    assert summary.finished == 6
    if optimizer == "grid":  # a grid has its own points: 6 distinct ones of the 12
        assert len({tuple(r.params.values()) for r in records}) == 6
    else:
        assert records[0].params == {"x": 2, "y": 0}


def test_a_grid_smaller_than_the_budget_is_searched_once_and_the_study_ends(tmp_path, objectives_module):
    space = {"params": {"x": {"type": "choice", "values": [-1, 2]}, "y": {"type": "int", "low": 0, "high": 1}}}
    study = Study.open(tmp_path / "s", make_config({"python": "testobj:quad"}, optimizer="grid", space=space, budget=9))
    summary = study.run()
    assert summary.finished == 4 and summary.stopped == "exhausted"
    assert sorted(tuple(r.params.values()) for r in study.records()) == [(-1, 0), (-1, 1), (2, 0), (2, 1)]


def test_python_objective_returning_metrics(tmp_path, objectives_module):
    study = Study.open(tmp_path / "s", make_config({"python": "testobj:metrics", "metric": "size"}, budget=2))
    study.run()
    assert [r.value for r in study.records()] == [3.0, 3.0]
    assert study.records()[0].metrics["loss"] == pytest.approx(5.0)


def _lora_study(tmp_path, values, keep=1):
    from lorahpo.result import TrialResult

    conf = cfg.parse({
        "name": "l", "budget": len(values), "keep_adapters": keep,
        "space": {"params": {"rank": {"type": "choice", "values": [4, 8, 16], "x0": 8}}},
        "objective": {"lora": {"model": {"name": str(tmp_path / "model")}}},
    })
    study = Study.open(tmp_path / "s", conf)
    for value in values:
        trial = study.optuna_study.ask(conf.space.distributions())
        (study.trial_dir(trial.number) / "adapter").mkdir(parents=True)
        study._tell(trial, TrialResult(metrics={"validation_loss": value}))
    return study


def test_only_the_best_adapters_and_the_start_point_are_kept(tmp_path):
    study = _lora_study(tmp_path, [3.0, 1.0, 2.0, 0.5], keep=2)
    study._prune_adapters()
    kept = sorted(r.number for r in study.records() if (r.directory / "adapter").is_dir())
    assert kept == [0, 1, 3]  # the two best (3, 1) and the start point (0)


def test_resolve_model_spec_names(tmp_path):
    from lorahpo.study import resolve_model_spec

    study = _lora_study(tmp_path, [3.0, 1.0, 2.0], keep=1)
    study._prune_adapters()
    model, adapter = resolve_model_spec(tmp_path / "s", "base")
    assert model.name == str(tmp_path / "model") and adapter is None
    assert resolve_model_spec(tmp_path / "s", "best")[1] == study.trial_dir(1) / "adapter"
    assert resolve_model_spec(tmp_path / "s", "x0")[1] == study.trial_dir(0) / "adapter"
    assert resolve_model_spec(tmp_path / "s", "trial:1")[1] == study.trial_dir(1) / "adapter"
    for name, message in [("trial:2", "no adapter on disk"), ("trial:9", "no trial 9"), ("worst", "unknown model")]:
        with pytest.raises(cfg.ConfigError, match=message):
            resolve_model_spec(tmp_path / "s", name)


def _killed_while_running_the_first_trial(directory, conf):
    """What a driver killed during its first trial leaves: that trial running in the store."""
    from lorahpo.study import attach_sampler

    study = Study.open(directory, conf)
    attach_sampler(study.optuna_study, conf)
    return study.store.ask(conf.space.distributions())


@pytest.mark.parametrize("optimizer", ["tpe", "nomad"])
def test_the_start_point_is_the_trial_that_evaluated_it_after_its_first_evaluation_was_interrupted(
    tmp_path, objectives_module, optimizer
):
    conf = make_config({"python": "testobj:quad"}, optimizer=optimizer, budget=3)
    first = _killed_while_running_the_first_trial(tmp_path / "s", conf)
    assert first.params == {"x": -1.0, "y": 2}
    study = Study.open(tmp_path / "s", conf)
    summary = study.run()
    records = study.records()
    assert records[0].status == "interrupted" and summary.finished == 3
    assert summary.x0 is not None and summary.x0.status == "complete" and summary.x0.params == first.params
    assert study.x0_record() == summary.x0 and summary.x0.number == 1  # evaluated again, next


def test_the_adapter_of_the_start_point_is_kept_when_its_first_evaluation_was_interrupted(tmp_path):
    from lorahpo.study import attach_sampler, resolve_model_spec

    conf = cfg.parse({
        "name": "l", "optimizer": "tpe", "budget": 3, "keep_adapters": 1,
        "space": {"params": {"rank": {"type": "choice", "values": [4, 8, 16], "x0": 8}}},
        "objective": {"lora": {"model": {"name": str(tmp_path / "model")}}},
    })
    interrupted = _killed_while_running_the_first_trial(tmp_path / "s", conf)
    study = Study.open(tmp_path / "s", conf)
    study.store.interrupt_lost()  # as the next run starts
    attach_sampler(study.optuna_study, conf)
    for value in (3.0, 1.0, 2.0):
        trial = study.store.ask(conf.space.distributions())
        (study.trial_dir(trial.number) / "adapter").mkdir(parents=True)
        study._tell(trial, TrialResult(metrics={"validation_loss": value}))
    study._prune_adapters()
    assert study.records()[1].params == interrupted.params  # the start point, evaluated again
    kept = sorted(r.number for r in study.records() if (r.directory / "adapter").is_dir())
    assert kept == [1, 2]  # the start point (1) and the best (2)
    assert resolve_model_spec(tmp_path / "s", "x0")[1] == study.trial_dir(1) / "adapter"


def test_a_multiobjective_study_records_the_reports_of_its_trials(tmp_path, objectives_module):
    # Optuna's Trial.report refuses multi-objective studies; a LoRA trial always reports its validation loss.
    conf = make_config({"python": "testobj:two_curves", "metric": "loss", "secondary": {"size": "minimize"}},
                       optimizer="random", budget=3)
    study = Study.open(tmp_path / "s", conf)
    summary = study.run()
    assert summary.finished == 3 and [r.status for r in study.records()] == ["complete"] * 3
    for t in study.optuna_study.get_trials():
        loss = t.values[0]
        assert t.intermediate_values == {1: pytest.approx(loss + 1.0), 2: pytest.approx(loss + 0.5)}


def test_an_error_in_the_loop_ends_the_running_trials_at_once_and_records_them_interrupted(tmp_path, objectives_module):
    space = {"params": {"x": {"type": "real", "low": -2, "high": 2, "x0": 1.0}}}  # testobj:sleepy sleeps 60 s
    study = Study.open(tmp_path / "s", make_config({"python": "testobj:sleepy"}, space=space, parallel=2))
    calls = []

    def stop_when():
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("the benchmark's clock broke")
        return False

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="clock broke"):
        study.run(stop_when=stop_when)
    assert time.monotonic() - start < 30  # not after the trial's 60 s
    assert study.records()[0].status == "interrupted"
    assert all(r.status != "running" for r in study.records())


def test_a_trial_killed_by_a_signal_without_a_name_fails_alone(tmp_path, objectives_module):
    (tmp_path / "rtsig.py").write_text(
        "import os, signal\n"
        "def f(p):\n"
        "    if p['x'] > 0:\n"
        "        os.kill(os.getpid(), signal.SIGRTMIN + 2)\n"
        "    return p['x'] ** 2\n"
    )
    space = {"params": {"x": {"type": "real", "low": -2, "high": 2, "x0": 1.0}}}
    study = Study.open(tmp_path / "s", make_config({"python": "rtsig:f"}, space=space, budget=3))
    summary = study.run()
    first = study.records()[0]
    assert summary.finished == 3 and first.status == "failed"
    assert first.reason.startswith(f"killed by signal {int(signal.SIGRTMIN) + 2}")
