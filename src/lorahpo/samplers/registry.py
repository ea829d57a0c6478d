"""Optimizers by name: ``nomad``, ``tpe``, ``gp``, ``cmaes``, ``nsga2``, ``random``, ``grid``, or an import path."""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Sequence
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, CmaEsSampler, GPSampler, GridSampler, NSGAIISampler, RandomSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from lorahpo.extras import require
from lorahpo.samplers.seeded import TrialSeededSampler

OPTIMIZERS = ("nomad", "tpe", "gp", "cmaes", "nsga2", "random", "grid")
_GRID_LIMIT = 100_000


def make_sampler(
    name: str,
    distributions: dict[str, BaseDistribution],
    *,
    x0: dict[str, Any] | None = None,
    seed: int = 0,
    parallel: int = 1,
    options: dict[str, Any] | None = None,
    n_objectives: int = 1,
    constraints: Sequence[str] = (),
    shared: bool = False,
    starts: Sequence[dict[str, Any]] = (),
) -> BaseSampler:
    """Build the sampler called ``name``.

    Args:
        name: ``nomad``, ``tpe`` (constant liar when ``parallel > 1``), ``gp`` (Optuna's
            Gaussian-process Bayesian optimization), ``cmaes`` (Optuna's CMA-ES), ``nsga2``, ``random``, ``grid``, or
            ``package.module:ClassName`` / ``package.module.ClassName`` of any Optuna sampler.
        distributions: The search space.
        x0: Starting point (NOMAD's X0).
        seed: Seed of the optimizer.
        parallel: Trials run at once (NOMAD's block size is twice that; TPE's constant liar).
        options: Keyword arguments of the sampler (for ``nomad``: ``params``, a list of NOMAD
            parameter lines, and ``max_idle_restarts``).
        n_objectives: Objectives of the study; NOMAD runs DMultiMADS for more than one, and
            grid search refuses them.
        constraints: Names of the constraints each trial sets (``trial.set_constraint``, met
            when <= 0). NOMAD needs them up front (one progressive-barrier output each); TPE, GP
            and NSGA-II read them from the trials; CMA-ES, random and grid ignore them.
        shared: Several processes may ask trials of the study at once (a shared store): TPE, GP,
            NSGA-II, random and grid then seed each trial by its number (see
            :class:`TrialSeededSampler`).
        starts: Points to evaluate first, best first (a warm start): NOMAD starts from them, then
            from ``x0``; the study enqueues them for the other optimizers.

    Raises:
        ValueError: Unknown name, bad options, or a space the optimizer cannot search.
    """
    options = dict(options or {})
    if name == "nomad":
        from lorahpo.samplers.nomad import NomadSampler

        unknown = set(options) - {"params", "max_idle_restarts"}
        if unknown:
            raise ValueError(
                f"unknown nomad options {sorted(unknown)}; use `params` (NOMAD lines) or `max_idle_restarts`"
            )
        if starts:  # the best earlier point is NOMAD's X0; the others, and x0, start with it
            starts, x0 = [*starts[1:], *([x0] if x0 is not None else [])], dict(starts[0])
        return NomadSampler(
            distributions,
            x0=x0,
            starts=starts,
            seed=seed,
            # k trials running and k more points ready: a finished trial is replaced at once,
            # not when the slowest of its block ends (benchmarks/README.md, parallel trials).
            block_size=1 if parallel == 1 else 2 * parallel,
            nomad_params=options.get("params"),
            max_idle_restarts=options.get("max_idle_restarts", 3),
            constraints=constraints,
        )
    if name == "tpe":
        options.setdefault("constant_liar", parallel > 1)
        _check_kwargs(TPESampler, options, "tpe")
        return TrialSeededSampler(lambda s: TPESampler(seed=s, **options), seed, x0=x0, shared=shared)
    if name == "gp":
        # Optuna's GPSampler fits its Gaussian process with torch and scipy. It accounts for
        # running trials itself (their points are fantasised), so parallel needs no option. A
        # fresh sampler per trial makes a resumed study repeat itself; what that costs is the
        # warm start of each kernel fit from the last one (milliseconds at study sizes).
        require("gp")
        _check_kwargs(GPSampler, options, "gp")
        return TrialSeededSampler(lambda s: GPSampler(seed=s, **options), seed, x0=x0, shared=shared)
    if name == "cmaes":
        # CMA-ES adapts a Gaussian over the numeric parameters; Optuna samples choices (rank in
        # the default space) at random beside it. Its state lives in the study's trials, so a
        # fresh sampler per trial continues the same run.
        require("cmaes")
        if n_objectives > 1:
            raise ValueError("cmaes has a single objective; use nomad, gp, tpe or nsga2 for several")
        _check_kwargs(CmaEsSampler, options, "cmaes")
        return TrialSeededSampler(lambda s: CmaEsSampler(seed=s, **options), seed, x0=x0, shared=shared)
    if name == "nsga2":
        _check_kwargs(NSGAIISampler, options, "nsga2")
        return TrialSeededSampler(lambda s: NSGAIISampler(seed=s, **options), seed, x0=x0, shared=shared)
    if name == "random":
        _check_kwargs(RandomSampler, options, "random")
        return TrialSeededSampler(lambda s: RandomSampler(seed=s), seed, x0=x0, shared=shared)
    if name == "grid":
        if n_objectives > 1:
            raise ValueError("grid search has a single objective")
        return GridSearch(grid_values(distributions), seed, shared=shared)
    if ":" in name or "." in name:
        cls = _import(name)
        if "seed" in inspect.signature(cls).parameters:
            options.setdefault("seed", seed)
        _check_kwargs(cls, options, name, reserved=())
        return cls(**options)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)} or give an import path")


