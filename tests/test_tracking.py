"""Experiment tracking, read back from what the real libraries wrote: MLflow's SQLite store through
``mlflow.search_runs``, W&B's offline run files, TensorBoard event files through tensorboard's reader."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ci import unavailable

import lorahpo
from lorahpo.extras import MissingExtra
from lorahpo.tracking import CurveLogger

OBJECTIVE = '''
import os, signal, time

def curve(p, report=None):
    """Four reported steps, then a result; any n but the start point's is killed after its curve."""
    for step in range(1, 5):
        report(step, p["n"] + 1.0 / step)
    if p["n"] > 0:
        time.sleep(2)  # W&B writes its run file every second
        os.kill(os.getpid(), signal.SIGKILL)
    return {"value": p["n"], "size": 3.0}
'''


def wandb_runs(folder: Path) -> dict[str, dict[str, Any]]:
    """The offline runs under W&B's folder, read from their ``.wandb`` files, by run id: ``run``
    (the run record), ``history`` (logged rows), ``summary`` and ``exit_code``; a run written by
    two processes (curves, then outcome) is merged, as ``wandb sync`` does."""
    from wandb.proto import wandb_internal_pb2

    runs: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        for raw in _log_records(path.read_bytes()):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = runs.setdefault(record.run.run_id, {"history": [], "summary": {}, "exit_code": []})
                run["run"] = record.run
            elif kind == "history":
                run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in record.history.item})
            elif kind == "summary":
                run["summary"].update({i.key: json.loads(i.value_json) for i in record.summary.update if i.key})
            elif kind == "exit":
                run["exit_code"].append(record.exit.exit_code)
    return runs


def _log_records(data: bytes) -> Iterator[bytes]:
    """Records of a LevelDB-format log (W&B's transaction log): a 7-byte file header, then chunks of
    (crc32 4, length 2, type 1: full, first, middle, last) in blocks of 32 KiB."""
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the block's tail is padding
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            yield pending


def _study(tmp_path, tracking):
    (tmp_path / "tracked.py").write_text(OBJECTIVE)
    return {
        "name": "tracked",
        "optimizer": "random",
        "budget": 2,
        "trial_timeout": 300,
        "space": {"params": {"n": {"type": "int", "low": 0, "high": 1000, "x0": 0}}},
        "objective": {"python": "tracked:curve"},
        "tracking": tracking,
    }


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        unavailable(f"{module} is not installed (pip install 'lorahpo[tracking]')")


@pytest.fixture
def importable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # trial processes import the objective from their working folder
    monkeypatch.syspath_prepend(str(tmp_path))


def test_mlflow_wandb_and_tensorboard_get_each_trial_its_curve_and_its_outcome(tmp_path, importable):
    try:
        import mlflow
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        from tensorboard.util import tensor_util
        from wandb.proto import wandb_internal_pb2  # noqa: F401
    except ImportError as exc:
        unavailable(f"the tracking extra is not installed ({exc})")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = {"mlflow": {"tracking_uri": uri, "experiment": "lora"}, "tensorboard": {"dir": str(tmp_path / "tb")},
                "wandb": {"project": "lora", "mode": "offline", "dir": str(tmp_path)}}
    study = lorahpo.tune(_study(tmp_path, tracking), study_dir=tmp_path / "s", progress=False)
    first, second = study.trials
    assert (first.params["n"], first.status, second.status) == (0, "complete", "failed") and second.params["n"] > 0

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["lora"])
    parent = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert parent["tags.mlflow.runName"].tolist() == ["tracked"] and parent["status"].tolist() == ["FINISHED"]
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]].set_index("tags.lorahpo.trial")
    assert children["params.n"].to_dict() == {"0": "0", "1": str(second.params["n"])}
    done, killed = children.loc["0"], children.loc["1"]
    assert (done["status"], done["tags.lorahpo.status"], done["metrics.size"]) == ("FINISHED", "complete", 3.0)
    assert done["metrics.value"] == 0.0  # the final value is the latest
    assert (killed["status"], killed["tags.lorahpo.status"], killed["tags.lorahpo.reason"]) == (
        "FAILED", "failed", second.reason)
    assert {done["tags.lorahpo.study"], killed["tags.lorahpo.optimizer"]} == {"tracked", "random"}
    client = mlflow.tracking.MlflowClient(uri)
    for trial, row in ((first, done), (second, killed)):
        history = [(m.step, m.value) for m in client.get_metric_history(row["run_id"], "value")]
        curve = [(step, pytest.approx(trial.params["n"] + 1.0 / step)) for step in range(1, 5)]
        assert history[:4] == curve  # logged by the trial process, step by step, before it ended or was killed
    assert [(m.step, m.value) for m in client.get_metric_history(done["run_id"], "value")][4:] == [(4, 0.0)]

    for trial in study.trials:
        events = EventAccumulator(str(tmp_path / "tb" / "tracked" / f"trial-{trial.number}"),
                                  size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        assert [(e.step, e.value) for e in events.Scalars("value")] == [
            (step, pytest.approx(trial.params["n"] + 1.0 / step)) for step in range(1, 5)
        ]
        text = tensor_util.make_ndarray(events.Tensors("status")[0].tensor_proto).item().decode()
        assert text == trial.status + (f": {trial.reason}" if trial.reason else "")
        assert "_hparams_/session_start_info" in events.Tags()["tensors"]
    events = EventAccumulator(str(tmp_path / "tb" / "tracked" / "trial-0"))
    events.Reload()
    assert [e.value for e in events.Scalars("final/size")] == [3.0]

    by_trial = {}
    for run in wandb_runs(tmp_path).values():
        config = {i.key: json.loads(i.value_json) for i in run["run"].config.update}
        by_trial[config["lorahpo.trial"]] = (run, config)
    assert sorted(by_trial) == [0, 1]
    for trial in study.trials:
        run, config = by_trial[trial.number]
        assert (run["run"].run_group, run["run"].display_name) == ("tracked", f"trial {trial.number}")
        assert list(run["run"].tags) == ["tracked", "random", f"trial-{trial.number}"]
        assert config["n"] == trial.params["n"]
        assert [(row["step"], row["value"]) for row in run["history"]] == [
            (step, pytest.approx(trial.params["n"] + 1.0 / step)) for step in range(1, 5)
        ]
        assert (run["summary"]["status"], run["summary"]["reason"]) == (trial.status, trial.reason or "")
    assert by_trial[0][0]["summary"]["size"] == 3.0 and by_trial[0][0]["exit_code"][-1] == 0
    assert by_trial[1][0]["exit_code"][-1] == 1  # killed: the study ended its run as failed


def test_a_broken_tracker_is_one_warning_and_the_study_goes_on(tmp_path, importable, capsys):
    _need("mlflow")
    tracking = {"mlflow": {"tracking_uri": "nowhere://at/all"}}
    study = lorahpo.tune(_study(tmp_path, tracking), study_dir=tmp_path / "s", progress=False, budget=1)
    assert [t.status for t in study.trials] == ["complete"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("lorahpo: warning: mlflow tracking failed (opening the study")
    assert warnings[0].endswith("the study goes on without it")


def test_a_trial_whose_tracker_fails_warns_once_and_goes_on(tmp_path, capsys):
    _need("tensorboard")
    (tmp_path / "taken").write_text("a file where the run's folder should be")
    curves = CurveLogger({"tensorboard": {"dir": str(tmp_path / "taken")}})
    curves.log(1, {"loss": 1.0})
    curves.log(2, {"loss": 0.5})
    curves.close()
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("lorahpo: warning: tensorboard tracking failed")


def test_tracking_without_its_package_names_the_extra(tmp_path, importable, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    tracking = {"mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    with pytest.raises(MissingExtra, match=r"^mlflow is not installed; pip install 'lorahpo\[tracking\]'$"):
        lorahpo.tune(_study(tmp_path, tracking), study_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()
