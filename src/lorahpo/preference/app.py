"""The blind A/B web app: raters judge pairs of answers; the organiser reads the results.

Pages are rendered on the server with autoescaping Jinja2 templates; the only script is a
static file that maps the keys a, b and t to the vote buttons.

Security (the threat model is in docs/preference.md):

* Model identities stay on the server: the vote form carries only a random assignment id,
  which :class:`~lorahpo.preference.store.VoteStore` maps back to the models (for that rater
  only). One comparison is handed to a rater once and takes one vote: the store enforces it.
* The results (``/results``, ``/results.csv``) need the organiser's token, printed when the
  server starts; rater pages never link to them, and a rater sees only their own progress.
* A rater is a server-side record: the signed session cookie holds only a random session id,
  which signing out ends for good, and a name in use in another browser is refused.
* Every POST carries a per-session token in a hidden field; it must equal the token in the
  signed session cookie (compared with :func:`hmac.compare_digest`), else 403. Signing in and
  out replaces it.
* A Content-Security-Policy allows only this server's own scripts and styles, so even an
  escaping mistake could not run a script that a model wrote into an answer.
* On a loopback interface only requests addressed to a loopback host name are served, so a web
  page that rebinds its own domain name to 127.0.0.1 or ::1 cannot read the pages or the token.
* Bad requests get a short error page with a 4xx status, never a traceback.
"""

from __future__ import annotations

import hmac
import ipaddress
import random
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

from lorahpo.preference.answers import ANSWERS_FILE, AnswerSet, preference_dir, read_answers
from lorahpo.preference.names import RULE
from lorahpo.preference.stats import percent, summarise, votes_csv
from lorahpo.preference.store import (
    CHOICES,
    SESSION_IDLE,
    VOTES_FILE,
    AlreadyVoted,
    Rater,
    RaterBusy,
    UnknownPair,
    VoteStore,
)

_HERE = Path(__file__).parent
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


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only: ``localhost``, 127.0.0.0/8 or ::1 (brackets allowed)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def base_url(host: str, port: int) -> str:
    """The URL of the server, with an IPv6 address in brackets (``http://[::1]:8000``)."""
    return f"http://[{host.strip('[]')}]:{port}" if ":" in host else f"http://{host}:{port}"


