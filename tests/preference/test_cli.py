"""The ``generate`` and ``preference`` commands, parsed as the main ``lorahpo`` parser will."""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import pytest

from lorahpo.cli import main
from lorahpo.errors import UserError
from lorahpo.finetune.config import ModelConfig
from lorahpo.preference.cli import add_arguments
from lorahpo.preference.store import VoteStore

from .conftest import votes_db


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lorahpo")
    add_arguments(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_arguments_and_defaults():
    parser = argparse.ArgumentParser(prog="lorahpo")
    add_arguments(parser.add_subparsers(required=True))
    gen = parser.parse_args(["generate", "DIR", "--models", "base,best", "--prompts", "builtin"])
    assert (gen.study_dir, gen.models, gen.max_new_tokens, gen.temperature, gen.seed, gen.template) == (
        Path("DIR"),
        "base,best",
        256,
        0.0,
        0,
        None,
    )
    serve = parser.parse_args(["preference", "serve", "DIR"])
    assert (serve.host, serve.port) == ("127.0.0.1", 8000)
    results = parser.parse_args(["preference", "results", "DIR", "--csv", "out.csv"])
    assert results.csv == Path("out.csv")
    with pytest.raises(SystemExit):
        parser.parse_args(["preference", "serve", "DIR", "--port", "eighty"])


def test_results_prints_the_summary_and_writes_csv(study, tmp_path, capsys):
    store = VoteStore(votes_db(study))
    for rater, choice in [("alice", "A"), ("bob", "A"), ("carol", "tie")]:
        pair = store.add_pair(rater, "q1", "zeta-best", "zeta-worst")
        store.record_vote(pair.id, rater, choice)

    assert run("preference", "results", str(study), "--csv", str(tmp_path / "votes.csv")) == 0
    out = capsys.readouterr().out
    assert "3 votes by 3 raters" in out
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    # zeta-best scores 1, 1 and 0.5 (a tie): win rate 2.5 / 3. Bootstrap means of 3 such votes run
    # from 0.5 (all ties, chance 1/27 > 2.5%) to 1 (no tie, chance 8/27 > 2.5%).
    assert ["zeta-best", "2", "1", "0", "3", "83.3%", "50.0% – 100.0%"] in rows
    assert ["zeta-worst", "0", "1", "2", "3", "16.7%", "0.0% – 50.0%"] in rows
    # Two models: Bradley-Terry strengths are the win rates.
    assert ["1", "zeta-best", "0.833"] in rows and ["2", "zeta-worst", "0.167"] in rows
    assert len((tmp_path / "votes.csv").read_text().splitlines()) == 4


def test_commands_fail_with_a_message_when_data_is_missing(tmp_path):
    with pytest.raises(UserError, match="votes.db not found"):
        run("preference", "results", str(tmp_path))
    with pytest.raises(UserError, match="answers.jsonl not found"):
        run("preference", "serve", str(tmp_path))
    with pytest.raises(UserError, match=r"^--prompts: cannot read .*nope.jsonl: No such file or directory$"):
        run("generate", str(tmp_path), "--models", "base", "--prompts", str(tmp_path / "nope.jsonl"))


def test_a_bad_csv_path_is_one_line_exit_2_before_anything_is_printed(study, tmp_path, capsys):
    VoteStore(votes_db(study))  # an empty store: results would print its tables
    missing = tmp_path / "no" / "votes.csv"
    assert main(["preference", "results", str(study), "--csv", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert err == f"lorahpo: error: --csv: folder {missing.parent} does not exist\n"
    assert out == ""
    assert not missing.parent.exists()


def test_generate_refuses_repeated_models_on_one_line_and_writes_nothing(tmp_path, capsys):
    assert main(["generate", str(tmp_path), "--models", "base,base", "--prompts", "builtin"]) == 2
    assert capsys.readouterr().err == "lorahpo: error: --models needs distinct, comma-separated names\n"
    assert list(tmp_path.iterdir()) == []


def test_generate_resolves_names_through_the_study(monkeypatch, tmp_path, tiny):
    base, adapter = tiny
    study = tmp_path / "study"
    study.mkdir()
    (study / "config.yaml").write_text("objective:\n  lora:\n    data: {template: chat}\n")
    (tmp_path / "prompts.jsonl").write_text('{"id": "p1", "prompt": "why is the dog big"}\n')
    fake = types.ModuleType("lorahpo.study")
    fake.resolve_model_spec = lambda study_dir, name: (ModelConfig(name=str(base)), adapter if name == "best" else None)
    monkeypatch.setitem(sys.modules, "lorahpo.study", fake)

    argv = ["generate", str(study), "--models", "base,best", "--prompts", str(tmp_path / "prompts.jsonl")]
    assert run(*argv, "--max-new-tokens", "3") == 0
    rows = [json.loads(line) for line in (study / "preference" / "answers.jsonl").read_text().splitlines()]
    assert [(r["model"], r["generation"]["template"], r["generation"]["adapter"]) for r in rows] == [
        ("base", "chat", None),
        ("best", "chat", str(adapter)),
    ]
    with pytest.raises(UserError, match="distinct"):
        run("generate", str(study), "--models", "base,base", "--prompts", "builtin")
