"""NOMAD, TPE and random search on the real LoRA blackbox, with a cache of measured points.

    python benchmarks/lora_hpo.py                          # nomad, tpe, random; seeds 0-2; budget 20
    python benchmarks/lora_hpo.py --optimizers nomad --seeds 3 4 --budget 30
    python benchmarks/lora_hpo.py --replay                 # rebuild the results from the cache only

Each optimizer searches lorahpo's ``default`` space (rank, dropout, alpha, learning rate) over
the built-in blackbox (``run_trial``: smollm2-135m, bigbench-instruct) at a benchmark-size
preset, in a lorahpo study run as ``lorahpo tune`` runs it (``Study.run`` in a temporary folder:
every optimizer starts from the space's x0, NOMAD as its X0, TPE and random as their first
trial), its trials answered by a ``ReplayExecutor``.

Every evaluated configuration is appended, with its measured result, to a cache
(``results/lora_hpo_cache.jsonl``, committed) keyed by a hash of the complete trial config. A
point already in the cache is read back instead of trained again, so the benchmark runs in
parts, and reruns or new seeds reuse real measurements. Each line records when and on what
machine the point was measured, and how long it took. Since every optimizer is seeded and every
value is read from the cache, a rerun replays each search exactly; ``--replay`` does only that
and fails on a point that was never measured.

A run's wall time is the sum of its evaluations' measured durations (cached or not) plus the
study's own time in this process (``optimizer_s``: sampler, store and loop); the table shows the
evaluation time alone, which a replay reproduces on any machine. Results:
``results/lora_hpo.json`` (every run's values and the summary), ``results/lora_hpo.md`` (table)
and ``results/lora_hpo.png`` (best validation loss against evaluation number: median and
interquartile range over seeds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine, write_results

from lorahpo import config as cfg
from lorahpo.executors.replay import (
    Blackbox,
    Measurement,
    Measurements,
    ReplayExecutor,
    Stop,
    config_key,
)
from lorahpo.study import Study, TrialRecord

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


def study_config(blackbox: dict[str, Any], optimizer: str, seed: int, budget: int, **settings: Any) -> cfg.StudyConfig:
    """The study ``lorahpo tune`` would run on ``blackbox`` (a preset) in the default space;
    ``settings`` are further study settings (e.g. ``pruner``)."""
    objective = {"lora": {**blackbox, "save_adapter": False}}
    return cfg.parse(
        {"name": "benchmark", "optimizer": optimizer, "seed": seed, "budget": budget,
         "space": {"preset": "default"}, "objective": objective, **settings},
        "benchmark",
    )


def trial_folder(trial: dict[str, Any]) -> Path:
    """A folder for one trial; all are siblings under one temporary folder, as in a study, so
    the untrained adapter's validation loss is measured once and shared."""
    global _TRIALS
    if _TRIALS is None:
        _TRIALS = tempfile.TemporaryDirectory(prefix="lorahpo-bench-")
    return Path(_TRIALS.name) / config_key(trial)


#: Trial-config fields added after the committed caches were measured, as (section, field), or
#: (field,) at the top level. A key leaves each out while it holds its default, so those
#: measurements, made before the field existed, are still found: they are of the same blackbox.
#: A field added to the trial config later joins this list.
ADDED_FIELDS: tuple[tuple[str, ...], ...] = (
    ("evaluate",),
    ("model", "quantization"),
    ("model", "attn_implementation"),
    ("lora", "use_rslora"),
    ("lora", "use_dora"),
    ("lora", "init"),
    ("lora", "loraplus_lr_ratio"),
    ("training", "gradient_checkpointing"),
    ("training", "packing"),
    ("training", "auto_batch"),
    ("training", "processes"),
)


def trial_config(conf: cfg.StudyConfig, params: dict[str, Any]) -> dict[str, Any]:
    """The complete trial config of ``params``, as its measurement's key hashes it, without the
    :data:`ADDED_FIELDS` that hold their defaults."""
    from lorahpo.finetune.config import LoraTrialConfig, apply_hyperparameters

    assert conf.objective.lora is not None
    config = apply_hyperparameters(conf.objective.lora, params).model_dump(mode="json")
    defaults = LoraTrialConfig().model_dump(mode="json")
    for *sections, name in ADDED_FIELDS:
        holder, default = config, defaults
        for section in sections:
            holder, default = holder[section], default[section]
        if holder[name] == default[name]:
            del holder[name]
    return config


