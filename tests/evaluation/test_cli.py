"""``lorahpo evaluate`` on the command line: arguments, the dry run, and a light start-up."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from lorahpo.cli import main
from lorahpo.evaluation.cli import add_arguments

from .conftest import lora_study


def parse(argv):
    parser = argparse.ArgumentParser(prog="lorahpo")
    add_arguments(parser.add_subparsers())
    return parser.parse_args(argv)


def test_registering_the_commands_imports_nothing_heavy():
    code = (
        "import argparse, sys\n"
        "from lorahpo.evaluation.cli import add_arguments as a\n"
        "from lorahpo.report.cli import add_arguments as b\n"
        "p = argparse.ArgumentParser(); s = p.add_subparsers(); a(s); b(s)\n"
        "print(sorted(m for m in ('torch', 'lm_eval', 'matplotlib', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_arguments_have_the_documented_defaults(tmp_path):
    args = parse(["evaluate", str(tmp_path)])
    assert (args.top, args.tasks, args.limit, args.device, args.batch_size) == (3, None, None, "auto", 8)
    args = parse(["evaluate", str(tmp_path), "--top", "5", "--tasks", "mmlu,bbh", "drop", "--limit", "4"])
    assert (args.top, args.tasks, args.limit) == (5, ["mmlu,bbh", "drop"], 4)


def test_a_dry_run_lists_the_pairs_to_run(tmp_path, tiny_model, task_cache, capsys, monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # the command sets them
        monkeypatch.setenv(name, "1")
    a, b = tiny_model.adapters
    lora_study(tmp_path / "s", str(tiny_model.base), [(2.5, a), (2.0, b)])
    args = parse(["evaluate", str(tmp_path / "s"), "--top", "1", "--limit", "2", "--dry-run"])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    assert "models: base (base), trial-0 (x0), trial-1 (top-1)" in err
    assert "6 to run, 0 stored" in err
    assert out.splitlines() == [
        f"would run {m} on {t}" for m in ("base", "trial-0", "trial-1") for t in ("bbh-bigbench", "humaneval-offline")
    ]


def test_without_lm_eval_a_run_is_one_line_exit_2_and_stores_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` fails as if it were absent
    assert main(["evaluate", str(tmp_path), "--tasks", "mmlu"]) == 2
    assert capsys.readouterr() == ("", "lorahpo: error: lm_eval is not installed; pip install 'lorahpo[eval]'\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--top", "-1"], "--top must be >= 0, --limit and --batch-size >= 1"),
        (["--limit", "0"], "--top must be >= 0, --limit and --batch-size >= 1"),
        (["--batch-size", "0"], "--top must be >= 0, --limit and --batch-size >= 1"),
        (["--tasks", ","], "--tasks: no task given"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main(["evaluate", str(tmp_path), *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"lorahpo: error: {message}\n"
    assert list(tmp_path.iterdir()) == []


def test_without_the_sandbox_humaneval_is_refused_in_one_line(tmp_path, tiny_model, no_sandbox, capsys):
    lora_study(tmp_path / "s", str(tiny_model.base), [(2.5, None)])
    assert main(["evaluate", str(tmp_path / "s"), "--tasks", "humaneval-offline"]) == 2
    out, err = capsys.readouterr()
    error = [line for line in err.splitlines() if line.startswith("lorahpo: error:")]
    assert error == [err.splitlines()[-1]] and out == ""
    assert "apt-get install bubblewrap" in error[0] and error[0].endswith("(--allow-unsandboxed)")
    assert not (tmp_path / "s" / "evaluation").exists()
    assert parse(["evaluate", str(tmp_path), "--allow-unsandboxed"]).allow_unsandboxed
