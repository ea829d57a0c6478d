"""Optimizers, pruners and warm start compared on the LoRA tabular benchmark, over many seeds.

    python benchmarks/tabular_study.py optimizers --seeds 50 --budget 50 --jobs 2
    python benchmarks/tabular_study.py pruners --seeds 50 --budget 50 --jobs 2
    python benchmarks/tabular_study.py warmstart --seeds 50 --budget 50 --jobs 2

Every run is an ordinary study (``Study.open(...).run()``, as ``lorahpo tune`` runs a study
whose objective is ``tabular: {table: PATH}``) over the ``default`` space, each proposal snapped
to the table's grid (docs/tabular.md). The study folders, with their SQLite stores, live in a
temporary folder on ``/dev/shm`` when the machine has one: a store's commits then cost no disk
writes, and a 50-evaluation study takes seconds instead of tens of seconds.

**Regret.** The reference is the best final validation loss among the table's complete
configurations. A run's regret at budget b is the best final loss among its first b trials
minus that reference. A failed trial (a configuration that diverged when measured) and a pruned
one (stopped before its final loss) find nothing: they do not lower the best. Before the first
complete trial the regret is that of the table's worst complete configuration.

**optimizers**: each arm of :data:`OPTIMIZER_ARMS` runs ``--budget`` trials per seed; the
result holds per arm and budget the median regret over seeds, the mean rank (per seed and budget
the arms are ranked by regret, ties sharing the mean rank, then averaged over seeds), the
two-sided Wilcoxon signed-rank p-value of the arm's regrets against random search's, paired by
seed (zero differences dropped; 1.0 when all are zero; exact up to 50 differences, ties
included: :func:`wilcoxon_p`), and the first budget at which the arm's median regret is at most
random search's median at budget ``--reference`` (20).

**pruners**: for each optimizer of ``--optimizers`` and each pruner of :data:`PRUNER_ARMS`, per
seed: the run without pruning (``--budget`` trials) gives the seed's full-fidelity best and the
training tokens it spent; a pruned run gets up to twice the trials. An arm *meets the target* on
a seed when the best final loss it found within 40% of those tokens is within 0.5% of the
full-fidelity best. The no-pruning arm is held to the same target (the first trials of its own
run). Tokens are the table's: a complete or failed trial costs its whole curve's, a pruned one
what it had trained when stopped.

**warmstart**: per seed, a study on the source table (``--source``, default the ``long`` preset)
runs ``--source-budget`` trials; a study on the target table (``--table``, default ``main``)
warm-started from it (``warm_start``: its ``--points`` best points are evaluated first, and
count in the budget) is compared with the same study started cold. The target is ``main``
because its table is the complete grid, so its regret is against the true best; the source plays
the earlier, different study (24 steps instead of 12). ``--table`` and ``--source`` swap them.

``--space grid`` runs any command on the table's grid itself (each parameter a choice of its grid
values) instead of the snapped ``default`` space.

A table not measured in full is refused (exit 2) unless ``--allow-partial``: proposals then
snap to the configurations measured so far, the regret is against the best of those, and the
results say ``partial: true``. Results: ``results/tabular_<command>.json`` and ``.md`` beside it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine, write_results

from lorahpo.errors import UserError
from lorahpo.executors.replay import config_key
from lorahpo.tabular import Table, load_table

RESULTS = Path(__file__).parent / "results"
MAIN_TABLE = RESULTS / "tabular_main.jsonl.gz"
LONG_TABLE = RESULTS / "tabular_long.jsonl.gz"
BUDGETS = (5, 10, 15, 20, 25, 30, 35, 40, 45, 50)

#: Optimizer arms: name -> (optimizer, optimizer_options). NOMAD's variants, for a 4-D problem
#: whose rank and dropout are ordered choices and whose alpha and learning rate are snapped to a
#: coarse grid: its default poll (``ORTHO N+1 QUAD``, with its quadratic-model and Nelder-Mead
#: searches), the full ``2N`` poll, an initial Latin-hypercube design of 8 points before MADS,
#: and MADS without its model searches (the poll alone).
OPTIMIZER_ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "nomad": ("nomad", {}),
    "nomad-2n": ("nomad", {"params": ["DIRECTION_TYPE ORTHO 2N"]}),
    "nomad-lh8": ("nomad", {"params": ["LH_SEARCH 8 0"]}),
    "nomad-poll": ("nomad", {"params": ["QUAD_MODEL_SEARCH no", "NM_SEARCH no", "SPECULATIVE_SEARCH no"]}),
    "tpe": ("tpe", {}),
    "gp": ("gp", {}),
    # Optuna's CMA-ES searches the numbers (alpha, learning rate); it samples the choices (rank,
    # dropout) independently at random, as it does for any categorical parameter.
    "cmaes": ("cmaes", {}),
    "random": ("random", {}),
}
PRUNER_ARMS = ("none", "asha", "hyperband", "median", "curve")
#: Significance level of "beats random search".
ALPHA = 0.05
#: Up to this many nonzero differences, the Wilcoxon p-value is exact; above, the normal approximation.
EXACT_MAX = 50
#: Within this fraction of the seed's full-fidelity best ...
CLOSE = 0.005
#: ... with at most this fraction of its training tokens ...
TOKEN_SHARE = 0.4
#: ... in at least this fraction of seeds.
TARGET_FRACTION = 0.8


@dataclass(frozen=True)
class RunSpec:
    """One study on a table: everything that decides its trials."""

    table: str
    optimizer: str
    seed: int
    budget: int
    options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "none"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    #: A study to run first, on its own table, whose best points this one evaluates first.
    warm_from: RunSpec | None = None
    warm_points: int = 5
    #: ``default``: lorahpo's default space, each proposal snapped to the grid; ``grid``: the
    #: table's grid itself, each parameter a choice of its grid values (:meth:`Table.grid_space`).
    space: str = "default"

    def config(self, warm_start: list[str]) -> dict[str, Any]:
        return {"name": "tabular-study", "optimizer": self.optimizer, "optimizer_options": self.options,
                "seed": self.seed, "budget": self.budget, "space": search_space(self.space, self.table),
                "objective": {"tabular": {"table": self.table}}, "pruner": self.pruner,
                "pruner_options": self.pruner_options, "warm_start": warm_start,
                "warm_start_points": self.warm_points}


def search_space(name: str, table: str) -> dict[str, Any]:
    """The space a study searches: ``default`` (the preset), or ``grid``: the table's grid values as
    choices, starting at the default space's x0 snapped to the grid."""
    from lorahpo.space import SpaceSpec

    if name == "default":
        return {"preset": "default"}
    grid = load_table(table).grid_space(SpaceSpec(preset="default").x0())
    return grid.model_dump(mode="json", exclude_defaults=True)


