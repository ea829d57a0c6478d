"""Command-line interface of the preference evaluation: ``generate`` and ``preference serve|invite|results``.

Heavy modules (torch, the web stack) are imported inside the commands, so registering these
commands costs nothing at start-up.
"""

from __future__ import annotations

import argparse
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorahpo.errors import UserError
from lorahpo.extras import require
from lorahpo.files import write_atomic
from lorahpo.preference.answers import ANSWERS_FILE, preference_dir
from lorahpo.preference.store import VOTES_FILE

if TYPE_CHECKING:
    from lorahpo.preference.generate import Template


def add_arguments(subparsers: Any) -> None:
    """Register ``generate`` and ``preference`` on the subparsers of the main ``lorahpo`` parser.

    Each command stores its handler as ``func`` (``args.func(args)`` runs it).
    """
    gen = subparsers.add_parser(
        "generate",
        help="write the answers of several models to a set of prompts",
        description="Write each model's answer to each prompt into DIR/preference/answers.jsonl "
        "(resumable: answers already there are kept).",
    )
    gen.add_argument("study_dir", metavar="DIR", type=Path, help="study folder")
    gen.add_argument(
        "--models",
        required=True,
        help="comma-separated models, e.g. base,best,x0,trial:7 (base model, best trial, "
        "the starting point, trial number 7)",
    )
    gen.add_argument("--prompts", required=True, metavar="FILE|builtin", help="JSONL with a 'prompt' field, or builtin")
    gen.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens (default 256)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), else sampling")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    gen.add_argument(
        "--template",
        choices=["chat", "alpaca"],
        help="prompt rendering (default: the template the study trained with, else alpaca)",
    )
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    gen.set_defaults(func=cmd_generate)

    pref = subparsers.add_parser(
        "preference",
        help="blind human preference evaluation (web app and results)",
        description="Raters compare the answers of two hidden models side by side.",
    )
    commands = pref.add_subparsers(dest="preference_command", metavar="COMMAND", required=True)
    serve = commands.add_parser("serve", help="serve the rating web app", description="Serve the rating web app.")
    serve.add_argument("study_dir", metavar="DIR", type=Path, help="study folder")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve.add_argument("--seed", type=int, help="seed of the pair order shown to raters (default: random)")
    serve.add_argument(
        "--results-token",
        metavar="TOKEN",
        help="the organiser's secret that opens the results page (default: a new random one, printed at start)",
    )
    serve.set_defaults(func=cmd_serve)

    invite = commands.add_parser(
        "invite",
        help="create raters who join by a personal link",
        description="Create N raters with personal invite links and print the links. Once a study has "
        "invites, raters can no longer join by typing a name.",
    )
    invite.add_argument("study_dir", metavar="DIR", type=Path, help="study folder")
    invite.add_argument("--raters", type=int, required=True, metavar="N", help="number of raters to invite (1-1000)")
    invite.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        help="address raters open, as the server prints it (default http://127.0.0.1:8000)",
    )
    invite.set_defaults(func=cmd_invite)

    results = commands.add_parser(
        "results",
        help="print win rates, ranking, agreement and votes needed",
        description="Print the results (for the organiser: it reads DIR/preference/votes.db, which only its "
        "owner can read).",
    )
    results.add_argument("study_dir", metavar="DIR", type=Path, help="study folder")
    results.add_argument("--csv", type=Path, metavar="PATH", help="also write the votes to this CSV file")
    results.set_defaults(func=cmd_results)


