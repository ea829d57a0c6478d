"""The ``generate`` and ``preference`` commands, parsed as the main ``lorahpo`` parser will."""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import types
from contextlib import closing
from pathlib import Path

import pytest

from lorahpo.cli import main
from lorahpo.errors import UserError
from lorahpo.finetune.config import ModelConfig
from lorahpo.preference.cli import add_arguments
from lorahpo.preference.store import VoteStore

from .conftest import SERVE, votes_db


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
    for name, choice in [("alice", "A"), ("bob", "A"), ("carol", "tie")]:
        rater = store.rater(name)
        store.record_vote(store.add_assignment(rater, "q1", "zeta-best", "zeta-worst").id, rater, choice)

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
    # Three raters on one item: first, first, tie. Coincidences first-first 2/2, first-tie and
    # tie-first 2/2 each; n = (2, 1), total 3: alpha = 1 - 2 * 2 / (9 - 5) = 0.
    assert "Krippendorff's alpha: 0.000 (1 items judged by 2+ raters, 3 votes)" in out
    assert ["60.0%", "194"] in rows
    assert len((tmp_path / "votes.csv").read_text().splitlines()) == 4
    assert stat.S_IMODE((tmp_path / "votes.csv").stat().st_mode) == 0o600


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


def test_serve_checks_its_input_before_starting(study):
    for token in ["short", "has space in it and is long", "é" * 20]:
        with pytest.raises(UserError, match=r"^--results-token: use 16 to 128 of the characters"):
            run("preference", "serve", str(study), "--results-token", token)


def test_invite_prints_one_link_per_rater(study, capsys):
    assert run("preference", "invite", str(study), "--raters", "2", "--url", "http://[::1]:8123/") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["invitee-1", "invitee-2"]
    store = VoteStore(votes_db(study))
    for line in lines:
        name, link = line.split("\t")
        assert link.startswith("http://[::1]:8123/join/")
        assert store.invited_rater(link.rsplit("/", 1)[1]).name == name
    with pytest.raises(UserError, match="--raters must be between 1 and 1000"):
        run("preference", "invite", str(study), "--raters", "0")
    with pytest.raises(UserError, match="--url: expected http://HOST:PORT"):
        run("preference", "invite", str(study), "--raters", "1", "--url", "javascript:alert(1)")


def test_a_votes_file_of_a_newer_version_is_refused_in_one_line(study, capsys):
    VoteStore(votes_db(study))
    with closing(sqlite3.connect(votes_db(study))) as conn:
        conn.execute("PRAGMA user_version = 9")
    for command in ["results", "serve", "invite"]:
        extra = ["--raters", "1"] if command == "invite" else []
        assert main(["preference", command, str(study), *extra]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"lorahpo: error: {votes_db(study)} is not a votes file this lorahpo can read (version 9); "
            "use a newer lorahpo or move the file aside\n"
        )


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
def test_serve_on_ipv6_loopback_prints_a_valid_url_and_refuses_foreign_host_names(study):
    """Case 4: ``--host ::1`` once printed ``http://::1:PORT/`` and served any Host header."""
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, "preference", "serve", str(study), "--host", "::1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[1].split() == ["raters:", f"http://[::1]:{port}/"], lines
        organiser = lines[2].split()[1]
        assert organiser.startswith(f"http://[::1]:{port}/results?token=")
        assert not any("warning" in line for line in lines)

        def get(path: str, host: str) -> int:
            for _ in range(100):  # the server may still be starting
                try:
                    conn = http.client.HTTPConnection("::1", port, timeout=5)
                    conn.request("GET", path, headers={"Host": host})
                    return conn.getresponse().status
                except ConnectionRefusedError:
                    time.sleep(0.1)
            raise AssertionError("server did not start")

        assert get("/", f"[::1]:{port}") == 200
        assert get("/", "attacker.example") == 400
        assert get("/", f"attacker.example:{port}") == 400
        path = organiser.split(str(port), 1)[1]
        assert get(path, f"[::1]:{port}") == 303  # the printed token opens the results
        assert get("/results", f"[::1]:{port}") == 403
        assert stat.S_IMODE(votes_db(study).stat().st_mode) == 0o600
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_serve_warns_on_non_loopback_hosts_only(study, monkeypatch, capsys):
    started = []
    monkeypatch.setattr("lorahpo.preference.app.serve", lambda study_dir, **kwargs: started.append(kwargs))
    for host in ["0.0.0.0", "::", "10.1.2.3", "127.0.0.2", "::1", "localhost"]:
        assert run("preference", "serve", str(study), "--host", host, "--results-token", "t" * 16) == 0
        warned = capsys.readouterr().out.startswith(f"warning: listening on {host}: anyone who can reach it")
        assert warned == (host in ("0.0.0.0", "::", "10.1.2.3")), host
    assert {k["results_token"] for k in started} == {"t" * 16}