#: What each ``--space`` is, in the results.
SPACES = {"default": "default, each proposal snapped to the nearest measured grid point",
          "grid": "the grid: each parameter a choice of its grid values (ordered for NOMAD, unordered for the others)"}


@dataclass
class Trial:
    """What a benchmark keeps of a trial: status, final loss (complete only), tokens spent, params."""

    status: str
    value: float | None
    tokens: float
    params: dict[str, Any]


def run_study(spec: RunSpec) -> list[Trial]:
    """Run ``spec`` (and the study it is warm-started from) in a scratch folder; its trials in order."""
    with tempfile.TemporaryDirectory(prefix="lorahpo-tabstudy-", dir=_scratch()) as scratch:
        sources = []
        if spec.warm_from is not None:
            source = Path(scratch) / "source"
            _study(spec.warm_from, source, [])
            sources.append(str(source))
        return _study(spec, Path(scratch) / "study", sources)


def _study(spec: RunSpec, folder: Path, warm_start: list[str]) -> list[Trial]:
    import warnings

    import optuna

    from lorahpo import config as cfg
    from lorahpo.study import Study

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per study would bury the progress line
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental and independent-sampling warnings
        study = Study.open(folder, cfg.parse(spec.config(warm_start), "tabular-study"))
        study.run()
    table = load_table(spec.table)
    return [Trial(r.status, r.value if r.status == "complete" else None, _tokens(table, r.status, r.metrics, r.params),
                  dict(r.params)) for r in study.records()]


