"""The ``lorahpo`` command line: a thin layer over the library.

Imports stay inside the commands, so ``lorahpo --help`` answers at once and never loads torch.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from lorahpo.errors import EXIT_USAGE, UserError, print_error

EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    import logging

    logging.getLogger("optuna").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print_error(str(e))
        return EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported like every other mistake: one line, exit code 2.

    Sub-command parsers are made of this class too (argparse makes them of the parent's class).
    """

    def error(self, message: str) -> NoReturn:
        print_error(f"{message} (see `{self.prog} --help`)")
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="lorahpo",
        description="Find the best LoRA hyperparameters with NOMAD (MADS) or Optuna's samplers "
        "(TPE, GP, CMA-ES, NSGA-II, random, grid).",
    )
    sub = p.add_subparsers(metavar="COMMAND")

    t = sub.add_parser("tune", help="run (or resume) a hyperparameter search", description=_TUNE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", nargs="?", help="study YAML (default: the built-in LoRA study on smollm2-135m)")
    t.add_argument("--study-dir", help="study folder (default: runs/<config name>)")
    t.add_argument("--optimizer", help="nomad, tpe, gp, cmaes, nsga2, random, grid, or an Optuna sampler import path")
    t.add_argument("--budget", type=int, help="finished evaluations in the study, across runs")
    t.add_argument("--parallel", type=int, help="trials run at once")
    t.add_argument("--seed", type=int, help="optimizer seed")
    _add_run_arguments(t)
    t.add_argument("--new", action="store_true", help="start over if the folder holds a different study")
    t.set_defaults(func=cmd_tune)

    w = sub.add_parser("worker", help="join a study in a shared store and run its trials beside other workers",
                       description=_WORKER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("config", help="study YAML (the same file on every worker)")
    w.add_argument(
        "--storage", help="shared store URL, e.g. postgresql://user@host/db (default: the config's `storage`)"
    )
    w.add_argument("--study-dir", help="this worker's folder for trial files (default: runs/<config name>)")
    w.add_argument("--parallel", type=int, help="trials this worker runs at once")
    _add_run_arguments(w)
    w.set_defaults(func=cmd_worker)

    s = sub.add_parser("status", help="every trial of a study, in order", description=_STATUS_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("study_dir", metavar="DIR", help="study folder")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="table (default), csv (one column per hyperparameter and metric) or json")
    s.add_argument("--json", action="store_const", const="json", dest="format", help="the same as --format json")
    s.set_defaults(func=cmd_status)

    b = sub.add_parser("best", help="the best trials of a study")
    b.add_argument("study_dir", metavar="DIR", help="study folder")
    b.add_argument("--top", type=int, help="how many (default 1; with several objectives, the whole Pareto front)")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.set_defaults(func=cmd_best)

    e = sub.add_parser("export", help="write a trial's LoRA adapter (PEFT format) or the merged model")
    e.add_argument("study_dir", metavar="DIR", help="study folder")
    e.add_argument("--out", required=True, help="destination folder")
    e.add_argument("--trial", type=int, help="trial number (default: the best trial)")
    e.add_argument("--merge", action="store_true", help="fold the adapter into the base model and save the whole model")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser("dashboard", help="open a study in optuna-dashboard, with each trial's logs and adapter",
                       description=_DASHBOARD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("study_dir", metavar="DIR", help="study folder")
    d.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")
    d.set_defaults(func=cmd_dashboard)

    from lorahpo.evaluation.cli import add_arguments as add_evaluation
    from lorahpo.preference.cli import add_arguments as add_preference
    from lorahpo.report.cli import add_arguments as add_report

    add_evaluation(sub)
    add_report(sub)
    add_preference(sub)
    return p


_TUNE_HELP = """\
Run a hyperparameter search. The study folder keeps the config, the store (study.db) and one
folder per trial. Running the same command again resumes; the budget counts every finished
evaluation in the study. Ctrl-C stops cleanly.

examples:
  lorahpo tune                                  # built-in LoRA study (smollm2-135m, CPU-sized)
  lorahpo tune examples/toy.yaml --budget 40    # a synthetic objective, seconds per trial
  lorahpo tune my.yaml --optimizer tpe --parallel 4
"""


_STATUS_HELP = """\
Every trial of a study, in order: status, objective, in-trial evaluators against the base model,
constraints, duration, hyperparameters and the reason of a failure; then, for a LoRA study, what
its training data gave (rows read, used, malformed, truncated; the split).

formats:
  table  for people (default)
  csv    one row per trial: number, status, value, duration_s, params_<name>..., metrics_<name>...,
         reason, fallback, start, end
  json   a list of trials, each with its params and metrics as objects
"""


_DASHBOARD_HELP = """\
Serve optuna-dashboard for a study on http://127.0.0.1:PORT/dashboard/ (this machine only; reach
it from elsewhere through an SSH tunnel) until Ctrl-C. It reads the study's store and its artifact
folder (DIR/artifacts), so each trial lists its stdout.log, stderr.log, train_log.jsonl and
result.json, and its adapter.zip when the adapter was kept, each a link to download.
Needs the dashboard extra: pip install 'lorahpo[dashboard]'.

example:
  lorahpo dashboard runs/lora --port 8081
"""


_WORKER_HELP = """\
Run trials of a study whose store is shared (PostgreSQL, or SQLite on one machine) until the
store holds the budget. Start as many workers as you like, on any machines; each asks the store
for its next trial, so they never evaluate the same trial twice. A worker killed mid-trial
leaves that trial to be taken as interrupted after 30 s, and the budget to the others.

Only optimizers whose state lives in the store can be shared: tpe, gp, nsga2, random, grid (and
Optuna samplers). NOMAD keeps its state in one process: run one `lorahpo tune` with
`--executor ray` to spread its trials instead.

example:
  lorahpo worker study.yaml --storage postgresql://lorahpo@db-host/lorahpo --parallel 2
"""


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=["local", "ray"], help="where trials run (default: local subprocesses)")
    p.add_argument("--ray-address", help="Ray cluster of the ray executor: auto, HOST:PORT or ray://HOST:PORT")


def cmd_tune(args: argparse.Namespace) -> int:
    from lorahpo import api

    overrides = {"optimizer": args.optimizer, "budget": args.budget, "seed": args.seed, **_run_overrides(args)}
    conf, default_dir = api.study_config(args.config, **overrides)
    return _run_study(conf, Path(args.study_dir) if args.study_dir else default_dir, new=args.new)


def cmd_worker(args: argparse.Namespace) -> int:
    from lorahpo import api

    conf, default_dir = api.study_config(args.config, storage=args.storage, **_run_overrides(args))
    if conf.storage is None:
        raise UserError("a worker needs a shared store: set `storage:` in the config or give --storage URL")
    if conf.optimizer == "nomad":
        raise UserError(
            "nomad keeps its state in one process and cannot be shared by workers; "
            "run one `lorahpo tune --executor ray` to spread its trials"
        )
    return _run_study(conf, Path(args.study_dir) if args.study_dir else default_dir, new=False)


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"parallel": args.parallel, "executor": args.executor}
    if args.ray_address:
        out["ray"] = {"address": args.ray_address}
    return out


def _run_study(conf: Any, study_dir: Path, *, new: bool) -> int:
    from lorahpo import api
    from lorahpo.progress import fmt_params

    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops as cleanly as Ctrl-C
    results = api.tune(conf, study_dir, new=new)
    summary = results.run
    assert summary is not None
    metric = conf.objective.metric_name
    if summary.stopped == "interrupted":
        print(
            f"interrupted: {summary.finished}/{summary.budget} finished; run the same command to resume",
            file=sys.stderr,
        )
    elif summary.stopped == "exhausted":
        print("the optimizer has no new point to propose: the search space is exhausted", file=sys.stderr)
    print(
        f"finished {summary.finished}/{summary.budget} evaluations "
        f"({summary.new_trials} new, {summary.wall_s:.0f} s)"
    )
    if summary.best is not None:
        top = summary.best
        print(f"best     {metric} = {top.value:.6g}  (trial {top.number})  {fmt_params(top.params)}")
    if summary.x0 is not None:
        x0_value = f"{summary.x0.value:.6g}" if summary.x0.value is not None else summary.x0.status
        print(f"start    {metric} = {x0_value}  (trial {summary.x0.number})  {fmt_params(summary.x0.params)}")
    if conf.evaluators:
        print(_against_base(conf, summary))
    if summary.best is not None and (summary.best.directory / "adapter").exists():
        print(f"adapter  {summary.best.directory / 'adapter'}")
    if conf.objective.secondary:
        names = ", ".join(conf.objective.metric_names)
        print(f"pareto   {len(results.pareto_front)} trial(s) on the front of {names}: lorahpo best {study_dir}")
    return EXIT_INTERRUPTED if summary.stopped == "interrupted" else 0


def _against_base(conf: Any, summary: Any) -> str:
    """The base model, the start point and the best trial side by side on the headline metrics."""
    names = ["validation_loss", *conf.evaluators]
    rows: list[tuple[str, dict[str, float]]] = []
    some = summary.best or summary.x0
    if some is not None:
        base = {"validation_loss": some.metrics.get("initial_validation_loss", float("nan"))}
        base.update({n: some.metrics.get(f"{n}_base", float("nan")) for n in names[1:]})
        rows.append(("base model", base))
    for label, record in (("start", summary.x0), ("best", summary.best)):
        if record is not None:
            rows.append((f"{label} (trial {record.number})", record.metrics))
    if conf.constraints:
        bounds = ", ".join(f"{m} <= {b:g}" for m, b in conf.constraints.items())
        rows_text = f"best meets {bounds}\n" if summary.best is not None else ""
    else:
        rows_text = ""
    width = max(len(label) for label, _ in rows) if rows else 10
    lines = [" " * width + "".join(f"  {n:>16}" for n in names)]
    for label, metrics in rows:
        cells = "".join(f"  {_cell(metrics.get(n)):>16}" for n in names)
        lines.append(f"{label:<{width}}{cells}")
    return rows_text + "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.4f}"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_dashboard(args: argparse.Namespace) -> int:
    from lorahpo.extras import require

    require("dashboard")
    from optuna_dashboard import run_server

    from lorahpo.artifacts import artifact_store
    from lorahpo.study import Study

    study = Study.load(args.study_dir)
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, not {args.port}")
    print(f"optuna-dashboard: http://127.0.0.1:{args.port}/dashboard/ (Ctrl-C stops it)", flush=True)
    try:
        run_server(study.storage_url, host="127.0.0.1", port=args.port, artifact_store=artifact_store(study.directory))
    except KeyboardInterrupt:
        pass
    except OSError as e:  # the port is taken
        raise UserError(f"cannot serve on 127.0.0.1:{args.port}: {e.strerror or e}") from None
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from collections import Counter

    from lorahpo.progress import fmt_evaluator, fmt_params
    from lorahpo.study import Study, dump_records

    study = Study.load(args.study_dir)
    conf = study.config
    records = study.records()
    if args.format == "json":
        print(dump_records(records))
        return 0
    if args.format == "csv":
        import csv

        from lorahpo.result import records_table

        columns, rows = records_table(records)
        writer = csv.DictWriter(sys.stdout, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.study_dir}: {study.finished_count()}/{conf.budget} finished")
    # Evaluators and constraints come right after the objective: what a trial traded for it.
    columns = ["#", "status", conf.objective.metric_name, *(f"{n} (vs base)" for n in conf.evaluators),
               *(f"{m} <= {b:g}" for m, b in conf.constraints.items()), "duration", "hyperparameters", "reason"]
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in records:
        table.add_row(
            str(r.number),
            r.status,
            f"{r.value:.6g}" if r.value is not None else "",
            *(fmt_evaluator(r.metrics, n) if r.metrics else "" for n in conf.evaluators),
            *(_constraint_cell(r.metrics.get(m), b) for m, b in conf.constraints.items()),
            f"{r.duration_s:.1f} s" if r.duration_s is not None else "",
            fmt_params(r.params),
            r.reason or "",
        )
    Console().print(table)
    fallbacks = Counter(r.fallback for r in records if r.fallback)
    if fallbacks:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(fallbacks.items()))
        print(f"{sum(fallbacks.values())} trial(s) sampled at random, the optimizer having no point ({why})")
    data = study.data_summary()
    if data is not None:
        print(data)
    return 0


