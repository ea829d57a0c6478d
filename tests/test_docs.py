"""Shipped docs and examples stay true to the code."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lorahpo import config as cfg
from lorahpo.api import default_config_path
from lorahpo.docs import reference
from lorahpo.study import Study

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_up_to_date():
    assert (ROOT / "docs" / "config.md").read_text() == reference(), "run: python -m lorahpo.docs > docs/config.md"


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples").glob("*.yaml")) + [default_config_path()], ids=lambda p: p.name
)
def test_every_shipped_config_is_valid(path):
    cfg.load(path)  # raises ConfigError on anything the config validation refuses
    if path != default_config_path():  # an example starts with the command that runs it
        assert path.read_text().splitlines()[0].startswith(f"# lorahpo tune examples/{path.name} ")


def test_the_worked_example_of_the_python_api_runs_as_written(tmp_path):
    page = (ROOT / "docs" / "python.md").read_text()
    section = page.split("## Worked example", 1)[1].split("\n## ", 1)[0]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))
    assert "lorahpo.tune(" in code
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith("<StudyResults runs/toy: 12/12 finished, best validation_loss = ")
    records = Study.load(tmp_path / "runs" / "toy").records()
    assert [r.status for r in records] == ["complete"] * 16
