"""The web app through Starlette's test client: one vote per comparison, organiser-only results,
rater identity, forgery, bad requests, blindness, escaping, host names."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing

import pytest
from starlette.testclient import TestClient

from lorahpo.preference.app import base_url, create_app, is_loopback
from lorahpo.preference.store import VoteStore

from .conftest import MODELS, XSS, csrf_of, votes_db

TOKEN = "organiser-secret-0123456789"


@pytest.fixture
def app(study):
    return create_app(study, results_token=TOKEN, seed=0)


@pytest.fixture
def client(app) -> TestClient:
    return browser(app)


def browser(app, base_url: str = "http://127.0.0.1") -> TestClient:
    """A fresh browser: its own cookies."""
    return TestClient(app, base_url=base_url, raise_server_exceptions=False)


def sign_in(client: TestClient, name: str = "alice") -> str:
    """Enter a rater name; returns the vote page's HTML."""
    response = client.post("/rater", data={"name": name, "csrf": csrf_of(client.get("/").text)})
    assert response.status_code == 200 and response.url.path == "/vote", response.text
    return response.text


def pair_of(html: str) -> str:
    return html.split('name="pair" value="')[1].split('"')[0]


def vote(client: TestClient, html: str, choice: str = "A"):
    return client.post("/vote", data={"csrf": csrf_of(html), "pair": pair_of(html), "choice": choice})


def table_rows(html: str, table_id: str) -> list[list[str]]:
    """The cell texts of each body row of the table with id ``table_id``."""
    body = html.split(f'<table id="{table_id}">')[1].split("<tbody>")[1].split("</tbody>")[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL) for row in body.split("</tr>") if "<td" in row]


def assignments(study) -> int:
    with closing(sqlite3.connect(votes_db(study))) as conn:
        return conn.execute("SELECT count(*) FROM assignments").fetchone()[0]


def test_vote_page_hides_identities_and_escapes_answers(client, study):
    pages = []
    html = sign_in(client)
    while 'name="pair"' in html:
        pages.append(html)
        html = vote(client, html, "tie").text
    assert len(pages) == 12 and "You have judged every pair (12 votes)" in html
    for page in pages:
        assert not any(model in page for model in MODELS)
    xss_pages = [p for p in pages if "Poor answer to q1." in p]
    assert xss_pages and all(XSS not in p and "&lt;script&gt;alert(1)&lt;/script&gt;" in p for p in xss_pages)
    assert all("&lt;b&gt;something&lt;/b&gt;" in p for p in pages)  # prompts are escaped too


def test_reloading_shows_the_same_comparison_and_creates_nothing_more(client, study):
    """Case 1: 20 reloads (GET and HEAD) once handed out 20 pairs, several for one comparison."""
    first = pair_of(sign_in(client))
    for _ in range(10):
        assert pair_of(client.get("/vote").text) == first
        assert client.head("/vote").status_code == 200
    assert assignments(study) == 1
    assert vote(client, client.get("/vote").text).status_code == 200
    assert pair_of(client.get("/vote").text) != first and assignments(study) == 2


def test_two_tabs_get_one_vote_on_a_comparison(client, study):
    """Case 1: a second tab once got its own pair id for the same comparison, and both votes counted."""
    tab1 = sign_in(client)
    tab2 = client.get("/vote").text
    assert pair_of(tab1) == pair_of(tab2)
    assert vote(client, tab1, "A").status_code == 200
    second = vote(client, tab2, "B")
    assert second.status_code == 409 and "already has your vote" in second.text
    assert [v.choice for v in VoteStore(votes_db(study)).votes()] == ["A"]


def test_a_vote_is_stored_and_shown_to_the_organiser(client, study):
    html = sign_in(client)
    assert "You have cast 0 of 12 votes." in html
    response = vote(client, html, "A")
    assert response.status_code == 200 and response.url.path == "/vote"
    assert "You have cast 1 of 12 votes." in response.text
    [stored] = VoteStore(votes_db(study)).votes()
    assert (stored.rater, stored.choice) == ("alice", "A")

    organiser = browser(client.app)
    page = organiser.get(f"/results?token={TOKEN}")
    assert page.url.path == "/results" and not page.url.query  # the token leaves the address bar
    assert "1 vote by 1 rater" in page.text
    # Model, wins, ties, losses, votes, win rate: A (left) won the only vote.
    rates = {row[0]: row[1:6] for row in table_rows(page.text, "win-rates")}
    assert rates == {stored.left: ["1", "0", "0", "1", "100.0%"], stored.right: ["0", "0", "1", "1", "0.0%"]}
    assert table_rows(page.text, "alpha") == [["–", "0", "0"]]
    assert ["60.0%", "194"] in table_rows(page.text, "votes-needed")
    csv = organiser.get("/results.csv")
    assert csv.headers["content-type"].startswith("text/csv")
    header, row = csv.text.splitlines()
    assert header.endswith(",left_model,right_model,choice,winner")
    assert row.endswith(f",{stored.left},{stored.right},A,{stored.left}")


