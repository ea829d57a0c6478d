"""The LoRA tabular benchmark: a grid of real fine-tunes, with learning curves, measured once.

    python benchmarks/tabular.py --threads 1 --shard 0/2 &     # one process per core, resumable:
    python benchmarks/tabular.py --threads 1 --shard 1/2       # each measures every 2nd point
    python benchmarks/tabular.py --preset long --threads 1     # the second preset, on a subset
    python benchmarks/tabular.py --pack                        # write the committed tables
    python benchmarks/tabular.py --limit 2 --threads 1         # only the first 2 points of the order
    python benchmarks/tabular.py --speed 50                    # time 50-evaluation studies on the table

Each configuration of :data:`GRID` is one real ``run_trial`` of the built-in blackbox
(SmolLM2-135M on bigbench-instruct, the path ``lorahpo tune`` runs) at a fixed preset, in fp32
on any CPU (one blackbox, whichever machine measures a point). The grid spans lorahpo's
``default`` space (``lorahpo/space.py``):

- ``rank``: all six ranks of the space (4 ... 128);
- ``alpha``: 4, 16, 64, 256, a factor 4 apart from the space's low end to its top, so that the
  scale alpha/rank (what changes the update) runs from 1/32 to 64 in factors of 2 over ranks;
- ``dropout``: 0, 0.05 (the space's x0) and 0.2 (its largest), as dropout matters least in
  trials this short;
- ``learning_rate``: seven values log-spaced half a decade apart over the whole window 1e-5 ... 1e-2,
  the parameter that moves the loss most.

6 x 4 x 3 x 7 = 504 configurations. They are measured in a space-filling order (greedy maximin
over the grid's index coordinates, from the grid's centre: rank 16, alpha 16, dropout 0.05,
learning rate 3.16e-4, next to the space's x0), so a partial table already spans the grid: its
first 100 points are a coarse design of the whole space.

Presets (:data:`PRESETS`): ``main`` is the built-in study's blackbox (12 optimizer steps of 8
examples, the ``retention`` evaluator) with a larger validation split: a quarter of 800 rows,
167 examples once those too long are dropped (the built-in study validates on about 70), and
the validation loss every 3 steps; ``long`` trains 24 steps
(validation every 6) and is measured on every 5th point of the order, so that transfer
between presets can be studied.

Every measurement is appended, as it finishes, to ``results/tabular_<preset>_cache.jsonl``
(keyed by a hash of the complete trial config, as in ``lora_hpo.py``; several processes share
it): status, final validation loss, the curve ``[step, validation loss, training tokens so far,
seconds since the trial started]`` at each validation, every metric of the trial (training
tokens, retention, ...), its duration and CPU time (``cpu_s``: with ``--threads 1``, what one
dedicated core would take), and the machine and software that measured it. A rerun
measures only what is missing. ``--pack`` writes ``results/tabular_<preset>.jsonl.gz``: a
header line (grid, preset, how far the measurement got, machines, versions) and then one line
per measured configuration in measurement order; :class:`lorahpo.tabular.Table` reads it.
``--speed N`` times N-evaluation studies (NOMAD, TPE, random; the ``default`` space) on the
packed table through ``Study.run``, as ``lorahpo tune`` runs them: ``tabular_speed.json`` beside it.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine, write_results
from lora_hpo import study_config, trial_config, trial_folder

from lorahpo.executors.replay import Blackbox, Measurement, Measurements, Stop, config_key
from lorahpo.tabular import CURVE_FIELDS, GridAxis, grid_order, load_table, write_table

RESULTS = Path(__file__).parent / "results"

#: The grid: per parameter its values and whether it is compared on a log scale (for the order
#: of measurement and for snapping proposals to the grid).
GRID: dict[str, GridAxis] = {
    "rank": GridAxis([4, 8, 16, 32, 64, 128], log=True),
    "alpha": GridAxis([4, 16, 64, 256], log=True),
    "dropout": GridAxis([0.0, 0.05, 0.2], log=False),
    "learning_rate": GridAxis([float(f"{10 ** (-5 + k / 2):.12g}") for k in range(7)], log=True),
}

_BLACKBOX: dict[str, Any] = {
    "model": {"name": "smollm2-135m"},
    "data": {"preset": "bigbench-instruct", "size": "cpu", "max_examples": 800, "max_length": 128,
             "validation_fraction": 0.25},
    "evaluate": [{"name": "retention", "shots": 3}],  # the built-in study's forgetting guard
}
_TRAINING = {"batch_size": 8, "effective_batch_size": 8, "precision": "fp32"}

#: The presets: the blackbox of each, and every how many points of the order it measures.
PRESETS: dict[str, dict[str, Any]] = {
    "main": {"every": 1, "blackbox": {**_BLACKBOX, "training": {**_TRAINING, "max_steps": 12, "eval_every": 3}}},
    "long": {"every": 5, "blackbox": {**_BLACKBOX, "training": {**_TRAINING, "max_steps": 24, "eval_every": 6}}},
}
#: What the packed table keeps of each measurement.
ROW_FIELDS = ("params", "status", "value", "reason", "duration_s", "cpu_s", "curve", "metrics", "measured_at")
#: The packages whose versions each measurement records.
PACKAGES = ("torch", "transformers", "peft", "lorahpo")


def preset_points(preset: str) -> list[dict[str, Any]]:
    """The configurations a preset measures, in measurement order."""
    return [dict(p) for p in _order()[:: PRESETS[preset]["every"]]]


@functools.cache
def _order() -> list[dict[str, Any]]:
    return grid_order(GRID)


def lora_curve_blackbox(trial: dict[str, Any], stop: Stop) -> Measurement:
    """Train and validate one trial config in this process, recording its learning curve.

    ``stop(step, loss, tokens, seconds)`` is asked at each validation (True stops the trial).
    """
    from lorahpo.finetune.config import LoraTrialConfig
    from lorahpo.finetune.train import run_trial

    tokens: dict[int, float] = {}
    curve: list[list[float]] = []
    start = time.perf_counter()

    def on_step(step: int, values: dict[str, float]) -> None:
        if "train_tokens" in values:
            tokens[step] = values["train_tokens"]

    def reporter(step: int, value: float) -> bool:
        entry = [step, value, tokens[step], time.perf_counter() - start]
        curve.append(entry)
        return stop(*entry)

    result = run_trial(LoraTrialConfig.model_validate(trial), trial_folder(trial), reporter=reporter, curve=on_step)
    return {
        "status": "stopped" if result.status == "pruned" else result.status,
        "value": result.metrics.get("validation_loss") if result.status == "complete" else None,
        "reason": result.reason,
        "duration_s": result.duration_s,
        "curve": curve,
        "metrics": result.metrics,
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def measure(preset: str, cache: Measurements, blackbox: Blackbox, shard: tuple[int, int] = (0, 1),
            limit: int | None = None) -> int:
    """Measure the preset's points of this ``shard`` (the k-th of every n, in order) that the
    cache lacks, up to the first ``limit`` points of the order; returns how many were measured."""
    conf = study_config(PRESETS[preset]["blackbox"], "random", 0, 1)
    points = preset_points(preset)[:limit]
    measured = 0
    for i, params in enumerate(points):
        if i % shard[1] != shard[0]:
            continue
        config = trial_config(conf, params)
        key = config_key(config)
        if cache.get(key) is not None:
            continue
        tic, cpu = time.perf_counter(), time.process_time()
        point = blackbox(config, lambda *entry: False)
        cache.add({"key": key, "params": params, "preset": preset, **point, "cpu_s": time.process_time() - cpu,
                   "measured_at": machine(), "versions": versions()})
        measured += 1
        print(f"{preset} [{i + 1}/{len(points)}] {params} {point['status']} {_fmt(point['value'])} "
              f"({time.perf_counter() - tic:.0f} s)", flush=True)
    return measured


def pack(preset: str, cache: Measurements, out: Path) -> dict[str, Any]:
    """Write the preset's packed table from the cache: header, then the measured points in order."""
    conf = study_config(PRESETS[preset]["blackbox"], "random", 0, 1)
    planned = preset_points(preset)
    found = [cache.get(config_key(trial_config(conf, params))) for params in planned]
    measured = [p for p in found if p is not None and p["status"] != "stopped"]
    rows = [{name: point.get(name) for name in ROW_FIELDS} for point in measured]
    machines = _unique({k: v for k, v in p["measured_at"].items() if k != "date"} for p in measured)
    meta = {
        "preset": preset,
        "blackbox": PRESETS[preset]["blackbox"],
        "grid": {name: {"values": axis.values, "log": axis.log} for name, axis in GRID.items()},
        "every": PRESETS[preset]["every"],
        "planned": len(planned),
        "measured": len(rows),
        "curve_fields": list(CURVE_FIELDS),
        "machines": machines,
        "versions": _unique(p.get("versions") for p in measured),
    }
    write_table(out, meta, rows)
    print(f"{out}: {len(rows)} of {len(planned)} configurations, {out.stat().st_size / 1e3:.0f} kB", flush=True)
    return meta


