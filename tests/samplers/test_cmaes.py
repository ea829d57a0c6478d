"""``optimizer: cmaes``: Optuna's CMA-ES in the study loop, reproducible per seed."""

import sys

import pytest

from lorahpo import config as cfg
from lorahpo.extras import MissingExtra
from lorahpo.study import Study


def cmaes_config(seed, secondary=None, **options):
    conf = {
        "name": "cmaes",
        "optimizer": "cmaes",
        "optimizer_options": options,
        "seed": seed,
        "budget": 8,
        "space": {
            "params": {
                "learning_rate": {"type": "real", "low": 1e-5, "high": 1e-2, "log": True, "x0": 1e-5},
                "alpha": {"type": "real", "low": 1.0, "high": 64.0, "log": True, "x0": 16.0},
                "rank": {"type": "choice", "values": [4, 8, 16, 32], "x0": 8},
            }
        },
        "objective": {"python": "lorahpo.toys:lora_surface", "metric": "validation_loss"},
    }
    if secondary:
        conf["objective"]["secondary"] = secondary
    return cfg.parse(conf)


def points(tmp_path, name, seed):
    study = Study.open(tmp_path / name, cmaes_config(seed))
    study.run()
    records = study.records()
    assert len(records) == 8 and all(r.status == "complete" for r in records)
    return [r.params for r in records]


def test_cmaes_starts_at_x0_and_repeats_itself_per_seed(tmp_path):
    a = points(tmp_path, "a", seed=1)
    b = points(tmp_path, "b", seed=1)
    c = points(tmp_path, "c", seed=2)
    assert a[0] == c[0] == {"learning_rate": 1e-5, "alpha": 16.0, "rank": 8}  # x0 first
    assert a == b  # same seed, same points
    assert a[1:] != c[1:]
    assert len({(p["learning_rate"], p["alpha"]) for p in a}) == 8  # a search, not one point again


def test_cmaes_without_its_package_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cmaes", None)
    with pytest.raises(MissingExtra, match=r"^cmaes is not installed; pip install 'lorahpo\[cmaes\]'$"):
        cmaes_config(0)


def test_cmaes_options_are_checked():
    with pytest.raises(cfg.ConfigError, match=r"optimizer: unknown cmaes options \['sigma'\]"):
        cmaes_config(0, sigma=2)


def test_cmaes_refuses_several_objectives():
    with pytest.raises(cfg.ConfigError, match="cmaes has a single objective"):
        cmaes_config(0, secondary={"train_loss": "minimize"})
