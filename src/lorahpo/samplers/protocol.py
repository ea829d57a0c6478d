"""What a study loop may ask of a sampler beyond Optuna's interface: two optional methods.

A sampler that runs something of its own (NOMAD runs in a child process) may have:

- ``ready(study) -> bool``: whether a trial asked now gets one of its points. False while it
  waits for the results of running trials, or when it has nothing left to propose; the loop
  then asks no trial.
- ``close()``: end what it runs. The loop calls it once it stops asking.

Both are found by duck typing: every Optuna sampler works as it is, and a sampler needs no
lorahpo base class to take part.
"""

from __future__ import annotations

import optuna
from optuna.samplers import BaseSampler


def ready(sampler: BaseSampler, study: optuna.Study) -> bool:
    """Whether a trial asked now gets ``sampler``'s point (always, for a sampler without ``ready``)."""
    check = getattr(sampler, "ready", None)
    return True if check is None else bool(check(study))


def close(sampler: BaseSampler) -> None:
    """End what ``sampler`` runs, if it has a ``close`` method."""
    end = getattr(sampler, "close", None)
    if end is not None:
        end()
