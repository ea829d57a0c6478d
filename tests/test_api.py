"""The Python API as a notebook or a script uses it: tune, resume, read, interrupt, tables."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

import lorahpo
from lorahpo.cli import main
from lorahpo.errors import UserError
from lorahpo.extras import MissingExtra
from lorahpo.study import Study

TOY = {
    "name": "toy",
    "optimizer": "random",
    "budget": 5,
    "space": {"preset": "paper"},
    "objective": {"python": "lorahpo.toys:lora_surface", "metric": "validation_loss"},
}
PARETO = {
    "name": "pareto",
    "optimizer": "random",
    "budget": 12,
    "space": {"params": {"x": {"type": "real", "low": 0, "high": 2}, "y": {"type": "real", "low": 0, "high": 2}}},
    "objective": {"python": "lorahpo.toys:two_objectives", "secondary": {"cost": "minimize"}},
}


def test_import_lorahpo_stays_light_and_names_the_api():
    code = (
        "import sys, lorahpo\n"
        "heavy = ('torch', 'transformers', 'optuna', 'pandas', 'peft', 'lorahpo.api')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print(heavy, sorted(n for n in dir(lorahpo) if not n.startswith('_')))\n"
        "print(lorahpo.tune.__module__, lorahpo.LoraTrialConfig.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == (
        "[] ['LoraTrialConfig', 'NomadSampler', 'StudyConfig', 'StudyResults', 'TrialRecord', 'TrialResult', "
        "'load', 'run_trial', 'tune']"
    )
    assert out[1] == "lorahpo.api LoraTrialConfig"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        lorahpo.nothing  # noqa: B018


def test_tune_a_mapping_then_resume_with_a_larger_budget(tmp_path):
    study = lorahpo.tune(TOY, study_dir=tmp_path / "s", progress=False)
    assert isinstance(study, lorahpo.StudyResults)
    assert study.run is not None and (study.run.finished, study.run.new_trials, study.run.stopped) == (5, 5, "budget")
    trials = study.trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4] and all(t.status == "complete" for t in trials)
    assert trials[0].params == {"rank": 8, "dropout": 0.1, "alpha": 32, "learning_rate": pytest.approx(1e-5)}
    best = min(trials, key=lambda t: t.value)
    assert study.best is not None and study.best.number == best.number
    assert study.pareto_front == [study.best]  # one objective: the best trial alone
    assert repr(study) == (f"<StudyResults {tmp_path / 's'}: 5/5 finished, "
                           f"best validation_loss = {best.value:.6g} (trial {best.number})>")

    again = lorahpo.tune(TOY, study_dir=tmp_path / "s", progress=False, budget=8)  # an override, as --budget
    assert again.run is not None and (again.run.finished, again.run.new_trials) == (8, 3)
    assert [t.params for t in again.trials[:5]] == [t.params for t in trials]  # the same study, resumed
    assert Study.load(tmp_path / "s").config.budget == 8


def test_the_api_and_the_command_line_share_the_folder_and_the_store(tmp_path, capsys):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(TOY))
    assert main(["tune", str(config), "--study-dir", str(tmp_path / "s"), "--budget", "3"]) == 0
    capsys.readouterr()
    loaded = lorahpo.load(tmp_path / "s")
    assert loaded.run is None and loaded.finished == 3
    resumed = lorahpo.tune(config, study_dir=tmp_path / "s", progress=False, budget=4)
    assert resumed.run is not None and resumed.run.new_trials == 1
    assert main(["status", str(tmp_path / "s"), "--format", "json"]) == 0
    assert [t["number"] for t in json.loads(capsys.readouterr().out)] == [0, 1, 2, 3]
    # A different study in the folder is refused, in one line, as on the command line.
    with pytest.raises(UserError, match=r"holds a different study \(changed: optimizer\)"):
        lorahpo.tune(config, study_dir=tmp_path / "s", progress=False, optimizer="tpe")


def test_pareto_front_and_dataframe_of_a_two_objective_study(tmp_path):
    study = lorahpo.tune(PARETO, study_dir=tmp_path / "p", progress=False)
    front = study.pareto_front
    costs = {t.number: (t.metrics["value"], t.metrics["cost"]) for t in study.trials}
    dominated = {a for a in costs for b in costs
                 if all(x <= y for x, y in zip(costs[b], costs[a], strict=True)) and costs[a] != costs[b]}
    assert sorted(t.number for t in front) == sorted(set(costs) - dominated)
    assert [t.value for t in front] == sorted(t.value for t in front)  # by the main objective

    frame = study.to_dataframe()
    assert list(frame.columns) == ["number", "status", "value", "duration_s", "params_x", "params_y", "metrics_value",
                                   "metrics_cost", "metrics_size", "reason", "fallback", "start", "end"]
    assert frame["number"].tolist() == list(range(12))
    assert frame["metrics_cost"].tolist() == [t.metrics["cost"] for t in study.trials]
    assert frame["params_x"].tolist() == [t.params["x"] for t in study.trials]


def test_dataframe_without_pandas_names_the_extra(tmp_path, monkeypatch):
    study = lorahpo.tune(TOY, study_dir=tmp_path / "s", progress=False, budget=1)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingExtra, match=r"^pandas is not installed; pip install 'lorahpo\[dataframe\]'$"):
        study.to_dataframe()


def test_status_as_csv_has_one_column_per_hyperparameter_and_metric(tmp_path, capsys):
    study = lorahpo.tune(PARETO, study_dir=tmp_path / "p", progress=False, budget=3)
    assert main(["status", str(tmp_path / "p"), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["number"]) for r in rows] == [0, 1, 2]
    for row, trial in zip(rows, study.trials, strict=True):
        assert row["status"] == "complete" and row["reason"] == ""
        assert float(row["params_x"]) == trial.params["x"] and float(row["metrics_cost"]) == trial.metrics["cost"]
        assert float(row["value"]) == trial.value and row["start"] == trial.start.isoformat()
    with pytest.raises(SystemExit) as exit_:
        main(["status", str(tmp_path / "p"), "--format", "yaml"])
    assert exit_.value.code == 2 and "invalid choice: 'yaml'" in capsys.readouterr().err


def test_a_bad_config_is_one_user_error_and_writes_nothing(tmp_path):
    with pytest.raises(UserError, match=r"^config: budget: Input should be greater than or equal"):
        lorahpo.tune(TOY, study_dir=tmp_path / "s", budget=0)
    with pytest.raises(UserError, match=r"^config file not found: .*missing.yaml$"):
        lorahpo.tune(tmp_path / "missing.yaml", study_dir=tmp_path / "s")
    with pytest.raises(UserError, match=r"is not a lorahpo study folder"):
        lorahpo.load(tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_in_a_notebook_stops_the_study_and_the_kernel_goes_on(tmp_path):
    """SIGINT, as a notebook's interrupt button sends it: tune returns, the interpreter lives on."""
    script = tmp_path / "notebook.py"
    script.write_text(textwrap.dedent(f"""
        import os
        import lorahpo
        config = dict({TOY!r}, budget=40, objective={{"python": "lorahpo.toys:timed_sphere"}},
                      space={{"params": {{"x": {{"type": "real", "low": -1, "high": 1}}}}}})
        os.environ["LORAHPO_TOY_SLEEP_S"] = "0.5"
        study = lorahpo.tune(config, study_dir="s", progress=False)
        print("returned", study.run.stopped, study.run.finished, flush=True)
        print("statuses", sorted({{t.status for t in study.trials}}), flush=True)
        os.environ["LORAHPO_TOY_SLEEP_S"] = "0"
        again = lorahpo.tune(config, study_dir="s", progress=False, budget=study.run.finished + 2)
        print("resumed", again.run.stopped, again.run.finished, flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    def two_done_and_one_running():
        folders = [d for d in tmp_path.glob("s/trials/*") if d.is_dir()]
        done = sum((d / "result.json").exists() for d in folders)
        return done >= 2 and done < len(folders)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not two_done_and_one_running():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # while a trial runs (each takes at least 0.5 s), however loaded the machine
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    stopped, finished = lines["returned"].split()
    assert stopped == "interrupted" and 1 <= int(finished) < 40  # result files appear just before the store is told
    assert "interrupted" in lines["statuses"]  # the trial that was running when the interrupt came
    assert lines["resumed"] == f"budget {int(finished) + 2}"