def test_raters_cannot_read_the_results(client, study):
    """Case 2: the results and the CSV once needed no session and were linked from the vote page."""
    html = vote(client, sign_in(client)).text
    for page in [client.get("/").text, client.get("/vote").text]:
        assert "/results" not in page
    for path in ["/results", "/results.csv", "/results?token=wrong", "/results.csv?token=" + TOKEN[:-1]]:
        response = client.get(path)
        assert response.status_code == 403 and "zeta" not in response.text
    while 'name="pair"' in html:  # the thank-you page does not link the results either
        html = vote(client, html, "tie").text
    assert "You have judged every pair" in html and "/results" not in html
    assert client.get(f"/results.csv?token={TOKEN}").status_code == 200  # the organiser's link, for a script


def test_a_second_browser_cannot_take_a_name_in_use(client, study):
    """Case 3: a second browser entering an existing name once voted on that rater's open pair."""
    sign_in(client, "alice")
    other = browser(client.app)
    for same in ["alice", "ALICE", "ａｌｉｃｅ"]:  # case and full-width letters: the same rater
        response = other.post("/rater", data={"name": same, "csrf": csrf_of(other.get("/").text)})
        assert response.status_code == 409 and "alice is rating in another browser" in response.text
    assert other.get("/vote").url.path == "/"
    client.post("/sign-out", data={"csrf": csrf_of(client.get("/vote").text)})
    assert "Rating as <strong>alice</strong>" in sign_in(other, "ＡＬＩＣＥ")  # free again, same record


def test_look_alike_names_are_refused(client):
    """Case 3: a Cyrillic а once made a second "alice"."""
    sign_in(client, "alice")
    other = browser(client.app)
    response = other.post("/rater", data={"name": "\u0430lice", "csrf": csrf_of(other.get("/").text)})
    assert response.status_code == 400 and "of one script" in response.text


def test_a_cookie_saved_before_switching_rater_no_longer_votes(client, study):
    """Case 3: a cookie kept from before "switch rater" once still voted, and the token survived."""
    html = sign_in(client, "alice")
    saved_cookie, old_token = client.cookies.get("session"), csrf_of(html)
    after = client.post("/sign-out", data={"csrf": old_token})
    assert after.url.path == "/" and 'name="name"' in after.text
    new_token = csrf_of(after.text)
    assert new_token != old_token
    assert client.post("/vote", data={"csrf": old_token, "pair": pair_of(html), "choice": "A"}).status_code == 403

    stale = browser(client.app)
    stale.cookies.set("session", saved_cookie)
    response = stale.post("/vote", data={"csrf": old_token, "pair": pair_of(html), "choice": "A"})
    assert response.status_code == 403
    assert stale.get("/vote").url.path == "/"
    assert VoteStore(votes_db(study)).votes() == []


def test_signing_in_replaces_the_anti_forgery_token(client):
    before = csrf_of(client.get("/").text)
    assert csrf_of(sign_in(client)) != before


def test_invited_raters_join_by_link_only(study):
    [(rater, token)] = VoteStore(votes_db(study)).add_invites(1)
    app = create_app(study, results_token=TOKEN, seed=0)
    first = browser(app)
    home = first.get("/").text
    assert "invite link" in home and 'name="name"' not in home
    assert first.get("/join/not-a-token").status_code == 404
    page = first.get(f"/join/{token}").text
    assert f"You are invited as <strong>{rater.name}</strong>" in page
    assert first.post("/rater", data={"name": "alice", "csrf": csrf_of(page)}).status_code == 403
    html = first.post("/join", data={"token": token, "csrf": csrf_of(page)}).text
    assert f"Rating as <strong>{rater.name}</strong>" in html and 'name="pair"' in html

    second = browser(app)  # the same link in another browser takes over
    page = second.get(f"/join/{token}").text
    assert pair_of(second.post("/join", data={"token": token, "csrf": csrf_of(page)}).text) == pair_of(html)
    assert first.get("/vote").url.path == "/"


