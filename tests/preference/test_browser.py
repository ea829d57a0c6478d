"""A real browser votes through the real server: headless Debian Chromium driven by Playwright.

The server is started as a user starts it (the ``preference serve`` command in a subprocess)
and stopped with Ctrl-C (SIGINT), which must end it cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from ci import unavailable
from servers import free_port, wait_for_port

from lorahpo.preference.stats import percent, summarise
from lorahpo.preference.store import VoteStore

from .conftest import SERVE, XSS, votes_db

CHROMIUM = Path("/usr/bin/chromium")
# Set to a PNG path to keep a picture of the results page.
SCREENSHOT = os.environ.get("LORAHPO_RESULTS_SCREENSHOT")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# What the raters prefer, by the first word of an answer ("Excellent answer to q2. ...").
QUALITY = {"Excellent": 3, "Plain": 2, "Poor": 1}
MODEL_OF = {"Excellent": "zeta-best", "Plain": "zeta-base", "Poor": "zeta-worst"}


@pytest.fixture(autouse=True, scope="module")
def chromium() -> None:
    """Every test here needs Debian's Chromium: a skip where it is absent, a failure under CI."""
    if not CHROMIUM.exists():
        unavailable(f"needs Debian's chromium at {CHROMIUM}")


@pytest.fixture
def server(study):
    """The raters' URL and the organiser's link printed by ``preference serve``; stopped with SIGINT afterwards."""
    port = free_port()
    proc = subprocess.Popen(
        # A fixed pair order: which items carol (the contrary rater) repeats decides the ranking.
        [sys.executable, "-c", SERVE, "preference", "serve", str(study), "--port", str(port), "--seed", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    printed = [proc.stdout.readline() for _ in range(3)]  # the title, the raters' and the organiser's links
    assert printed[1].split() == ["raters:", f"http://127.0.0.1:{port}/"], printed
    wait_for_port(proc, port, "server")
    yield f"http://127.0.0.1:{port}", printed[2].split()[1]
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A page in a fresh browser context: no cookies from other tests."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def sign_in(page, url: str, name: str) -> None:
    page.goto(url + "/")
    page.fill("input[name=name]", name)
    page.click("text=Start rating")
    page.wait_for_url("**/vote")


def cast(page, votes: int, keyboard: bool, contrary: bool = False) -> list[tuple[tuple, str | None]]:
    """Vote ``votes`` times, preferring the better answer (the worse one if ``contrary``).

    Alternates clicks and keys when ``keyboard``. Returns what was meant: (pair of models, winner).
    """
    meant = []
    for n in range(votes):
        texts = page.locator(".answer .text").all_inner_texts()
        models = [MODEL_OF[text.split()[0]] for text in texts]
        quality = [QUALITY[text.split()[0]] for text in texts]
        if "q3" in texts[0]:
            choice, winner = "t", None  # everyone calls q3 a tie
        else:
            better = quality.index(max(quality)) if not contrary else quality.index(min(quality))
            choice, winner = "ab"[better], models[better]
        meant.append((tuple(sorted(models)), winner))
        with page.expect_navigation():
            if keyboard and n % 2:
                page.keyboard.press(choice)
            else:
                page.click({"a": "text=A is better", "b": "text=B is better", "t": "button:has-text('Tie')"}[choice])
    return meant


def table(page, selector: str) -> list[list[str]]:
    return [row.locator("td").all_inner_texts() for row in page.locator(f"{selector} tbody tr").all()]


def test_raters_vote_in_a_real_browser_and_the_results_match_the_stored_votes(server, page, study, browser):
    server, organiser_link = server
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    # Twelve items (4 prompts x 3 model pairs): alice and bob cover them all, carol repeats four.
    sign_in(page, server, "alice")
    meant = cast(page, 6, keyboard=False)
    page.click("text=Switch rater")
    sign_in(page, server, "bob")
    meant += cast(page, 6, keyboard=True)
    page.click("text=Switch rater")
    sign_in(page, server, "carol")
    meant += cast(page, 4, keyboard=True, contrary=True)

    votes = VoteStore(votes_db(study)).votes()
    assert len(votes) == 16
    assert Counter((tuple(sorted((v.left, v.right))), v.winner) for v in votes) == Counter(meant)
    assert Counter(v.rater for v in votes) == {"alice": 6, "bob": 6, "carol": 4}

    # A rater's pages do not lead to the results, and the results refuse a rater.
    assert page.locator("a[href*=results]").count() == 0 and "You have cast 4 of 12 votes." in page.content()
    assert page.goto(server + "/results").status == 403

    # The organiser opens the printed link in their own browser.
    organiser = browser.new_context()
    page = organiser.new_page()
    page.goto(organiser_link)
    assert page.url == server + "/results"
    summary = summarise(votes)
    assert page.inner_text("#totals") == "16 votes by 3 raters"
    assert table(page, "#win-rates") == [
        [
            r.model,
            str(r.wins),
            str(r.ties),
            str(r.losses),
            str(r.votes),
            percent(r.rate),
            f"{percent(r.low)} – {percent(r.high)}",
        ]
        for r in summary.win_rates
    ]
    assert table(page, "#ranking") == [[str(s.rank), s.model, f"{s.strength:.3f}"] for s in summary.ranking]
    assert table(page, "#agreement") == [
        [a.rater, str(a.votes), str(a.items), str(a.agreed), percent(a.rate)] for a in summary.agreement
    ]
    assert table(page, "#ranking")[0][1] == "zeta-best"
    alpha = summary.alpha
    assert table(page, "#alpha") == [[f"{alpha.value:.3f}", str(alpha.items), str(alpha.values)]]
    assert table(page, "#votes-needed")[1] == ["60.0%", "194"]
    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT, full_page=True)
    organiser.close()
    assert dialogs == []


def test_xss_in_an_answer_renders_as_text(server, page):
    sign_in(page, server[0], "dave")
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    for _ in range(12):  # every item comes once; the payload is in two of them
        texts = page.locator(".answer .text").all_inner_texts()
        if any(XSS in text for text in texts):
            break
        with page.expect_navigation():
            page.keyboard.press("t")
    else:
        pytest.fail("the answer with the payload was never shown")
    assert page.locator("script").count() == 1  # only keys.js
    assert dialogs == []


def test_a_vote_without_a_valid_token_is_refused(server, page, study):
    server = server[0]
    sign_in(page, server, "erin")
    page.eval_on_selector(".choices input[name=csrf]", "el => el.value = 'forged'")
    with page.expect_navigation():
        page.click("text=A is better")
    assert "Error 403" in page.inner_text("main")

    page.goto(server + "/vote")
    pair = page.get_attribute("input[name=pair]", "value")
    response = page.request.post(server + "/vote", form={"pair": pair, "choice": "A"})
    assert response.status == 403
    assert VoteStore(votes_db(study)).votes() == []