def _constraint_cell(value: float | None, bound: float) -> str:
    """A constrained metric of one trial, marked when it is over the bound."""
    if value is None:
        return ""
    return f"{value:.4g}" + (" (over)" if value > bound else "")


def cmd_best(args: argparse.Namespace) -> int:
    from lorahpo.progress import fmt_params
    from lorahpo.study import Study, dump_records

    study = Study.load(args.study_dir)
    conf = study.config
    front = len(conf.objective.metric_names) > 1
    best = study.best(args.top or (len(study.records()) if front else 1))
    if args.json:
        print(dump_records(best))
        return 0
    if not best:
        print("no completed trial yet")
        return 1
    names = conf.objective.metric_names
    if len(names) > 1:
        print(f"Pareto front of {', '.join(names)}: {len(best)} trial(s), by {names[0]}")
    for r in best:
        values = ", ".join(f"{m} = {r.metrics[m]:.6g}" for m in names)
        print(f"trial {r.number}: {values}  {fmt_params(r.params)}")
        shown = set(names)
        for name in conf.evaluators:
            print("    " + _evaluator_line(r.metrics, name))
            shown.update((name, f"{name}_se", f"{name}_base", f"{name}_drop"))
        if conf.constraints:
            # study.best() returns feasible trials only: each of them meets every constraint.
            met = ", ".join(f"{m} = {r.metrics[m]:.4g} <= {b:g}" for m, b in conf.constraints.items())
            print(f"    meets {met}")
            shown.update(conf.constraints)
        extra = {k: v for k, v in r.metrics.items() if k not in shown}
        if extra:
            print("    " + json.dumps(extra))
    return 0


def _evaluator_line(metrics: dict[str, float], name: str) -> str:
    """``retention 0.41 ± 0.049 (base 0.43, drop 0.02)``: the value, its standard error, the base model's value."""
    if name not in metrics:
        return f"{name} -"
    text = f"{name} {metrics[name]:.4g}"
    if f"{name}_se" in metrics:
        text += f" ± {metrics[f'{name}_se']:.2g}"
    if f"{name}_base" in metrics and f"{name}_drop" in metrics:
        text += f" (base {metrics[f'{name}_base']:.4g}, drop {metrics[f'{name}_drop']:+.4g})"
    return text


def cmd_export(args: argparse.Namespace) -> int:
    from lorahpo import api

    out = api.export(args.study_dir, args.out, trial=args.trial, merge=args.merge)
    print(f"{'merged model' if args.merge else 'adapter'} written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
