"""One NOMAD search as an ask/tell object: its child process, its queue of points, its restarts.

``PyNomad.optimize`` drives a search itself and calls a blackbox. :class:`Search` runs it in a
child process (:mod:`lorahpo.samplers._nomad_worker`) whose blackbox sends blocks of points and
waits for their values, so NOMAD's points can be handed out one by one and answered later.

A search knows every point evaluated on its problem (the space with some variables fixed),
with its outputs: a point NOMAD proposes again, or one the study already holds, is answered at
once and never handed out. Nothing else is ever told to NOMAD.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import subprocess
import sys
import tempfile
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lorahpo import space

Point = tuple[float, ...]
Outputs = tuple[float, ...]  # what NOMAD's blackbox returns: objectives, then constraints

#: All-integer problems up to this many points are listed to find the points not tried yet.
LISTABLE = 100_000


@dataclass(frozen=True)
class Problem:
    """What a search runs on. ``fixed`` maps variable indices to the values NOMAD must keep."""

    variables: tuple[space.NomadVariable, ...]
    x0: Point
    fixed: dict[int, float]
    seed: int
    block_size: int
    n_objectives: int
    max_idle_restarts: int
    params: Callable[[int, int], list[str]]  # NOMAD's parameter lines for (seed, block size)
    starts: Callable[[int], list[list[float]]]  # starting points for a block size (x0 first)
    decode: Callable[[Sequence[float]], dict[str, Any]]

    def fix(self, point: Sequence[float]) -> list[float]:
        return [self.fixed.get(i, x) for i, x in enumerate(point)]

    def startable(self, x: Sequence[float]) -> bool:
        """NOMAD 4.6 cannot start at the origin when every variable is an integer."""
        return any(v.type == "R" for v in self.variables) or any(c != 0 for c in x)

    @property
    def integer(self) -> bool:
        """Whether every free variable is an integer: the problem has finitely many points."""
        return all(v.type == "I" for i, v in enumerate(self.variables) if i not in self.fixed)


class Search:
    """One NOMAD search on one problem. Not thread-safe: the sampler holds a lock around it."""

    def __init__(self, problem: Problem, evaluated: Sequence[tuple[dict[str, Any], Point, Outputs | None]]) -> None:
        self.problem = problem
        self._known: dict[Point, Outputs | None] = {}  # every evaluated point (None: failed)
        self._stored: list[tuple[dict[str, Any], Point]] = []  # the same, as params (see _recall)
        self._queue: deque[Point] = deque()  # proposed by NOMAD, not handed out yet
        self._block: list[Point] = []  # the block NOMAD waits on
        self._out: set[Point] = set()  # handed out, not answered yet
        for params, point, outputs in evaluated:
            self.remember(params, point, outputs)
        self._block_size = problem.block_size
        self._rng = random.Random(problem.seed)
        self._run = 0
        self._idle_runs = 0
        self._new_in_run = 0
        self.exhausted = False
        self.early_restarts = 0
        self._proc = _Process()
        self._run_starts: set[Point] = set()  # where runs started
        self._x0 = tuple(problem.fix(problem.x0))
        self._start(self._starts(), problem.seed)

    # ------------------------------------------------------------------------ ask and tell

    def next_point(self, early: bool = False) -> Point | None:
        """The next point to evaluate; None when NOMAD waits for results, or is exhausted.

        With ``early``, a search whose points are all out restarts from its best point (with a
        block large enough for the trials out) rather than give nothing.
        """
        while True:
            point = self._fresh()
            if point is not None:
                self._out.add(point)
                return point
            if self.exhausted:
                return None
            if not self._block:
                self._pump()
            elif early:
                self._restart_early()
                early = False
            else:
                return None

    def wait_ready(self) -> bool:
        """Whether a point can be handed out now (blocks only while NOMAD computes)."""
        while self._fresh(pop=False) is None and not self._block and not self.exhausted:
            self._pump()
        return self._fresh(pop=False) is not None

    def tell(self, point: Point, outputs: Outputs | None) -> None:
        """The result of a point this search handed out, evaluated there."""
        self._known[point] = outputs
        self._out.discard(point)
        self._answer_if_complete()

    def give_back(self, point: Point) -> None:
        """A point handed out but evaluated elsewhere: it is proposed again."""
        self._out.discard(point)
        if point in self._block and point not in self._known:
            self._queue.appendleft(point)

    def remember(self, params: dict[str, Any], point: Point, outputs: Outputs | None) -> None:
        """A point evaluated outside this search (another trial of the study): known from now on."""
        if any(point[i] != x for i, x in self.problem.fixed.items()):
            return  # another problem's point
        self._known[point] = outputs
        self._stored.append((params, point))
        for p in self._block:
            self._recall(p)
        self._answer_if_complete()

    def close(self) -> None:
        self._proc.close()

    @property
    def block_size(self) -> int:
        """NOMAD's block size now (it grows when more trials run at once than it has points)."""
        return self._block_size

    @property
    def process(self) -> subprocess.Popen[str]:
        return self._proc.popen

    # ------------------------------------------------------------------------ NOMAD's messages

    def _fresh(self, pop: bool = True) -> Point | None:
        """The first queued point nobody evaluated or holds (dropping the others)."""
        while self._queue:
            point = self._queue[0]
            if point not in self._known and point not in self._out:
                if pop:
                    self._queue.popleft()
                return point
            self._queue.popleft()
        return None

    def _pump(self) -> None:
        """Read NOMAD's next message: a block of points, or the end of a run."""
        line = self._proc.readline()
        if not line:
            # NOMAD 4.6 occasionally throws an internal exception (seen natively too). Treat it
            # like NOMAD stopping: the restart policy goes on.
            warnings.warn(f"NOMAD ended with an error and is restarted: {self._proc.last_error()}", stacklevel=3)
            self._proc.close()
            self._proc = _Process()
            line = '{"done": "error"}'
        msg = json.loads(line)
        if "block" in msg:
            self._block = [tuple(p) for p in msg["block"]]
            for p in self._block:
                self._recall(p)
            fresh = [p for p in self._block if p not in self._known and p not in self._out]
            fresh.sort(key=lambda p: p != self._x0)  # x0 first: the study's first trial is its start
            self._new_in_run += len(fresh)
            self._queue.extend(fresh)
            self._answer_if_complete()  # a block of points already evaluated (replay)
            return
        self._restart()

    def _recall(self, point: Point) -> None:
        """Know ``point`` when the study holds the same point (``space.same_point``) in other bits."""
        if point in self._known or not self._stored:
            return
        params = self.problem.decode(point)
        stored = next((p for seen, p in self._stored if space.same_point(params, seen)), None)
        if stored is not None:
            self._known[point] = self._known[stored]

    def _answer_if_complete(self) -> None:
        if self._block and all(p in self._known for p in self._block):
            self._proc.send({"values": [self._known[p] for p in self._block]})
            self._block = []

    # ------------------------------------------------------------------------ runs and restarts

    def _start(self, starts: list[list[float]], seed: int) -> None:
        self._run_starts.update(tuple(p) for p in starts)
        lower = [v.lower for v in self.problem.variables]
        upper = [v.upper for v in self.problem.variables]
        x0: list[Any] = starts if len(starts) > 1 else starts[0]
        self._proc.send({"run": [x0, lower, upper, self.problem.params(seed, self._block_size)]})

    def _starts(self) -> list[list[float]]:
        starts = [self.problem.fix(p) for p in self.problem.starts(self._block_size)]
        unique = [p for k, p in enumerate(starts) if p not in starts[:k] and self.problem.startable(p)]
        return unique or [self._random_point()]

    def _restart(self) -> None:
        """NOMAD stopped on its own: go on from another point, or declare the problem exhausted.

        A run that found new points is followed by one from the best point. An all-integer
        problem restarts from each point once at most, then from a point not tried yet: it is
        exhausted once every point has been tried. One with a real variable restarts from the
        best point, and is exhausted after ``max_idle_restarts`` runs in a row without a new point.
        """
        idle = self._new_in_run == 0
        self._idle_runs = self._idle_runs + 1 if idle else 0
        self._run += 1
        self._new_in_run = 0
        best = self._best()
        x0: list[float] | None
        if self.problem.integer:
            again = best is None or tuple(best) in self._run_starts or not self.problem.startable(best)
            x0 = self._untried() if again else best
        elif self._idle_runs > self.problem.max_idle_restarts:
            x0 = None
        else:
            x0 = best if best is not None and self.problem.startable(best) else self._random_point()
        if x0 is None:
            self.exhausted = True
            self.close()
            return
        self._start([x0], self.problem.seed + self._run)

    def _restart_early(self) -> None:
        """More trials at once than NOMAD has points: a new run, with room for all of them.

        It starts from the best point and, like a first run, fills its first block with random
        points nobody evaluated or holds: NOMAD's poll around the best point may propose only
        points that running trials hold, which would leave the trial that asked without one.
        """
        self.early_restarts += 1
        self._block_size = max(self._block_size, 2 * (len(self._out) + 1))
        self._queue.clear()
        self._block = []
        self._proc.close()
        self._proc = _Process()
        self._run += 1
        self._new_in_run = 0
        self._idle_runs = 0
        best = self._best()
        starts = self._starts() if best is None or not self.problem.startable(best) else [best]
        taken = self._known.keys() | self._out | {tuple(p) for p in starts}
        for _ in range(100 * self._block_size):  # bounded: a small integer space may have no point left
            if len(starts) >= self._block_size:
                break
            x = self._random_point()
            if tuple(x) not in taken:
                starts.append(x)
                taken.add(tuple(x))
        self._start(starts, self.problem.seed + self._run)

    def _best(self) -> list[float] | None:
        """The least constraint violation, then the first objective."""
        n = self.problem.n_objectives
        scored = [(sum(max(c, 0.0) ** 2 for c in v[n:]), v[0], p) for p, v in self._known.items() if v is not None]
        return list(min(scored)[2]) if scored else None

    def _untried(self) -> list[float] | None:
        """A random point of an all-integer problem that nobody evaluated or holds; None if none."""
        tried = self._known.keys() | self._out
        ranges = [
            [self.problem.fixed[i]] if i in self.problem.fixed else range(int(v.lower), int(v.upper) + 1)
            for i, v in enumerate(self.problem.variables)
        ]
        if math.prod(len(r) for r in ranges) <= LISTABLE:
            left = [list(map(float, p)) for p in itertools.product(*ranges) if p not in tried]
            left = [p for p in left if self.problem.startable(p)]
            return self._rng.choice(left) if left else None
        for _ in range(1000):
            x = self._random_point()
            if tuple(x) not in tried:
                return x
        return None

    def _random_point(self) -> list[float]:
        """A uniformly random point of the box (integers for integer variables) NOMAD can start from."""
        while True:
            x = self.problem.fix(
                [
                    float(self._rng.randint(int(v.lower), int(v.upper))) if v.type == "I"
                    else self._rng.uniform(v.lower, v.upper)
                    for v in self.problem.variables
                ]
            )
            if self.problem.startable(x):
                return x


class _Process:
    """The NOMAD child process; its pipes and error file are closed with it, or when collected."""

    def __init__(self) -> None:
        # NOMAD's chatter, read only if it dies; open as long as the process runs, so no `with`.
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.popen = subprocess.Popen(
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
        self._end = weakref.finalize(self, _end, self.popen, self._stderr)

    def send(self, msg: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(msg) + "\n")
        self.popen.stdin.flush()

    def readline(self) -> str:
        assert self.popen.stdout is not None
        return self.popen.stdout.readline()

    def last_error(self) -> str:
        self.popen.wait()
        self._stderr.seek(0)
        return " ".join(self._stderr.read().decode(errors="replace").strip().splitlines()[-1:])

    def close(self) -> None:
        self._end()


def _end(popen: subprocess.Popen[str], stderr: IO[bytes]) -> None:
    if popen.poll() is None:
        popen.kill()
    popen.wait()
    for pipe in (popen.stdin, popen.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    stderr.close()