class GridSearch(TrialSeededSampler):
    """Optuna's grid sampler in the study loop: each point of ``grid`` once, then nothing more.

    Optuna's GridSampler ends Optuna's own ``optimize`` loop with ``study.stop()`` once every
    point is taken, which raises in any other loop; here the loop asks :meth:`ready` instead.
    The seed shuffles the grid's numbering, so every trial needs the same one; a fresh sampler per
    trial then picks its point as a function of the points not yet taken alone.
    """

    def __init__(self, grid: dict[str, list[Any]], seed: int, *, shared: bool = False) -> None:
        super().__init__(lambda _: _GridPoints(grid, seed=seed), seed, shared=shared)
        self._size = math.prod(len(values) for values in grid.values())

    def ready(self, study: Study) -> bool:
        """Whether a point is left that no finished or running trial has taken."""
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
        taken = {t.system_attrs.get("grid_id") for t in study.get_trials(deepcopy=False, states=states)}
        return len(taken - {None}) < self._size


class _GridPoints(GridSampler):
    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        """Nothing: Optuna's would stop its own loop (see :class:`GridSearch`)."""


def grid_values(distributions: dict[str, BaseDistribution]) -> dict[str, list[Any]]:
    """Every value of every parameter; reals need a step."""
    grid: dict[str, list[Any]] = {}
    size = 1
    for name, d in distributions.items():
        if isinstance(d, CategoricalDistribution):
            grid[name] = list(d.choices)
        elif isinstance(d, IntDistribution):
            grid[name] = list(range(d.low, d.high + 1, d.step))
        elif isinstance(d, FloatDistribution) and d.step is not None:
            n = round((d.high - d.low) / d.step)
            grid[name] = [d.low + i * d.step for i in range(n + 1)]
        else:
            raise ValueError(f"grid search needs choices, ints or stepped reals; {name!r} is continuous")
        size *= len(grid[name])
    if size > _GRID_LIMIT:
        raise ValueError(f"the grid has {size} points (more than {_GRID_LIMIT}); use choices with fewer values")
    return grid


def _import(path: str) -> type[BaseSampler]:
    module_name, _, attr = path.replace(":", ".").rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot import optimizer {path!r}: {e}") from None
    if not (inspect.isclass(obj) and issubclass(obj, BaseSampler)):
        raise ValueError(f"optimizer {path!r} is not an Optuna sampler class")
    return obj


def _check_kwargs(cls: type, options: dict[str, Any], name: str, reserved: tuple[str, ...] = ("seed",)) -> None:
    accepted = set(inspect.signature(cls).parameters) - set(reserved)
    unknown = set(options) - accepted
    if unknown:
        raise ValueError(f"unknown {name} options {sorted(unknown)}")