def _tokens(table: Table, status: str, metrics: dict[str, Any], params: dict[str, Any]) -> float:
    """Training tokens a trial cost: what it reports (complete, pruned), else its whole curve's (failed)."""
    if status in ("complete", "pruned") and "train_tokens" in metrics:
        return float(metrics["train_tokens"])
    curve = table.lookup(params).get("curve") or []
    return float(curve[-1][table.curve_fields.index("train_tokens")]) if curve else 0.0


def _scratch() -> str | None:
    """Memory-backed temporary files where the machine has them (Linux ``/dev/shm``)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


# ---------------------------------------------------------------------------- the numbers


def table_summary(table: Table) -> dict[str, Any]:
    """Where a table stands: how many of its planned configurations are measured, and its best."""
    complete = [p for p in table.points if p["status"] == "complete"]
    if not complete:
        raise UserError(f"table {table.path}: no complete configuration to compare with")
    best = min(complete, key=lambda p: p["value"])
    planned = table.meta.get("planned") or math.prod(len(a.values) for a in table.grid.values())
    return {"path": str(table.path), "preset": table.meta.get("preset"), "planned": planned,
            "measured": len(table.points), "complete": len(complete), "best": best["value"],
            "best_params": best["params"], "worst": max(p["value"] for p in complete)}


def check_complete(summary: dict[str, Any], allow_partial: bool) -> None:
    """Refuse a table not measured in full, unless partial tables are allowed."""
    if summary["measured"] < summary["planned"] and not allow_partial:
        raise UserError(f"table {summary['path']} holds {summary['measured']} of {summary['planned']} "
                        "configurations; measure the rest, or pass --allow-partial")


def regret_curve(trials: Sequence[Trial], best: float, worst: float, budget: int) -> np.ndarray:
    """Regret after 1, 2, ..., ``budget`` trials (see the module docstring); a run that ended
    early (an exhausted optimizer) keeps its last regret."""
    found, out = math.inf, []
    for trial in trials[:budget]:
        if trial.value is not None:
            found = min(found, trial.value)
        out.append((found if found < math.inf else worst) - best)
    out += [out[-1] if out else worst - best] * (budget - len(out))
    return np.array(out)


def wilcoxon_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the paired differences ``x - y``.

    Zero differences are dropped (1.0 when all are zero); tied ones share their mean rank. Up to
    :data:`EXACT_MAX` differences the p-value is exact: the statistic's distribution over every
    sign pattern of these ranks, ties included (regrets on a grid tie often). Above, the normal
    approximation, with the variance corrected for ties and no continuity correction. Computed
    here rather than by ``scipy.stats.wilcoxon``, whose choice of method with ties has changed
    between its versions.
    """
    from scipy.stats import rankdata

    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    d = d[d != 0]
    n = d.size
    if n == 0:
        return 1.0
    doubled = np.rint(2 * rankdata(np.abs(d))).astype(int)  # mean ranks are halves: doubled, integers
    w = int(doubled[d > 0].sum())
    if n <= EXACT_MAX:
        dist = np.zeros(int(doubled.sum()) + 1)  # P(doubled statistic = s), one rank's sign at a time
        dist[0] = 1.0
        for r in doubled:
            dist = 0.5 * (dist + np.concatenate([np.zeros(r), dist[:-r]]))
        p = 2 * min(dist[: w + 1].sum(), dist[w:].sum())
    else:
        _, tied = np.unique(np.abs(d), return_counts=True)
        variance = n * (n + 1) * (2 * n + 1) / 24 - float(np.sum(tied**3 - tied)) / 48
        z = (w / 2 - n * (n + 1) / 4) / math.sqrt(variance)
        p = math.erfc(abs(z) / math.sqrt(2))
    return float(min(1.0, p))