def cmd_generate(args: argparse.Namespace) -> int:
    """``lorahpo generate``: resolve the model names, then generate the missing answers."""
    from lorahpo.preference.generate import GenModel, generate_answers, load_prompts
    from lorahpo.study import resolve_model_spec

    names = [name.strip() for name in args.models.split(",") if name.strip()]
    if len(set(names)) != len(names) or not names:
        raise UserError("--models needs distinct, comma-separated names")
    require("lora")
    try:
        prompts = load_prompts(args.prompts)
    except OSError as exc:
        raise UserError(f"--prompts: cannot read {args.prompts}: {exc.strerror}") from None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    models = {name: GenModel(*resolve_model_spec(args.study_dir, name)) for name in names}
    out = preference_dir(args.study_dir) / ANSWERS_FILE
    written = generate_answers(
        models,
        prompts,
        out,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        template=args.template or _study_template(args.study_dir),
        device=args.device,
    )
    print(f"{written} new answers in {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``lorahpo preference serve``: run the web app until Ctrl-C."""
    answers = preference_dir(args.study_dir) / ANSWERS_FILE
    if not answers.is_file():
        raise UserError(f"{answers} not found; run `lorahpo generate {args.study_dir} ...` first")
    token = args.results_token
    if token is not None and not _TOKEN.fullmatch(token):
        raise UserError("--results-token: use 16 to 128 of the characters A-Z a-z 0-9 _ -")
    require("web")
    from lorahpo.preference.app import is_loopback, serve
    from lorahpo.preference.store import StoreError, VoteStore

    try:
        notice = VoteStore(preference_dir(args.study_dir) / VOTES_FILE).notice
    except StoreError as exc:
        raise UserError(str(exc)) from None
    if notice:
        print(notice)
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach it can vote under any free name")
    token = token or secrets.token_urlsafe(24)
    serve(args.study_dir, results_token=token, host=args.host, port=args.port, seed=args.seed)
    return 0


def cmd_invite(args: argparse.Namespace) -> int:
    """``lorahpo preference invite``: record N invited raters and print their links."""
    from lorahpo.preference.store import StoreError, VoteStore

    answers = preference_dir(args.study_dir) / ANSWERS_FILE
    if not answers.is_file():
        raise UserError(f"{answers} not found; run `lorahpo generate {args.study_dir} ...` first")
    if not 1 <= args.raters <= 1000:
        raise UserError(f"--raters must be between 1 and 1000, not {args.raters}")
    if not re.fullmatch(r"https?://[^\s/?#]+", args.url.rstrip("/")):
        raise UserError(f"--url: expected http://HOST:PORT, not {args.url!r}")
    try:
        store = VoteStore(preference_dir(args.study_dir) / VOTES_FILE)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    if store.notice:
        print(store.notice)
    for rater, token in store.add_invites(args.raters):
        print(f"{rater.name}\t{args.url.rstrip('/')}/join/{token}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    """``lorahpo preference results``: print what the results page shows; optionally write CSV."""
    from rich.console import Console

    from lorahpo.preference.stats import percent, summarise, votes_csv
    from lorahpo.preference.store import StoreError, VoteStore

    path = preference_dir(args.study_dir) / VOTES_FILE
    if not path.is_file():
        raise UserError(f"{path} not found; no votes have been cast")
    if args.csv and not args.csv.parent.is_dir():
        raise UserError(f"--csv: folder {args.csv.parent} does not exist")
    try:
        store = VoteStore(path)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    votes = store.votes()
    summary = summarise(votes)
    console = Console()
    if store.notice:
        console.print(store.notice)
    console.print(f"{summary.votes} votes by {summary.raters} raters in {path}")

    rates = _table("Win rates (tie = half a win)", ["Model"], ["Wins", "Ties", "Losses", "Votes", "Win rate", "95% CI"])
    for r in summary.win_rates:
        ci = f"{percent(r.low)} – {percent(r.high)}"
        rates.add_row(r.model, str(r.wins), str(r.ties), str(r.losses), str(r.votes), percent(r.rate), ci)
    ranking = _table("Bradley–Terry ranking", ["Rank", "Model"], ["Strength"])
    for s in summary.ranking:
        ranking.add_row(str(s.rank), s.model, f"{s.strength:.3f}")
    agreement = _table("Rater agreement", ["Rater"], ["Votes", "Items compared", "Agreed", "Agreement"])
    for a in summary.agreement:
        agreement.add_row(a.rater, str(a.votes), str(a.items), str(a.agreed), percent(a.rate))
    alpha = summary.alpha
    needed = _table("Votes needed to tell a win rate from 50% (95% confidence, 80% power)", [], ["Win rate", "Votes"])
    for n in summary.votes_needed:
        needed.add_row(percent(n.rate), str(n.votes))
    for table in (rates, ranking, agreement):
        console.print(table)
    value = "undefined" if alpha.value is None else f"{alpha.value:.3f}"
    console.print(f"Krippendorff's alpha: {value} ({alpha.items} items judged by 2+ raters, {alpha.values} votes)")
    console.print(needed)

    if args.csv:
        write_atomic(args.csv, votes_csv(votes), mode=0o600)
        console.print(f"votes written to {args.csv}")
    return 0


# What --results-token accepts: long enough not to be guessed, and safe in a URL as it is.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")


def _table(title: str, text_columns: list[str], number_columns: list[str]) -> Any:
    """A rich table with text columns on the left and right-aligned number columns."""
    from rich.table import Table

    table = Table(title=title)
    for name in text_columns:
        table.add_column(name)
    for name in number_columns:
        table.add_column(name, justify="right")
    return table


def _study_template(study_dir: Path) -> Template:
    """The prompt template the study trained with (``objective.lora.data.template``), else alpaca.

    Alpaca is also the default of the trial config's ``data.template``.
    """
    import yaml

    try:
        config = yaml.safe_load((study_dir / "config.yaml").read_text(encoding="utf-8"))
        template = config["objective"]["lora"]["data"].get("template")
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return "alpaca"
    return "chat" if template == "chat" else "alpaca"