def speed(table: Path, budget: int, out: Path) -> dict[str, Any]:
    """Wall seconds of one ``budget``-evaluation study on ``table`` per optimizer, in a fresh
    folder: the study loop, its store and the optimizer, which is all a tabular study costs; and
    the CPU seconds of this process (NOMAD's own child process not counted)."""
    from lorahpo import config as cfg
    from lorahpo.study import Study

    seconds, cpu_seconds = {}, {}
    for optimizer in ("nomad", "tpe", "random"):
        conf = cfg.parse({"name": "speed", "optimizer": optimizer, "budget": budget, "space": {"preset": "default"},
                          "objective": {"tabular": {"table": str(table)}}}, "speed")
        with tempfile.TemporaryDirectory(prefix="lorahpo-tabular-") as folder:
            tic, cpu = time.perf_counter(), time.process_time()
            Study.open(folder, conf).run()
            seconds[optimizer] = round(time.perf_counter() - tic, 2)
            cpu_seconds[optimizer] = round(time.process_time() - cpu, 2)
    configurations = len(load_table(table).points)
    result = {"table": table.name, "configurations": configurations, "budget": budget, "seconds": seconds,
              "cpu_seconds": cpu_seconds, "load_average": os.getloadavg()[0], "machine": machine()}
    rows = "\n".join(f"| {name} | {s:.1f} | {cpu_seconds[name]:.1f} |" for name, s in seconds.items())
    write_results(out, result, f"# {budget}-evaluation studies on {table.name} ({configurations} configurations)"
                  f"\n\nLoad average {result['load_average']:.1f} on {result['machine']['cores']} cores.\n\n"
                  f"| optimizer | wall seconds | CPU seconds |\n|---|---|---|\n{rows}\n")
    return result


