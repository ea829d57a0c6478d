"""COCO's BBOB suites: NomadSampler against native NOMAD, TPE, CMA-ES and random search.

    python benchmarks/bbob.py            # instances 1-3: about 6 h on this 2-core CPU (see README)
    python benchmarks/bbob.py --quick    # a smoke run: 3 functions in 2 problem sets, ~15 s

Problems come from the ``coco-experiment`` package (module ``cocoex``; nothing is downloaded):
``bbob``, 24 continuous functions, and ``bbob-mixint``, the same kinds of functions with their
first variables integer (``problem.number_of_integer_variables``). Each optimizer searches the
problem's box: an integer variable is an Optuna ``IntDistribution`` (NOMAD type ``I``), any other
a ``FloatDistribution`` (type ``R``). Instances are COCO's (each shifts and rotates a function);
seeds are the optimizers'.

Optimizers (``--optimizers``):
  nomad   NomadSampler in an Optuna study (ask/tell), built as ``lorahpo`` builds it.
  native  ``PyNomad.optimize`` on exactly the sampler's problem (``NomadSampler.nomad_problem()``:
          same bounds, types, X0 and seed), its integer coordinates rounded as the sampler
          rounds them. It stops where NOMAD stops on its own (the sampler restarts NOMAD).
  tpe, random  Optuna's TPE and random samplers, built as ``lorahpo`` builds them.
  cmaes   Optuna's ``CmaEsSampler``; on bbob-mixint with ``with_margin=True`` (CMA-ES with
          margin), Optuna's variant for integer variables, which keeps them from freezing.

Metrics. A run's gap after B evaluations is f_best - f_opt, f_best the best of its first B
values. cocoex 2.8 does not expose f_opt in Python: ``Problem._best_parameter("print")`` writes
x_opt to a file, f_opt = f(x_opt), and COCO's own ``final_target_hit`` (f <= f_opt + 1e-8)
confirms it. A run reaches a target t when its gap is <= t; the targets are COCO's standard 51,
10^2, 10^1.8, ..., 10^-8. Per suite, dimension, budget, optimizer and function group (COCO's five
bbob groups), the summary gives the mean fraction of targets reached (COCO's ECDF value at that
budget) and the median of log10(gap), gaps below 1e-8 counted as 1e-8, with its quartiles over
functions, instances and seeds. Budgets (``--budgets``) are multiples of the dimension. No
optimizer here is told the budget, so one run of the largest budget serves them all: its first
B evaluations are a run with budget B.

One job runs every optimizer on one problem and seed, so that NomadSampler's sequence of points
can be compared with native NOMAD's. Results are rewritten after every job; a rerun keeps the
jobs already in ``--out`` and runs only the missing ones, so the benchmark can be run in parts
(more seeds or instances later). It refuses an ``--out`` whose results it would throw away.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cocoex
import numpy as np
import optuna
import PyNomad
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine, write_results  # noqa: E402

from lorahpo import space  # noqa: E402
from lorahpo.samplers import make_sampler, protocol  # noqa: E402
from lorahpo.samplers.nomad import POINT_ATTR, NomadSampler  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
# CmaEsSampler's with_margin is marked experimental; the warning would repeat on every job.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

OPTIMIZERS = ("nomad", "native", "tpe", "cmaes", "random")
#: Default dimensions of each suite.
SUITES = {"bbob": (2, 5, 10), "bbob-mixint": (5, 10)}
#: COCO's five bbob function groups.
GROUPS = {
    "separable": range(1, 6),
    "low or moderate conditioning": range(6, 10),
    "high conditioning, unimodal": range(10, 15),
    "multimodal, adequate global structure": range(15, 20),
    "multimodal, weak global structure": range(20, 25),
}
#: COCO's 51 standard targets on f - f_opt.
TARGETS = 10.0 ** np.linspace(2, -8, 51)
FULL = {
    "suites": list(SUITES),
    "dims": {suite: list(dims) for suite, dims in SUITES.items()},
    "functions": list(range(1, 25)),
    "instances": [1, 2, 3],
    "seeds": [0],
    "budgets": [20, 100],
}
#: A smoke run: three function groups, one instance, one seed, small budgets.
QUICK = {
    "suites": list(SUITES),
    "dims": {"bbob": [2], "bbob-mixint": [5]},
    "functions": [1, 10, 20],
    "instances": [1],
    "seeds": [0],
    "budgets": [5, 10],
}
RESULTS = Path(__file__).parent / "results"
NOMAD_ERROR = "NOMAD ended with an error"  # NomadSampler's warning when it restarts a dead NOMAD


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class ProblemId:
    """One COCO problem: suite, dimension, function number and instance number."""

    suite: str
    dim: int
    function: int
    instance: int

    @property
    def name(self) -> str:
        """COCO's own id, e.g. ``bbob-mixint_f001_i01_d05``."""
        return f"{self.suite}_f{self.function:03d}_i{self.instance:02d}_d{self.dim:02d}"


