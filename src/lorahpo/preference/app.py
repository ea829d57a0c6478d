"""The blind A/B web app: raters judge pairs of answers; a results page sums the votes up.

Pages are rendered on the server with autoescaping Jinja2 templates; the only script is a
static file that maps the keys a, b and t to the vote buttons.

Security:

* Model identities stay on the server: the vote form carries only a random pair id, which
  :class:`~lorahpo.preference.store.VoteStore` maps back to the models (for that rater only).
* Every POST carries a per-session token in a hidden field; it must equal the token in the
  signed session cookie (compared with :func:`hmac.compare_digest`), else 403.
* A Content-Security-Policy allows only this server's own scripts and styles, so even an
  escaping mistake could not run a script that a model wrote into an answer.
* Only requests addressed to an allowed host name are served (loopback names by default), so a
  web page that rebinds its own domain name to 127.0.0.1 cannot read the pages or the token.
* Bad requests get a short error page with a 4xx status, never a traceback.
"""

from __future__ import annotations

import hmac
import random
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lorahpo.preference.stats import percent, summarise, votes_csv
from lorahpo.preference.store import (
    ANSWERS_FILE,
    CHOICES,
    VOTES_FILE,
    AlreadyVoted,
    AnswerSet,
    UnknownPair,
    VoteStore,
    preference_dir,
    read_answers,
)

_HERE = Path(__file__).parent
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
# A name is shown on the results page and written to CSV: letters, digits and a little
# punctuation, starting with a letter or digit (so a spreadsheet never reads it as a formula).
_RATER_NAME = re.compile(r"\w[\w .'-]{0,39}")
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        (
            b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ),
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class _SecurityHeaders:
    """ASGI middleware that adds :data:`_SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    study_dir: str | Path,
    *,
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS,
    seed: int | None = None,
) -> Starlette:
    """Build the web app for one study folder.

    Args:
        study_dir: The study folder; answers are read from and votes written to its
            ``preference/`` folder.
        allowed_hosts: Host names the app answers to; ``("*",)`` for any.
        seed: Seed of pair choice and left/right order (for tests); random by default.
    """
    folder = preference_dir(study_dir)
    answers = AnswerSet(read_answers(folder / ANSWERS_FILE))
    store = VoteStore(folder / VOTES_FILE)
    rng = random.Random(seed)
    env = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["percent"] = percent
    templates = Jinja2Templates(env=env)

    def render(
        request: Request,
        template: str,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> Response:
        context.setdefault("csrf_token", _csrf_token(request))
        context.setdefault("rater", request.session.get("rater"))
        return templates.TemplateResponse(request, template, context, status_code=status_code, headers=headers)

    async def home(request: Request) -> Response:
        if request.session.get("rater"):
            return RedirectResponse("/vote", status_code=303)
        return render(request, "rater.html", study=Path(study_dir).name, models=len(answers.models))

    async def set_rater(request: Request) -> Response:
        form = await _checked_form(request)
        name = " ".join(str(form.get("name", "")).split())
        if not _RATER_NAME.fullmatch(name):
            return render(
                request, "rater.html", status_code=400, error="Use 1 to 40 letters, digits, spaces or . ' -", name=name
            )
        request.session["rater"] = name
        return RedirectResponse("/vote", status_code=303)

    async def sign_out(request: Request) -> Response:
        await _checked_form(request)
        request.session.pop("rater", None)
        return RedirectResponse("/", status_code=303)

    def vote_page(request: Request) -> Response:
        rater = request.session.get("rater")
        if not rater:
            return RedirectResponse("/", status_code=303)
        pair = store.next_pair(answers, rater, rng)
        cast = sum(v.rater == rater for v in store.votes())
        if pair is None:
            return render(request, "done.html", cast=cast, empty=not answers.items())
        return render(
            request,
            "vote.html",
            pair_id=pair.id,
            prompt=answers.prompts[pair.prompt_id],
            answer_a=answers.answer(pair.left, pair.prompt_id),
            answer_b=answers.answer(pair.right, pair.prompt_id),
            cast=cast,
        )

    async def cast_vote(request: Request) -> Response:
        form = await _checked_form(request)
        rater = request.session.get("rater")
        if not rater:
            raise HTTPException(403, "Enter your name before voting.")
        choice, pair_id = form.get("choice"), form.get("pair")
        if choice not in CHOICES or not isinstance(pair_id, str):
            raise HTTPException(400, "The vote needs a pair and a choice of A, B or tie.")
        try:
            await run_in_threadpool(store.record_vote, pair_id, rater, choice)
        except UnknownPair:
            raise HTTPException(404, "This pair was not shown to you.") from None
        except AlreadyVoted:
            raise HTTPException(409, "This pair already has your vote.") from None
        return RedirectResponse("/vote", status_code=303)

    async def vote(request: Request) -> Response:
        # One route for both methods, so that other methods get a 405 that allows GET and POST.
        if request.method == "POST":
            return await cast_vote(request)
        return await run_in_threadpool(vote_page, request)

    def results(request: Request) -> Response:
        return render(request, "results.html", summary=summarise(store.votes()))

    def results_csv(request: Request) -> Response:
        return PlainTextResponse(
            votes_csv(store.votes()),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": 'attachment; filename="votes.csv"'},
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code < 500:
            status, detail, headers = exc.status_code, exc.detail, exc.headers  # headers: e.g. Allow on a 405
        else:
            status, detail, headers = 500, "Something went wrong.", None
        # Error pages never touch the session: an unexpected error may come from it.
        return render(request, "error.html", status, headers, status=status, detail=detail, csrf_token="", rater=None)

    return Starlette(
        routes=[
            Route("/", home),
            Route("/rater", set_rater, methods=["POST"]),
            Route("/sign-out", sign_out, methods=["POST"]),
            Route("/vote", vote, methods=["GET", "POST"]),
            Route("/results", results),
            Route("/results.csv", results_csv),
            Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
        ],
        middleware=[
            Middleware(_SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
            # A fresh key signs the session cookies of each start: raters enter their name again after a restart.
            Middleware(SessionMiddleware, secret_key=secrets.token_hex(32), same_site="strict"),
        ],
        exception_handlers={HTTPException: http_error, Exception: http_error},
        max_body_size=64 * 1024,
    )


def _csrf_token(request: Request) -> str:
    """This session's anti-forgery token, created on first use."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


async def _checked_form(request: Request) -> FormData:
    """The posted form, after checking its anti-forgery token.

    Raises:
        HTTPException: 400 for a body that is not a small form, 403 for a missing or wrong token.
    """
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise HTTPException(415, "Send the form as application/x-www-form-urlencoded.")
    form = await request.form(max_files=0, max_fields=10)
    expected = request.session.get("csrf")
    sent = form.get("csrf")
    if not isinstance(expected, str) or not isinstance(sent, str):
        raise HTTPException(403, "The form has expired; reload the page and try again.")
    if not hmac.compare_digest(sent.encode(), expected.encode()):
        raise HTTPException(403, "The form has expired; reload the page and try again.")
    return form


def serve(study_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, seed: int | None = None) -> None:
    """Serve the app until Ctrl-C.

    Args:
        study_dir: The study folder.
        host: Interface to bind; the default keeps the app on this machine.
        port: TCP port.
        seed: Seed of pair choice and left/right order; random by default.
    """
    import uvicorn

    app = create_app(study_dir, allowed_hosts=LOOPBACK_HOSTS if host in LOOPBACK_HOSTS else ("*",), seed=seed)
    print(f"Preference evaluation of {study_dir} on http://{host}:{port}/  (Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
