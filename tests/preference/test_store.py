"""Votes persist one transaction each; the next pair favours the least-voted items."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lorahpo.preference.store import (
    AlreadyVoted,
    AnswerSet,
    UnknownPair,
    VoteStore,
    read_answers,
)

from .conftest import MODELS, PROMPTS, make_study, preference_dir, votes_db


@pytest.fixture
def answers(study) -> AnswerSet:
    return AnswerSet(read_answers(preference_dir(study) / "answers.jsonl"))


def test_answers_index_every_judgeable_item(answers):
    assert answers.models == MODELS
    assert len(answers.items()) == len(PROMPTS) * 3  # three model pairs per prompt
    assert answers.answer("zeta-best", "q2").startswith("Excellent answer to q2.")


def test_read_answers_names_the_bad_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"model": "m", "prompt_id": "1", "prompt": "p", "answer": "a"}\n\nnot json\n')
    with pytest.raises(ValueError, match=r"answers.jsonl:3"):
        read_answers(path)
    assert read_answers(tmp_path / "missing.jsonl") == []


def test_votes_persist_across_store_instances(study):
    store = VoteStore(votes_db(study))
    pair = store.add_pair("alice", "q1", "zeta-best", "zeta-base")
    cast = store.record_vote(pair.id, "alice", "A")

    stored = VoteStore(votes_db(study)).votes()
    assert stored == [cast]
    assert (cast.rater, cast.prompt_id, cast.left, cast.right, cast.choice) == (
        "alice",
        "q1",
        "zeta-best",
        "zeta-base",
        "A",
    )
    assert cast.winner == "zeta-best" and cast.item == ("q1", "zeta-base", "zeta-best")
    assert cast.time.endswith("+00:00")


def test_a_vote_is_refused_for_unknown_foreign_or_used_pairs(study):
    store = VoteStore(votes_db(study))
    pair = store.add_pair("alice", "q1", "zeta-best", "zeta-base")
    with pytest.raises(UnknownPair):
        store.record_vote("no-such-pair", "alice", "A")
    with pytest.raises(UnknownPair):
        store.record_vote(pair.id, "mallory", "A")  # shown to alice, not to mallory
    with pytest.raises(ValueError):
        store.record_vote(pair.id, "alice", "C")
    store.record_vote(pair.id, "alice", "tie")
    with pytest.raises(AlreadyVoted):
        store.record_vote(pair.id, "alice", "B")
    assert [v.choice for v in store.votes()] == ["tie"]


def test_next_pair_prefers_the_items_with_fewest_votes(study, answers):
    store = VoteStore(votes_db(study))
    items = answers.items()
    # Every item but one gets a vote from other raters; the unvoted one must come first.
    unvoted = items[5]
    for n, (prompt_id, first, second) in enumerate(items):
        if (prompt_id, first, second) != unvoted:
            pair = store.add_pair(f"rater{n}", prompt_id, first, second)
            store.record_vote(pair.id, f"rater{n}", "A")
    for seed in range(5):
        pair = store.next_pair(answers, "newcomer", random.Random(seed))
        assert (pair.prompt_id, *sorted((pair.left, pair.right))) == unvoted


def test_a_rater_gets_every_item_once_in_both_orders_then_none(study, answers):
    store = VoteStore(votes_db(study))
    rng = random.Random(1)
    seen = []
    while (pair := store.next_pair(answers, "alice", rng)) is not None:
        seen.append(pair)
        store.record_vote(pair.id, "alice", "A")
    assert Counter((p.prompt_id, *sorted((p.left, p.right))) for p in seen) == Counter(answers.items())
    assert {p.left < p.right for p in seen} == {True, False}  # left/right order is random


def test_items_need_both_answers(tmp_path):
    root = make_study(tmp_path / "s", models=["m1"], prompts={"a": "x"})
    assert AnswerSet(read_answers(preference_dir(root) / "answers.jsonl")).items() == []
