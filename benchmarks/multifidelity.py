"""Early stopping on the LoRA blackbox: full-fidelity NOMAD against NOMAD and TPE with ASHA.

    python benchmarks/multifidelity.py                        # 3 arms x seeds 0-2, budget 12 full trials
    python benchmarks/multifidelity.py --replay               # rebuild the results from the cache only

Every arm searches lorahpo's ``default`` space on the built-in blackbox at a multi-fidelity
preset (``cpu``: 24 optimizer steps, the validation loss every 4). All arms get the same total
budget of training tokens: what ``--full-budget`` full trials cost (every full trial trains on
the same examples in the same order, so on the same number of tokens). ``nomad-full`` runs
that many full trials; ``nomad-asha`` and ``tpe-asha`` run trials under Optuna's
``SuccessiveHalvingPruner`` (as ``pruner: asha`` does) until the budget is spent, and a
stopped trial costs only the tokens it trained on. Every run is a ``Study.run`` in a temporary
folder, its trials answered by a ``ReplayExecutor``, which reports each cached curve to the
study's pruner value by value; the token budget is the run's ``stop_when``.

Training is deterministic, so a trial stopped at step s has exactly the first s steps of the
same trial run to the end. Each configuration is trained as far as a pruner let it go, and its
learning curve (validation loss and training tokens at every evaluation) is cached in
``results/multifidelity_cache.jsonl`` (committed; when and where each was measured). A run that
meets a cached configuration replays its curve; only if its pruner lets the trial go further
than the cached curve is the configuration trained again, further (a longer curve replaces a
shorter one). Validation time is not counted in the budget (the same for every arm per
evaluation).

Reported per arm: the best final validation loss of a complete trial against training tokens
consumed (median and spread over seeds), and the tokens each run needed to come within 0.5% of
the full-fidelity arm's best loss of the same seed (the target: at most 40% of its tokens).
Results: ``results/multifidelity.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine, write_results
from lora_hpo import replay_study, stamped, study_config, trial_config, trial_folder

from lorahpo.executors.replay import (
    Blackbox,
    Measurement,
    Measurements,
    ReplayExecutor,
    Stop,
    config_key,
)
from lorahpo.study import TrialRecord

optuna.logging.set_verbosity(optuna.logging.WARNING)

RESULTS = Path(__file__).parent / "results"
ARMS = {"nomad-full": ("nomad", None), "nomad-asha": ("nomad", "asha"), "tpe-asha": ("tpe", "asha")}
ASHA = {"min_resource": 4, "reduction_factor": 3}
TARGET = 0.005  # within 0.5% of the full-fidelity best
CHECKPOINTS = (0.1, 0.2, 0.4, 0.6, 0.8)  # fractions of the token budget where the best so far is reported

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "model": {"name": "smollm2-135m"},
        "data": {"preset": "bigbench-instruct", "size": "cpu", "max_examples": 400, "max_length": 128,
                 "validation_fraction": 0.1},
        "training": {"max_steps": 24, "batch_size": 4, "effective_batch_size": 4, "eval_every": 4},
    },
}

def lora_curve_blackbox(trial: dict[str, Any], stop: Stop) -> Measurement:
    """Train one config in this process, asking ``stop(step, loss, tokens so far)`` at each
    validation: status (complete, failed or stopped), value, duration_s and ``curve``
    ``[[step, loss, tokens so far], ...]``."""
    from lorahpo.finetune.config import LoraTrialConfig
    from lorahpo.finetune.train import run_trial

    trial_dir = trial_folder(trial)
    tokens: dict[int, float] = {}

    def reporter(step: int, value: float) -> bool:
        for line in (trial_dir / "train_log.jsonl").read_text().splitlines():  # line-buffered as it trains
            entry = json.loads(line)
            if "tokens" in entry:
                tokens[entry["step"]] = entry["tokens"]
        return stop(step, value, tokens[step])

    result = run_trial(LoraTrialConfig.model_validate(trial), trial_dir, reporter=reporter)
    return {
        "status": "stopped" if result.status == "pruned" else result.status,
        "value": result.metrics.get("validation_loss") if result.status == "complete" else None,
        "reason": result.reason,
        "duration_s": result.duration_s,
        "curve": [[step, value, tokens[step]] for step, value in result.intermediate],
    }


def run_arm(arm: str, seed: int, preset: str, budget_tokens: float, cache: Measurements, blackbox: Blackbox | None,
            say: Callable[[str], None] = print) -> dict[str, Any]:
    """One seeded search until ``budget_tokens`` training tokens are spent."""
    optimizer, pruner = ARMS[arm]
    pruning = {"pruner": pruner, "pruner_options": ASHA} if pruner else {}
    conf = study_config(PRESETS[preset], optimizer, seed, budget=10_000, **pruning)  # the token budget stops it
    executor = ReplayExecutor(cache, lambda params: trial_config(conf, params), blackbox and stamped(blackbox))

    def tokens(number: int) -> float:
        """The training tokens trial ``number`` cost: up to where it ended or was stopped."""
        answer = executor.answers[number]
        return answer.measurement["curve"][answer.reached - 1][2] if answer.reached else 0.0

    def spent_tokens() -> float:
        return sum(tokens(n) for n in list(executor.answers))  # a copy: the executor's threads add answers

    def show(record: TrialRecord) -> None:
        spent = spent_tokens()
        value = "" if record.value is None else record.value
        say(f"{arm} seed {seed} [{len(executor.answers)}] {record.status} {value} "
            f"tokens {spent / budget_tokens:.0%} of budget")

    records = replay_study(conf, executor, show,
                           stop_when=lambda: spent_tokens() >= budget_tokens - 1e-9)
    spent, trace, trials = 0.0, [], []  # trace: (tokens spent, best complete value so far)
    best: float | None = None
    for record in records:
        if record.status == "complete":
            best = record.value if best is None else min(best, record.value)
        spent += tokens(record.number)
        trace.append((spent, best))
        trials.append({"key": executor.answers[record.number].measurement["key"], "status": record.status,
                       "tokens": tokens(record.number)})
    return {"arm": arm, "seed": seed, "trace": trace, "trials": trials, "best": best, "tokens": spent}


def tokens_to_reach(trace: Sequence[tuple[float, float | None]], level: float) -> float | None:
    return next((t for t, b in trace if b is not None and b <= level), None)


def best_by(trace: Sequence[tuple[float, float | None]], tokens: float) -> float | None:
    """The best complete value once ``tokens`` were spent (None before the first complete trial)."""
    return next((b for t, b in reversed(trace) if t <= tokens), None)


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Median and range over the seeds that have a value; ``missing`` counts those that have none."""
    known = [v for v in values if v is not None]
    return {"median": statistics.median(known) if known else None, "min": min(known, default=None),
            "max": max(known, default=None), "missing": len(values) - len(known)}