class Objective:
    """A COCO problem as a function of parameter values, with its optimum and search space."""

    def __init__(self, pid: ProblemId) -> None:
        # The suite owns the problem's memory: keep it alive as long as the problem.
        self._suite = cocoex.Suite(
            pid.suite, f"instances: {pid.instance}", f"dimensions: {pid.dim} function_indices: {pid.function}"
        )
        if len(self._suite) != 1 or self._suite[0].id != pid.name:
            raise ValueError(f"cocoex has no problem {pid.name}")
        self.problem = self._suite[0]
        self.mixed = self.problem.number_of_integer_variables > 0
        self.f_opt = _optimum(self.problem)
        ints = self.problem.number_of_integer_variables
        self.distributions: dict[str, BaseDistribution] = {
            f"x{i}": IntDistribution(int(lo), int(hi)) if i < ints else FloatDistribution(float(lo), float(hi))
            for i, (lo, hi) in enumerate(zip(self.problem.lower_bounds, self.problem.upper_bounds, strict=True))
        }

    def __call__(self, x: Sequence[float]) -> float:
        return float(self.problem(np.asarray(x, dtype=float)))


def _optimum(problem: Any) -> float:
    """f_opt of a COCO problem (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        problem._best_parameter("print")
        x_opt = np.loadtxt("._bbob_problem_best_parameter.txt", ndmin=1)
    f_opt = float(problem(x_opt))
    if not problem.final_target_hit:
        raise RuntimeError(f"{problem.id}: COCO does not accept f(x_opt) = {f_opt} as its optimum")
    return f_opt


def available_dims(suite: str) -> list[int]:
    """The dimensions cocoex has for a suite (it quietly ignores others when asked for them)."""
    return list(cocoex.Suite(suite, "", "").dimensions)


# ----------------------------------------------------------------------------- runs


@dataclass
class Run:
    """What one optimizer did on one problem: its values in order, and the NOMAD points."""

    values: list[float] = field(default_factory=list)
    points: list[tuple[float, ...]] = field(default_factory=list)  # NOMAD coordinates (nomad, native)
    status: str = "ok"  # ok | stopped (NOMAD stopped before the budget) | crashed
    errors: int = 0  # NOMAD internal errors NomadSampler recovered from
    seconds: float = 0.0


def make_optimizer(name: str, objective: Objective, seed: int) -> BaseSampler:
    """The Optuna sampler of an optimizer; ``native`` gets the NomadSampler whose problem it runs."""
    if name == "cmaes":
        options = {"with_margin": True} if objective.mixed else {}
        return make_sampler("optuna.samplers.CmaEsSampler", objective.distributions, seed=seed, options=options)
    return make_sampler("nomad" if name == "native" else name, objective.distributions, seed=seed)


def run_study(sampler: BaseSampler, objective: Objective, budget: int) -> Run:
    """``budget`` trials of an Optuna study, asked and told one at a time.

    The sampler is not asked whether it is ``ready``: one with nothing left to propose (NOMAD
    exhausted) gets random points, so every optimizer is measured at every budget.
    """
    study = optuna.create_study(sampler=sampler)
    names = list(objective.distributions)
    run = Run()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        for _ in range(budget):
            trial = study.ask(objective.distributions)
            value = objective([trial.params[n] for n in names])
            study.tell(trial, value)
            run.values.append(value)
        run.seconds = time.perf_counter() - start
    protocol.close(sampler)
    # Trials without a NOMAD point were sampled at random (NOMAD had exhausted the space), or
    # by another optimizer: those have no points and no NOMAD errors.
    trials = study.get_trials(deepcopy=False)
    run.points = [tuple(t.system_attrs[POINT_ATTR]) for t in trials if POINT_ATTR in t.system_attrs]
    run.errors = sum(NOMAD_ERROR in str(w.message) for w in caught)
    return run


def run_native(sampler: NomadSampler, objective: Objective, budget: int) -> Run:
    """``PyNomad.optimize`` on the sampler's problem, in a forked child process.

    A fresh process per run, for two reasons: NOMAD's evaluation cache outlives ``optimize``
    (a second run in the same process would skip the points the first one evaluated), and
    NOMAD 4.6 can take the whole process down (a segmentation fault after an internal exception
    on some small integer problems). The child sends every evaluation back as it happens, so a
    crash keeps the evaluations made before it.
    """
    x0, lower, upper, params = sampler.nomad_problem()
    params = [*params, f"MAX_BB_EVAL {budget}"]
    dists = list(objective.distributions.values())
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def child() -> None:
        os.dup2(2, 1)  # NOMAD prints from C++ to descriptor 1; keep the benchmark's stdout clean

        def blackbox(point: Any) -> int:
            coords = tuple(point.get_coord(i) for i in range(point.size()))
            value = objective([space.decode(d, c) for d, c in zip(dists, coords, strict=True)])
            point.setBBO(repr(value).encode())
            send.send((coords, value))
            return 1

        PyNomad.optimize(blackbox, x0, lower, upper, params)

    run = Run()
    start = time.perf_counter()
    proc = ctx.Process(target=child)
    proc.start()
    send.close()  # the child holds the only sending end: EOF when it exits
    with contextlib.suppress(EOFError):
        while True:
            coords, value = receive.recv()
            run.points.append(coords)
            run.values.append(value)
    proc.join()
    run.seconds = time.perf_counter() - start
    if proc.exitcode != 0:
        run.status = "crashed"
    elif len(run.values) < budget:
        run.status = "stopped"
    return run


@dataclass(frozen=True)
class Job:
    """Every optimizer on one problem with one seed."""

    problem: ProblemId
    seed: int
    optimizers: tuple[str, ...]
    budgets: tuple[int, ...]  # multiples of the dimension

    @property
    def key(self) -> str:
        return f"{self.problem.name}_s{self.seed}"


def run_job(job: Job) -> dict[str, Any]:
    """Run a job; the record keeps, per optimizer and budget, the gap to the optimum."""
    start = time.perf_counter()
    objective = Objective(job.problem)
    budgets = [m * job.problem.dim for m in job.budgets]
    runs: dict[str, Run] = {}
    for name in job.optimizers:
        sampler = make_optimizer(name, objective, job.seed)
        if name == "native":
            assert isinstance(sampler, NomadSampler)
            runs[name] = run_native(sampler, objective, max(budgets))
        else:
            runs[name] = run_study(sampler, objective, max(budgets))
    record: dict[str, Any] = {
        "key": job.key,
        **asdict(job.problem),
        "seed": job.seed,
        "f_opt": objective.f_opt,
        "runs": {
            name: {
                "evaluations": len(run.values),
                "status": run.status,
                "nomad_errors": run.errors,
                "seconds": round(run.seconds, 3),
                "gaps": [_gap(run.values[:b], objective.f_opt) for b in budgets],
            }
            for name, run in runs.items()
        },
    }
    if "nomad" in runs and "native" in runs:
        native, sampled = runs["native"].points, runs["nomad"].points
        same = next((i for i, (a, b) in enumerate(zip(native, sampled, strict=False)) if a != b),
                    min(len(native), len(sampled)))
        record["nomad_vs_native"] = {"native_evaluations": len(native), "identical_prefix": same}
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def _gap(values: Sequence[float], f_opt: float) -> float | None:
    """f_best - f_opt (never below 0); None when the run made no evaluation."""
    return max(min(values) - f_opt, 0.0) if values else None


# ----------------------------------------------------------------------------- summary


def fraction_of_targets(gap: float | None) -> float:
    return 0.0 if gap is None else float(np.mean(gap <= TARGETS))


def log_gap(gap: float) -> float:
    return math.log10(max(gap, TARGETS[-1]))


def group_of(function: int) -> str:
    return next(name for name, functions in GROUPS.items() if function in functions)


def summarize(records: Sequence[dict[str, Any]], config: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per suite, dimension, budget, optimizer and group (and ``all`` functions)."""
    cells: dict[tuple[str, int, int, str, str], list[float | None]] = {}
    for rec in records:
        for name, run in rec["runs"].items():
            for multiple, gap in zip(config["budgets"], run["gaps"], strict=True):
                for group in (group_of(rec["function"]), "all"):
                    cells.setdefault((rec["suite"], rec["dim"], multiple, name, group), []).append(gap)
    rows = []
    for (suite, dim, multiple, name, group), gaps in cells.items():
        logs = [log_gap(g) for g in gaps if g is not None]
        q1, median, q3 = np.percentile(logs, [25, 50, 75]) if logs else (math.nan,) * 3
        rows.append(
            {
                "suite": suite,
                "dim": dim,
                "budget": multiple * dim,
                "budget_per_dim": multiple,
                "optimizer": name,
                "group": group,
                "runs": len(gaps),
                "targets_reached": float(np.mean([fraction_of_targets(g) for g in gaps])),
                "log10_gap_median": float(median),
                "log10_gap_q1": float(q1),
                "log10_gap_q3": float(q3),
            }
        )
    return rows