def _unique(items: Any) -> list[Any]:
    kept: list[Any] = []
    for item in items:
        if item and item not in kept:
            kept.append(item)
    return kept


def _fmt(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.4f}"


def _shard(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, got {text!r}")
    return int(k), int(n)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="main")
    p.add_argument("--threads", type=int, help="torch threads (one process per core: --threads 1)")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="K/N",
                   help="one of N processes sharing the cache: measure only points K, K+N, ... of the order")
    p.add_argument("--limit", type=int, help="measure only among the first LIMIT points of the order")
    p.add_argument("--pack", action="store_true", help="measure nothing: write the packed table from the cache")
    p.add_argument("--speed", type=int, metavar="N", help="measure nothing: time N-evaluation studies on the table")
    p.add_argument("--cache", type=Path, help="default: results/tabular_<preset>_cache.jsonl")
    p.add_argument("--out", type=Path, help="packed table (default: results/tabular_<preset>.jsonl.gz)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, blackbox: Blackbox = lora_curve_blackbox) -> int:
    args = parse_args(argv)
    cache = Measurements(args.cache or RESULTS / f"tabular_{args.preset}_cache.jsonl")
    table = args.out or RESULTS / f"tabular_{args.preset}.jsonl.gz"
    if args.pack:
        pack(args.preset, cache, table)
        return 0
    if args.speed:
        speed(table, args.speed, table.with_name("tabular_speed.json"))
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["LORAHPO_NUM_THREADS"] = str(args.threads)
    measured = measure(args.preset, cache, blackbox, args.shard, args.limit)
    print(f"{measured} configurations measured; `--pack` writes the table", flush=True)
    return 0


if __name__ == "__main__":
    main()