def create_app(
    study_dir: str | Path,
    *,
    results_token: str,
    host: str = "127.0.0.1",
    seed: int | None = None,
) -> Starlette:
    """Build the web app for one study folder.

    Args:
        study_dir: The study folder; answers are read from and votes written to its
            ``preference/`` folder.
        results_token: The organiser's secret: ``/results?token=...`` opens the results.
        host: The interface the server binds. On a loopback one, only requests addressed to
            a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``, ``host``) are served;
            on any other, requests to any name.
        seed: Seed of assignment choice and left/right order (for tests); random by default.
    """
    folder = preference_dir(study_dir)
    answers = AnswerSet(read_answers(folder / ANSWERS_FILE))
    store = VoteStore(folder / VOTES_FILE)
    store.end_all_sessions()  # the cookies of the last run are signed with a key that is gone
    items = len(answers.items())
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
        context.setdefault("rater", None)
        return templates.TemplateResponse(request, template, context, status_code=status_code, headers=headers)

    def signed_in(request: Request) -> Rater | None:
        """The rater of this browser's session; a session that has ended is forgotten."""
        session = request.session.get("sid")
        if not isinstance(session, str):
            return None
        rater = store.session_rater(session)
        if rater is None:
            request.session.clear()
        return rater

    def begin_session(request: Request, rater: Rater, *, take_over: bool) -> Response:
        """Sign ``rater`` in on a fresh session and anti-forgery token."""
        old = request.session.get("sid")
        if isinstance(old, str):
            store.end_session(old)
        session = store.start_session(rater, take_over=take_over)
        request.session.clear()
        request.session["sid"] = session
        return RedirectResponse("/vote", status_code=303)

    def home(request: Request) -> Response:
        if signed_in(request):
            return RedirectResponse("/vote", status_code=303)
        invites = store.has_invites()
        return render(request, "rater.html", study=Path(study_dir).name, models=len(answers.models), invites=invites)

    async def set_rater(request: Request) -> Response:
        form = await _checked_form(request)
        return await run_in_threadpool(set_rater_by_name, request, str(form.get("name", "")))

    def set_rater_by_name(request: Request, typed: str) -> Response:
        page: dict[str, Any] = {"study": Path(study_dir).name, "models": len(answers.models), "name": typed}
        if store.has_invites():
            raise HTTPException(403, "This study admits raters by invite link only.")
        try:
            rater = store.rater(typed)
        except ValueError:
            return render(request, "rater.html", status_code=400, error=RULE, **page)
        try:
            return begin_session(request, rater, take_over=False)
        except RaterBusy:
            minutes = round(SESSION_IDLE / 60)
            error = (
                f"{rater.name} is rating in another browser. Use “Switch rater” there first, "
                f"or wait {minutes} minutes after its last page."
            )
            return render(request, "rater.html", status_code=409, error=error, **page)

    def invitation(request: Request) -> Response:
        token = request.path_params["token"]
        rater = store.invited_rater(token)
        if rater is None:
            raise HTTPException(404, "This invite link is not valid.")
        return render(request, "join.html", invited=rater.name, token=token)

    async def join(request: Request) -> Response:
        form = await _checked_form(request)
        token = form.get("token")
        rater = await run_in_threadpool(store.invited_rater, token) if isinstance(token, str) else None
        if rater is None:
            raise HTTPException(404, "This invite link is not valid.")
        # The link proves who it is: a browser signed in elsewhere with it is signed out.
        return await run_in_threadpool(begin_session, request, rater, take_over=True)

    async def sign_out(request: Request) -> Response:
        await _checked_form(request)
        session = request.session.get("sid")
        if isinstance(session, str):
            await run_in_threadpool(store.end_session, session)
        request.session.clear()  # a new anti-forgery token comes with the next page
        return RedirectResponse("/", status_code=303)

    def vote_page(request: Request) -> Response:
        rater = signed_in(request)
        if rater is None:
            return RedirectResponse("/", status_code=303)
        assignment = store.next_assignment(answers, rater, rng)
        progress: dict[str, Any] = {"rater": rater.name, "cast": store.votes_cast(rater), "items": items}
        if assignment is None:
            return render(request, "done.html", empty=not items, **progress)
        return render(
            request,
            "vote.html",
            pair_id=assignment.id,
            prompt=answers.prompts[assignment.prompt_id],
            answer_a=answers.answer(assignment.left, assignment.prompt_id),
            answer_b=answers.answer(assignment.right, assignment.prompt_id),
            **progress,
        )

    def cast_vote(request: Request, form: FormData) -> Response:
        rater = signed_in(request)
        if rater is None:
            raise HTTPException(403, "Enter your name before voting.")
        choice, pair_id = form.get("choice"), form.get("pair")
        if choice not in CHOICES or not isinstance(pair_id, str):
            raise HTTPException(400, "The vote needs a pair and a choice of A, B or tie.")
        try:
            store.record_vote(pair_id, rater, choice)
        except UnknownPair:
            raise HTTPException(404, "This pair was not shown to you.") from None
        except AlreadyVoted:
            raise HTTPException(409, "This pair already has your vote.") from None
        return RedirectResponse("/vote", status_code=303)

    async def vote(request: Request) -> Response:
        # One route for both methods, so that other methods get a 405 that allows GET and POST.
        if request.method == "POST":
            form = await _checked_form(request)
            return await run_in_threadpool(cast_vote, request, form)
        return await run_in_threadpool(vote_page, request)

    def organiser(request: Request) -> bool:
        """Whether the request comes from the organiser: a valid ``?token=``, or a session that sent one."""
        token = request.query_params.get("token")
        if token is not None and hmac.compare_digest(token.encode(), results_token.encode()):
            request.session["organiser"] = True
            return True
        return request.session.get("organiser") is True

    def results(request: Request) -> Response:
        if not organiser(request):
            raise HTTPException(403, "The results are for the organiser of the study.")
        if "token" in request.query_params:  # keep the token out of the address bar and history
            return RedirectResponse("/results", status_code=303)
        return render(request, "results.html", summary=summarise(store.votes()), organiser=True)

    def results_csv(request: Request) -> Response:
        if not organiser(request):
            raise HTTPException(403, "The results are for the organiser of the study.")
        return PlainTextResponse(
            votes_csv(store.votes()),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": 'attachment; filename="votes.csv"', "cache-control": "no-store"},
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code < 500:
            status, detail, headers = exc.status_code, exc.detail, exc.headers  # headers: e.g. Allow on a 405
        else:
            status, detail, headers = 500, "Something went wrong.", None
        # Error pages never touch the session: an unexpected error may come from it.
        return render(request, "error.html", status, headers, status=status, detail=detail, csrf_token="", rater=None)

    allowed = ["localhost", "127.0.0.1", "[::1]", f"[{host.strip('[]')}]" if ":" in host else host]
    return Starlette(
        routes=[
            Route("/", home),
            Route("/rater", set_rater, methods=["POST"]),
            Route("/join/{token}", invitation),
            Route("/join", join, methods=["POST"]),
            Route("/sign-out", sign_out, methods=["POST"]),
            Route("/vote", vote, methods=["GET", "POST"]),
            Route("/results", results),
            Route("/results.csv", results_csv),
            Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
        ],
        middleware=[
            Middleware(_SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=allowed if is_loopback(host) else ["*"]),
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


def serve(
    study_dir: str | Path, *, results_token: str, host: str = "127.0.0.1", port: int = 8000, seed: int | None = None
) -> None:
    """Serve the app until Ctrl-C; print the raters' and the organiser's links first.

    Args:
        study_dir: The study folder.
        results_token: The organiser's secret (see :func:`create_app`).
        host: Interface to bind; the default keeps the app on this machine.
        port: TCP port.
        seed: Seed of assignment choice and left/right order; random by default.
    """
    import uvicorn

    app = create_app(study_dir, results_token=results_token, host=host, seed=seed)
    url = base_url(host, port)
    print(f"Preference evaluation of {study_dir} (Ctrl-C stops it)")
    print(f"  raters:    {url}/")
    print(f"  organiser: {url}/results?token={results_token}  (the results: keep this link to yourself)", flush=True)
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning")
