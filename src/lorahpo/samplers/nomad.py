"""NOMAD's MADS algorithm as an Optuna sampler.

``PyNomad.optimize`` drives the search itself and calls a blackbox function. We turn that
inside out (:mod:`lorahpo.samplers._nomad_engine`): NOMAD runs in a child process whose blackbox
sends its points to :meth:`NomadSampler.sample_relative` and waits for the values that
:meth:`after_trial` brings back. The Optuna study stays in charge of asking, telling and storing.

NOMAD is told a value only for a point it proposed, by a trial evaluated at that point. A trial
evaluated elsewhere (a parameter outside the sampler's space, a value fixed by the study) is
kept in the study, and known to NOMAD should it propose that point, but the point handed to it
is proposed again. Parameters the study fixes (``PartialFixedSampler``, enqueued values) are
NOMAD fixed variables: each set of fixed values is a search of its own.

Resume is exact because NOMAD is deterministic for a given seed and sequence of results, and
never evaluates a point twice: a new sampler on an existing study restarts NOMAD, answers every
point the study already holds from the store, and hands out the first point it does not hold:
the one an uninterrupted run would have proposed next. A point the store holds is recognised by
:func:`lorahpo.space.same_point` (reals within a relative 1e-9), so a study resumed on another
CPU, where NOMAD's arithmetic may differ in the last bits, does not evaluate its points again.
The same makes the sampler picklable: a copy holds no process and resumes from the study.

Pruned trials: a trial stopped early by a pruner has only the value it reported last, at an
early step, while a complete trial has its final value; NOMAD compares the two. Told the early
value, NOMAD takes a good point stopped early for a bad finished one and its poll fails around it.
It is told instead the value the trial's curve points to (:func:`extrapolated_value`): its last
value plus the median change, from that step to the end, of the complete trials' curves. With no
complete trial that reported at that step, the trial is a failed evaluation for NOMAD. The value is
kept with the trial (``nomad:extrapolated``), so a resumed study tells NOMAD the same.

Restarts (see :meth:`Search._restart`): when NOMAD stops on its own before the study's budget
is spent, it is restarted from the best point found so far with the next seed (``seed + 1``,
``seed + 2``, ...). An all-integer space is exhausted once every point has been tried; one with
a real variable after ``max_idle_restarts`` restarts in a row that produce no new point. Then
:attr:`NomadSampler.exhausted` becomes True and further trials get random points, each marked
in the trial system attribute ``nomad:fallback`` (the lorahpo study loop stops instead).
"""

from __future__ import annotations

import math
import random
import statistics
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lorahpo import space
from lorahpo.result import INTERRUPTED_ATTR, VIOLATED
from lorahpo.samplers._nomad_engine import Outputs, Point, Problem, Search

#: Trial system attribute holding the trial's point in NOMAD's coordinates.
POINT_ATTR = "nomad:x"
#: Trial system attribute of a pruned trial: the final value NOMAD was told (None: a failed evaluation).
EXTRAPOLATED_ATTR = "nomad:extrapolated"
#: Trial system attribute: the parameters NOMAD held fixed for the trial, in NOMAD's coordinates.
FIXED_ATTR = "nomad:fixed"
#: Trial system attribute: why NOMAD gave the trial no point (``exhausted``, ``busy``, ``outside``);
#: the trial's parameters were sampled at random.
FALLBACK_ATTR = "nomad:fallback"
#: NOMAD searches kept running at once, one per set of fixed values; the least recently used ends
#: first (it resumes from the study if needed again).
MAX_SEARCHES = 4

_FALLBACKS = {
    "exhausted": "the search space is exhausted",
    "busy": "NOMAD waits for the results of running trials",
    "outside": "a value fixed by the study is outside the sampler's space",
}

Key = tuple[tuple[str, float], ...]  # a search: its fixed parameters and their NOMAD coordinates


