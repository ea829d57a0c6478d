"""Early stopping: Optuna pruners by name, and the file protocol a trial reports through.

A trial reports ``(step, value)`` of its objective while it runs (a LoRA trial: the validation
loss every ``training.eval_every`` steps, or each epoch). The worker appends each report to
``intermediate.jsonl`` in the trial folder; the study process reads it, records the value in
the store (``trial.report``) and asks the study's pruner. A trial to stop is killed at once, so
its GPU is free for the next one; it is recorded as ``pruned`` with its last reported value.
With a pruner, the worker waits after each report until the study process has decided, so the
decision never lags behind the trial.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a trial's process reports values and needs no Optuna (0.2 s to import)
    import optuna

INTERMEDIATE_FILE = "intermediate.jsonl"
VERDICT_FILE = "continue"  # holds the last step the study process let the trial go on from

PRUNERS = ("none", "median", "asha", "hyperband")


def make_pruner(name: str, options: dict[str, Any] | None = None) -> optuna.pruners.BasePruner:
    """The pruner called ``name``: none, median, asha (successive halving), hyperband.

    ``options`` are the keyword arguments of Optuna's ``NopPruner``, ``MedianPruner``,
    ``SuccessiveHalvingPruner`` or ``HyperbandPruner``.

    Raises:
        ValueError: Unknown name or bad options.
    """
    import optuna

    classes = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "asha": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }
    if name not in classes:
        raise ValueError(f"unknown pruner {name!r}; choose from {', '.join(PRUNERS)}")
    try:
        return classes[name](**(options or {}))
    except TypeError as e:
        raise ValueError(f"{name}: {e}") from None


def reporter(trial_dir: Path, wait: bool) -> Callable[[int, float], bool]:
    """The callback a trial reports through (see the module docstring); it never asks to stop.

    With ``wait``, each report blocks until the study process lets the trial go on (or kills it).
    """
    path = trial_dir / INTERMEDIATE_FILE
    verdict = trial_dir / VERDICT_FILE

    def report(step: int, value: float) -> bool:
        with path.open("a") as f:
            f.write(json.dumps({"step": int(step), "value": float(value)}) + "\n")
        while wait and allowed_step(verdict) < step:
            time.sleep(0.02)
        return False

    return report


def allowed_step(path: Path) -> int:
    """The last step the study process let a trial go on from (its verdict file), or -1."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return -1


class IntermediateReader:
    """Reads the reports a running trial has appended since the last call."""

    def __init__(self, trial_dir: Path) -> None:
        self.trial_dir = trial_dir
        self._offset = 0

    def new(self) -> list[tuple[int, float]]:
        path = self.trial_dir / INTERMEDIATE_FILE
        try:
            with path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        self._offset += len(complete)
        reports = [json.loads(line) for line in complete.decode().splitlines() if line.strip()]
        return [(r["step"], r["value"]) for r in reports]

    def let_continue(self, step: int) -> None:
        tmp = self.trial_dir / f"{VERDICT_FILE}.{os.getpid()}.tmp"
        tmp.write_text(str(step))
        tmp.replace(self.trial_dir / VERDICT_FILE)
