"""A tabular blackbox: real fine-tunes measured once on a grid, answered again in milliseconds.

A table (written by ``benchmarks/tabular.py``; docs/tabular.md) is a gzipped JSON-lines file: a
header line, then one line per measured configuration. The header holds ``format``
(:data:`FORMAT`), ``grid`` (per parameter its ``values`` and whether it is compared on a
``log`` scale), ``curve_fields`` (:data:`CURVE_FIELDS`) and what the benchmark adds (the
preset's blackbox, machines, versions). A configuration's line holds ``params`` (a grid point),
``status``, ``value`` (the final validation loss), ``reason``, ``duration_s``, ``curve`` (one
entry per validation, in the order of :data:`CURVE_FIELDS`) and ``metrics`` (everything the
trial measured).

A study whose objective is ``tabular: {table: PATH}`` runs through the ordinary study loop with
a :class:`TableExecutor` (a :class:`~lorahpo.executors.replay.ReplayExecutor` over the table):
each proposal is snapped to the nearest measured grid point (:meth:`Table.snap`, deterministic,
so every optimizer searches the grid's landscape), its curve is reported value by value so the
study's pruner sees the real curve, and a pruned trial costs the training tokens and seconds
spent up to where it was stopped.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lorahpo.errors import UserError
from lorahpo.executors.local import TrialTask
from lorahpo.executors.replay import Answer, Measurement, Measurements, ReplayExecutor, config_key
from lorahpo.result import STATUSES, TrialResult
from lorahpo.space import ParamSpec, SpaceSpec

FORMAT = "lorahpo-tabular/1"
#: What each entry of a configuration's curve holds, in order.
CURVE_FIELDS = ("step", "validation_loss", "train_tokens", "elapsed_s")


class TableError(UserError, ValueError):
    """A table file that cannot be read, in one line."""


@dataclass(frozen=True)
class GridAxis:
    """The values of one parameter on the grid, in increasing order; ``log``: compared in log10."""

    values: list[Any]
    log: bool = False

    def position(self, value: float) -> float:
        """Where ``value`` lies on the axis, as a fractional index (clamped to the axis): the
        coordinate in which grid points are ordered and proposals snapped."""
        xs = [self._scaled(v) for v in self.values]
        x = self._scaled(value)
        if len(xs) == 1 or x <= xs[0]:
            return 0.0
        for i in range(1, len(xs)):
            if x <= xs[i]:
                return i - 1 + (x - xs[i - 1]) / (xs[i] - xs[i - 1])
        return float(len(xs) - 1)

    def _scaled(self, value: float) -> float:
        return math.log10(value) if self.log else float(value)


def grid_order(grid: dict[str, GridAxis]) -> list[dict[str, Any]]:
    """Every point of ``grid`` in a space-filling order: from the grid's centre, each next
    point is the one farthest from all before it (greedy maximin in index coordinates scaled
    to [0, 1]; ties go to the first in ``itertools.product`` order). So any prefix of the order
    spreads over the whole grid."""
    names = list(grid)
    points = list(itertools.product(*(range(len(grid[n].values)) for n in names)))
    spans = np.array([max(len(grid[n].values) - 1, 1) for n in names], dtype=float)
    coords = np.array(points, dtype=float) / spans
    centre = tuple((len(grid[n].values) - 1) // 2 for n in names)
    order = [points.index(centre)]
    nearest = np.linalg.norm(coords - coords[order[0]], axis=1)
    for _ in range(len(points) - 1):
        nearest[order[-1]] = -1.0
        order.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(coords - coords[order[-1]], axis=1))
    return [{n: grid[n].values[i] for n, i in zip(names, points[k], strict=True)} for k in order]


def write_table(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write a table: the header ``{format, **meta}``, then ``rows``; the same bytes for the same
    content (no time stamp in the gzip header), so a re-packed table that did not change is no diff."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"format": FORMAT, **meta}, sort_keys=True)]
    lines += [json.dumps(row, sort_keys=True) for row in rows]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(("\n".join(lines) + "\n").encode())
    tmp.replace(path)


class Table:
    """A loaded table: its header, grid and measured configurations (in measurement order)."""

    def __init__(self, meta: dict[str, Any], points: list[Measurement], path: Path | None = None) -> None:
        self.meta = meta
        self.points = points
        self.path = path
        self.grid = {name: GridAxis(list(axis["values"]), bool(axis.get("log"))) for name, axis in meta["grid"].items()}
        self._coords = np.array([self._coordinates(p["params"]) for p in points], dtype=float).reshape(
            len(points), len(self.grid)
        )

    @classmethod
    def load(cls, path: str | Path) -> Table:
        """Read and check a table file (gzipped or plain JSON lines).

        Raises:
            TableError: The file is missing, not a table, or a line is not on the grid.
        """
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rt") as f:
                lines = [line for line in f.read().splitlines() if line.strip()]
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise TableError(f"table {path}: cannot be read ({e})") from None
        if not lines:
            raise TableError(f"table {path}: empty")
        try:
            meta = json.loads(lines[0])
            points = [json.loads(line) for line in lines[1:]]
        except json.JSONDecodeError as e:
            raise TableError(f"table {path}: not JSON lines ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("grid"), dict):
            raise TableError(f"table {path}: the first line is not a {FORMAT} header with a grid")
        for name, axis in meta["grid"].items():
            _check_axis(path, name, axis)
        for number, point in enumerate(points, 2):
            _check_point(path, number, point, meta)
        if not points:
            raise TableError(f"table {path}: no measured configuration")
        return cls(meta, points, path)

    @property
    def curve_fields(self) -> list[str]:
        return list(self.meta.get("curve_fields", CURVE_FIELDS))

    def metric_names(self) -> list[str]:
        """Every metric some complete configuration measured."""
        names = {m for p in self.points if p["status"] == "complete" for m in p.get("metrics") or {}}
        return sorted(names)

    def grid_space(self, x0: dict[str, Any] | None = None) -> SpaceSpec:
        """The grid itself as a search space: each parameter a ``choice`` of its grid values
        (ordered: NOMAD searches their indices), starting at ``x0`` snapped to the grid if given.
        Every proposal is then a distinct grid point; but TPE, GP and CMA-ES treat a choice as
        unordered, so for them the ``default`` space, snapped, is the closer model of a live study."""
        start = self.snap(x0) if x0 is not None else {}
        return SpaceSpec(params={
            name: ParamSpec(type="choice", values=list(axis.values), x0=start.get(name))
            for name, axis in self.grid.items()
        })

    def snap(self, params: dict[str, Any]) -> dict[str, Any]:
        """The measured grid point nearest ``params``: per parameter the proposal's fractional
        position on its axis (log10 where the axis says so) scaled to [0, 1], then the nearest
        measured point in that space; of equally near ones, the first in the table. On a full
        grid this is each parameter rounded to its nearest grid value; on a partial table, the
        nearest configuration measured so far."""
        return dict(self.lookup(params)["params"])

    def lookup(self, params: dict[str, Any]) -> Measurement:
        """The measurement answering ``params``: that of the grid point :meth:`snap` gives."""
        x = np.array(self._coordinates(params), dtype=float)
        return self.points[int(np.argmin(np.linalg.norm(self._coords - x, axis=1)))]

    def curve(self, params: dict[str, Any]) -> list[dict[str, float]]:
        """The learning curve answering ``params``: one mapping of :attr:`curve_fields` per validation."""
        return [dict(zip(self.curve_fields, entry, strict=True)) for entry in self.lookup(params).get("curve", [])]

    def _coordinates(self, params: dict[str, Any]) -> list[float]:
        missing = set(self.grid) - set(params)
        if missing:
            raise KeyError(f"no value for {sorted(missing)}")
        return [axis.position(params[n]) / max(len(axis.values) - 1, 1) for n, axis in self.grid.items()]


def _check_axis(path: Path, name: str, axis: Any) -> None:
    values = axis.get("values") if isinstance(axis, dict) else None
    if not (isinstance(values, list) and values and all(_is_number(v) for v in values)) or any(
        a >= b for a, b in itertools.pairwise(values)
    ):
        raise TableError(f"table {path}: grid {name}: `values` must be increasing numbers")
    if axis.get("log") and values[0] <= 0:
        raise TableError(f"table {path}: grid {name}: a log axis needs values > 0")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_point(path: Path, number: int, point: Any, meta: dict[str, Any]) -> None:
    where = f"table {path} line {number}"
    if not isinstance(point, dict) or not {"params", "status", "curve"} <= set(point):
        raise TableError(f"{where}: expected params, status and curve")
    if point["status"] not in STATUSES or point["status"] == "pruned":
        raise TableError(f"{where}: status {point['status']!r} is not complete, failed or timeout")
    params, grid = point["params"], meta["grid"]
    if set(params) != set(grid):
        raise TableError(f"{where}: params {sorted(params)} are not the grid's {sorted(grid)}")
    for name, value in params.items():
        if value not in grid[name]["values"]:
            raise TableError(f"{where}: {name}={value!r} is not on the grid")
    width = len(meta.get("curve_fields", CURVE_FIELDS))
    if any(len(entry) != width for entry in point["curve"]):
        raise TableError(f"{where}: a curve entry does not have {width} fields")
    if point["status"] == "complete" and not _is_number(point.get("value")):
        raise TableError(f"{where}: a complete configuration needs a numeric value")


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> Table:
    return Table.load(path)


def load_table(path: str | Path) -> Table:
    """:meth:`Table.load`, read once per version of the file (a study validates its config and
    builds its executor from the same table)."""
    try:
        stat = Path(path).stat()
    except OSError as e:
        raise TableError(f"table {path}: cannot be read ({e.strerror})") from None
    return _load_cached(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


class _TableMeasurements(Measurements):
    """A table's configurations as a replay cache, keyed by the hash of their params."""

    def __init__(self, table: Table) -> None:
        self.path = table.path or Path()
        self.points = {config_key(p["params"]): {**p, "key": config_key(p["params"])} for p in table.points}
        self._offset = 0

    def _read_new(self) -> None:
        """A table is read once, whole: nothing is appended to it."""


class TableExecutor(ReplayExecutor):
    """Answers each trial from ``table`` in this process (threads, no subprocess).

    The trial's params are snapped to the grid (:meth:`Table.snap`); its curve is reported
    through the trial folder as a live trial's is, so the study's pruner may stop it at any
    recorded validation. A pruned trial's ``metrics`` are what it cost up to there
    (``train_tokens``, ``steps``) and its duration the seconds the real trial had run; a
    finished one's are everything the real trial measured, and its duration the real trial's.
    """

    def __init__(self, table: Table) -> None:
        super().__init__(_TableMeasurements(table), trial_config=table.snap)
        self.table = table

    def _answer(self, task: TrialTask, answer: Answer, pruned: bool) -> TrialResult:
        result = super()._answer(task, answer, pruned)
        if result.status == "pruned" and answer.reached:
            entry = dict(zip(self.table.curve_fields, answer.measurement["curve"][answer.reached - 1], strict=True))
            result.metrics = {"train_tokens": entry["train_tokens"], "steps": entry["step"]}
            result.duration_s = entry["elapsed_s"]
        return result