def lora_blackbox(trial: dict[str, Any], stop: Stop) -> Measurement:
    """Train and validate one trial config in this process (the blackbox ``lorahpo tune`` runs).

    It reports no intermediate values: ``stop`` is never asked.
    """
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


def stamped(blackbox: Blackbox) -> Blackbox:
    """``blackbox``, its measurements stamped with when and on what machine they were made."""
    return lambda trial, stop: {**blackbox(trial, stop), "measured_at": machine()}


def replay_study(conf: cfg.StudyConfig, executor: ReplayExecutor, say: Callable[[TrialRecord], None],
                 stop_when: Callable[[], bool] | None = None) -> list[TrialRecord]:
    """Run the study of ``conf`` on ``executor`` in a temporary folder, as ``lorahpo tune``
    runs it; ``say`` sees each finished trial. Returns every trial, in order.

    Raises:
        LookupError: A point was not measured and ``executor`` has no blackbox (replay only).
    """
    with tempfile.TemporaryDirectory(prefix="lorahpo-replay-") as folder:
        study = Study.open(folder, conf)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings, at every run
            try:
                study.run(lambda kind, record: say(record) if kind == "finish" else None,
                          executor=executor, stop_when=stop_when)
            except LookupError as e:
                raise LookupError(f"{conf.optimizer} seed {conf.seed}: {e}") from None
        return study.records()


def run_search(
    conf: cfg.StudyConfig, cache: Measurements, blackbox: Blackbox | None, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """One seeded search of ``conf.budget`` evaluations; unmeasured points go to ``blackbox``.

    Raises:
        LookupError: A point is not in the cache and ``blackbox`` is None (replay only).
    """
    executor = ReplayExecutor(cache, lambda params: trial_config(conf, params), blackbox and stamped(blackbox))
    shown: list[float | None] = []

    def show(record: TrialRecord) -> None:
        answer = executor.answers[record.number]
        shown.append(record.value)
        say(f"{conf.optimizer} seed {conf.seed} [{len(shown)}/{conf.budget}] {_fmt(record.value)} "
            f"best {_fmt(_best(shown))} ({'measured' if answer.measured else 'cached'}, "
            f"{answer.measurement['duration_s']:.0f} s)")

    tic = time.perf_counter()
    records = replay_study(conf, executor, show)
    answers = [executor.answers[r.number] for r in records]
    values = [r.value for r in records]
    eval_s = sum(a.measurement["duration_s"] for a in answers)
    # The study's own time: the run's, less the measurements made in it.
    optimizer_s = time.perf_counter() - tic - sum(a.measurement["duration_s"] for a in answers if a.measured)
    best = _argbest(values)
    return {
        "optimizer": conf.optimizer,
        "seed": conf.seed,
        "values": values,
        "best_so_far": best_so_far(values),
        "keys": [a.measurement["key"] for a in answers],
        "best_params": answers[best].measurement["params"] if best is not None else None,
        "eval_s": eval_s,
        "optimizer_s": optimizer_s,
        "wall_s": eval_s + optimizer_s,
        "new_measurements": sum(a.measured for a in answers),
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
        "| optimizer | " + " | ".join(f"n={n}" for n in marks) + " | gain over x0 | failed | evaluation time per run |",
        "|---" * (len(marks) + 4) + "|",
    ]
    for row in result["summary"]:
        cells = []
        for n in marks:
            q = row["curve"][n - 1]
            cells.append("-" if q is None else f"{q[1]:.4f} [{q[0]:.4f}, {q[2]:.4f}]")
        eval_s = statistics.median(r["eval_s"] for r in result["runs"] if r["optimizer"] == row["optimizer"])
        g = row["gain_over_x0"]
        gain = "-" if g is None else f"{g[1]:.4f} [{g[0]:.4f}, {g[2]:.4f}]"
        lines.append(
            f"| {row['optimizer']} | " + " | ".join(cells)
            + f" | {gain} | {row['failed']}/{row['evaluations']} | {eval_s / 60:.1f} min |"
        )
    x0 = f"Starting point (x0) validation loss: {result['summary'][0]['x0']:.4f}." if result["summary"] else ""
    lines += ["", x0]
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


def cache_facts(cache: Measurements, keys: set[str]) -> dict[str, Any]:
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
    cache = Measurements(args.cache or RESULTS / f"lora_hpo_cache{suffix}.jsonl")
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
    write_results(out, result, markdown(result))
    plot(result, out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
