"""A missing optional package is one line naming the extra to install, and nothing is written."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from lorahpo.cli import main
from lorahpo.extras import EXTRAS, MissingExtra, require

TOY = {
    "optimizer": "tpe",
    "budget": 2,
    "space": {"params": {"x": {"type": "real", "low": -1, "high": 1}}},
    "objective": {"python": "lorahpo.toys:sphere"},
}


def block(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if it were absent


def test_every_extra_named_is_an_extra_of_the_package():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert set(EXTRAS) <= set(pyproject["project"]["optional-dependencies"])


def test_require_names_the_missing_module_and_its_extra(monkeypatch):
    require("report")  # installed for the tests
    block(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtra) as caught:
        require("report")
    assert str(caught.value) == "matplotlib is not installed; pip install 'lorahpo[report]'"
    block(monkeypatch, "psycopg2")
    require("cluster", "ray")  # only the modules asked for are checked
    with pytest.raises(MissingExtra, match=r"^psycopg2 is not installed; pip install 'lorahpo\[cluster\]'$"):
        require("cluster", "psycopg2")


@pytest.mark.parametrize(
    ("module", "extra", "argv"),
    [
        ("matplotlib", "report", ["report", "{tmp}/study", "--out", "{tmp}/report"]),
        ("matplotlib", "report", ["compare", "{tmp}/a", "{tmp}/b", "--out", "{tmp}/compare"]),
        ("torch", "lora", ["generate", "{tmp}/study", "--models", "base", "--prompts", "builtin"]),
        ("ray", "cluster", ["tune", "{tmp}/toy.yaml", "--executor", "ray", "--study-dir", "{tmp}/study"]),
        (
            "psycopg2",
            "cluster",
            ["worker", "{tmp}/toy.yaml", "--storage", "postgresql://u@db/x", "--study-dir", "{tmp}/s"],
        ),
    ],
)
def test_a_command_missing_an_extra_fails_in_one_line_and_writes_nothing(
    tmp_path, monkeypatch, capsys, module, extra, argv
):
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(TOY))
    block(monkeypatch, module)
    assert main([arg.format(tmp=tmp_path) for arg in argv]) == 2
    out, err = capsys.readouterr()
    assert err == f"lorahpo: error: {module} is not installed; pip install 'lorahpo[{extra}]'\n"
    assert out == ""
    assert [p.name for p in tmp_path.iterdir()] == ["toy.yaml"]


def test_serving_without_the_web_extra_fails_in_one_line(tmp_path, monkeypatch, capsys):
    answers = tmp_path / "preference" / "answers.jsonl"
    answers.parent.mkdir()
    answers.write_text("")
    block(monkeypatch, "starlette")
    assert main(["preference", "serve", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "lorahpo: error: starlette is not installed; pip install 'lorahpo[web]'\n"
    assert [p.name for p in answers.parent.iterdir()] == ["answers.jsonl"]
