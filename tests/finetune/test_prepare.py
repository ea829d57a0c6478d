"""What the data gave, told once before the first trial; too little data refused; one trial in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import lorahpo
from lorahpo.errors import UserError
from lorahpo.finetune.data import DataError
from lorahpo.finetune.prepare import prepare

from .tiny import instruction_rows

LONG_PROMPT = {"instruction": "Name the colour.", "input": "The thing is the sky. " * 80, "output": "Blue."}
LONG_ANSWER = {"instruction": "Count from 1 to 200.", "input": "", "output": " ".join(map(str, range(1, 201)))}


def messy_data(path: Path) -> Path:
    """The tiny rows, with 3 lines that are not JSON (the first at line 21), 2 rows whose prompt
    alone is longer than max_length 128 (dropped) and 2 whose answer runs past it (truncated)."""
    lines = [json.dumps(row) for row in instruction_rows()]
    lines[20:20] = ['{"instruction": "broken"', "not json at all"]
    lines.append("{")
    lines += [json.dumps(LONG_PROMPT)] * 2 + [json.dumps(LONG_ANSWER)] * 2
    path.write_text("\n".join(lines) + "\n")
    return path


def study_yaml(folder: Path, model: Path, data: Path, **training: object) -> Path:
    config = {
        "name": "tiny",
        "optimizer": "random",
        "budget": 1,
        "space": {"params": {"learning_rate": {"type": "real", "low": 1e-3, "high": 1e-2, "log": True, "x0": 5e-3}}},
        "objective": {"lora": {
            "model": {"name": str(model)},
            "data": {"preset": None, "sources": [{"path": str(data)}], "max_length": 128},
            "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
            "training": {"batch_size": 4, "effective_batch_size": 4, "max_steps": 1, "device": "cpu",
                         "precision": "fp32", **training},
        }},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


EXPECTED = ("Data: messy.jsonl (alpaca): 55 read, 52 used, 3 malformed (first: line 21 is not valid JSON), "
            "2 truncated, 2 dropped as too long.")


def test_prepare_reads_splits_and_tokenizes_the_data_as_a_trial_does(tiny, tmp_path):
    data = messy_data(tmp_path / "messy.jsonl")
    config = tiny.config()
    config.data.sources[0].path = str(data)
    report = prepare(config)
    assert report.summary().startswith(EXPECTED)
    assert report.train + report.validation == 52 - 2  # every used row but the dropped ones
    assert report.summary().endswith(f" Split: {report.train} train, {report.validation} validation.")


def test_fewer_validation_examples_than_a_batch_is_refused(tiny, tmp_path):
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps(row) + "\n" for row in instruction_rows(12)))
    config = tiny.config()
    config.data.sources[0].path = str(small)
    refusal = (r"^data: 2 validation example\(s\) left, fewer than one batch \(4\): "
               r"Data: small\.jsonl \(alpaca\): 12 read, 12 used\. Split: 10 train, 2 validation\.$")
    with pytest.raises(DataError, match=refusal):
        prepare(config)
    prepare(config, batch_size=2)  # a space that may give a trial batches of 2


def test_tune_tells_the_data_once_status_and_report_show_it(tiny, tmp_path):
    data = messy_data(tmp_path / "messy.jsonl")
    config = study_yaml(tmp_path, tiny.model_dir, data)
    env = {**os.environ, "LORAHPO_NUM_THREADS": "1"}

    def lorahpo_cli(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lorahpo.cli", *map(str, args)], capture_output=True, text=True,
                              env=env, stdin=subprocess.DEVNULL)

    run = lorahpo_cli("tune", config, "--study-dir", tmp_path / "s")
    assert run.returncode == 0, run.stderr
    told = [line for line in run.stderr.splitlines() if line.startswith("Data: ")]
    assert len(told) == 1 and told[0].startswith(EXPECTED)
    summary = told[0]
    assert "finished 1/1 evaluations" in run.stdout
    assert summary in (tmp_path / "s" / "trials" / "0" / "stdout.log").read_text()  # the trial says it too

    status = lorahpo_cli("status", tmp_path / "s")
    assert status.returncode == 0 and summary in status.stdout.replace("\n", " ")
    assert lorahpo.load(tmp_path / "s").data_summary == summary
    paths = lorahpo.load(tmp_path / "s").report(tmp_path / "report")
    assert summary in paths["markdown"].read_text()
    assert f'<p class="note" id="data">{summary}</p>' in paths["html"].read_text()


def test_too_little_data_is_one_line_exit_2_and_writes_nothing(tiny, tmp_path):
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps(row) + "\n" for row in instruction_rows(12)))
    config = study_yaml(tmp_path, tiny.model_dir, small)
    run = subprocess.run([sys.executable, "-m", "lorahpo.cli", "tune", str(config), "--study-dir",
                          str(tmp_path / "s")], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "lorahpo: error: data: 2 validation example(s) left, fewer than one batch (4): "
        "Data: small.jsonl (alpaca): 12 read, 12 used. Split: 10 train, 2 validation."
    ]
    assert not (tmp_path / "s").exists()
    with pytest.raises(UserError, match="fewer than one batch"):
        lorahpo.tune(config, study_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_run_trial_trains_one_configuration_in_this_process(tiny, tmp_path):
    curves: list[tuple[int, dict[str, float]]] = []
    result = lorahpo.run_trial(tiny.config(max_steps=2, eval_every=1), tmp_path / "t",
                               curve=lambda step, values: curves.append((step, values)))
    assert result.status == "complete", result.reason
    metrics = result.metrics
    assert metrics["steps"] == 2 and metrics["validation_loss"] < metrics["initial_validation_loss"]
    assert [s for s, _ in result.intermediate] == [1, 2]
    assert (tmp_path / "t" / "adapter" / "adapter_config.json").is_file()
    log = [json.loads(line) for line in (tmp_path / "t" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    # The curves, as tracking logs them: the same numbers as train_log.jsonl, by step.
    renamed = {"loss": "train_loss", "lr": "learning_rate", "tokens": "train_tokens"}
    assert curves == [(r["step"], {renamed.get(k, k): v for k, v in r.items() if k != "step"}) for r in log]
    assert curves[-1] == (2, {"validation_loss": metrics["validation_loss"]})

    as_mapping = lorahpo.run_trial(tiny.config(max_steps=2, eval_every=1).model_dump())  # the YAML section
    assert as_mapping.metrics["validation_loss"] == pytest.approx(result.metrics["validation_loss"])
    with pytest.raises(UserError, match=r"^trial config: "):
        lorahpo.run_trial({"training": {"batch_size": 0}})


def test_too_few_rows_for_an_evaluators_shots_is_one_line_exit_2_and_writes_nothing(tiny, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in instruction_rows()))
    questions = tmp_path / "q.jsonl"
    rows = [{"question": f"Is {i} even?", "choices": ["yes", "no"], "answer": i % 2} for i in range(4)]
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = study_yaml(tmp_path, tiny.model_dir, data)
    study = yaml.safe_load(config.read_text())
    study["objective"]["lora"]["evaluate"] = [{"name": "qa", "kind": "choice", "path": str(questions), "size": 2,
                                                "shots": 3}]
    config.write_text(yaml.safe_dump(study))
    run = subprocess.run([sys.executable, "-m", "lorahpo.cli", "tune", str(config), "--study-dir",
                          str(tmp_path / "s")], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines() == [
        f"lorahpo: error: evaluator qa: 3 shots need 3 rows besides the 2 asked; {questions} has 2"
    ]
    assert not (tmp_path / "s").exists()
