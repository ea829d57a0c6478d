"""The store: one assignment and one vote per comparison, rater records, sessions, the old file format."""

from __future__ import annotations

import random
import sqlite3
import stat
import threading
from collections import Counter
from contextlib import closing, contextmanager

import pytest

from lorahpo.preference.answers import AnswerSet, read_answers
from lorahpo.preference.store import AlreadyVoted, RaterBusy, StoreError, UnknownPair, VoteStore

from .conftest import MODELS, make_study, preference_dir, votes_db


@contextmanager
def closing_db(path):
    """A connection that commits and closes at the end of the ``with`` block."""
    with closing(sqlite3.connect(path)) as conn, conn:
        yield conn


@pytest.fixture
def answers(study) -> AnswerSet:
    return AnswerSet(read_answers(preference_dir(study) / "answers.jsonl"))


@pytest.fixture
def store(study) -> VoteStore:
    return VoteStore(votes_db(study))


def test_the_file_is_readable_by_its_owner_only(study, store):
    assert stat.S_IMODE(votes_db(study).stat().st_mode) == 0o600
    votes_db(study).chmod(0o644)  # a file of an older lorahpo
    VoteStore(votes_db(study))
    assert stat.S_IMODE(votes_db(study).stat().st_mode) == 0o600


def test_votes_persist_across_store_instances(study, store):
    alice = store.rater("alice")
    assignment = store.add_assignment(alice, "q1", "zeta-best", "zeta-base")
    cast = store.record_vote(assignment.id, alice, "A")

    stored = VoteStore(votes_db(study)).votes()
    assert stored == [cast]
    row = (cast.rater, cast.prompt_id, cast.left, cast.right, cast.choice)
    assert row == ("alice", "q1", "zeta-best", "zeta-base", "A")
    assert cast.winner == "zeta-best" and cast.item == ("q1", "zeta-base", "zeta-best")
    assert cast.time.endswith("+00:00")


def test_a_vote_is_refused_for_unknown_foreign_or_used_assignments(store):
    alice, mallory = store.rater("alice"), store.rater("mallory")
    assignment = store.add_assignment(alice, "q1", "zeta-best", "zeta-base")
    with pytest.raises(UnknownPair):
        store.record_vote("no-such-pair", alice, "A")
    with pytest.raises(UnknownPair):
        store.record_vote(assignment.id, mallory, "A")  # handed to alice, not to mallory
    with pytest.raises(ValueError):
        store.record_vote(assignment.id, alice, "C")
    store.record_vote(assignment.id, alice, "tie")
    with pytest.raises(AlreadyVoted):
        store.record_vote(assignment.id, alice, "B")
    assert [v.choice for v in store.votes()] == ["tie"]


def test_the_file_itself_refuses_a_second_comparison_or_vote(study, store):
    """No code path can store two votes of a rater on one comparison: the schema forbids it."""
    alice = store.rater("alice")
    assignment = store.add_assignment(alice, "q1", "zeta-best", "zeta-base")
    with pytest.raises(sqlite3.IntegrityError):  # the same comparison in the other order
        store.add_assignment(alice, "q1", "zeta-base", "zeta-best")
    store.record_vote(assignment.id, alice, "A")
    with closing_db(votes_db(study)) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute(
                "INSERT INTO assignments (id, rater_id, prompt_id, model_a, model_b, left_model, right_model, created)"
                " VALUES ('x', ?, 'q1', 'zeta-base', 'zeta-best', 'zeta-base', 'zeta-best', 'now')",
                (alice.id,),
            )
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute("INSERT INTO votes (assignment_id, time, choice) VALUES (?, 'now', 'B')", (assignment.id,))
    assert len(store.votes()) == 1


def test_asking_again_returns_the_open_assignment(study, store, answers):
    alice = store.rater("alice")
    shown = {store.next_assignment(answers, alice, random.Random(n)) for n in range(20)}
    assert len(shown) == 1
    with closing_db(votes_db(study)) as conn:
        assert conn.execute("SELECT count(*) FROM assignments").fetchone() == (1,)
    [assignment] = shown
    store.record_vote(assignment.id, alice, "A")
    assert store.next_assignment(answers, alice, random.Random(0)) != assignment


def test_concurrent_requests_of_one_rater_share_one_assignment(study, store, answers):
    alice = store.rater("alice")
    shown = []
    threads = [
        threading.Thread(target=lambda n=n: shown.append(store.next_assignment(answers, alice, random.Random(n))))
        for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(shown)) == 1


def test_an_open_assignment_whose_answers_are_gone_is_replaced(tmp_path):
    root = make_study(tmp_path / "s", prompts={"a": "x", "b": "y"})
    store = VoteStore(votes_db(root))
    alice = store.rater("alice")
    store.add_assignment(alice, "a", MODELS[0], MODELS[1])
    fewer = AnswerSet([a for a in read_answers(preference_dir(root) / "answers.jsonl") if a.prompt_id == "b"])
    assert store.next_assignment(fewer, alice, random.Random(0)).prompt_id == "b"


def test_next_assignment_prefers_the_items_with_fewest_votes(store, answers):
    items = answers.items()
    # Every item but one gets a vote from other raters; the unvoted one must come first.
    unvoted = items[5]
    for n, (prompt_id, first, second) in enumerate(items):
        if (prompt_id, first, second) != unvoted:
            rater = store.rater(f"rater{n}")
            store.record_vote(store.add_assignment(rater, prompt_id, first, second).id, rater, "A")
    for seed in range(5):
        assignment = store.next_assignment(answers, store.rater(f"newcomer{seed}"), random.Random(seed))
        assert assignment.item == unvoted


