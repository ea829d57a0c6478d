"""``lorahpo report`` and ``lorahpo compare`` on the command line."""

from __future__ import annotations

import argparse

import pytest

from lorahpo.cli import main
from lorahpo.config import ConfigError
from lorahpo.errors import UserError
from lorahpo.report.cli import add_arguments


def run(argv):
    parser = argparse.ArgumentParser(prog="lorahpo")
    add_arguments(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_report_writes_into_the_study_folder_by_default(synthetic, capsys):
    assert run(["report", str(synthetic.directory), "--top", "3"]) == 0
    folder = synthetic.directory / "report"
    assert {p.name for p in folder.iterdir()} >= {"report.html", "report.md", "best_so_far.png"}
    assert f"report: {folder / 'report.html'}" in capsys.readouterr().out


def test_compare_writes_where_asked_and_warns_about_different_blackboxes(synthetic, plain, tmp_path, capsys):
    import yaml

    assert run(["compare", str(synthetic.directory), str(plain.directory), "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "compare.html").is_file() and (tmp_path / "c" / "compare.md").is_file()
    assert "warning" not in capsys.readouterr().out

    conf = yaml.safe_load((plain.directory / "config.yaml").read_text())
    conf["space"] = {"preset": "default"}
    different = tmp_path / "different"
    different.mkdir()
    (different / "config.yaml").write_text(yaml.safe_dump(conf))
    assert run(["compare", str(synthetic.directory), str(different), "--out", str(tmp_path / "c2")]) == 0
    assert "warning: the studies do not share one blackbox" in capsys.readouterr().out


def test_compare_needs_two_studies_and_report_a_study(synthetic, tmp_path):
    with pytest.raises(UserError, match="at least two study folders"):
        run(["compare", str(synthetic.directory)])
    with pytest.raises(ConfigError, match="not a lorahpo study folder"):
        run(["report", str(tmp_path)])


def test_a_bad_top_is_one_line_exit_2_and_writes_no_report(synthetic, tmp_path, capsys):
    assert main(["report", str(synthetic.directory), "--top", "0", "--out", str(tmp_path / "r")]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", "lorahpo: error: --top must be at least 1\n")
    assert not (tmp_path / "r").exists()


def test_an_out_that_is_a_file_is_refused_before_any_work(synthetic, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    assert main(["compare", str(synthetic.directory), str(synthetic.directory), "--out", str(taken)]) == 2
    assert capsys.readouterr() == ("", f"lorahpo: error: --out: {taken} exists and is not a folder\n")
    assert taken.read_text() == "mine"