class NomadSampler(BaseSampler):
    """Mesh Adaptive Direct Search (NOMAD 4) behind Optuna's sampler interface.

    Args:
        search_space: Parameter names mapped to Optuna distributions. Categorical choices are
            searched as ordered integer indices; log floats in log10; stepped ints and floats as
            grid indices (see :mod:`lorahpo.space`).
        x0: Starting point as a dict of parameter values. Default: the middle of each range.
        seed: NOMAD's ``SEED``.
        block_size: Points NOMAD may hand out before it needs results (``BB_MAX_BLOCK_SIZE``):
            set it to the number of trials run in parallel. More trials at once restart NOMAD
            with a larger block.
        nomad_params: Extra NOMAD parameter lines, e.g. ``["DIRECTION_TYPE ORTHO N+1 QUAD"]``.
            Without them NOMAD runs with its defaults.
        max_idle_restarts: Restarts without a new point before a space with a real variable
            counts as exhausted.
        constraints: Names of the constraints each trial sets with ``trial.set_constraint``
            (met when <= 0; one not set counts as violated). NOMAD gets them as ``PB`` outputs
            (progressive barrier).
        starts: More starting points (dicts of parameter values), evaluated after ``x0`` and
            before NOMAD's first poll: NOMAD goes on from the best of them (a warm start).

    A study with several objectives runs NOMAD's DMultiMADS (``DMULTIMADS_OPTIMIZATION yes``,
    with ``DIRECTION_TYPE ORTHO 2N``, the default poll it accepts).

    Example:
        >>> import optuna
        >>> from lorahpo import NomadSampler
        >>> dists = {"x": optuna.distributions.FloatDistribution(-5, 5)}
        >>> study = optuna.create_study(sampler=NomadSampler(dists, seed=1))
        >>> study.optimize(lambda t: (t.suggest_float("x", -5, 5) - 1) ** 2, n_trials=30)
        >>> round(study.best_params["x"], 2)
        1.0
    """

    def __init__(
        self,
        search_space: dict[str, BaseDistribution],
        x0: dict[str, Any] | None = None,
        seed: int = 0,
        block_size: int = 1,
        nomad_params: Sequence[str] | None = None,
        max_idle_restarts: int = 3,
        constraints: Sequence[str] = (),
        starts: Sequence[dict[str, Any]] = (),
    ) -> None:
        if not search_space:
            raise ValueError("NomadSampler needs a non-empty search space")
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        self._space = dict(search_space)
        self._names = list(search_space)
        dists = [self._space[n] for n in self._names]
        self._vars = [space.nomad_variable(d) for d in dists]
        if x0 is None:
            self._x0 = [space.center(d) for d in dists]
        else:
            missing = set(self._names) - set(x0)
            if missing:
                raise ValueError(f"x0 lacks {sorted(missing)}")
            self._x0 = [space.encode(d, x0[n]) for n, d in zip(self._names, dists, strict=True)]
            for name, x, var in zip(self._names, self._x0, self._vars, strict=True):
                if not var.lower <= x <= var.upper:
                    raise ValueError(f"x0 of {name!r} is outside its bounds")
            if not self._startable(self._x0):
                raise ValueError("NOMAD 4.6 cannot start at the origin when every variable is an integer; move x0")
        self._starts: list[list[float]] = []
        for start in starts:
            if set(self._names) - set(start):
                raise ValueError(f"starting point {start} lacks {sorted(set(self._names) - set(start))}")
            coords = [space.encode(d, start[n]) for n, d in zip(self._names, dists, strict=True)]
            if not all(v.lower <= c <= v.upper for c, v in zip(coords, self._vars, strict=True)):
                raise ValueError(f"starting point {start} is outside the space")
            if self._startable(coords) and coords != self._x0 and coords not in self._starts:
                self._starts.append(coords)
        self._seed = seed
        self._block_size = block_size
        self._extra = list(nomad_params or [])
        self._max_idle_restarts = max_idle_restarts
        self._constraints = list(constraints)
        self._n_objectives = 1  # set from the study when NOMAD starts
        self._random = RandomSampler(seed=seed)
        self._started = False  # a NOMAD search has started: its seed is settled
        self._warned: set[str] = set()
        self._init_runtime()

    def _init_runtime(self) -> None:
        """What lives only in this process: NOMAD's searches and the lock around them."""
        self._searches: dict[Key, Search] = {}  # most recently used last
        self._last: Key = ()
        self._pinned: dict[int, dict[str, Any]] = {}  # trial id -> values chosen for fixed parameters
        self._lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_searches", "_last", "_pinned", "_lock"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # ---------------------------------------------------------------- Optuna sampler contract

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """NOMAD's point for the parameters of ``search_space`` (those of the sampler's space).

        The sampler's parameters outside ``search_space``, or enqueued for the trial, are fixed
        for NOMAD at the trial's values.
        """
        wanted = [n for n in self._names if n in search_space]
        if not wanted:
            return {}
        fixed = self._fixed_values(study, trial, search_space)
        if fixed is None:
            self._fall_back(study, trial, "outside")
            return {}
        if len(fixed) == len(self._names):
            return {}  # nothing left to choose
        with self._lock:
            search = self._search(study, fixed)
            restarts = search.early_restarts
            point = search.next_point(early=True)
            if search.early_restarts > restarts:
                self._warn_once(
                    "early",
                    f"NomadSampler restarted NOMAD with a block of {search.block_size}: "
                    f"more trials at once than NOMAD had points (block_size={self._block_size})",
                )
        if point is None:
            self._fall_back(study, trial, "exhausted" if search.exhausted else "busy")
            return {}
        study._storage.set_trial_system_attr(trial._trial_id, POINT_ATTR, list(point))
        if fixed:
            study._storage.set_trial_system_attr(trial._trial_id, FIXED_ATTR, dict(self._key(fixed)))
        params = self.decode(point)
        return {n: params[n] for n in wanted}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        pinned = self._pinned.get(trial._trial_id, {})
        if param_name in pinned:
            return pinned[param_name]
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        if state == TrialState.PRUNED:  # kept for resume: the complete trials will have changed by then
            final = extrapolated_value(study, trial)
            study._storage.set_trial_system_attr(trial._trial_id, EXTRAPOLATED_ATTR, final)
            values = None if final is None else [final]
        outputs = self._nomad_value(study, trial, state, values, extrapolated=True)
        point = trial.system_attrs.get(POINT_ATTR)
        with self._lock:
            self._pinned.pop(trial._trial_id, None)
            key = tuple((n, x) for n, x in trial.system_attrs.get(FIXED_ATTR, {}).items())
            search = self._searches.get(key) if point is not None else None
            if point is not None and self._evaluated_at(trial, state, point):
                if search is not None:
                    search.tell(tuple(point), outputs)
                return
            if point is not None:
                if search is not None:
                    search.give_back(tuple(point))
                self._warn_once(
                    "elsewhere",
                    f"trial {trial.number} was evaluated away from NOMAD's point (a parameter outside the "
                    "sampler's space, or set by other means): NOMAD is not told its value and proposes the point again",
                )
            evaluated = self._evaluated(trial, state, outputs)
            if evaluated is not None:
                for s in self._searches.values():
                    s.remember(*evaluated)

    def reseed_rng(self) -> None:
        """Reseed the random fallback, and NOMAD's seed if no NOMAD search has started yet.

        A started search keeps its seed: NOMAD cannot change it mid-run. The new seed is below
        100000: NOMAD 4.6 takes time in proportion to its seed to set it (30 s for 10**9).
        """
        self._random.reseed_rng()
        if not self._started:
            self._seed = random.SystemRandom().randrange(1, 100_000)

    # ---------------------------------------------------------------- lorahpo extensions

    @property
    def exhausted(self) -> bool:
        """True when NOMAD can propose no new point, even after restarts (the last search asked)."""
        search = self._searches.get(self._last)
        return search is not None and search.exhausted

    def ready(self, study: Study) -> bool:
        """Whether a trial asked now gets a NOMAD point without waiting for running trials.

        Blocks only while NOMAD computes its next points (milliseconds).
        """
        with self._lock:
            return self._search(study, {}).wait_ready()

    def close(self) -> None:
        """End the NOMAD processes (they also end with the sampler, or the interpreter)."""
        with self._lock:
            for search in self._searches.values():
                search.close()
            self._searches.clear()

    def decode(self, point: Sequence[float]) -> dict[str, Any]:
        return {n: space.decode(self._space[n], x) for n, x in zip(self._names, point, strict=True)}

    def nomad_problem(self) -> tuple[list[float], list[float], list[float], list[str]]:
        """``(x0, lower, upper, params)`` exactly as given to ``PyNomad.optimize`` (first run)."""
        lower, upper = [v.lower for v in self._vars], [v.upper for v in self._vars]
        return list(self._x0), lower, upper, self._params(self._seed, self._block_size)

    def starting_points(self, count: int | None = None) -> list[list[float]]:
        """Where NOMAD's first run starts: x0, the other ``starts``, and random points up to a block.

        NOMAD evaluates its starting points before anything else, in one block. x0 alone would
        leave k - 1 workers idle for a whole trial; instead they evaluate seeded random points
        of the box at the same time, and NOMAD goes on from the best of the k.
        """
        points = [list(self._x0), *(list(x) for x in self._starts)]
        count = max(self._block_size if count is None else count, len(points))
        rng = random.Random(self._seed)
        for _ in range(100 * count):
            if len(points) >= count:
                break
            x = [
                float(rng.randint(int(v.lower), int(v.upper))) if v.type == "I" else rng.uniform(v.lower, v.upper)
                for v in self._vars
            ]
            if self._startable(x) and x not in points:
                points.append(x)
        return points

    # ---------------------------------------------------------------- internals

    def _params(self, seed: int, block_size: int, fixed: dict[int, float] | None = None) -> list[str]:
        types = " ".join(v.type for v in self._vars)
        outputs = " ".join(["OBJ"] * self._n_objectives + ["PB"] * len(self._constraints))
        multi = ["DMULTIMADS_OPTIMIZATION yes"] if self._n_objectives > 1 else []
        direction = None if self._has("DIRECTION_TYPE") else "ORTHO N+1 QUAD"  # NOMAD's default
        if multi and direction is not None:
            direction = "ORTHO 2N"  # DMultiMADS refuses NOMAD's default poll
        free = [v for i, v in enumerate(self._vars) if i not in (fixed or {})]
        if direction is not None and (len(free) == 1 or all(v.type == "I" for v in free)):
            # NOMAD 4.6's default poll throws "ArrayOfDouble: Array is not defined" from some
            # starts of all-integer problems (docs/nomad.md); its 2N poll does not. In one
            # dimension both poll the same two directions.
            direction = "ORTHO 2N"
        lines = [f"DIRECTION_TYPE {direction}"] if direction not in (None, "ORTHO N+1 QUAD") else []
        # NOMAD's search steps propose one point at a time, each evaluated before the poll: with
        # several trials at once, search and poll points go out together so every worker is busy.
        if block_size > 1 and not self._has("MEGA_SEARCH_POLL"):
            lines.append("MEGA_SEARCH_POLL yes")
        if fixed:
            coords = " ".join(repr(float(fixed[i])) if i in fixed else "-" for i in range(len(self._vars)))
            lines.append(f"FIXED_VARIABLE ( {coords} )")
        return [
            f"DIMENSION {len(self._vars)}",
            f"BB_INPUT_TYPE ( {types} )",
            f"BB_OUTPUT_TYPE {outputs}",
            *multi,
            *lines,
            f"BB_MAX_BLOCK_SIZE {block_size}",
            f"SEED {seed}",
            "DISPLAY_DEGREE 0",
            *self._extra,
        ]

    def _has(self, name: str) -> bool:
        """Whether the user's NOMAD parameter lines set ``name``."""
        return any(line.split()[:1] == [name] for line in self._extra)

    def _startable(self, x: Sequence[float]) -> bool:
        return any(v.type == "R" for v in self._vars) or any(c != 0 for c in x)

    def _key(self, fixed: dict[str, Any]) -> Key:
        return tuple((n, float(space.encode(self._space[n], fixed[n]))) for n in self._names if n in fixed)

    def _search(self, study: Study, fixed: dict[str, Any]) -> Search:
        """The NOMAD search of the problem with ``fixed`` parameters, started when first needed."""
        key = self._key(fixed)
        search = self._searches.pop(key, None)
        if search is None:
            self._n_objectives = len(study.directions)
            self._started = True
            index = {n: i for i, n in enumerate(self._names)}
            problem = Problem(
                variables=tuple(self._vars),
                x0=tuple(self._x0),
                fixed={index[n]: x for n, x in key},
                seed=self._seed,
                block_size=self._block_size,
                n_objectives=self._n_objectives,
                max_idle_restarts=self._max_idle_restarts,
                params=lambda seed, block: self._params(seed, block, problem.fixed),
                starts=self.starting_points,
                decode=self.decode,
            )
            search = Search(problem, self._store_points(study))
        self._searches[key] = search
        while len(self._searches) > MAX_SEARCHES:
            self._searches.pop(next(iter(self._searches))).close()
        self._last = key
        return search

    def _store_points(self, study: Study) -> list[tuple[dict[str, Any], Point, Outputs | None]]:
        """Every point of the sampler's space the study evaluated, with NOMAD's outputs.

        Read from the study's storage: with a Hyperband pruner, Optuna gives a sampler a study
        narrowed to the asking trial's bracket, and NOMAD must know every point it evaluated.
        """
        finished = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
        points = []
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False, states=finished):
            if t.system_attrs.get(INTERRUPTED_ATTR):
                continue  # evaluated again: its result is not a measurement
            evaluated = self._evaluated(t, t.state, self._nomad_value(study, t, t.state, t.values))
            if evaluated is not None:
                points.append(evaluated)
        return points

    def _evaluated(
        self, trial: FrozenTrial, state: TrialState, outputs: Outputs | None
    ) -> tuple[dict[str, Any], Point, Outputs | None] | None:
        """``(params, point, outputs)`` of a trial evaluated at a point of the space, else None."""
        point = trial.system_attrs.get(POINT_ATTR)
        if point is not None and self._evaluated_at(trial, state, point):
            return {n: trial.params[n] for n in self._names if n in trial.params}, tuple(point), outputs
        if not all(n in trial.params and space.contains(self._space[n], trial.params[n]) for n in self._names):
            return None
        params = {n: trial.params[n] for n in self._names}
        return params, tuple(float(space.encode(self._space[n], params[n])) for n in self._names), outputs

    def _evaluated_at(self, trial: FrozenTrial, state: TrialState, point: Sequence[float]) -> bool:
        """Whether the trial was evaluated at ``point`` (a failed trial may lack parameters)."""
        proposed = self.decode(point)
        given = {n: trial.params[n] for n in self._names if n in trial.params}
        if len(given) < len(self._names) and state != TrialState.FAIL:
            return False
        return space.same_point(given, {n: proposed[n] for n in given})

    def _fixed_values(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any] | None:
        """The sampler's parameters fixed for this trial, with their values; None if one is outside.

        Enqueued values are the trial's own. A parameter outside ``search_space`` takes the
        value the study's sampler gives it (``PartialFixedSampler``'s fixed value), or, with no
        sampler around this one, a random value this sampler then gives it.
        """
        enqueued = trial.system_attrs.get("fixed_params", {})
        fixed = {}
        for name in self._names:
            dist = self._space[name]
            if name in enqueued:
                value = enqueued[name]
            elif name in search_space:
                continue
            elif study.sampler is not self:
                value = study.sampler.sample_independent(study, trial, name, dist)
            else:
                value = self._random.sample_independent(study, trial, name, dist)
                self._pinned.setdefault(trial._trial_id, {})[name] = value
            if not space.contains(dist, value):
                return None
            fixed[name] = value
        return fixed

    def _fall_back(self, study: Study, trial: FrozenTrial, reason: str) -> None:
        study._storage.set_trial_system_attr(trial._trial_id, FALLBACK_ATTR, reason)
        self._warn_once(reason, f"NomadSampler falls back to random sampling: {_FALLBACKS[reason]}")

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(message, stacklevel=3)

    def _nomad_value(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
        extrapolated: bool = False,
    ) -> Outputs | None:
        """NOMAD's outputs (objectives to minimise, then constraints), or None for a failure.

        ``extrapolated``: for a pruned trial, ``values`` already holds its extrapolated value (None: none).
        """
        if state == TrialState.PRUNED and not extrapolated:
            # Not its last reported value (Optuna records that): where its curve would have ended.
            final = trial.system_attrs[EXTRAPOLATED_ATTR] if EXTRAPOLATED_ATTR in trial.system_attrs else (
                extrapolated_value(study, trial)
            )
            values = None if final is None else [final]
        if state not in (TrialState.COMPLETE, TrialState.PRUNED) or not values:
            return None  # failed, or pruned with no value to extrapolate: a failed evaluation for NOMAD
        objectives = [-v if d == StudyDirection.MAXIMIZE else v for v, d in zip(values, study.directions, strict=True)]
        given = trial.constraints
        constraints = [given.get(name, VIOLATED) for name in self._constraints]
        outputs = (*objectives, *(c if math.isfinite(c) else VIOLATED for c in constraints))
        return outputs if all(math.isfinite(v) for v in objectives) else None


def extrapolated_value(study: Study, trial: FrozenTrial) -> float | None:
    """Where a pruned trial's curve would have ended, judged by the complete trials' curves.

    Its last reported value plus the median, over the complete trials that reported a finite value
    at the same step, of their final value minus their value there. None if it reported nothing,
    or no complete trial reported at that step. A difference, not a ratio: it is exact when curves
    fall by the same amount from a step on, whatever their level, and needs no model of the curve.

    Every complete trial of the study counts: read from its storage, not through ``study``, which
    Optuna narrows to the trial's own bracket when the pruner is Hyperband.
    """
    step = trial.last_step
    if step is None:
        return None
    complete = study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.COMPLETE,))
    changes = [
        t.values[0] - t.intermediate_values[step] for t in complete if step in t.intermediate_values and t.values
    ]
    changes = [c for c in changes if math.isfinite(c)]  # a NaN would make the median depend on the order
    value = trial.intermediate_values[step] + statistics.median(changes) if changes else None
    return value if value is not None and math.isfinite(value) else None