def median_curve(traces: Sequence[Sequence[tuple[float, float | None]]], budget_tokens: float,
                 points: int = 200) -> list[tuple[float, float]]:
    """(fraction of the budget, median over seeds of the best so far), where every seed has a value."""
    grid = [budget_tokens * i / points for i in range(points + 1)]
    return [(x / budget_tokens, statistics.median(bs)) for x in grid
            if None not in (bs := [best_by(t, x) for t in traces])]


def summarize(runs: Sequence[dict[str, Any]], budget_tokens: float) -> dict[str, Any]:
    full = {r["seed"]: r["best"] for r in runs if r["arm"] == "nomad-full"}
    arms: dict[str, Any] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        fractions = []
        for r in mine:
            ref = full.get(r["seed"])
            need = tokens_to_reach(r["trace"], ref * (1 + TARGET)) if ref is not None else None
            fractions.append(None if need is None else need / budget_tokens)
        arms[arm] = {
            "seeds": [r["seed"] for r in mine],
            "best_at": {
                **{f"{f:.0%}": spread([best_by(r["trace"], f * budget_tokens) for r in mine]) for f in CHECKPOINTS},
                "end": spread([r["best"] for r in mine]),
            },
            "trials_median": statistics.median(len(r["trials"]) for r in mine),
            "pruned_median": statistics.median(sum(t["status"] == "pruned" for t in r["trials"]) for r in mine),
            "fraction_to_target": fractions,
            "target_met": all(f is not None and f <= 0.4 for f in fractions),
        }
    if full and None not in full.values():  # the same target, read on the medians over seeds
        level = statistics.median(full.values()) * (1 + TARGET)
        for arm, row in arms.items():
            curve = median_curve([r["trace"] for r in runs if r["arm"] == arm], budget_tokens)
            row["median_fraction_to_target"] = next((f for f, b in curve if b <= level), None)
    return arms


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Multi-fidelity benchmark (preset `{result['config']['preset']}`)",
        "",
        f"Budget per run: {result['budget_tokens']:.0f} training tokens = "
        f"{result['config']['full_budget']} full trials. "
        f"Target: within {TARGET:.1%} of the full-fidelity best of the same seed "
        "using at most 40% of the tokens.",
        "",
        "| arm | best loss, median [min, max] | trials | pruned "
        "| tokens to target (fraction of budget, per seed) | target met |",
        "|---|---|---|---|---|---|",
    ]
    for arm, row in result["summary"].items():
        best = _cell(row["best_at"]["end"])
        fr = ", ".join("never" if f is None else f"{f:.0%}" for f in row["fraction_to_target"])
        met = "yes" if row["target_met"] else "no"
        lines.append(f"| {arm} | {best} | {row['trials_median']:g} | {row['pruned_median']:g} | {fr} | {met} |")
    medians = {
        arm: row["median_fraction_to_target"]
        for arm, row in result["summary"].items()
        if "median_fraction_to_target" in row
    }
    if medians:
        after = ", ".join(f"{'never' if f is None else f'{f:.0%}'} ({arm})" for arm, f in medians.items())
        lines += ["", "On the medians over seeds: the median best so far comes within 0.5% of the median "
                  f"full-fidelity best after {after}."]
    marks = list(next(iter(result["summary"].values()))["best_at"])
    lines += ["", "Best validation loss of a complete trial by the tokens spent (fraction of the budget): "
              "median [min, max] over seeds.",
              "", "| arm | " + " | ".join(marks) + " |", "|---" * (len(marks) + 1) + "|"]
    for arm, row in result["summary"].items():
        lines.append(f"| {arm} | " + " | ".join(_cell(s) for s in row["best_at"].values()) + " |")
    return "\n".join(lines) + "\n"


