"""NOMAD, TPE and random search on the real LoRA blackbox, with a cache of measured points.

    python benchmarks/lora_hpo.py                          # nomad, tpe, random; seeds 0-2; budget 20
    python benchmarks/lora_hpo.py --optimizers nomad --seeds 3 4 --budget 30
    python benchmarks/lora_hpo.py --replay                 # rebuild the results from the cache only

Each optimizer searches lorahpo's ``default`` space (rank, dropout, alpha, learning rate) over
the built-in blackbox (``run_trial``: smollm2-135m, bigbench-instruct) at a benchmark-size
preset, in an Optuna study built as ``lorahpo tune`` builds it (``attach_sampler``: every
optimizer starts from the space's x0, NOMAD as its X0, TPE and random as their first trial).

Every evaluated configuration is appended, with its measured result, to a cache
(``results/lora_hpo_cache.jsonl``, committed) keyed by a hash of the complete trial config. A
point already in the cache is read back instead of trained again, so the benchmark runs in
parts, and reruns or new seeds reuse real measurements. Each line records when and on what
machine the point was measured, and how long it took. Since every optimizer is seeded and every
value is read from the cache, a rerun replays each search exactly; ``--replay`` does only that
and fails on a point that was never measured.

A run's wall time is the sum of its evaluations' measured durations (cached or not) plus the
optimizer's own time in this process. Results: ``results/lora_hpo.json`` (every run's values
and the summary), ``results/lora_hpo.md`` (table) and ``results/lora_hpo.png`` (best validation
loss against evaluation number: median and interquartile range over seeds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine

from lorahpo import config as cfg
from lorahpo.samplers.nomad import NomadSampler
from lorahpo.study import attach_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

RESULTS = Path(__file__).parent / "results"
OPTIMIZERS = ("nomad", "tpe", "random")

#: Benchmark-size blackboxes. ``cpu``: one evaluation takes about 20-30 s on one core of the
#: 2-core machine of the committed results; ``gpu``: a few minutes on one H100-class GPU.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "model": {"name": "smollm2-135m"},
        "data": {"preset": "bigbench-instruct", "size": "cpu", "max_examples": 400, "max_length": 128,
                 "validation_fraction": 0.1},
        "training": {"max_steps": 6, "batch_size": 4, "effective_batch_size": 4},
    },
    "gpu": {
        "model": {"name": "smollm2-135m"},
        "data": {"preset": "bigbench-instruct", "size": "full", "max_length": 256},
        "training": {"epochs": 1, "batch_size": 16, "effective_batch_size": 16},
    },
}

_TRIALS: Any = None  # the temporary parent of trial folders

#: Measures one trial config (a LoraTrialConfig as JSON): returns status, value and extra fields.
Blackbox = Callable[[dict[str, Any]], dict[str, Any]]


def study_config(blackbox: dict[str, Any], optimizer: str, seed: int, budget: int) -> cfg.StudyConfig:
    """The study ``lorahpo tune`` would run on ``blackbox`` (a preset) in the default space."""
    objective = {"lora": {**blackbox, "save_adapter": False}}
    return cfg.parse(
        {"name": "benchmark", "optimizer": optimizer, "seed": seed, "budget": budget,
         "space": {"preset": "default"}, "objective": objective},
        "benchmark",
    )


def trial_folder(trial: dict[str, Any]) -> Path:
    """A folder for one trial; all are siblings under one temporary folder, as in a study, so
    the untrained adapter's validation loss is measured once and shared."""
    import tempfile

    global _TRIALS
    if _TRIALS is None:
        _TRIALS = tempfile.TemporaryDirectory(prefix="lorahpo-bench-")
    return Path(_TRIALS.name) / config_key(trial)


def trial_config(conf: cfg.StudyConfig, params: dict[str, Any]) -> dict[str, Any]:
    from lorahpo.finetune.config import apply_hyperparameters

    assert conf.objective.lora is not None
    return apply_hyperparameters(conf.objective.lora, params).model_dump(mode="json")


def config_key(trial: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(trial, sort_keys=True).encode()).hexdigest()[:20]