@pytest.mark.parametrize("token", [None, "", "forged-token", "é-not-ascii"])
def test_posts_without_the_session_token_are_refused(client, study, token):
    html = sign_in(client)
    form = {"pair": pair_of(html), "choice": "A"} | ({} if token is None else {"csrf": token})
    response = client.post("/vote", data=form)
    assert response.status_code == 403
    assert (
        client.post("/rater", data={"name": "mallory"} | ({} if token is None else {"csrf": token})).status_code == 403
    )
    assert VoteStore(votes_db(study)).votes() == []


def test_a_token_from_another_session_is_refused(client, study):
    html = sign_in(client)
    other = browser(client.app)
    sign_in(other, "bob")
    response = other.post("/vote", data={"csrf": csrf_of(html), "pair": pair_of(html), "choice": "A"})
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({"choice": "A"}, 400),
        ({"pair": "PAIR", "choice": "C"}, 400),
        ({"pair": "PAIR"}, 400),
        ({"pair": "no-such-pair", "choice": "A"}, 404),
    ],
)
def test_malformed_votes_get_4xx(client, form, status):
    html = sign_in(client)
    form = {k: pair_of(html) if v == "PAIR" else v for k, v in form.items()}
    response = client.post("/vote", data={"csrf": csrf_of(html), **form})
    assert response.status_code == status
    assert "Traceback" not in response.text and f"Error {status}" in response.text


def test_other_bad_requests_get_4xx(client):
    html = sign_in(client)
    token, pair = csrf_of(html), pair_of(html)
    assert client.post("/vote", data={"csrf": token, "pair": pair, "choice": "A"}).status_code == 200
    assert client.post("/vote", data={"csrf": token, "pair": pair, "choice": "B"}).status_code == 409
    assert client.post("/vote", json={"csrf": token, "choice": "A"}).status_code == 415
    assert client.post("/vote", content=b"\xff\xfe", headers={"content-type": "multipart/form-data"}).status_code == 415
    big = {"csrf": token, "pair": "x" * 100_000, "choice": "A"}
    assert client.post("/vote", data=big).status_code == 413
    put = client.put("/vote")
    assert put.status_code == 405 and set(put.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    assert client.get("/no-such-page").status_code == 404
    assert client.post("/rater", data={"csrf": token, "name": "=HYPERLINK(evil)"}).status_code == 400
    assert client.post("/rater", data={"csrf": token, "name": ""}).status_code == 400


def test_voting_needs_a_rater_name(client):
    html = client.get("/").text
    assert 'name="name"' in html
    assert client.get("/vote").url.path == "/"
    assert client.post("/vote", data={"csrf": csrf_of(html), "pair": "x", "choice": "A"}).status_code == 403


def test_unexpected_errors_show_no_traceback(client, monkeypatch):
    def broken(self):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(VoteStore, "votes", broken)
    response = client.get(f"/results?token={TOKEN}", follow_redirects=True)
    assert response.status_code == 500
    assert "secret internals" not in response.text and "Something went wrong" in response.text


@pytest.mark.parametrize(
    ("host", "served"),
    [
        ("127.0.0.1", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000"]),
        ("::1", ["[::1]:8123", "[::1]", "localhost:8123", "127.0.0.1"]),
        ("127.0.0.2", ["127.0.0.2:8000", "localhost"]),
        ("localhost", ["localhost:8000", "LOCALHOST"]),
    ],
)
def test_every_loopback_bind_serves_only_loopback_host_names(study, host, served):
    """Case 4: on ::1 any Host header was served, so a rebinding domain could read the pages."""
    client = browser(create_app(study, results_token=TOKEN, host=host))
    for spoofed in ["attacker.example", "attacker.example:8123", "[::2]:8123", "127.0.0.1.attacker.example"]:
        assert client.get("/", headers={"host": spoofed}).status_code == 400
    for name in served:
        assert client.get("/", headers={"host": name}).status_code == 200


def test_a_non_loopback_bind_serves_any_host_name(study):
    anywhere = browser(create_app(study, results_token=TOKEN, host="0.0.0.0"), base_url="http://lab.example")
    assert anywhere.get("/").status_code == 200


def test_loopback_names_and_urls():
    assert all(map(is_loopback, ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "LocalHost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.example", ""]))
    assert base_url("::1", 8123) == "http://[::1]:8123"
    assert base_url("127.0.0.1", 80) == "http://127.0.0.1:80"


def test_security_headers(client):
    headers = client.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert "samesite=strict" in headers["set-cookie"].lower() and "httponly" in headers["set-cookie"].lower()