def _cell(s: dict[str, Any]) -> str:
    """A ``spread`` as ``median [min, max]``, with the seeds that have no value yet."""
    if s["median"] is None:
        return "-"
    without = f" ({s['missing']} without)" if s["missing"] else ""
    return f"{s['median']:.4f} [{s['min']:.4f}, {s['max']:.4f}]{without}"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    budget = result["budget_tokens"]
    for arm in dict.fromkeys(r["arm"] for r in result["runs"]):
        traces = [r["trace"] for r in result["runs"] if r["arm"] == arm]
        color = None
        if medians := median_curve(traces, budget):
            (line,) = ax.step(*zip(*medians, strict=True), where="post", lw=2.2,
                              label=f"{arm} (median of {len(traces)} seeds)")
            color = line.get_color()
        for trace in traces:
            if pts := [(t / budget, b) for t, b in trace if b is not None]:
                (line,) = ax.step(*zip(*pts, strict=True), where="post", lw=0.8, alpha=0.5, color=color,
                                  label=None if color else f"{arm} (one seed each)")
                color = line.get_color()
    ax.axvline(0.4, color="grey", ls="--", lw=1)
    ax.set_xlabel("training tokens spent (fraction of the budget)")
    ax.set_ylabel("best validation loss of a complete trial")
    ax.set_title("Full-fidelity NOMAD against ASHA (thin: one line per seed)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None, blackbox: Blackbox | None = lora_curve_blackbox) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--full-budget", type=int, default=12, help="the token budget, in full trials")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--replay", action="store_true")
    p.add_argument("--cache", type=Path, default=RESULTS / "multifidelity_cache.jsonl")
    p.add_argument("--out", type=Path, default=RESULTS / "multifidelity.json")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cache = Measurements(args.cache)
    # Every full trial trains on the same examples in the same order: measure one for its cost.
    conf = study_config(PRESETS[args.preset], "nomad", 0, budget=1)
    x0_params = conf.space.x0() or {}
    x0 = trial_config(conf, x0_params)
    point = cache.get(config_key(x0))
    if point is None:
        if args.replay or blackbox is None:
            raise LookupError("the starting point was never measured")
        cache.add({"key": config_key(x0), "params": x0_params, **stamped(blackbox)(x0, lambda *_: False)})
        point = cache.get(config_key(x0))
    budget_tokens = args.full_budget * point["curve"][-1][2]
    start = time.perf_counter()
    runs = [run_arm(arm, seed, args.preset, budget_tokens, cache, None if args.replay else blackbox)
            for seed in args.seeds for arm in args.arms]
    result = {
        "config": {"preset": args.preset, "blackbox": PRESETS[args.preset], "asha": ASHA, "arms": args.arms,
                   "seeds": args.seeds, "full_budget": args.full_budget},
        "machine": machine(),
        "budget_tokens": budget_tokens,
        "wall_s": time.perf_counter() - start,
        "measured": {"points": len(cache.points), "hours": sum(p["duration_s"] for p in cache.points.values()) / 3600},
        "summary": summarize(runs, budget_tokens),
        "runs": runs,
    }
    write_results(args.out, result, markdown(result))
    plot(result, args.out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
