"""lorahpo: find the best LoRA hyperparameters with NOMAD (MADS), TPE and friends.

Heavy modules load lazily so that ``import lorahpo`` and ``lorahpo --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["NomadSampler", "TrialResult", "__version__"]

if TYPE_CHECKING:
    from lorahpo.result import TrialResult
    from lorahpo.samplers.nomad import NomadSampler


def __getattr__(name: str) -> Any:
    if name == "NomadSampler":
        from lorahpo.samplers.nomad import NomadSampler

        return NomadSampler
    if name == "TrialResult":
        from lorahpo.result import TrialResult

        return TrialResult
    raise AttributeError(f"module 'lorahpo' has no attribute {name!r}")