def mean_ranks(regrets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per arm, its rank among the arms at each budget averaged over seeds (arrays seeds x budgets;
    1 is best, ties share the mean rank)."""
    from scipy.stats import rankdata

    names = list(regrets)
    stacked = np.stack([regrets[n] for n in names])  # arms x seeds x budgets
    ranks = rankdata(stacked, axis=0)
    return {n: ranks[i].mean(axis=0) for i, n in enumerate(names)}


def distinct(table: Table, trials: Sequence[Trial]) -> int:
    """How many distinct grid points ``trials`` evaluated (proposals snapping to one are one)."""
    return len({tuple(table.snap(t.params).values()) for t in trials})


def budget_reaching(median: np.ndarray, target: float) -> int | None:
    """The first budget (1-based) whose median regret is at most ``target``; None if none is."""
    hits = np.nonzero(median <= target + 1e-12)[0]
    return int(hits[0]) + 1 if hits.size else None


def summarize_optimizers(runs: dict[str, list[list[Trial]]], summary: dict[str, Any], budgets: Sequence[int],
                         reference: int) -> dict[str, Any]:
    """Median regret, mean rank, p against random per budget, and the budget reaching random's
    median at ``reference``, per arm (``runs``: arm -> one trial list per seed, seeds in order)."""
    top = max(budgets)
    regrets = {name: np.stack([regret_curve(t, summary["best"], summary["worst"], top) for t in trials])
               for name, trials in runs.items()}
    ranks = mean_ranks(regrets)
    medians = {name: np.median(r, axis=0) for name, r in regrets.items()}
    base = regrets.get("random")
    reference = min(reference, top)
    target = float(medians["random"][reference - 1]) if base is not None else None
    out: dict[str, Any] = {}
    for name, r in regrets.items():
        compared = base is not None and name != "random"
        p = {b: wilcoxon_p(r[:, b - 1], base[:, b - 1]) for b in budgets} if compared else {}
        out[name] = {
            "median_regret": {str(b): float(medians[name][b - 1]) for b in budgets},
            "mean_rank": {str(b): float(ranks[name][b - 1]) for b in budgets},
            "p_vs_random": {str(b): p.get(b) for b in budgets},
            # significantly different from random search, and lower on average over the seeds
            "beats_random": {str(b): (bool(p[b] < ALPHA and (r[:, b - 1] - base[:, b - 1]).mean() < 0)
                                      if compared else None) for b in budgets},
            f"budget_to_random_{reference}": (budget_reaching(medians[name], target) if target is not None else None),
        }
    return out


def optimizer_targets(arms: dict[str, Any], reference: int, arm: str = "nomad") -> dict[str, Any] | None:
    """Whether ``arm`` (lorahpo's default optimizer) beats random search at budgets 10 and 20 and
    reaches random search's median regret at budget ``reference`` within 10 evaluations."""
    if arm not in arms or "random" not in arms:
        return None
    beats = arms[arm]["beats_random"]
    reached = arms[arm][f"budget_to_random_{reference}"]
    return {"optimizer": arm,
            "beats_random_at_10_and_20": all(beats.get(b) is True for b in ("10", "20")) and {"10", "20"} <= set(beats),
            f"reaches_random_{reference}_within_10": reached is not None and reached <= 10}


def pruner_outcome(full: Sequence[Trial], arm: Sequence[Trial], best: float) -> dict[str, Any]:
    """One seed, one arm, against that seed's run without pruning (``full``): whether the arm's best
    within 40% of ``full``'s tokens is within 0.5% of ``full``'s best, and what it spent."""
    full_best = min((t.value for t in full if t.value is not None), default=math.inf)
    full_tokens = sum(t.tokens for t in full)
    target = full_best + CLOSE * abs(full_best)
    spent, found, within_share, reached_at = 0.0, math.inf, math.inf, None
    for trial in arm:
        spent += trial.tokens
        if trial.value is not None:
            found = min(found, trial.value)
        if spent <= TOKEN_SHARE * full_tokens:
            within_share = found
        if reached_at is None and found <= target:
            reached_at = spent
    return {
        "met": bool(within_share < math.inf and within_share <= target),  # finding nothing never meets it
        "token_share_to_target": None if reached_at is None or not full_tokens else reached_at / full_tokens,
        "regret_within_share": None if within_share == math.inf else within_share - best,
        "tokens": spent,
        "trials": len(arm),
        "pruned": sum(t.status == "pruned" for t in arm),
    }


def summarize_pruners(outcomes: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per arm: the share of seeds meeting the target, and medians of what they spent and found."""
    out = {}
    for name, seeds in outcomes.items():
        shares = [s["token_share_to_target"] for s in seeds]
        out[name] = {
            "fraction_met": sum(s["met"] for s in seeds) / len(seeds),
            "median_token_share_to_target": _median([s for s in shares if s is not None]),
            "seeds_reaching_target": sum(s is not None for s in shares),
            "median_regret_within_share": _median([s["regret_within_share"] for s in seeds
                                                   if s["regret_within_share"] is not None]),
            "median_tokens": _median([s["tokens"] for s in seeds]),
            "median_pruned": _median([s["pruned"] for s in seeds]),
        }
    return out


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


# ---------------------------------------------------------------------------- the commands


def run_all(specs: Sequence[RunSpec], jobs: int, label: str) -> list[list[Trial]]:
    """Run every study, ``jobs`` processes at once, with a progress line; results in order."""
    start, results = time.perf_counter(), []

    def progress(done: int) -> None:
        print(f"\r{label}: {done}/{len(specs)} studies, {time.perf_counter() - start:.0f} s", end="",
              file=sys.stderr, flush=True)

    if jobs <= 1:
        for i, spec in enumerate(specs):
            results.append(run_study(spec))
            progress(i + 1)
    else:
        import multiprocessing

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for i, trials in enumerate(pool.map(run_study, specs)):
                results.append(trials)
                progress(i + 1)
    print(file=sys.stderr)
    return results


def _table(path: Path, allow_partial: bool) -> tuple[Table, dict[str, Any]]:
    table = load_table(path)
    summary = table_summary(table)
    check_complete(summary, allow_partial)
    return table, summary


def _header(args: argparse.Namespace, seeds: list[int], tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    partial = {k: t for k, t in tables.items() if t["measured"] < t["planned"]}
    return {"seeds": seeds, **tables, "partial": bool(partial),
            "space": SPACES[args.space],
            "machine": machine(), "argv": sys.argv[1:], "jobs": args.jobs}


def optimizers(args: argparse.Namespace) -> dict[str, Any]:
    table, summary = _table(args.table, args.allow_partial)
    seeds = list(range(args.seeds))
    budgets = [b for b in BUDGETS if b < args.budget] + [args.budget]
    arms = args.arms or list(OPTIMIZER_ARMS)
    specs = [RunSpec(str(args.table), OPTIMIZER_ARMS[a][0], s, args.budget, OPTIMIZER_ARMS[a][1], space=args.space)
             for a in arms for s in seeds]
    tic = time.perf_counter()
    trials = run_all(specs, args.jobs, "optimizers")
    runs = {a: trials[i * len(seeds):(i + 1) * len(seeds)] for i, a in enumerate(arms)}
    result = {**_header(args, seeds, {"table": summary}), "budgets": budgets, "reference_budget": args.reference,
              "arms": {a: {"optimizer": OPTIMIZER_ARMS[a][0], "options": OPTIMIZER_ARMS[a][1]} for a in arms},
              "optimizers": summarize_optimizers(runs, summary, budgets, args.reference),
              "wall_s": round(time.perf_counter() - tic, 1)}
    for a in arms:  # evaluations spent on grid points already evaluated: plateaus of the snapped space
        result["optimizers"][a]["median_distinct"] = _median([distinct(table, t) for t in runs[a]])
    result["targets"] = optimizer_targets(result["optimizers"], min(args.reference, args.budget))
    write_results(args.out or RESULTS / "tabular_optimizers.json", result, optimizers_markdown(result))
    return result


def pruners(args: argparse.Namespace) -> dict[str, Any]:
    table, summary = _table(args.table, args.allow_partial)
    seeds = list(range(args.seeds))
    options = pruner_options(table)
    specs = []
    for optimizer in args.optimizers:
        for pruner in PRUNER_ARMS:
            budget = args.budget if pruner == "none" else 2 * args.budget
            specs += [RunSpec(str(args.table), optimizer, s, budget, pruner=pruner, pruner_options=options[pruner],
                              space=args.space) for s in seeds]
    tic = time.perf_counter()
    trials = iter(run_all(specs, args.jobs, "pruners"))
    arms: dict[str, list[dict[str, Any]]] = {}
    for optimizer in args.optimizers:
        runs = {pruner: [next(trials) for _ in seeds] for pruner in PRUNER_ARMS}
        for pruner, seed_runs in runs.items():
            arms[f"{optimizer}+{pruner}"] = [pruner_outcome(full, arm, summary["best"])
                                             for full, arm in zip(runs["none"], seed_runs, strict=True)]
    result = {**_header(args, seeds, {"table": summary}), "budget": args.budget, "pruned_budget": 2 * args.budget,
              "close": CLOSE, "token_share": TOKEN_SHARE, "pruner_options": options,
              "pruners": summarize_pruners(arms), "per_seed": arms, "wall_s": round(time.perf_counter() - tic, 1)}
    result["targets"] = {"fraction": TARGET_FRACTION, "arms_meeting": [
        name for name, arm in result["pruners"].items() if arm["fraction_met"] >= TARGET_FRACTION]}
    write_results(args.out or RESULTS / "tabular_pruners.json", result, pruners_markdown(result))
    return result


def pruner_options(table: Table) -> dict[str, dict[str, Any]]:
    """Each pruner's options for the table's validation steps (the first step is the least
    resource, the last the most): ASHA and Hyperband halve at each rung, the median pruner
    waits for 5 trials, and the curve pruner may stop from the 3rd validation on."""
    steps = sorted({entry[0] for p in table.points for entry in p.get("curve") or []})
    first, last = int(steps[0]), int(steps[-1])
    return {
        "none": {},
        "asha": {"min_resource": first, "reduction_factor": 2},
        "hyperband": {"min_resource": first, "max_resource": last, "reduction_factor": 2},
        "median": {"n_startup_trials": 5},
        "curve": {"min_points": 3, "top_k": 2, "margin": 0.01},
    }


def transfer(target: Table, source: Table) -> dict[str, Any]:
    """How well the source table's ranking carries over to the target's, on the configurations
    complete in both: the Spearman rank correlation of their final values, and where the source's
    best of those ranks among all the target's complete configurations (1 is the best) and its
    regret there."""
    from scipy.stats import spearmanr

    theirs = {config_key(p["params"]): p for p in source.points if p["status"] == "complete"}
    pairs = [(theirs[k]["value"], p["value"], p["params"]) for p in target.points
             if p["status"] == "complete" and (k := config_key(p["params"])) in theirs]
    if len(pairs) < 3:
        return {"shared": len(pairs), "spearman": None, "source_best": None}
    src, tgt = np.array([a for a, _, _ in pairs]), np.array([b for _, b, _ in pairs])
    pick = int(np.argmin(src))
    values = np.array([p["value"] for p in target.points if p["status"] == "complete"])
    return {"shared": len(pairs), "spearman": float(spearmanr(src, tgt).statistic),
            "source_best": {"params": pairs[pick][2], "rank_on_target": int((values < tgt[pick]).sum()) + 1,
                            "regret_on_target": float(tgt[pick] - values.min())}}


def warmstart(args: argparse.Namespace) -> dict[str, Any]:
    table, summary = _table(args.table, args.allow_partial)
    source, source_summary = _table(args.source, args.allow_partial)
    seeds = list(range(args.seeds))
    optimizer, options = OPTIMIZER_ARMS[args.optimizer]
    cold = [RunSpec(str(args.table), optimizer, s, args.budget, options, space=args.space) for s in seeds]
    warm = [replace(c, warm_from=RunSpec(str(args.source), optimizer, c.seed, args.source_budget, options,
                                         space=args.space),
                    warm_points=args.points) for c in cold]
    tic = time.perf_counter()
    trials = run_all(cold + warm, args.jobs, "warmstart")
    budgets = [b for b in BUDGETS if b < args.budget] + [args.budget]
    regrets = {name: np.stack([regret_curve(t, summary["best"], summary["worst"], args.budget) for t in runs])
               for name, runs in (("cold", trials[:len(seeds)]), ("warm", trials[len(seeds):]))}
    result = {**_header(args, seeds, {"table": summary, "source": source_summary}), "budgets": budgets,
              "optimizer": args.optimizer, "source_budget": args.source_budget, "warm_start_points": args.points,
              "transfer": transfer(table, source),
              "arms": {name: {"median_regret": {str(b): float(np.median(r[:, b - 1])) for b in budgets}}
                       for name, r in regrets.items()},
              "p_warm_vs_cold": {str(b): wilcoxon_p(regrets["warm"][:, b - 1], regrets["cold"][:, b - 1])
                                 for b in budgets},
              "wall_s": round(time.perf_counter() - tic, 1)}
    write_results(args.out or RESULTS / "tabular_warmstart.json", result, warmstart_markdown(result))
    return result


# ---------------------------------------------------------------------------- Markdown


PARTIAL_NOTE = "\n**Partial table**: proposals snap to the configurations measured so far.\n"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table_line(summary: dict[str, Any]) -> str:
    return (f"`{Path(summary['path']).name}`: {summary['measured']} of {summary['planned']} configurations measured, "
            f"{summary['complete']} complete; best final validation loss {summary['best']:.4f}")


def _machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    return (f"Space: {result['space']}. {len(result['seeds'])} seeds, {result['wall_s']:.0f} s wall on {m['cpu']} "
            f"({m['cores']} cores).")


def optimizers_markdown(result: dict[str, Any]) -> str:
    budgets, arms = result["budgets"], result["optimizers"]
    reach = f"budget_to_random_{min(result['reference_budget'], max(budgets))}"
    head = "| optimizer | " + " | ".join(f"b={b}" for b in budgets) + " |\n|---|" + "---|" * len(budgets) + "\n"
    med = "".join(f"| {n} | " + " | ".join(_fmt(a["median_regret"][str(b)]) for b in budgets) + " |\n"
                  for n, a in arms.items())
    rank = "".join(f"| {n} | " + " | ".join(_fmt(a["mean_rank"][str(b)], 2) for b in budgets) + " |\n"
                   for n, a in arms.items())
    pval = "".join(f"| {n} | " + " | ".join(_fmt(a["p_vs_random"][str(b)], 3) for b in budgets) + " |\n"
                   for n, a in arms.items() if n != "random")
    hits = "".join(f"| {n} | {a[reach] if a[reach] is not None else 'not reached'} "
                   f"| {_fmt(a.get('median_distinct'), 0)} |\n" for n, a in arms.items())
    partial = PARTIAL_NOTE if result["partial"] else ""
    return (f"# Optimizers on the LoRA tabular benchmark\n\n{_table_line(result['table'])}. {_machine_line(result)}\n"
            f"{partial}\nMedian regret (final validation loss above the table's best) after b evaluations:\n\n"
            f"{head}{med}\nMean rank among the optimizers (1 = best):\n\n{head}{rank}\n"
            f"Wilcoxon signed-rank p-value against random search (two-sided, paired by seed):\n\n{head}{pval}\n"
            f"Budget at which the median regret reaches random search's at budget "
            f"{reach.rsplit('_', 1)[1]}, and the distinct grid points among the {max(budgets)} evaluations "
            f"(median):\n\n| optimizer | budget | distinct grid points |\n|---|---|---|\n{hits}{_targets_line(result)}")


def _targets_line(result: dict[str, Any]) -> str:
    targets = result.get("targets")
    if not targets:
        return ""
    key = next(k for k in targets if k.startswith("reaches_random_"))
    return (f"\n{targets['optimizer']} beats random search at budgets 10 and 20 (p < {ALPHA}, lower mean regret): "
            f"{_yes(targets['beats_random_at_10_and_20'])}; reaches random search's median regret at budget "
            f"{key.split('_')[2]} within 10 evaluations: {_yes(targets[key])}.\n")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def pruners_markdown(result: dict[str, Any]) -> str:
    rows = "".join(
        f"| {n} | {a['fraction_met']:.2f} | {_fmt(a['median_token_share_to_target'], 2)} "
        f"({a['seeds_reaching_target']}) | {_fmt(a['median_regret_within_share'])} | {_fmt(a['median_pruned'], 0)} |\n"
        for n, a in result["pruners"].items())
    partial = PARTIAL_NOTE if result["partial"] else ""
    return (f"# Early stopping on the LoRA tabular benchmark\n\n{_table_line(result['table'])}. "
            f"{_machine_line(result)}\n{partial}\nPer seed, the run without pruning ({result['budget']} trials) gives "
            f"the full-fidelity best and its training tokens; a pruned run gets up to {result['pruned_budget']} "
            f"trials. *Met*: the best found within {result['token_share']:.0%} of those tokens is within "
            f"{result['close']:.1%} of the full-fidelity best.\n\n"
            "| optimizer+pruner | fraction of seeds met | median token share to the target (seeds reaching it) "
            "| median regret within the share | median trials pruned |\n|---|---|---|---|---|\n" + rows
            + f"\nArms meeting the target in at least {TARGET_FRACTION:.0%} of seeds: "
            + (", ".join(result["targets"]["arms_meeting"]) or "none") + ".\n")


def warmstart_markdown(result: dict[str, Any]) -> str:
    budgets = result["budgets"]
    head = "| start | " + " | ".join(f"b={b}" for b in budgets) + " |\n|---|" + "---|" * len(budgets) + "\n"
    rows = "".join(f"| {n} | " + " | ".join(_fmt(a["median_regret"][str(b)]) for b in budgets) + " |\n"
                   for n, a in result["arms"].items())
    rows += "| p warm vs cold | " + " | ".join(_fmt(result["p_warm_vs_cold"][str(b)], 3) for b in budgets) + " |\n"
    return (f"# Warm start on the LoRA tabular benchmark\n\nTarget {_table_line(result['table'])}.\n"
            f"Source {_table_line(result['source'])}.\n{_machine_line(result)}\n\n"
            f"{result['optimizer']}: per seed a {result['source_budget']}-trial study on the source; the target study "
            f"evaluates its best points (up to {result['warm_start_points']}) first (warm), or starts at x0 (cold). "
            "Median regret on the target after b evaluations, and the Wilcoxon signed-rank p-value "
            f"(two-sided, paired by seed):\n\n{head}{rows}{_transfer_lines(result['transfer'])}")


def _transfer_lines(found: dict[str, Any]) -> str:
    if found["spearman"] is None:
        return f"\nTransfer: {found['shared']} configurations complete in both tables, too few to compare.\n"
    best = found["source_best"]
    return (f"\nTransfer, over the {found['shared']} configurations complete in both tables: Spearman rank "
            f"correlation of their final values {found['spearman']:.2f}; the source's best of them "
            f"({_params(best['params'])}) ranks {best['rank_on_target']} on the target, regret "
            f"{best['regret_on_target']:.4f}.\n")


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in params.items())


# ---------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    commands: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "optimizers": optimizers, "pruners": pruners, "warmstart": warmstart}
    for name, command in commands.items():
        c = sub.add_parser(name, help=f"results/tabular_{name}.json")
        c.set_defaults(command=command)
        c.add_argument("--table", type=Path, default=MAIN_TABLE, help="default: results/tabular_main.jsonl.gz")
        c.add_argument("--seeds", type=_positive, default=50, help="seeds 0 .. SEEDS-1 (default 50)")
        c.add_argument("--budget", type=_positive, default=50, help="evaluations per study (default 50)")
        c.add_argument("--jobs", type=_positive, default=1, help="studies run at once, one process each")
        c.add_argument("--allow-partial", action="store_true", help="run on a table not measured in full")
        c.add_argument("--out", type=Path, help=f"default: results/tabular_{name}.json")
        c.add_argument("--space", choices=list(SPACES), default="default",
                       help="default: lorahpo's default space, snapped to the grid; grid: the grid's values as choices")
    o = sub.choices["optimizers"]
    o.add_argument("--arms", nargs="+", choices=list(OPTIMIZER_ARMS), help="default: all")
    o.add_argument("--reference", type=_positive, default=20, help="random search's budget to reach (default 20)")
    sub.choices["pruners"].add_argument("--optimizers", nargs="+", default=["random", "nomad"],
                                        help="optimizers each pruner runs with (default: random nomad)")
    w = sub.choices["warmstart"]
    w.add_argument("--source", type=Path, default=LONG_TABLE, help="default: results/tabular_long.jsonl.gz")
    w.add_argument("--source-budget", type=_positive, default=20, help="trials of the source study (default 20)")
    w.add_argument("--points", type=_positive, default=5, help="best source points evaluated first (default 5)")
    w.add_argument("--optimizer", choices=list(OPTIMIZER_ARMS), default="nomad")
    return p.parse_args(argv)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        args.command(args)
    except UserError as e:
        print(f"tabular_study: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
