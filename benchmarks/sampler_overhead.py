"""Per-trial cost of NomadSampler in an Optuna study, next to native NOMAD and Optuna's random.

    python benchmarks/sampler_overhead.py [--trials 200] [--out benchmarks/results/sampler_overhead.json]

On a trivial objective, the time per trial of an Optuna study is the sampler's cost plus
Optuna's own bookkeeping. We time, for the same problem and the same number of evaluations:
  native   PyNomad.optimize calling the objective directly (NOMAD's own algorithmic cost);
  random   an Optuna study with RandomSampler (Optuna's bookkeeping, in memory);
  nomad    an Optuna study with NomadSampler (in memory);
  nomad-sqlite  the same on a SQLite store, as `lorahpo tune` uses it.
The sampler overhead is nomad minus random; the target is at most 20 ms per trial.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import optuna
import PyNomad
from optuna.distributions import FloatDistribution, IntDistribution

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine  # noqa: E402

from lorahpo import NomadSampler  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def space(dim: int) -> dict:
    half = dim // 2
    return {
        **{f"i{k}": IntDistribution(-10, 10) for k in range(half)},
        **{f"r{k}": FloatDistribution(-5.0, 5.0) for k in range(dim - half)},
    }


def trivial(values: list[float]) -> float:
    return sum((v - 0.3 * (k + 1)) ** 2 for k, v in enumerate(values))


def run_optuna(sampler, dists, trials: int, storage=None) -> float:
    study = optuna.create_study(sampler=sampler, storage=storage)
    start = time.perf_counter()
    for _ in range(trials):
        t = study.ask(dists)
        study.tell(t, trivial(list(t.params.values())))
    return (time.perf_counter() - start) / trials


def run_native(dists, trials: int) -> float:
    x0, lower, upper, params = NomadSampler(dists, seed=0).nomad_problem()
    count = [0]

    def bb(x):
        count[0] += 1
        x.setBBO(repr(trivial([x.get_coord(i) for i in range(x.size())])).encode())
        return 1

    start = time.perf_counter()
    PyNomad.optimize(bb, x0, lower, upper, params + [f"MAX_BB_EVAL {trials}"])
    return (time.perf_counter() - start) / max(count[0], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sampler_overhead.json"))
    args = ap.parse_args()
    rows = []
    for dim in args.dims:
        dists = space(dim)
        with tempfile.TemporaryDirectory() as tmp:
            sqlite = f"sqlite:///{tmp}/b.db"
            row = {
                "dim": dim,
                "trials": args.trials,
                "native_ms": 1000 * run_native(dists, args.trials),
                "random_ms": 1000 * run_optuna(optuna.samplers.RandomSampler(seed=0), dists, args.trials),
                "nomad_ms": 1000 * run_optuna(NomadSampler(dists, seed=0), dists, args.trials),
                "nomad_sqlite_ms": 1000 * run_optuna(NomadSampler(dists, seed=0), dists, args.trials, sqlite),
            }
        row["overhead_ms"] = row["nomad_ms"] - row["random_ms"]
        rows.append(row)
        print(
            f"dim {dim}: native NOMAD {row['native_ms']:.2f} ms/eval | Optuna random {row['random_ms']:.2f} | "
            f"NomadSampler {row['nomad_ms']:.2f} (sqlite {row['nomad_sqlite_ms']:.2f}) ms/trial | "
            f"overhead {row['overhead_ms']:.2f} ms/trial",
            flush=True,
        )
    result = {"benchmark": "sampler_overhead", "target_ms_per_trial": 20, "machine": machine(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
