"""Search spaces: what a hyperparameter is, and how NOMAD sees it.

Users describe parameters as ``int``, ``real`` (optionally ``log``: searched in log10, as the
paper searched the learning rate) or ``choice`` (ordered values such as LoRA ranks; searched as
integer indices, because NOMAD has no categorical type). Each parameter becomes an Optuna
distribution, so every Optuna sampler can search it.

The NOMAD encoding of Optuna distributions lives here and only here: :func:`nomad_variable`,
:func:`encode` and :func:`decode`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Two real values of a parameter closer than this, relative to the larger, are the same value.
#: Samplers that vectorise their math (TPE) propose values that differ in the last bits
#: between CPUs; a point measured on one machine must still be found on another.
REL_TOL = 1e-9


class ParamSpec(BaseModel):
    """One hyperparameter of a search space."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["int", "real", "choice"] = Field(description="int, real or choice (ordered values).")
    low: float | None = Field(None, description="Lower bound (int, real).")
    high: float | None = Field(None, description="Upper bound (int, real).")
    log: bool = Field(False, description="Search a real in log10 space (bounds must be > 0).")
    step: float | None = Field(None, gt=0, description="Grid step of an int or real.")
    values: list[Any] | None = Field(None, description="The ordered values of a choice.")
    x0: Any = Field(None, description="Starting value (NOMAD's X0; enqueued first for other optimizers).")

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty `values` list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a choice takes `values`, not low/high/log/step")
            if len(set(map(repr, self.values))) != len(self.values):
                raise ValueError("`values` has duplicates")
            if self.x0 is not None and not any(_same(self.x0, v) for v in self.values):
                raise ValueError(f"x0 {self.x0!r} is not one of the values")
            return self
        if self.values is not None:
            raise ValueError(f"an {self.type} takes low/high, not `values`")
        if self.low is None or self.high is None:
            raise ValueError("needs both `low` and `high`")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high})")
        if self.type == "int":
            if self.low != int(self.low) or self.high != int(self.high):
                raise ValueError("int bounds must be whole numbers")
            if self.log:
                raise ValueError("`log` is for reals; use a choice for log-spaced integers")
        if self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("`log` and `step` cannot be combined")
        if self.x0 is not None:
            if not isinstance(self.x0, (int, float)) or isinstance(self.x0, bool):
                raise ValueError(f"x0 must be a number, got {self.x0!r}")
            if not self.low <= self.x0 <= self.high:
                raise ValueError(f"x0 {self.x0} is outside [{self.low}, {self.high}]")
        return self

    def distribution(self) -> BaseDistribution:
        if self.type == "choice":
            return CategoricalDistribution(list(self.values or []))
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)


class SpaceSpec(BaseModel):
    """A search space: a preset, or parameters, or a preset with some parameters replaced."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["paper", "default"] | None = Field(
        None, description="paper or default (see the README and lorahpo/space.py)."
    )
    params: dict[str, ParamSpec] = Field(default_factory=dict, description="Parameters by name.")

    @model_validator(mode="after")
    def _not_empty(self) -> SpaceSpec:
        if self.preset is None and not self.params:
            raise ValueError("give a `preset` or at least one parameter in `params`")
        return self

    def resolved(self) -> dict[str, ParamSpec]:
        params = dict(PRESETS[self.preset]) if self.preset else {}
        params.update(self.params)
        return params

    def distributions(self) -> dict[str, BaseDistribution]:
        return {name: p.distribution() for name, p in self.resolved().items()}

    def x0(self) -> dict[str, Any] | None:
        """The starting point, or None unless every parameter has an x0."""
        params = self.resolved()
        if any(p.x0 is None for p in params.values()):
            return None
        return {name: p.x0 for name, p in params.items()}


# --------------------------------------------------------------------------- NOMAD encoding


@dataclass(frozen=True)
class NomadVariable:
    """How one distribution appears to NOMAD: a type (R or I) and bounds."""

    type: Literal["R", "I"]
    lower: float
    upper: float


def nomad_variable(dist: BaseDistribution) -> NomadVariable:
    """NOMAD's view of a distribution.

    - int with step 1: an integer in [low, high].
    - real: a real in [low, high]; log real: a real in [log10 low, log10 high].
    - categorical (choices taken as ordered), int or real with a step: the 1-based index of
      the value, as the paper encoded ranks and dropouts (1-based also keeps NOMAD 4.6 away
      from an all-zero integer start, which it cannot handle).
    """
    if isinstance(dist, CategoricalDistribution):
        return NomadVariable("I", 1, len(dist.choices))
    if isinstance(dist, IntDistribution):
        if dist.step == 1:
            return NomadVariable("I", dist.low, dist.high)
        return NomadVariable("I", 1, (dist.high - dist.low) // dist.step + 1)
    if isinstance(dist, FloatDistribution):
        if dist.log:
            return NomadVariable("R", math.log10(dist.low), math.log10(dist.high))
        if dist.step is not None:
            return NomadVariable("I", 1, _steps(dist) + 1)
        return NomadVariable("R", dist.low, dist.high)
    raise TypeError(f"unsupported distribution {type(dist).__name__}")


def encode(dist: BaseDistribution, value: Any) -> float:
    """A parameter value in NOMAD's coordinates."""
    if isinstance(dist, CategoricalDistribution):
        for i, choice in enumerate(dist.choices):
            if _same(value, choice):
                return i + 1
        raise ValueError(f"{value!r} is not one of {dist.choices}")
    if isinstance(dist, IntDistribution):
        return value if dist.step == 1 else (value - dist.low) // dist.step + 1
    if isinstance(dist, FloatDistribution):
        if dist.log:
            return math.log10(value)
        if dist.step is not None:
            return round((value - dist.low) / dist.step) + 1
        return value
    raise TypeError(f"unsupported distribution {type(dist).__name__}")


