"""NOMAD's MADS algorithm as an Optuna sampler.

``PyNomad.optimize`` drives the search itself and calls a blackbox function. We turn that
inside out: NOMAD runs in a child process (:mod:`lorahpo.samplers._nomad_worker`) whose blackbox
sends its points to :meth:`NomadSampler.sample_relative` and waits for the values that
:meth:`after_trial` brings back. The Optuna study stays in charge of asking, telling and storing.

Resume is exact because NOMAD is deterministic for a given seed and sequence of results, and
never evaluates a point twice: a new sampler on an existing study restarts NOMAD, answers every
point the study already holds from the store, and hands out the first point it does not hold:
the one an uninterrupted run would have proposed next. A point the store holds is recognised by
:func:`lorahpo.space.same_point` (reals within a relative 1e-9), so a study resumed on another
CPU, where NOMAD's arithmetic may differ in the last bits, does not evaluate its points again.

Restart policy: when NOMAD stops on its own (mesh converged, no more points) before the study's
budget is spent, it is restarted from the best point found so far with the next seed
(``seed + 1``, ``seed + 2``, ...); points already evaluated are answered from the store, never
re-run. After ``max_idle_restarts`` restarts in a row that produce no new point, the space is
taken as exhausted: :attr:`NomadSampler.exhausted` becomes True and further trials fall back to
random sampling with a warning (the lorahpo study loop stops instead).
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import tempfile
import threading
import warnings
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lorahpo import space
from lorahpo.result import INTERRUPTED_ATTR, VIOLATED

#: Trial system attribute holding the trial's point in NOMAD's coordinates.
POINT_ATTR = "nomad:x"

Point = tuple[float, ...]
Outputs = tuple[float, ...]  # what NOMAD's blackbox returns: objectives, then constraints


class NomadSampler(BaseSampler):
    """Mesh Adaptive Direct Search (NOMAD 4) behind Optuna's sampler interface.

    Args:
        search_space: Parameter names mapped to Optuna distributions. Categorical choices are
            searched as ordered integer indices; log floats in log10; stepped ints and floats as
            grid indices (see :mod:`lorahpo.space`).
        x0: Starting point as a dict of parameter values. Default: the middle of each range.
        seed: NOMAD's ``SEED``.
        block_size: Points NOMAD may hand out before it needs results (``BB_MAX_BLOCK_SIZE``):
            set it to the number of trials run in parallel.
        nomad_params: Extra NOMAD parameter lines, e.g. ``["DIRECTION_TYPE ORTHO N+1 QUAD"]``.
            Without them NOMAD runs with its defaults.
        max_idle_restarts: Restarts without a new point before the space counts as exhausted.
        constraints: Names of the constraints each trial sets with ``trial.set_constraint``
            (met when <= 0; one not set counts as violated). NOMAD gets them as ``PB`` outputs
            (progressive barrier).

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
        self._seed = seed
        self._block_size = block_size
        self._extra = list(nomad_params or [])
        self._max_idle_restarts = max_idle_restarts
        self._constraints = list(constraints)
        self._n_objectives = 1  # set from the study when NOMAD starts
        self._random = RandomSampler(seed=seed)
        self._engine: _Engine | None = None
        self._warned = False

    # ---------------------------------------------------------------- Optuna sampler contract

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space or "fixed_params" in trial.system_attrs:
            return {}
        point = self._ensure_engine(study).next_point()
        if point is None:
            if not self._warned:
                self._warned = True
                why = "the search space is exhausted" if self.exhausted else (
                    f"NOMAD needs the results of running trials first (block_size={self._block_size})"
                )
                warnings.warn(f"NomadSampler falls back to random sampling: {why}", stacklevel=2)
            return {}
        study._storage.set_trial_system_attr(trial._trial_id, POINT_ATTR, list(point))
        return self.decode(point)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        point = trial.system_attrs.get(POINT_ATTR)
        if point is None or self._engine is None:
            return
        self._engine.tell(tuple(point), self._nomad_value(study, trial, state, values))

    def reseed_rng(self) -> None:
        self._random.reseed_rng()

    # ---------------------------------------------------------------- lorahpo extensions

    @property
    def exhausted(self) -> bool:
        """True when NOMAD can propose no new point, even after restarts."""
        return self._engine is not None and self._engine.exhausted

    def ready(self, study: Study) -> bool:
        """Whether a trial asked now gets a NOMAD point without waiting for running trials.

        Blocks only while NOMAD computes its next points (milliseconds).
        """
        return self._ensure_engine(study).wait_ready()

    def close(self) -> None:
        """End the NOMAD process (it also ends with the interpreter)."""
        if self._engine is not None:
            self._engine.close()

    def decode(self, point: Sequence[float]) -> dict[str, Any]:
        return {n: space.decode(self._space[n], x) for n, x in zip(self._names, point, strict=True)}

    def nomad_problem(self) -> tuple[list[float], list[float], list[float], list[str]]:
        """``(x0, lower, upper, params)`` exactly as given to ``PyNomad.optimize`` (first run)."""
        return list(self._x0), [v.lower for v in self._vars], [v.upper for v in self._vars], self._params(self._seed)

    def starting_points(self) -> list[list[float]]:
        """Where NOMAD's first run starts: x0, and with ``block_size`` k > 1, k - 1 more.

        NOMAD evaluates its starting points before anything else, in one block. x0 alone would
        leave k - 1 workers idle for a whole trial; instead they evaluate seeded random points
        of the box at the same time, and NOMAD goes on from the best of the k.
        """
        points = [list(self._x0)]
        rng = random.Random(self._seed)
        lower, upper = [v.lower for v in self._vars], [v.upper for v in self._vars]
        for _ in range(100 * self._block_size):
            if len(points) >= self._block_size:
                break
            x = _random_box_point(self._vars, lower, upper, rng)
            if self._startable(x) and x not in points:
                points.append(x)
        return points

    # ---------------------------------------------------------------- internals

    def _params(self, seed: int) -> list[str]:
        types = " ".join(v.type for v in self._vars)
        outputs = " ".join(["OBJ"] * self._n_objectives + ["PB"] * len(self._constraints))
        multi = ["DMULTIMADS_OPTIMIZATION yes"] if self._n_objectives > 1 else []
        if multi and not self._has("DIRECTION_TYPE"):
            multi.append("DIRECTION_TYPE ORTHO 2N")  # DMultiMADS refuses NOMAD's default poll
        # NOMAD's search steps propose one point at a time, each evaluated before the poll: with
        # several trials at once, search and poll points go out together so every worker is busy.
        if self._block_size > 1 and not self._has("MEGA_SEARCH_POLL"):
            multi.append("MEGA_SEARCH_POLL yes")
        return [
            f"DIMENSION {len(self._vars)}",
            f"BB_INPUT_TYPE ( {types} )",
            f"BB_OUTPUT_TYPE {outputs}",
            *multi,
            f"BB_MAX_BLOCK_SIZE {self._block_size}",
            f"SEED {seed}",
            "DISPLAY_DEGREE 0",
            *self._extra,
        ]

    def _has(self, name: str) -> bool:
        """Whether the user's NOMAD parameter lines set ``name``."""
        return any(line.split()[:1] == [name] for line in self._extra)

    def _startable(self, x: Sequence[float]) -> bool:
        return any(v.type == "R" for v in self._vars) or any(c != 0 for c in x)

    def _nomad_value(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> Outputs | None:
        """NOMAD's outputs (objectives to minimise, then constraints), or None for a failure."""
        if state not in (TrialState.COMPLETE, TrialState.PRUNED) or not values:
            return None  # failed, or pruned before any report: a failed evaluation for NOMAD
        # A pruned trial has its last reported value (Optuna records it): NOMAD sees that.
        objectives = [-v if d == StudyDirection.MAXIMIZE else v for v, d in zip(values, study.directions, strict=True)]
        given = trial.constraints
        constraints = [given.get(name, VIOLATED) for name in self._constraints]
        outputs = (*objectives, *(c if math.isfinite(c) else VIOLATED for c in constraints))
        return outputs if all(math.isfinite(v) for v in objectives) else None

    def _ensure_engine(self, study: Study) -> _Engine:
        if self._engine is None:
            self._n_objectives = len(study.directions)
            known: dict[Point, Outputs | None] = {}
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)):
                point = t.system_attrs.get(POINT_ATTR)
                if point is not None and not t.system_attrs.get(INTERRUPTED_ATTR):
                    known[tuple(point)] = self._nomad_value(study, t, t.state, t.values)
            self._engine = _Engine(self, known)
        return self._engine