def test_a_rater_gets_every_item_once_in_both_orders_then_none(store, answers):
    alice = store.rater("alice")
    rng = random.Random(1)
    seen = []
    while (assignment := store.next_assignment(answers, alice, rng)) is not None:
        seen.append(assignment)
        store.record_vote(assignment.id, alice, "A")
    assert Counter(a.item for a in seen) == Counter(answers.items())
    assert {a.left < a.right for a in seen} == {True, False}  # left/right order is random


def test_names_equal_up_to_case_and_width_are_one_rater(store):
    alice = store.rater("Alice")
    assert store.rater("ＡＬＩＣＥ") == store.rater("  alice ") == alice and alice.name == "Alice"
    assert store.rater("Ærøskøbing Bob").name == "Ærøskøbing Bob"
    assert store.rater("山田 はなこ").name == "山田 はなこ"  # Han and Hiragana: one Japanese name
    for lookalike in ["\u0430lice", "Ali\u0441e", "B\u043eb", "=cmd", "", "x" * 41, "a\u200bb"]:
        with pytest.raises(ValueError, match="letters"):
            store.rater(lookalike)


def test_a_rater_signed_in_elsewhere_is_refused_until_signed_out(study):
    store = VoteStore(votes_db(study))
    alice = store.rater("alice")
    first = store.start_session(alice)
    assert store.session_rater(first) == alice
    with pytest.raises(RaterBusy):
        store.start_session(store.rater("ALICE"))
    store.end_session(first)
    assert store.session_rater(first) is None
    second = store.start_session(alice)
    assert store.start_session(alice, take_over=True) != second
    assert store.session_rater(second) is None  # taken over


def test_an_idle_session_ends_and_frees_the_name(study):
    store = VoteStore(votes_db(study), session_idle=0)
    alice = store.rater("alice")
    session = store.start_session(alice)
    assert store.session_rater(session) is None
    store.start_session(alice)  # not busy: the first session is over


def test_invites_store_only_a_hash_of_the_token(study, store):
    store.rater("invitee-2")  # a typed name that an invite must not take
    invites = store.add_invites(2)
    assert [r.name for r, _ in invites] == ["invitee-3", "invitee-4"] and store.has_invites()
    rater, token = invites[0]
    assert store.invited_rater(token) == rater and store.invited_rater("nope") is None
    assert token.encode() not in votes_db(study).read_bytes()


V1_SCHEMA = """
CREATE TABLE pairs (id TEXT PRIMARY KEY, rater TEXT NOT NULL, prompt_id TEXT NOT NULL,
    left_model TEXT NOT NULL, right_model TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE votes (id INTEGER PRIMARY KEY AUTOINCREMENT, pair_id TEXT NOT NULL UNIQUE REFERENCES pairs(id),
    rater TEXT NOT NULL, time TEXT NOT NULL, prompt_id TEXT NOT NULL, left_model TEXT NOT NULL,
    right_model TEXT NOT NULL, choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie')));
"""


def test_a_file_of_the_first_version_is_upgraded_and_repeated_votes_count_once(tmp_path):
    path = tmp_path / "votes.db"
    rows = [  # pair, rater, time, prompt, left, right, choice
        ("p1", "alice", "t1", "q1", "zeta-best", "zeta-base", "A"),
        ("p2", "alice", "t2", "q1", "zeta-base", "zeta-best", "A"),  # alice again on the same comparison
        ("p3", "Alice", "t3", "q1", "zeta-best", "zeta-base", "B"),  # the same rater, another case
        ("p4", "bob", "t4", "q1", "zeta-best", "zeta-base", "tie"),
        ("p5", "bob", "t5", "q2", "zeta-worst", "zeta-base", "B"),
    ]
    with closing_db(path) as conn:
        conn.executescript(V1_SCHEMA)
        for pair, rater, time, prompt, left, right, choice in rows:
            conn.execute("INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?)", (pair, rater, prompt, left, right, time))
            conn.execute(
                "INSERT INTO votes (pair_id, rater, time, prompt_id, left_model, right_model, choice)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (pair, rater, time, prompt, left, right, choice),
            )
        conn.execute("INSERT INTO pairs VALUES ('open', 'carol', 'q3', 'zeta-best', 'zeta-base', 't6')")

    store = VoteStore(path)
    assert store.notice == (
        "upgraded the votes file to version 2: 3 votes kept, "
        "2 repeated votes of a rater on one comparison not counted (all kept in table v1_votes)"
    )
    votes = store.votes()
    assert [(v.id, v.rater, v.prompt_id, v.left, v.choice) for v in votes] == [
        (1, "alice", "q1", "zeta-best", "A"),
        (4, "bob", "q1", "zeta-best", "tie"),
        (5, "bob", "q2", "zeta-worst", "B"),
    ]
    with closing_db(path) as conn:
        assert conn.execute("SELECT count(*) FROM v1_votes").fetchone() == (5,)
    assert VoteStore(path).notice is None and VoteStore(path).votes() == votes  # upgraded once
    alice = store.rater("ALICE")
    with pytest.raises(AlreadyVoted):  # the upgraded votes block a new vote on the same comparison
        store.record_vote("p1", alice, "B")


def test_a_file_of_a_newer_version_is_refused_in_one_line(tmp_path):
    path = tmp_path / "votes.db"
    with closing_db(path) as conn:
        conn.execute("CREATE TABLE raters (id INTEGER)")
        conn.execute("PRAGMA user_version = 9")
    with pytest.raises(StoreError, match=r"^.*votes.db is not a votes file this lorahpo can read \(version 9\)"):
        VoteStore(path)
