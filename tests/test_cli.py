"""The command line as a user meets it: help, bad configs, status/best, kill -9 and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lorahpo.cli import main
from lorahpo.study import Study

TOY = {
    "name": "toy",
    "optimizer": "nomad",
    "budget": 10,
    "space": {"preset": "paper"},
    "objective": {"python": "lorahpo.toys:lora_surface", "metric": "validation_loss"},
}


def lorahpo(*args, cwd=None, check=False):
    proc = subprocess.run([sys.executable, "-m", "lorahpo.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_help_is_fast_and_does_not_import_torch():
    # CPU seconds, which other processes on a busy machine do not inflate: --help takes about
    # 0.15 s; importing torch alone takes 2.6 s (2-core AMD EPYC).
    code = (
        "import sys, time\n"
        "start = time.process_time()\n"
        "from lorahpo.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(time.process_time() - start, 'torch' in sys.modules, 'optuna' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    cpu_s, torch_loaded, optuna_loaded = out.strip().splitlines()[-1].split()
    assert (torch_loaded, optuna_loaded) == ("False", "False")
    assert float(cpu_s) < 1.0
    for cmd in ("tune", "status", "best"):
        assert lorahpo(cmd, "--help", check=True).stdout.startswith("usage: lorahpo " + cmd)


def _with(**changes):
    data = json.loads(json.dumps(TOY))
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        if value is _DROP:
            node.pop(last)
        else:
            node[last] = value
    return data


_DROP = object()

BAD_CONFIGS = {
    "unknown_key": (_with(colour="blue"), "colour: unknown key"),
    "wrong_type": (_with(budget="many"), "budget: Input should be a valid integer"),
    "zero_budget": (_with(budget=0), "budget: Input should be greater than or equal to 1"),
    "low_above_high": (_with(space={"params": {"x": {"type": "real", "low": 2, "high": 1}}}), "low (2.0) > high (1.0)"),
    "x0_outside": (_with(space={"params": {"x": {"type": "int", "low": 0, "high": 5, "x0": 9}}}),
                   "x0 9 is outside [0.0, 5.0]"),
    "x0_not_a_choice": (_with(space={"params": {"r": {"type": "choice", "values": [4, 8], "x0": 5}}}),
                        "x0 5 is not one of the values"),
    "unknown_optimizer": (_with(optimizer="simulated-annealing"), "unknown optimizer 'simulated-annealing'"),
    "warm_start_missing": (_with(warm_start=["no/such/study"]),
                           "warm_start: no/such/study is not a lorahpo study folder (no config.yaml)"),
    "curve_pruner_option": (_with(pruner="curve", pruner_options={"top_k": 0}),
                            "pruner: curve: top_k must be an integer >= 1, got 0"),
    "bad_import_path": (_with(optimizer="no.such.Sampler"), "cannot import optimizer 'no.such.Sampler'"),
    "unknown_param_type": (_with(space={"params": {"x": {"type": "float", "low": 0, "high": 1}}}),
                           "space.params.x.type"),
    "log_nonpositive": (_with(space={"params": {"x": {"type": "real", "low": 0, "high": 1, "log": True}}}),
                        "log scale needs low > 0"),
    "empty_space": (_with(space={}), "give a `preset` or at least one parameter"),
    "unknown_preset": (_with(space={"preset": "best"}), "space.preset"),
    "two_objectives": (_with(objective={"python": "a:b", "command": "x"}),
                       "give exactly one of python, command, lora or tabular"),
    "no_objective": (_with(objective={}), "give exactly one of python, command, lora or tabular (got none)"),
    "python_not_module_function": (_with(objective={"python": "lorahpo.toys.sphere"}),
                                   "python must look like `module:function`"),
    "lora_unknown_field": (_with(objective={"lora": {"training": {"learnin_rate": 1e-4}}}),
                           "objective.lora.training.learnin_rate: unknown key"),
    "lora_bad_batch": (_with(objective={"lora": {"training": {"batch_size": 3, "effective_batch_size": 8}}}),
                       "must be a multiple of batch_size"),
    "lora_space_not_tunable": (_with(objective={"lora": {}},
                                     space={"params": {"colour": {"type": "int", "low": 0, "high": 1}}}),
                               "not LoRA trial hyperparameters"),
    "choice_without_values": (_with(space={"params": {"r": {"type": "choice"}}}),
                              "a choice needs a non-empty `values` list"),
    "negative_parallel": (_with(parallel=-1), "parallel: Input should be greater than or equal to 1"),
    "not_a_mapping": ("- just\n- a list\n", "expected a mapping of settings"),
    "bad_yaml": ("budget: [1, 2\n", "not valid YAML"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, name):
    data, message = BAD_CONFIGS[name]
    config = write(tmp_path / "bad.yaml", data)
    proc = lorahpo("tune", config, "--study-dir", tmp_path / "study")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lorahpo: error: ") and message in lines[0], lines[0]
    assert not (tmp_path / "study").exists()


def test_missing_config_file(tmp_path):
    proc = lorahpo("tune", tmp_path / "nope.yaml")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"lorahpo: error: config file not found: {tmp_path / 'nope.yaml'}"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["report", "DIR", "--top", "x"], "argument --top: invalid int value: 'x' (see `lorahpo report --help`)"),
        (["preference", "serve"], "the following arguments are required: DIR (see `lorahpo preference serve --help`)"),
        (["tune", "--parallel"], "argument --parallel: expected one argument (see `lorahpo tune --help`)"),
    ],
)
def test_a_bad_argument_is_one_line_exit_2(tmp_path, monkeypatch, capsys, argv, line):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert capsys.readouterr() == ("", f"lorahpo: error: {line}\n")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_an_out_that_is_a_file(tmp_path, capsys):
    taken = write(tmp_path / "taken", "mine")
    assert main(["export", str(tmp_path / "study"), "--out", str(taken)]) == 2
    assert capsys.readouterr() == ("", f"lorahpo: error: --out: {taken} exists and is not a folder\n")
    assert taken.read_text() == "mine"


def test_bad_command_line_override(tmp_path):
    proc = lorahpo("tune", write(tmp_path / "c.yaml", TOY), "--optimizer", "magic", "--study-dir", tmp_path / "s")
    assert proc.returncode == 2 and "unknown optimizer 'magic'" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_status_and_best_on_a_finished_study(tmp_path):
    config = write(tmp_path / "c.yaml", TOY)
    run = lorahpo("tune", config, "--study-dir", tmp_path / "s", "--budget", 5, check=True)
    assert "finished 5/5 evaluations" in run.stdout and "best     validation_loss" in run.stdout
    status = json.loads(lorahpo("status", tmp_path / "s", "--json", check=True).stdout)
    assert [t["number"] for t in status] == [0, 1, 2, 3, 4]
    assert status[0]["params"] == {"rank": 8, "dropout": 0.1, "alpha": 32, "learning_rate": pytest.approx(1e-5)}
    assert all(t["status"] == "complete" and t["duration_s"] > 0 for t in status)
    best = json.loads(lorahpo("best", tmp_path / "s", "--top", "2", "--json", check=True).stdout)
    values = sorted(t["value"] for t in status)
    assert [b["value"] for b in best] == values[:2]
    text = lorahpo("best", tmp_path / "s", check=True).stdout.splitlines()
    assert text[0].startswith(f"trial {best[0]['number']}: validation_loss = {best[0]['value']:.6g}  rank=")
    assert sum(line.startswith("trial ") for line in text) == 1  # the best one only, without --top
    assert lorahpo("status", tmp_path / "nothing").returncode == 2


def _points(study_dir: Path) -> list[tuple]:
    records = Study.load(study_dir).records()
    return [tuple(r.params.values()) for r in records if r.status not in ("running", "interrupted")]


# Over 20 s each; NOMAD, whose state is replayed on resume, runs by default.
@pytest.mark.parametrize("optimizer", ["nomad", pytest.param("tpe", marks=pytest.mark.slow)])
def test_sigkill_then_resume_gives_the_uninterrupted_sequence(tmp_path, optimizer):
    config = write(tmp_path / "c.yaml", {**TOY, "optimizer": optimizer, "budget": 12})
    lorahpo("tune", config, "--study-dir", tmp_path / "full", check=True)
    expected = _points(tmp_path / "full")
    assert len(expected) == 12

    proc = subprocess.Popen([sys.executable, "-m", "lorahpo.cli", "tune", str(config), "--study-dir",
                             str(tmp_path / "cut")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if len(list((tmp_path / "cut" / "trials").glob("*/result.json"))) >= 5:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _points(tmp_path / "cut")
    assert 3 <= len(done_before) < 12  # result files appear just before the store is told

    resumed = lorahpo("tune", config, "--study-dir", tmp_path / "cut", check=True)
    assert "finished 12/12" in resumed.stdout
    assert _points(tmp_path / "cut") == expected
    assert _points(tmp_path / "cut")[: len(done_before)] == done_before  # nothing completed was lost


def test_status_shows_each_evaluator_against_the_base_model_and_the_constraints(tmp_path, monkeypatch, capsys):
    from studies import DROP_BOUND, INFEASIBLE, TRIALS, evaluated_study

    evaluated_study(tmp_path / "s")
    monkeypatch.setenv("COLUMNS", "300")  # one line per trial: no folded cells
    assert main(["status", str(tmp_path / "s")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "validation_loss" in line)
    assert [c.strip() for c in header.strip("┃│ ").split("┃")][:6] == [
        "#",
        "status",
        "validation_loss",
        "retention (vs base)",
        "in_domain (vs base)",
        f"retention_drop <= {DROP_BOUND:g}",
    ]
    rows = {int(cells[0]): cells for line in lines
            if (cells := [c.strip() for c in line.strip("│ ").split("│")])[0].isdigit()}
    # trial 1: retention 0.41 = base 0.45 - 0.04; in_domain 0.30 = base 0.10 + 0.20
    assert rows[1][3:6] == ["0.41 (-0.04)", "0.3 (+0.2)", "0.04"]
    assert rows[INFEASIBLE][5] == "0.07 (over)"
    assert rows[len(TRIALS)][1:6] == ["failed", "", "", "", ""]
    # --json keeps every metric of every trial
    assert main(["status", str(tmp_path / "s"), "--json"]) == 0
    dumped = json.loads(capsys.readouterr().out)
    assert dumped[1]["metrics"]["retention_logprob_drop"] == 0.01 and dumped[1]["metrics"]["in_domain_se"] == 0.04


def test_best_names_evaluators_base_values_drops_and_the_constraints_met(tmp_path, capsys):
    from studies import BEST, evaluated_study

    evaluated_study(tmp_path / "s")
    assert main(["best", str(tmp_path / "s")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"trial {BEST}: validation_loss = 0.85  rank=8")
    assert lines[1:4] == [
        "    retention 0.42 ± 0.05 (base 0.45, drop +0.03)",
        "    in_domain 0.36 ± 0.04 (base 0.1, drop -0.26)",
        "    meets retention_drop = 0.03 <= 0.05",
    ]
    # What no line above shows is still there, raw.
    assert json.loads(lines[4]) == {"initial_validation_loss": 1.5, "retention_logprob": -1.2,
                                    "retention_logprob_drop": 0.01, "evaluation_s": 3.0}
    assert len(lines) == 5


def test_status_counts_the_trials_sampled_at_random_for_lack_of_a_nomad_point(tmp_path, capsys):
    from optuna.trial import create_trial
    from studies import evaluated_study

    from lorahpo.samplers.nomad import FALLBACK_ATTR

    study = evaluated_study(tmp_path / "s")
    conf = study.config
    for alpha in (2, 4):  # as NomadSampler marks a trial it had no point for (an exhausted space)
        study.optuna_study.add_trial(create_trial(
            params=dict(conf.space.x0(), alpha=alpha), distributions=conf.space.distributions(), values=[1.0],
            user_attrs={"status": "complete", "metrics": {conf.objective.metric_name: 1.0}},
            system_attrs={FALLBACK_ATTR: "exhausted"},
        ))
    assert main(["status", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "2 trial(s) sampled at random, the optimizer having no point (2 exhausted)" in out
    assert main(["status", str(tmp_path / "s"), "--json"]) == 0
    dumped = json.loads(capsys.readouterr().out)
    assert [t["fallback"] for t in dumped][-3:] == [None, "exhausted", "exhausted"]