class _Engine:
    """PyNomad.optimize in a child process; its blackbox calls become a queue of points.

    No threads: the parent reads NOMAD's next block only when asked for a point, so all state
    changes happen in the caller's thread (guarded by a lock for Optuna's ``n_jobs``).
    """

    def __init__(self, sampler: NomadSampler, known: dict[Point, Outputs | None]) -> None:
        self._sampler = sampler
        self._known = known  # every evaluated point, with its value (None = failed)
        self._stored = [(sampler.decode(p), p) for p in known]  # the store's points, as params
        self._queue: deque[Point] = deque()  # proposed by NOMAD, not handed out yet
        self._block: list[Point] = []  # the block NOMAD waits on
        self._lock = threading.RLock()
        self._rng = random.Random(sampler._seed)
        self._run = 0
        self._idle_runs = 0
        self._new_in_run = 0
        self.exhausted = False
        self._proc = self._spawn()
        x0, lower, upper, params = sampler.nomad_problem()
        self._lower, self._upper, self._x0 = lower, upper, tuple(x0)
        starts = sampler.starting_points()
        self._send({"run": [starts if len(starts) > 1 else x0, lower, upper, params]})

    def next_point(self) -> Point | None:
        """The next point to evaluate; None while NOMAD needs results, or when exhausted."""
        with self._lock:
            while not self._queue:
                if self.exhausted or self._block:
                    return None
                self._pump()
            return self._queue.popleft()

    def wait_ready(self) -> bool:
        with self._lock:
            while not self._queue and not self._block and not self.exhausted:
                self._pump()
            return bool(self._queue)

    def tell(self, point: Point, value: Outputs | None) -> None:
        with self._lock:
            self._known[point] = value
            self._answer_if_complete()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def __del__(self) -> None:
        self.close()

    def _spawn(self) -> subprocess.Popen[str]:
        # NOMAD's chatter, read only if it dies; open as long as the process runs, so no `with`.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        return subprocess.Popen(
            # Run as a file, not ``-m``: importing the package would import Optuna (~1 s) for nothing.
            [sys.executable, str(Path(__file__).with_name("_nomad_worker.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            # Its own session: a Ctrl-C meant for the study must not reach NOMAD, which would end
            # its run quietly and change the search. The study decides; NOMAD ends with stdin.
            start_new_session=True,
        )

    def _pump(self) -> None:
        """Read NOMAD's next message: a block of points, or the end of a run."""
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            # NOMAD 4.6 occasionally throws an internal exception on small integer problems
            # (seen natively too). Treat it like NOMAD stopping: the restart policy goes on.
            self._stderr.seek(0)
            why = self._stderr.read().decode(errors="replace").strip().splitlines()[-1:]
            warnings.warn(f"NOMAD ended with an error and is restarted: {' '.join(why)}", stacklevel=2)
            self._proc.wait()
            self._proc = self._spawn()
            line = '{"done": "error"}'
        msg = json.loads(line)
        if "block" in msg:
            self._block = [tuple(p) for p in msg["block"]]
            for p in self._block:
                self._recall(p)
            fresh = [p for p in self._block if p not in self._known]
            fresh.sort(key=lambda p: p != self._x0)  # x0 first: the study's first trial is its start
            self._new_in_run += len(fresh)
            self._queue.extend(fresh)
            self._answer_if_complete()  # a block of points already in the store (replay)
            return
        # NOMAD stopped on its own: restart from the best point (see the module docstring).
        self._idle_runs = self._idle_runs + 1 if self._new_in_run == 0 else 0
        if self._idle_runs > self._sampler._max_idle_restarts:
            self.exhausted = True
            self.close()
            return
        self._run += 1
        self._new_in_run = 0
        x0 = self._best()
        if x0 is None or not self._sampler._startable(x0):
            x0 = self._random_point()
        self._send({"run": [x0, self._lower, self._upper, self._sampler._params(self._sampler._seed + self._run)]})

    def _recall(self, point: Point) -> None:
        """Know ``point`` when the store holds the same point (``space.same_point``) in other bits."""
        if point in self._known or not self._stored:
            return
        params = self._sampler.decode(point)
        stored = next((p for seen, p in self._stored if space.same_point(params, seen)), None)
        if stored is not None:
            self._known[point] = self._known[stored]

    def _answer_if_complete(self) -> None:
        if self._block and all(p in self._known for p in self._block):
            self._send({"values": [self._known[p] for p in self._block]})
            self._block = []

    def _send(self, msg: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(msg) + "\n")
        self._proc.stdin.flush()

    def _best(self) -> list[float] | None:
        """Where a restart starts: the least constraint violation, then the first objective."""
        n = self._sampler._n_objectives
        scored = [(sum(max(c, 0.0) ** 2 for c in v[n:]), v[0], p) for p, v in self._known.items() if v is not None]
        return list(min(scored)[2]) if scored else None

    def _random_point(self) -> list[float]:
        # NOMAD stops when its starting point fails; with no successful point yet, restart
        # from a random point of the box (one NOMAD can start from).
        while True:
            x = _random_box_point(self._sampler._vars, self._lower, self._upper, self._rng)
            if self._sampler._startable(x):
                return x


def _random_box_point(
    variables: Sequence[space.NomadVariable], lower: Sequence[float], upper: Sequence[float], rng: random.Random
) -> list[float]:
    """A uniformly random point of NOMAD's box (integers for integer variables)."""
    return [
        float(rng.randint(int(lo), int(hi))) if v.type == "I" else rng.uniform(lo, hi)
        for v, lo, hi in zip(variables, lower, upper, strict=True)
    ]