def compare_nomad(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per suite and dimension: how often native NOMAD's whole sequence is the sampler's."""
    by_set: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rec in records:
        if "nomad_vs_native" in rec:
            by_set.setdefault((rec["suite"], rec["dim"]), []).append(rec["nomad_vs_native"])
    return [
        {
            "suite": suite,
            "dim": dim,
            "pairs": len(pairs),
            "identical": sum(p["identical_prefix"] == p["native_evaluations"] for p in pairs),
            "native_evaluations": sum(p["native_evaluations"] for p in pairs),
            "identical_evaluations": sum(p["identical_prefix"] for p in pairs),
        }
        for (suite, dim), pairs in sorted(by_set.items())
    ]


def markdown(result: dict[str, Any]) -> str:
    """The result as Markdown tables."""
    config, rows, m = result["config"], result["summary"], result["machine"]
    names = config["optimizers"]
    index = {(r["suite"], r["dim"], r["budget_per_dim"], r["group"], r["optimizer"]): r for r in rows}
    sets = sorted({(r["suite"], r["dim"]) for r in rows})
    lines = [
        "# BBOB: NomadSampler against native NOMAD, TPE, CMA-ES and random search",
        "",
        (
            f"`python benchmarks/bbob.py {result['command']}` on {m['cpu']} ({m['cores']} cores), "
            f"Python {m['python']}, {m['date'][:10]}: {result['jobs_done']} of {result['jobs_total']} jobs, "
            f"{result['seconds'] / 60:.0f} min of run time. Functions {_ranges(config['functions'])}, "
            f"instances {_ranges(config['instances'])}, seeds {_ranges(config['seeds'])}."
        ),
        "",
        (
            "Each cell: fraction of COCO's 51 targets reached (mean over runs; the best in bold) / "
            "median log10(f_best - f_opt) [quartiles] over functions, instances and seeds "
            "(-8.0 means the final target 1e-8 was reached)."
        ),
        "",
        "## All functions",
        "",
        _header(["suite", "d", "budget", *names]),
    ]
    for suite, dim in sets:
        for multiple in config["budgets"]:
            cells = [index.get((suite, dim, multiple, "all", n)) for n in names]
            lines.append(_row([suite, str(dim), f"{multiple * dim} ({multiple}·d)", *_cells(cells)]))
    lines += ["", "## Per function group"]
    for suite, dim in sets:
        for multiple in config["budgets"]:
            lines += [
                "",
                f"### {suite}, d = {dim}, budget {multiple * dim} ({multiple}·d)",
                "",
                _header(["group", *names]),
            ]
            for group in [*GROUPS, "all"]:
                cells = [index.get((suite, dim, multiple, group, n)) for n in names]
                if any(cells):
                    lines.append(_row([group, *_cells(cells)]))
    lines += _nomad_section(result) + _status_section(result)
    return "\n".join(lines) + "\n"


def _nomad_section(result: dict[str, Any]) -> list[str]:
    if not result["nomad_vs_native"]:
        return []
    lines = [
        "",
        "## NomadSampler and native NOMAD propose the same points",
        "",
        "Native NOMAD's points compared, in order, with the sampler's (NOMAD coordinates, exact).",
        "",
        _header(["suite", "d", "problem × seed pairs", "whole native sequence identical", "identical evaluations"]),
    ]
    for c in result["nomad_vs_native"]:
        lines.append(
            _row(
                [
                    c["suite"],
                    str(c["dim"]),
                    str(c["pairs"]),
                    f"{c['identical']} of {c['pairs']}",
                    f"{c['identical_evaluations']} of {c['native_evaluations']}",
                ]
            )
        )
    return lines


def _status_section(result: dict[str, Any]) -> list[str]:
    """Early stops, crashes and cost per evaluation, per optimizer."""
    names = result["config"]["optimizers"]
    stats = {
        n: {"stopped": 0, "crashed": 0, "nomad_errors": 0, "seconds": 0.0, "evaluations": 0, "runs": 0} for n in names
    }
    for rec in result["runs"]:
        for name, run in rec["runs"].items():
            s = stats[name]
            s["runs"] += 1
            s["seconds"] += run["seconds"]
            s["evaluations"] += run["evaluations"]
            s["nomad_errors"] += run["nomad_errors"]
            if run["status"] in ("stopped", "crashed"):
                s[run["status"]] += 1
    lines = [
        "",
        "## Runs, stops, crashes, time",
        "",
        (
            "stopped: native NOMAD ended on its own before the budget (NomadSampler restarts it instead); "
            "crashed: PyNomad died; NOMAD errors: internal NOMAD errors NomadSampler recovered from."
        ),
        "",
        _header(["optimizer", "runs", "stopped", "crashed", "NOMAD errors", "evaluations", "ms per evaluation"]),
    ]
    for name, s in stats.items():
        per_eval = 1000 * s["seconds"] / max(s["evaluations"], 1)
        lines.append(
            _row(
                [
                    name,
                    str(s["runs"]),
                    str(s["stopped"]),
                    str(s["crashed"]),
                    str(s["nomad_errors"]),
                    str(s["evaluations"]),
                    f"{per_eval:.1f}",
                ]
            )
        )
    return lines


def _cells(rows: Sequence[dict[str, Any] | None]) -> list[str]:
    # Compared as shown (2 decimals), so fractions that look equal are all bold or none.
    best = max((round(r["targets_reached"], 2) for r in rows if r), default=0.0)
    out = []
    for r in rows:
        if r is None:
            out.append("")
            continue
        frac = f"{r['targets_reached']:.2f}"
        if round(r["targets_reached"], 2) == best > 0:
            frac = f"**{frac}**"
        out.append(f"{frac} / {r['log10_gap_median']:.1f} [{r['log10_gap_q1']:.1f}, {r['log10_gap_q3']:.1f}]")
    return out


def _header(cols: Sequence[str]) -> str:
    return _row(cols) + "\n" + _row(["---"] * len(cols))


def _row(cols: Sequence[str]) -> str:
    return "| " + " | ".join(cols) + " |"


def _ranges(values: Sequence[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    parts: list[str] = []
    for v in sorted(values):
        if parts and parts[-1].split("-")[-1] == str(v - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{v}"
        else:
            parts.append(str(v))
    return ", ".join(parts)


# ----------------------------------------------------------------------------- main


def make_jobs(config: dict[str, Any]) -> list[Job]:
    """All jobs, seed and instance outermost: a partial run already covers every problem set."""
    jobs = []
    for seed in config["seeds"]:
        for instance in config["instances"]:
            for suite in config["suites"]:
                for dim in config["dims"][suite]:
                    for function in config["functions"]:
                        pid = ProblemId(suite, dim, function, instance)
                        jobs.append(Job(pid, seed, tuple(config["optimizers"]), tuple(config["budgets"])))
    return jobs


def run_jobs(jobs: Sequence[Job], workers: int) -> Iterator[dict[str, Any]]:
    """Records of the jobs as they finish."""
    if workers == 1:
        yield from map(run_job, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(run_job, job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def previous_records(out: Path, config: dict[str, Any], jobs: Sequence[Job]) -> dict[str, dict[str, Any]]:
    """The records already in ``out``, by job key.

    Raises:
        SystemExit: ``out`` holds other optimizers or budgets, or jobs outside ``jobs``: writing
            it would throw those results away.
    """
    if not out.exists():
        return {}
    old = json.loads(out.read_text())
    if any(old["config"][k] != config[k] for k in ("optimizers", "budgets")):
        raise SystemExit(f"bbob.py: {out} holds results of other optimizers or budgets; give another --out")
    records = {rec["key"]: rec for rec in old["runs"]}
    outside = set(records) - {job.key for job in jobs}
    if outside:
        raise SystemExit(
            f"bbob.py: {out} holds {len(outside)} jobs outside this selection; widen it or give another --out"
        )
    return records


def write(out: Path, result: dict[str, Any]) -> None:
    """Write the JSON and Markdown beside it, each replaced whole (never half written)."""
    write_results(out, result, markdown(result), quiet=True)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items())
    )
    ap.add_argument("--suites", nargs="+", choices=list(SUITES))
    ap.add_argument(
        "--dims",
        nargs="+",
        type=int,
        help="dimensions (each suite runs those it has; default: bbob 2 5 10, bbob-mixint 5 10)",
    )
    ap.add_argument("--functions", nargs="+", type=int, help="function numbers 1-24 (default: all)")
    ap.add_argument("--instances", nargs="+", type=int, help="COCO instance numbers (default: 1 2 3)")
    ap.add_argument("--seeds", nargs="+", type=int, help="optimizer seeds (default: 0)")
    ap.add_argument("--budgets", nargs="+", type=int, help="budgets as multiples of the dimension (default: 20 100)")
    ap.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    ap.add_argument("--workers", type=int, default=1, help="jobs run at once (default 1)")
    ap.add_argument(
        "--out",
        type=Path,
        help="JSON file; the Markdown goes beside it (default: results/bbob.json, or bbob-quick.json)",
    )
    args = ap.parse_args(argv)
    preset = QUICK if args.quick else FULL
    config = {k: getattr(args, k) or preset[k] for k in preset}
    config["optimizers"] = args.optimizers
    config["budgets"] = sorted(config["budgets"])
    config["dims"] = {
        suite: sorted(set(args.dims) & set(available_dims(suite))) if args.dims else preset["dims"][suite]
        for suite in config["suites"]
    }
    for suite, dims in config["dims"].items():
        if not dims:
            raise SystemExit(f"bbob.py: suite {suite} has none of the dimensions {args.dims}")
    if not set(config["functions"]) <= set(range(1, 25)):
        raise SystemExit("bbob.py: functions are numbered 1-24")
    if args.workers < 1:
        raise SystemExit("bbob.py: --workers must be >= 1")
    if args.out is None:
        args.out = RESULTS / ("bbob-quick.json" if args.quick else "bbob.json")
    return args, config


def main(argv: Sequence[str] | None = None) -> None:
    args, config = parse_args(argv)
    jobs = make_jobs(config)
    done = previous_records(args.out, config, jobs)
    records = [done[job.key] for job in jobs if job.key in done]
    todo = [job for job in jobs if job.key not in done]
    print(f"{len(jobs)} jobs, {len(records)} already in {args.out}, {len(todo)} to run", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "bbob",
        "command": " ".join(sys.argv[1:] if argv is None else argv),
        "config": config,
        "targets": "51 targets 10^2 ... 10^-8 on f - f_opt",
        "groups": {name: [functions.start, functions.stop - 1] for name, functions in GROUPS.items()},
        "machine": machine(),
    }
    start = time.perf_counter()
    for k, rec in enumerate(run_jobs(todo, args.workers), 1):
        records.append(rec)
        took = {name: f"{run['seconds']:.1f}s" for name, run in rec["runs"].items()}
        elapsed = time.perf_counter() - start
        eta = elapsed / k * (len(todo) - k)
        print(
            f"[{k}/{len(todo)}] {rec['key']} {took} elapsed {elapsed / 60:.1f} min, left ~{eta / 60:.0f} min",
            flush=True,
        )
        write(args.out, _finish(result, records, len(jobs)))
    if not todo:
        write(args.out, _finish(result, records, len(jobs)))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


def _finish(result: dict[str, Any], records: list[dict[str, Any]], total: int) -> dict[str, Any]:
    return {
        **result,
        "jobs_total": total,
        "jobs_done": len(records),
        "seconds": round(sum(rec["seconds"] for rec in records), 1),
        "summary": summarize(records, result["config"]),
        "nomad_vs_native": compare_nomad(records),
        "runs": records,
    }


if __name__ == "__main__":
    main()
