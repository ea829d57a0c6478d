"""The blackboxes a study can search: a Python function, a shell command, LoRA fine-tuning, or a
table of LoRA fine-tunes measured before (:mod:`lorahpo.tabular`).

:func:`evaluate` runs one of them on one set of hyperparameters, inside the trial's worker
process, and always returns a :class:`TrialResult`: an exception or a non-zero exit is a failed
trial with its reason, never a crash of the study (the study fails a non-finite objective).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lorahpo.finetune.config import LoraTrialConfig
from lorahpo.result import Reporter, TrialResult

_TAIL_LINES = 8


class TabularObjective(BaseModel):
    """Trials answered from a table of measured fine-tunes (docs/tabular.md)."""

    model_config = ConfigDict(extra="forbid")

    table: str = Field(description="A packed table (`.jsonl.gz`) written by `benchmarks/tabular.py`.")


_KINDS = ("python", "command", "lora", "tabular")


class ObjectiveSpec(BaseModel):
    """What one evaluation runs: exactly one of ``python``, ``command``, ``lora`` or ``tabular``."""

    model_config = ConfigDict(extra="forbid")

    python: str | None = Field(None, description="`module:function` called with a dict of hyperparameters.")
    command: str | None = Field(
        None, description="Shell command; gets the hyperparameters as JSON on stdin, prints a metrics JSON line."
    )
    lora: LoraTrialConfig | None = Field(None, description="LoRA fine-tuning trial config (see docs/config.md).")
    tabular: TabularObjective | None = Field(
        None, description="A table of measured LoRA fine-tunes answers each trial (docs/tabular.md)."
    )
    metric: str | None = Field(
        None, description="Metric to optimise (default: validation_loss for lora and tabular, else `value`)."
    )
    direction: Literal["minimize", "maximize"] = Field("minimize", description="Minimise or maximise the metric.")
    secondary: dict[str, Literal["minimize", "maximize"]] = Field(
        default_factory=dict,
        description="Further objectives, metric: direction (e.g. `{trainable_params: minimize}`): "
        "a multi-objective study.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ObjectiveSpec:
        kinds = [k for k in _KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of python, command, lora or tabular (got {kinds or 'none'})")
        if self.python is not None and ":" not in self.python:
            raise ValueError(f"python must look like `module:function`, got {self.python!r}")
        if self.metric_name in self.secondary:
            raise ValueError(f"secondary repeats the main metric {self.metric_name!r}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) is not None)

    @property
    def metric_name(self) -> str:
        return self.metric or ("validation_loss" if self.kind in ("lora", "tabular") else "value")

    @property
    def metric_names(self) -> list[str]:
        """Every objective, the main one first."""
        return [self.metric_name, *self.secondary]

    @property
    def directions(self) -> list[Literal["minimize", "maximize"]]:
        return [self.direction, *self.secondary.values()]


def evaluate(
    objective: ObjectiveSpec,
    params: dict[str, Any],
    trial_dir: Path,
    report: Reporter | None = None,
    curve: Callable[[int, dict[str, float]], None] | None = None,
) -> TrialResult:
    """Evaluate ``objective`` at ``params``; artefacts and logs go into ``trial_dir``.

    ``report(step, value)`` receives intermediate values of the objective: from a LoRA trial
    at each validation, from a Python function that takes a ``report`` argument when it calls it.
    ``curve(step, values)`` receives a LoRA trial's training and validation curves by step.
    A ``tabular`` objective never comes here: the study answers it in its own process
    (:class:`lorahpo.tabular.TableExecutor`).
    """
    try:
        if objective.kind == "python":
            return _python(objective.python or "", params, objective.metric_name, report)
        if objective.kind == "command":
            return _command(objective.command or "", params, trial_dir, objective.metric_name)
        from lorahpo.finetune.config import apply_hyperparameters
        from lorahpo.finetune.train import run_trial

        assert objective.lora is not None
        return run_trial(apply_hyperparameters(objective.lora, params), trial_dir, reporter=report, curve=curve)
    except Exception as e:  # a failure is a result
        traceback.print_exc()
        return TrialResult.failure(f"{type(e).__name__}: {e}")


def _python(target: str, params: dict[str, Any], metric: str, report: Reporter | None) -> TrialResult:
    module_name, _, attr = target.partition(":")
    fn = getattr(importlib.import_module(module_name), attr)
    if report is not None and "report" in inspect.signature(fn).parameters:
        return _as_result(fn(dict(params), report=report), metric)
    return _as_result(fn(dict(params)), metric)


def _command(command: str, params: dict[str, Any], trial_dir: Path, metric: str) -> TrialResult:
    """Run ``command`` with the hyperparameters as JSON on stdin and in $LORAHPO_PARAMS.

    The last line of stdout that parses as JSON (an object of metrics, or a number) is the result.
    """
    payload = json.dumps(params)
    env = {**os.environ, "LORAHPO_PARAMS": payload, "LORAHPO_TRIAL_DIR": str(trial_dir)}
    proc = subprocess.run(command, shell=True, input=payload, capture_output=True, text=True, env=env)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        return TrialResult.failure(f"command exited with code {proc.returncode}: {tail(proc.stderr)}")
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            return _as_result(json.loads(line), metric)
        except (json.JSONDecodeError, TypeError):
            continue
    return TrialResult.failure(f"command printed no JSON metrics line: {tail(proc.stdout)}")


def _as_result(value: Any, metric: str) -> TrialResult:
    if isinstance(value, TrialResult):
        return value
    if isinstance(value, dict):
        metrics = {k: float(v) for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return TrialResult(metrics=metrics)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return TrialResult(metrics={metric: float(value)})
    raise TypeError(f"the objective returned {type(value).__name__}; return a number or a dict of metrics")


def tail(text: str, lines: int = _TAIL_LINES) -> str:
    """The last non-empty lines of ``text``, joined with `` | `` to stay on one line."""
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return " | ".join(kept) or "(no output)"
