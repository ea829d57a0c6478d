"""The web app through Starlette's test client: forgery, bad requests, blindness, escaping."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from lorahpo.preference.app import create_app
from lorahpo.preference.store import VoteStore

from .conftest import MODELS, XSS, csrf_of, votes_db


@pytest.fixture
def client(study) -> TestClient:
    return TestClient(create_app(study, seed=0), base_url="http://127.0.0.1", raise_server_exceptions=False)


def sign_in(client: TestClient, name: str = "alice") -> str:
    """Enter a rater name; returns the vote page's HTML."""
    response = client.post("/rater", data={"name": name, "csrf": csrf_of(client.get("/").text)})
    assert response.status_code == 200 and response.url.path == "/vote"
    return response.text


def pair_of(html: str) -> str:
    return html.split('name="pair" value="')[1].split('"')[0]


def table_rows(html: str, table_id: str) -> list[list[str]]:
    """The cell texts of each body row of the table with id ``table_id``."""
    body = html.split(f'<table id="{table_id}">')[1].split("<tbody>")[1].split("</tbody>")[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL) for row in body.split("</tr>") if "<td" in row]


def test_vote_page_hides_identities_and_escapes_answers(client, study):
    pages = []
    html = sign_in(client)
    while 'name="pair"' in html:
        pages.append(html)
        html = client.post("/vote", data={"csrf": csrf_of(html), "pair": pair_of(html), "choice": "tie"}).text
    assert len(pages) == 12 and "You have judged every pair" in html
    for page in pages:
        assert not any(model in page for model in MODELS)
    xss_pages = [p for p in pages if "Poor answer to q1." in p]
    assert xss_pages and all(XSS not in p and "&lt;script&gt;alert(1)&lt;/script&gt;" in p for p in xss_pages)
    assert all("&lt;b&gt;something&lt;/b&gt;" in p for p in pages)  # prompts are escaped too


def test_a_vote_is_stored_and_shown_on_the_results_page(client, study):
    html = sign_in(client)
    response = client.post("/vote", data={"csrf": csrf_of(html), "pair": pair_of(html), "choice": "A"})
    assert response.status_code == 200 and response.url.path == "/vote"
    [stored] = VoteStore(votes_db(study)).votes()
    assert (stored.rater, stored.choice) == ("alice", "A")

    results = client.get("/results").text
    assert "1 vote by 1 rater" in results
    # Model, wins, ties, losses, votes, win rate: A (left) won the only vote.
    rates = {row[0]: row[1:6] for row in table_rows(results, "win-rates")}
    assert rates == {stored.left: ["1", "0", "0", "1", "100.0%"], stored.right: ["0", "0", "1", "1", "0.0%"]}
    csv = client.get("/results.csv")
    assert csv.headers["content-type"].startswith("text/csv")
    header, row = csv.text.splitlines()
    assert header.endswith(",left_model,right_model,choice,winner")
    assert row.endswith(f",{stored.left},{stored.right},A,{stored.left}")


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
    other = TestClient(client.app, base_url="http://127.0.0.1")
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


def test_switching_rater_clears_the_name(client):
    html = sign_in(client)
    assert "Rating as <strong>alice</strong>" in html
    response = client.post("/sign-out", data={"csrf": csrf_of(html)})
    assert response.url.path == "/" and 'name="name"' in response.text


def test_unexpected_errors_show_no_traceback(client, monkeypatch):
    def broken(self):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(VoteStore, "votes", broken)
    response = client.get("/results")
    assert response.status_code == 500
    assert "secret internals" not in response.text and "Something went wrong" in response.text


def test_only_loopback_host_names_are_served(client, study):
    assert client.get("/", headers={"host": "attacker.example"}).status_code == 400
    assert client.get("/", headers={"host": "localhost:8000"}).status_code == 200
    anywhere = TestClient(create_app(study, allowed_hosts=("*",)), base_url="http://lab.example")
    assert anywhere.get("/").status_code == 200


def test_security_headers(client):
    headers = client.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert "samesite=strict" in headers["set-cookie"].lower() and "httponly" in headers["set-cookie"].lower()
