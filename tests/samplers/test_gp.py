"""``optimizer: gp``: Optuna's Gaussian-process sampler in the study loop, reproducible per seed."""

import sys

import pytest

from lorahpo import config as cfg
from lorahpo.extras import MissingExtra
from lorahpo.study import Study


def gp_config(seed, **options):
    return cfg.parse(
        {
            "name": "gp",
            "optimizer": "gp",
            "optimizer_options": {"n_startup_trials": 2, **options},
            "seed": seed,
            "budget": 5,
            "space": {
                "params": {
                    "learning_rate": {"type": "real", "low": 1e-5, "high": 1e-2, "log": True, "x0": 1e-5},
                    "rank": {"type": "choice", "values": [4, 8, 16, 32], "x0": 8},
                }
            },
            "objective": {"python": "lorahpo.toys:lora_surface", "metric": "validation_loss"},
        }
    )


def points(tmp_path, name, seed):
    study = Study.open(tmp_path / name, gp_config(seed))
    summary = study.run()
    assert summary.finished == 5 and all(r.status == "complete" for r in study.records())
    return [r.params for r in study.records()], summary.best.value


def test_gp_starts_at_x0_and_repeats_itself_per_seed(tmp_path):
    a, best = points(tmp_path, "a", seed=1)
    b, _ = points(tmp_path, "b", seed=1)
    c, _ = points(tmp_path, "c", seed=2)
    assert a[0] == c[0] == {"learning_rate": 1e-5, "rank": 8}  # x0 first
    assert a == b  # same seed, same points
    assert a[1:] != c[1:]
    assert best < 1.6  # the start point gives 1.67; the surface's best is 1.2


def test_gp_without_torch_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingExtra, match=r"^torch is not installed; pip install 'lorahpo\[gp\]'$"):
        gp_config(0)


def test_gp_options_are_checked():
    with pytest.raises(cfg.ConfigError, match=r"optimizer: unknown gp options \['n_startup'\]"):
        gp_config(0, n_startup=2)
