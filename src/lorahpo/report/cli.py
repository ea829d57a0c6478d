"""Command line of the reports: ``lorahpo report DIR`` and ``lorahpo compare DIR1 DIR2 ...``.

Only argparse is imported here; matplotlib loads inside the commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lorahpo.errors import UserError
from lorahpo.extras import require


def add_arguments(subparsers: Any) -> None:
    """Register ``report`` and ``compare`` on the subparsers of the main ``lorahpo`` parser."""
    rep = subparsers.add_parser(
        "report",
        help="write a study's report (HTML, PNG plots, Markdown)",
        description="Write DIR/report/report.html (self-contained), report.md and the PNG plots: search progress, "
        "top trials next to the baselines with downstream scores, loss against downstream scores and "
        "against in-trial evaluators, hyperparameters, failures, configuration and timing.",
    )
    rep.add_argument("study_dir", metavar="DIR", type=Path, help="study folder")
    rep.add_argument("--out", type=Path, help="output folder (default DIR/report)")
    rep.add_argument("--top", type=int, default=5, help="how many of the best trials to list (default 5)")
    rep.set_defaults(func=cmd_report)

    cmp = subparsers.add_parser(
        "compare",
        help="compare studies of the same blackbox (e.g. NOMAD against TPE)",
        description="Write compare.html, compare.md and a PNG plot: the best-so-far curves of all studies on one "
        "plot, a table of final results and the in-trial evaluators and downstream scores of each study's best trial.",
    )
    cmp.add_argument("study_dirs", metavar="DIR", type=Path, nargs="+", help="study folders (two or more)")
    cmp.add_argument("--out", type=Path, default=Path("comparison"), help="output folder (default ./comparison)")
    cmp.set_defaults(func=cmd_compare)


def cmd_report(args: argparse.Namespace) -> int:
    """``lorahpo report``: write it (:func:`lorahpo.api.report`), print where it went."""
    from lorahpo import api

    paths = api.report(args.study_dir, args.out, top=args.top)
    print(f"report: {paths['html']}")
    print(f"summary: {paths['markdown']}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``lorahpo compare``: read each study, render the comparison, print where it went."""
    from lorahpo.report.data import compare_report
    from lorahpo.report.render import write_compare

    if len(args.study_dirs) < 2:
        raise UserError("compare needs at least two study folders")
    out = _out_folder(args.out)
    require("report")
    compare = compare_report(args.study_dirs)
    for warning in compare.warnings:
        print(f"warning: {warning}")
    paths = write_compare(compare, out)
    print(f"comparison: {paths['html']}")
    print(f"summary: {paths['markdown']}")
    return 0


def _out_folder(out: Path) -> Path:
    """``out``, refused before any work when it names something that is not a folder."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a folder")
    return out