def decode(dist: BaseDistribution, x: float) -> Any:
    """A NOMAD coordinate back to a valid parameter value of ``dist``."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[_index(x, len(dist.choices))]
    if isinstance(dist, IntDistribution):
        if dist.step == 1:
            return min(max(int(round(x)), dist.low), dist.high)
        return dist.low + dist.step * _index(x, (dist.high - dist.low) // dist.step + 1)
    if isinstance(dist, FloatDistribution):
        if dist.log:
            # 12 significant digits: 10 ** log10(v) gives back v itself, not v's neighbour.
            return min(max(float(f"{10.0**x:.12g}"), dist.low), dist.high)
        if dist.step is not None:
            return min(dist.low + dist.step * _index(x, _steps(dist) + 1), dist.high)
        return min(max(float(x), dist.low), dist.high)
    raise TypeError(f"unsupported distribution {type(dist).__name__}")


def contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is one of ``dist``'s values."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def center(dist: BaseDistribution) -> float:
    """The middle of a variable's NOMAD range (integers rounded down): the default X0."""
    var = nomad_variable(dist)
    mid = (var.lower + var.upper) / 2
    return math.floor(mid) if var.type == "I" else mid


def _index(x: float, count: int) -> int:
    """0-based position of the 1-based NOMAD index ``x`` among ``count`` values."""
    return min(max(int(round(x)), 1), count) - 1


def _steps(dist: FloatDistribution) -> int:
    assert dist.step is not None
    return round((dist.high - dist.low) / dist.step)


def same_point(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two parameter dicts are the same point.

    Floats agree within :data:`REL_TOL` relative (0.0 matches only 0.0; a float choice is one of
    its list's values, so for choices this is exact); ints, strings and other values exactly.
    """
    if a.keys() != b.keys():
        return False
    for name, x in a.items():
        y = b[name]
        real = type(x) is float and type(y) is float
        if not (math.isclose(x, y, rel_tol=REL_TOL, abs_tol=0.0) if real else x == y):
            return False
    return True


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=0.0) or a == b
    return a == b


def _p(**kw: Any) -> ParamSpec:
    return ParamSpec(**kw)


#: The presets. ``paper`` is exactly the space and X0 of arXiv 2312.00949 (NOMAD types I I I R).
PRESETS: dict[str, dict[str, ParamSpec]] = {
    "paper": {
        "rank": _p(type="choice", values=[4, 8, 16, 32, 64, 128], x0=8),
        "dropout": _p(type="choice", values=[0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0], x0=0.1),
        "alpha": _p(type="int", low=1, high=64, x0=32),
        "learning_rate": _p(type="real", low=1e-6, high=1e-3, log=True, x0=1e-5),
    },
    # Our default keeps the paper's four variables but: drops dropout 1.0 (it zeroes the LoRA
    # input, so the adapter cannot learn) and 1e-4 (indistinguishable from 0 in practice); lets
    # alpha reach 2x the largest rank (alpha/rank is the effective scale); and moves the learning
    # rate window up to 1e-5..1e-2, where LoRA optima usually lie, starting at the common 2e-4.
    "default": {
        "rank": _p(type="choice", values=[4, 8, 16, 32, 64, 128], x0=8),
        "dropout": _p(type="choice", values=[0.0, 0.01, 0.05, 0.1, 0.2], x0=0.05),
        "alpha": _p(type="int", low=1, high=256, x0=16),
        "learning_rate": _p(type="real", low=1e-5, high=1e-2, log=True, x0=2e-4),
    },
}
