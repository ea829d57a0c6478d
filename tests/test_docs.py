"""Shipped docs and examples stay true to the code."""

from pathlib import Path

import pytest

from lorahpo import config as cfg
from lorahpo.api import default_config_path
from lorahpo.docs import reference

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
