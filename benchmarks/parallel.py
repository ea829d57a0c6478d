"""How well trials run in parallel: wall time with k = 1, 2, 4 workers, local and Ray, NOMAD and TPE.

    python benchmarks/parallel.py [--sleep 5] [--budget 16] [--workers 1 2 4]

The blackbox sleeps a fixed time (``lorahpo.toys:timed_sphere`` over a 4-variable space), so
ideal scaling is known: k workers should finish ``budget`` evaluations in 1/k of the time one
worker needs. Each study is run exactly as ``lorahpo tune`` runs it (``Study.run``), with
``parallel: k`` (NOMAD's block size k, TPE's constant liar) on the local executor (a
subprocess per trial) and on the Ray executor (a local Ray cluster of 4 CPUs, started once,
not timed; one CPU per trial). Reported per run:

  wall_s       time of ``Study.run``, from the first ask to the last tell
  efficiency   wall time of k = 1 / (k x wall time of k): 1.0 is ideal
  idle_s       worker time spent without a trial: k x wall - the sum of the trials' durations
               (from ask to tell, so a trial's start-up is counted as busy)

Results: ``results/parallel.json`` and ``results/parallel.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine, write_results  # noqa: E402

from lorahpo import config as cfg  # noqa: E402
from lorahpo.study import Study  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
RESULTS = Path(__file__).parent / "results"
SPACE = {
    "params": {
        "a": {"type": "real", "low": -2, "high": 2, "x0": 1.5},
        "b": {"type": "real", "low": -2, "high": 2, "x0": -1.5},
        "c": {"type": "int", "low": -5, "high": 5, "x0": 3},
        "d": {"type": "choice", "values": [0.0, 0.5, 1.0, 2.0], "x0": 2.0},
    }
}


def run_one(
    optimizer: str, executor: str, k: int, budget: int, sleep: float, ray_address: str | None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "parallel",
        "optimizer": optimizer,
        "budget": budget,
        "parallel": k,
        "executor": executor,
        "space": SPACE,
        "objective": {"python": "lorahpo.toys:timed_sphere"},
    }
    if executor == "ray":
        data["ray"] = {"address": ray_address, "num_cpus": 1}
    with tempfile.TemporaryDirectory() as folder:
        study = Study.open(Path(folder) / "s", cfg.parse(data))
        start = time.monotonic()
        summary = study.run()
        wall = time.monotonic() - start
        records = study.records()
    busy = sum(r.duration_s or 0.0 for r in records)
    points = [tuple(sorted(r.params.items())) for r in records]
    return {
        "optimizer": optimizer,
        "executor": executor,
        "workers": k,
        "evaluations": summary.finished,
        "complete": sum(r.status == "complete" for r in records),
        "duplicates": len(points) - len(set(points)),
        "wall_s": round(wall, 2),
        "trial_mean_s": round(busy / max(len(records), 1), 3),
        "idle_s": round(k * wall - busy, 2),
        "best": summary.best.value if summary.best else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sleep", type=float, default=5.0, help="seconds each evaluation sleeps")
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--optimizers", nargs="+", default=["nomad", "tpe"])
    p.add_argument("--executors", nargs="+", default=["local", "ray"])
    p.add_argument("--out", type=Path, default=RESULTS / "parallel.json")
    args = p.parse_args()
    os.environ["LORAHPO_TOY_SLEEP_S"] = str(args.sleep)  # trials inherit it (local and Ray)
    ray_address = None
    if "ray" in args.executors:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        info = ray.init(num_cpus=max(args.workers), _node_ip_address="127.0.0.1", _temp_dir=ray_tmp,
                        include_dashboard=False, log_to_driver=False, logging_level="warning")
        ray_address = info.address_info["gcs_address"]
    runs = []
    for optimizer in args.optimizers:
        for executor in args.executors:
            for k in args.workers:
                run = run_one(optimizer, executor, k, args.budget, args.sleep, ray_address)
                base = next((r for r in runs
                             if (r["optimizer"], r["executor"], r["workers"]) == (optimizer, executor, 1)), None)
                run["efficiency"] = round(base["wall_s"] / (k * run["wall_s"]), 3) if base else None
                runs.append(run)
                print(json.dumps(run), flush=True)
    report = {
        "benchmark": "parallel",
        "sleep_s": args.sleep,
        "budget": args.budget,
        "machine": machine(),
        "runs": runs,
    }
    write_results(args.out, report, table(report))


def table(report: dict[str, Any]) -> str:
    lines = [
        f"Parallel trials: {report['budget']} evaluations of a blackbox sleeping {report['sleep_s']:g} s, "
        f"{report['machine']['cpu']} ({report['machine']['cores']} cores), {report['machine']['date']}.",
        "",
        "| optimizer | executor | workers | wall (s) | efficiency | idle worker time (s) | mean trial (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        eff = f"{r['efficiency']:.0%}" if r["efficiency"] is not None else "-"
        lines.append(
            f"| {r['optimizer']} | {r['executor']} | {r['workers']} | {r['wall_s']:.1f} | {eff} "
            f"| {r['idle_s']:.1f} | {r['trial_mean_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