class Cache:
    """Measured points, one JSON object per line, appended as they are measured.

    Several processes may share the file (e.g. one per core, each on other seeds): a point
    missing here is looked for again among the lines others appended since.
    """

    def __init__(self, path: Path, prefer: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None) -> None:
        self.path = path
        self.points: dict[str, dict[str, Any]] = {}
        # prefer(new, old): whether a later line for a key replaces the one kept (default: never).
        self._prefer = prefer or (lambda new, old: False)
        self._offset = 0
        self._read_new()

    def get(self, key: str) -> dict[str, Any] | None:
        if key not in self.points:
            self._read_new()
        return self.points.get(key)

    def _read_new(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode().splitlines():
            if line.strip():
                point = json.loads(line)
                old = self.points.get(point["key"])
                if old is None or self._prefer(point, old):  # else the first measurement stands
                    self.points[point["key"]] = point

    def add(self, point: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:  # one write of one line: appends from several processes do not mix
            f.write(json.dumps(point, sort_keys=True) + "\n")
        self._read_new()


def lora_blackbox(trial: dict[str, Any]) -> dict[str, Any]:
    """Train and validate one trial config in this process (the blackbox ``lorahpo tune`` runs)."""
    from lorahpo.finetune.config import LoraTrialConfig
    from lorahpo.finetune.train import run_trial

    result = run_trial(LoraTrialConfig.model_validate(trial), trial_folder(trial))
    m = result.metrics
    return {
        "status": result.status,
        "value": m.get("validation_loss") if result.status == "complete" else None,
        "reason": result.reason,
        "duration_s": result.duration_s,
        "initial_validation_loss": m.get("initial_validation_loss"),
        "train_tokens": m.get("train_tokens"),
    }


def run_search(
    conf: cfg.StudyConfig, cache: Cache, blackbox: Blackbox | None, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """One seeded search of ``conf.budget`` evaluations; unmeasured points go to ``blackbox``.

    Raises:
        LookupError: A point is not in the cache and ``blackbox`` is None (replay only).
    """
    study = optuna.create_study(direction="minimize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler = attach_sampler(study, conf)
    dists = conf.space.distributions()
    values: list[float | None] = []
    keys: list[str] = []
    eval_s, optimizer_s, measured = 0.0, 0.0, 0
    try:
        for number in range(conf.budget):
            tic = time.perf_counter()
            if isinstance(sampler, NomadSampler) and not sampler.ready(study):
                break  # NOMAD has nothing left to propose
            trial = study.ask(dists)
            optimizer_s += time.perf_counter() - tic
            tc = trial_config(conf, trial.params)
            key = config_key(tc)
            point = cache.get(key)
            fresh = point is None
            if point is None:
                if blackbox is None:
                    raise LookupError(
                        f"{conf.optimizer} seed {conf.seed}: point {number} {trial.params} was never measured"
                    )
                cache.add({"key": key, "params": trial.params, **blackbox(tc), "measured_at": machine()})
                point = cache.get(key)  # the first measurement, should another process have made one too
                assert point is not None
                measured += 1
            eval_s += point["duration_s"]
            keys.append(key)
            tic = time.perf_counter()
            if point["status"] == "complete":
                study.tell(trial, point["value"])
            else:
                study.tell(trial, state=TrialState.FAIL)
            optimizer_s += time.perf_counter() - tic
            values.append(point["value"] if point["status"] == "complete" else None)
            say(f"{conf.optimizer} seed {conf.seed} [{number + 1}/{conf.budget}] {_fmt(values[-1])} "
                f"best {_fmt(_best(values))} ({'measured' if fresh else 'cached'}, {point['duration_s']:.0f} s)")
    finally:
        if isinstance(sampler, NomadSampler):
            sampler.close()
    return {
        "optimizer": conf.optimizer,
        "seed": conf.seed,
        "values": values,
        "best_so_far": best_so_far(values),
        "keys": keys,
        "best_params": cache.get(keys[_argbest(values)])["params"] if _argbest(values) is not None else None,
        "eval_s": eval_s,
        "optimizer_s": optimizer_s,
        "wall_s": eval_s + optimizer_s,
        "new_measurements": measured,
    }


def best_so_far(values: Sequence[float | None]) -> list[float | None]:
    out: list[float | None] = []
    for v in values:
        prev = out[-1] if out else None
        out.append(v if prev is None or (v is not None and v < prev) else prev)
    return out


def _best(values: Sequence[float | None]) -> float | None:
    done = [v for v in values if v is not None]
    return min(done) if done else None


def _argbest(values: Sequence[float | None]) -> int | None:
    done = [(v, i) for i, v in enumerate(values) if v is not None]
    return min(done)[1] if done else None


def _fmt(v: float | None) -> str:
    return "failed" if v is None else f"{v:.4f}"


def _quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[1], q[2]


def summarize(runs: Sequence[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """Per optimizer: best loss at evaluations 5, 10, ..., budget (median, quartiles), gain over x0."""
    rows = []
    for opt in dict.fromkeys(r["optimizer"] for r in runs):
        mine = [r for r in runs if r["optimizer"] == opt]
        row: dict[str, Any] = {"optimizer": opt, "seeds": sorted(r["seed"] for r in mine)}
        curve = []
        for n in range(1, budget + 1):
            at = [r["best_so_far"][min(n, len(r["best_so_far"])) - 1] for r in mine]
            at = [v for v in at if v is not None]
            curve.append(_quartiles(at) if at else None)
        row["curve"] = curve  # (q1, median, q3) of the best loss after n evaluations
        finals = [_best(r["values"]) for r in mine]
        x0s = [r["values"][0] for r in mine]
        gains = [x - f for x, f in zip(x0s, finals, strict=True) if x is not None and f is not None]
        row["final"] = _quartiles([f for f in finals if f is not None])
        row["x0"] = statistics.median([x for x in x0s if x is not None])
        row["gain_over_x0"] = _quartiles(gains) if gains else None
        row["failed"] = sum(v is None for r in mine for v in r["values"])
        row["evaluations"] = sum(len(r["values"]) for r in mine)
        row["wall_s"] = statistics.median(r["wall_s"] for r in mine)
        row["optimizer_s"] = statistics.median(r["optimizer_s"] for r in mine)
        rows.append(row)
    return rows


def markdown(result: dict[str, Any]) -> str:
    budget = result["config"]["budget"]
    marks = [n for n in (1, 5, 10, 15, 20, 25, 30) if n <= budget]
    lines = [
        f"# LoRA HPO benchmark (preset `{result['config']['preset']}`)",
        "",
        (f"Best validation loss after n evaluations: median [quartiles] over seeds "
        f"{', '.join(map(str, result['config']['seeds']))}. Lower is better."),
        "",
        "| optimizer | " + " | ".join(f"n={n}" for n in marks) + " | gain over x0 | failed | wall time per run |",
        "|---" * (len(marks) + 4) + "|",
    ]
    for row in result["summary"]:
        cells = []
        for n in marks:
            q = row["curve"][n - 1]
            cells.append("-" if q is None else f"{q[1]:.4f} [{q[0]:.4f}, {q[2]:.4f}]")
        g = row["gain_over_x0"]
        gain = "-" if g is None else f"{g[1]:.4f} [{g[0]:.4f}, {g[2]:.4f}]"
        lines.append(
            f"| {row['optimizer']} | " + " | ".join(cells)
            + f" | {gain} | {row['failed']}/{row['evaluations']} | {row['wall_s'] / 60:.1f} min |"
        )
    x0_line = f"Starting point (x0) validation loss: {result['summary'][0]['x0']:.4f}." if result["summary"] else ""
    lines += ["", x0_line]
    cache = result["cache"]
    lines += [
        "",
        (f"{cache['points']} distinct configurations measured ({cache['measured_s'] / 3600:.1f} h of evaluation), "
        f"on: {', '.join(cache['machines'])}."),
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, first in zip(axes, (1, 5), strict=True):  # the whole search, then from evaluation 5 on
        for row in result["summary"]:
            xs = [n + 1 for n, q in enumerate(row["curve"]) if q is not None and n + 1 >= first]
            qs = [row["curve"][x - 1] for x in xs]
            (line,) = ax.plot(xs, [q[1] for q in qs], label=f"{row['optimizer']} (median of {len(row['seeds'])})")
            ax.fill_between(xs, [q[0] for q in qs], [q[2] for q in qs], alpha=0.2, color=line.get_color())
        ax.set_xlabel("evaluation")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("best validation loss so far (median, quartiles)")
    axes[0].set_title(f"LoRA HPO on smollm2-135m, preset {result['config']['preset']}")
    axes[1].set_title("from evaluation 5 on")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cache_facts(cache: Cache, keys: set[str]) -> dict[str, Any]:
    used = [cache.points[k] for k in keys]
    return {
        "points": len(used),
        "measured_s": sum(p["duration_s"] for p in used),
        "machines": sorted({f"{p['measured_at']['cpu']} ({p['measured_at']['cores']} cores)" for p in used}),
        "first": min((p["measured_at"]["date"] for p in used), default=None),
        "last": max((p["measured_at"]["date"] for p in used), default=None),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--replay", action="store_true", help="only replay from the cache; never train")
    p.add_argument("--cache", type=Path, default=None, help="default: results/lora_hpo_cache[-PRESET].jsonl")
    p.add_argument("--out", type=Path, default=None, help="default: results/lora_hpo[-PRESET].json")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, blackbox: Blackbox | None = lora_blackbox) -> dict[str, Any]:
    args = parse_args(argv)
    suffix = "" if args.preset == "cpu" else f"-{args.preset}"
    cache = Cache(args.cache or RESULTS / f"lora_hpo_cache{suffix}.jsonl")
    out = args.out or RESULTS / f"lora_hpo{suffix}.json"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["LORAHPO_NUM_THREADS"] = str(args.threads)
    runs = []
    for seed in args.seeds:  # seeds outermost: a partial run already compares the optimizers
        for opt in args.optimizers:
            conf = study_config(PRESETS[args.preset], opt, seed, args.budget)
            runs.append(run_search(conf, cache, None if args.replay else blackbox))
    result = {
        "config": {"preset": args.preset, "blackbox": PRESETS[args.preset], "space": "default",
                   "optimizers": args.optimizers, "seeds": args.seeds, "budget": args.budget},
        "machine": machine(),
        "cache": cache_facts(cache, {k for r in runs for k in r["keys"]}),
        "summary": summarize(runs, args.budget),
        "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    plot(result, out.with_suffix(".png"))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
