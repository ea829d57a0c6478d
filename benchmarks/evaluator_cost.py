"""What the in-trial evaluators add to a trial's time, read from a study that ran them.

    lorahpo tune                                          # the built-in study (evaluate: [retention])
    python benchmarks/evaluator_cost.py runs/default      # -> results/evaluator_cost.json and .md

For each complete trial: its wall time in the store (the trial process from start to end), the
time its evaluators took on the adapted model (``evaluation_s``, measured inside the trial) and
their share of the rest (training, validation, loading: ``evaluation_s / (wall - evaluation_s)``).
The first trial of a study also measures the evaluators on the base model (once per study,
before it trains), so it is reported apart and left out of the median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine, write_results

from lorahpo.result import TrialRecord
from lorahpo.study import Study

RESULTS = Path(__file__).parent / "results"


def costs(records: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    """Per complete trial with evaluators: wall time, evaluation time and the evaluation's share of the rest."""
    out = []
    for r in records:
        wall, evaluation = r.duration_s, r.metrics.get("evaluation_s")
        if r.status != "complete" or wall is None or evaluation is None:
            continue
        out.append({"trial": r.number, "wall_s": wall, "evaluation_s": evaluation,
                    "overhead": evaluation / (wall - evaluation)})
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    later = rows[1:]  # the first also measured the base model
    return {
        "trials": len(rows),
        "first": rows[0] if rows else None,
        "median_overhead": statistics.median(r["overhead"] for r in later) if later else None,
        "max_overhead": max(r["overhead"] for r in later) if later else None,
        "median_evaluation_s": statistics.median(r["evaluation_s"] for r in later) if later else None,
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [f"# In-trial evaluator cost: {result['study']} ({', '.join(result['evaluators'])})", "",
             f"Machine: {result['machine'].get('cpu')} ({result['machine'].get('cores')} cores)."
             + (f" {result['note']}" if result.get("note") else ""), "",
             "| trial | wall (s) | evaluators (s) | share of the rest |", "|---|---|---|---|"]
    for r in result["trials"]:
        lines.append(f"| {r['trial']} | {r['wall_s']:.0f} | {r['evaluation_s']:.1f} | {100 * r['overhead']:.0f}% |")
    if s["median_overhead"] is not None:
        lines += ["", f"Median share over trials 2 and later: {100 * s['median_overhead']:.0f}% "
                      f"(max {100 * s['max_overhead']:.0f}%); the first trial also measured the base model."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study_dir", type=Path, help="study folder of a LoRA study with evaluators")
    p.add_argument("--out", type=Path, default=RESULTS / "evaluator_cost.json")
    p.add_argument("--note", default="", help="a line for the Markdown, e.g. what else ran on the machine")
    args = p.parse_args(argv)
    study = Study.load(args.study_dir)
    rows = costs(study.records())
    result = {"study": str(args.study_dir), "evaluators": study.config.evaluators, "machine": machine(),
              "note": args.note, "trials": rows, "summary": summarize(rows)}
    write_results(args.out, result, markdown(result))
    return result


if __name__ == "__main__":
    main()
