"""lorahpo: find the best LoRA hyperparameters with NOMAD (MADS), TPE and friends.

The Python API (docs/python.md)::

    import lorahpo

    study = lorahpo.tune("my-study.yaml", study_dir="runs/my-study", budget=20)   # run or resume
    study.best, study.pareto_front, study.trials, study.to_dataframe()
    study.export("my-adapter"); study.report(); study.evaluate(limit=20)
    lorahpo.load("runs/my-study")                                                 # read it later
    lorahpo.run_trial(lorahpo.LoraTrialConfig(...))                               # one fine-tune, in-process

Heavy modules load lazily so that ``import lorahpo`` and ``lorahpo --help`` stay fast: each name
below is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_LAZY = {
    "tune": "lorahpo.api",
    "load": "lorahpo.api",
    "run_trial": "lorahpo.api",
    "StudyResults": "lorahpo.api",
    "StudyConfig": "lorahpo.config",
    "LoraTrialConfig": "lorahpo.finetune.config",
    "TrialResult": "lorahpo.result",
    "TrialRecord": "lorahpo.result",
    "NomadSampler": "lorahpo.samplers.nomad",
}
__all__ = [
    "LoraTrialConfig",
    "NomadSampler",
    "StudyConfig",
    "StudyResults",
    "TrialRecord",
    "TrialResult",
    "__version__",
    "load",
    "run_trial",
    "tune",
]

if TYPE_CHECKING:
    from lorahpo.api import StudyResults, load, run_trial, tune
    from lorahpo.config import StudyConfig
    from lorahpo.finetune.config import LoraTrialConfig
    from lorahpo.result import TrialRecord, TrialResult
    from lorahpo.samplers.nomad import NomadSampler


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lorahpo' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
