"""Answers and votes of a preference evaluation, and which pair a rater sees next.

A study folder keeps its preference data in ``DIR/preference/``:

* ``answers.jsonl``: one row per (model, prompt), written by :mod:`lorahpo.preference.generate`;
* ``votes.db``: a SQLite file with two tables. ``pairs`` holds every pair shown to a rater
  (with the hidden model identities, referenced on the page only by a random id);
  ``votes`` holds one row per vote, written in its own transaction.
"""

from __future__ import annotations

import json
import random
import secrets
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from typing import Any, Literal, cast

ANSWERS_FILE = "answers.jsonl"
VOTES_FILE = "votes.db"
CHOICES = ("A", "B", "tie")

Choice = Literal["A", "B", "tie"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    id TEXT PRIMARY KEY,
    rater TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    left_model TEXT NOT NULL,
    right_model TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair_id TEXT NOT NULL UNIQUE REFERENCES pairs(id),
    rater TEXT NOT NULL,
    time TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    left_model TEXT NOT NULL,
    right_model TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie'))
);
"""


def preference_dir(study_dir: str | Path) -> Path:
    """The folder of a study that holds its answers and votes."""
    return Path(study_dir) / "preference"


@dataclass(frozen=True)
class Answer:
    """One model's answer to one prompt (a row of ``answers.jsonl``)."""

    model: str
    prompt_id: str
    prompt: str
    answer: str
    generation: dict[str, Any]


@dataclass(frozen=True)
class Vote:
    """One rater's verdict on one pair of answers.

    Attributes:
        id: Row id, increasing in the order votes were cast.
        time: When the vote was cast (ISO 8601, UTC).
        rater: The name the rater entered.
        prompt_id: The prompt both answers reply to.
        left: Model whose answer was shown on the left, as "A".
        right: Model whose answer was shown on the right, as "B".
        choice: ``"A"`` (left better), ``"B"`` (right better) or ``"tie"``.
    """

    id: int
    time: str
    rater: str
    prompt_id: str
    left: str
    right: str
    choice: Choice

    @property
    def item(self) -> tuple[str, str, str]:
        """What was judged, independent of the left/right order: (prompt, model, model)."""
        first, second = sorted((self.left, self.right))
        return self.prompt_id, first, second

    @property
    def winner(self) -> str | None:
        """The preferred model, or None for a tie."""
        return {"A": self.left, "B": self.right}.get(self.choice)


@dataclass(frozen=True)
class Pair:
    """A pair shown to a rater; only ``id`` ever reaches the page before the vote."""

    id: str
    prompt_id: str
    left: str
    right: str


class UnknownPair(LookupError):
    """The pair id does not exist, or was shown to another rater."""


class AlreadyVoted(ValueError):
    """The pair has already received its vote."""


class AnswerSet:
    """The answers of ``answers.jsonl``, indexed for showing pairs."""

    def __init__(self, answers: list[Answer]) -> None:
        self._text = {(a.model, a.prompt_id): a.answer for a in answers}
        self.prompts = {a.prompt_id: a.prompt for a in answers}
        self.models = sorted({a.model for a in answers})

    def answer(self, model: str, prompt_id: str) -> str:
        """The text a model gave to a prompt."""
        return self._text[(model, prompt_id)]

    def items(self) -> list[tuple[str, str, str]]:
        """Every (prompt_id, model, model) that can be judged: both models answered the prompt."""
        return [
            (prompt_id, first, second)
            for prompt_id in sorted(self.prompts)
            for first, second in combinations(self.models, 2)
            if (first, prompt_id) in self._text and (second, prompt_id) in self._text
        ]


def read_answers(path: str | Path) -> list[Answer]:
    """Read ``answers.jsonl``; a missing file reads as no answers.

    Raises:
        ValueError: A line is not a JSON object with the expected fields (its number is named).
    """
    path = Path(path)
    if not path.exists():
        return []
    answers = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                answers.append(
                    Answer(
                        model=str(row["model"]),
                        prompt_id=str(row["prompt_id"]),
                        prompt=str(row["prompt"]),
                        answer=str(row["answer"]),
                        generation=dict(row.get("generation") or {}),
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: not a valid answer row ({exc})") from exc
    return answers


class VoteStore:
    """The SQLite file of shown pairs and votes.

    Each operation opens its own connection, so one store serves the web server's threads.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
            # WAL lets the results page read while a vote is being written.
            conn.execute("PRAGMA journal_mode=WAL")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # closing() closes the connection; `with conn` makes the body one transaction, committed
        # on success and rolled back on error.
        with closing(sqlite3.connect(self.path, timeout=30)) as conn, conn:
            yield conn

    def votes(self) -> list[Vote]:
        """All votes, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, time, rater, prompt_id, left_model, right_model, choice FROM votes ORDER BY id"
            ).fetchall()
        return [Vote(*row) for row in rows]

    def add_pair(self, rater: str, prompt_id: str, left: str, right: str) -> Pair:
        """Remember a pair shown to ``rater`` and return it with a fresh unguessable id."""
        pair = Pair(id=secrets.token_urlsafe(16), prompt_id=prompt_id, left=left, right=right)
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO pairs (id, rater, prompt_id, left_model, right_model, created) VALUES (?, ?, ?, ?, ?, ?)",
                (pair.id, rater, prompt_id, left, right, _now()),
            )
        return pair

    def record_vote(self, pair_id: str, rater: str, choice: str) -> Vote:
        """Store ``rater``'s verdict on a pair shown to them, in one transaction.

        Raises:
            ValueError: ``choice`` is not A, B or tie.
            UnknownPair: No such pair was shown to this rater.
            AlreadyVoted: The pair already has its vote.
        """
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, not {choice!r}")
        with self._connect() as conn:
            row = conn.execute(
                "SELECT prompt_id, left_model, right_model FROM pairs WHERE id = ? AND rater = ?",
                (pair_id, rater),
            ).fetchone()
            if row is None:
                raise UnknownPair(pair_id)
            time = _now()
            try:
                cursor = conn.execute(
                    "INSERT INTO votes (pair_id, rater, time, prompt_id, left_model, right_model, choice)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (pair_id, rater, time, *row, choice),
                )
            except sqlite3.IntegrityError as exc:  # the UNIQUE pair_id: a second vote on one pair
                raise AlreadyVoted(pair_id) from exc
        assert cursor.lastrowid is not None  # set by the INSERT that just succeeded
        return Vote(cursor.lastrowid, time, rater, row[0], row[1], row[2], cast(Choice, choice))

    def next_pair(self, answers: AnswerSet, rater: str, rng: random.Random) -> Pair | None:
        """Choose the pair ``rater`` sees next and remember it.

        Among the items this rater has not judged yet, those with the fewest votes overall come
        first (ties broken at random), so votes spread evenly over prompts and model pairs and
        each item collects several raters' votes for the agreement measure. The left/right order
        is random.

        Returns:
            The pair, or None when the rater has judged every item.
        """
        votes = self.votes()
        done = {v.item for v in votes if v.rater == rater}
        counts = Counter(v.item for v in votes)
        todo = [item for item in answers.items() if item not in done]
        if not todo:
            return None
        fewest = min(counts[item] for item in todo)
        prompt_id, first, second = rng.choice([item for item in todo if counts[item] == fewest])
        left, right = (first, second) if rng.random() < 0.5 else (second, first)
        return self.add_pair(rater, prompt_id, left, right)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
