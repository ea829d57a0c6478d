"""Raters and votes of a preference evaluation, and which comparison a rater judges next.

The votes live beside the answers (:mod:`~lorahpo.preference.answers`) in
``DIR/preference/votes.db``, a SQLite file readable by its owner only (mode 0600) with four
tables: ``raters`` holds one row per rater (a normalised name, and the hash of an invite token
for invited raters); ``sessions`` the signed-in browsers; ``assignments`` every comparison
handed to a rater (a prompt and an unordered pair of models, with the hidden left/right order,
referenced on the page only by a random id); ``votes`` one row per vote.

One vote per comparison is a property of the file, not of the code that writes it: an
assignment is unique per (rater, prompt, model pair), and a vote unique per assignment.
A rater has at most one open (unvoted) assignment: asking for the next one returns it again.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, cast

from lorahpo.preference.answers import AnswerSet
from lorahpo.preference.names import clean_name, name_key

VOTES_FILE = "votes.db"
CHOICES = ("A", "B", "tie")
#: A session unused for this long is signed out, and its rater's name is free again (seconds).
SESSION_IDLE = 30 * 60

Choice = Literal["A", "B", "tie"]

# Version 1 (lorahpo before raters had records) had tables pairs and votes, user_version 0.
_VERSION = 2
_SCHEMA = f"""
CREATE TABLE raters (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,           -- the name, normalised and case-folded
    name TEXT NOT NULL,                 -- the name as first entered (normalised)
    invite TEXT UNIQUE,                 -- SHA-256 of the invite token, NULL for a rater who typed a name
    created TEXT NOT NULL
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,                -- SHA-256 of the session id in the browser's cookie
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    last_seen REAL NOT NULL             -- Unix time
);
CREATE TABLE assignments (
    id TEXT PRIMARY KEY,
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    prompt_id TEXT NOT NULL,
    model_a TEXT NOT NULL,              -- the two models, sorted
    model_b TEXT NOT NULL,
    left_model TEXT NOT NULL,           -- the order shown: left is "A", right is "B"
    right_model TEXT NOT NULL,
    created TEXT NOT NULL,
    UNIQUE (rater_id, prompt_id, model_a, model_b),
    CHECK (model_a < model_b),
    CHECK ((left_model = model_a AND right_model = model_b) OR (left_model = model_b AND right_model = model_a))
);
CREATE TABLE votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    assignment_id TEXT NOT NULL UNIQUE REFERENCES assignments(id),
    time TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie'))
);
PRAGMA user_version = {_VERSION}
"""


@dataclass(frozen=True)
class Vote:
    """One rater's verdict on one pair of answers.

    Attributes:
        id: Row id, increasing in the order votes were cast.
        time: When the vote was cast (ISO 8601, UTC).
        rater: The rater's name (see :mod:`~lorahpo.preference.names`).
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
class Rater:
    """A rater's record: ``name`` is unique up to case and Unicode compatibility forms."""

    id: int
    name: str
    invited: bool


@dataclass(frozen=True)
class Assignment:
    """A comparison handed to a rater; only ``id`` ever reaches the page before the vote."""

    id: str
    prompt_id: str
    left: str
    right: str

    @property
    def item(self) -> tuple[str, str, str]:
        """What is judged, independent of the left/right order: (prompt, model, model)."""
        first, second = sorted((self.left, self.right))
        return self.prompt_id, first, second


class UnknownPair(LookupError):
    """The assignment id does not exist, or was handed to another rater."""


class AlreadyVoted(ValueError):
    """The assignment has already received its vote."""


class RaterBusy(RuntimeError):
    """The rater is signed in in another browser (a session used in the last :data:`SESSION_IDLE`)."""


class StoreError(ValueError):
    """``votes.db`` cannot be used (written by a newer lorahpo, or not a lorahpo store)."""


class VoteStore:
    """The SQLite file of raters, sessions, assignments and votes.

    Each operation opens its own connection, so one store serves the web server's threads;
    operations that read and then write take SQLite's write lock first (``BEGIN IMMEDIATE``),
    so two requests of one rater cannot both hand out a new assignment.

    Args:
        path: The file; created (mode 0600) if missing. A file of lorahpo's first store
            version is upgraded in place; :attr:`notice` then says what was kept.
        session_idle: Seconds after which an unused session ends.

    Raises:
        StoreError: The file is of a newer version, or is not a lorahpo store.
    """

    def __init__(self, path: str | Path, *, session_idle: float = SESSION_IDLE) -> None:
        self.path = Path(path)
        self.session_idle = session_idle
        self.notice: str | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The file holds rater names and the hidden model identities: its owner only. SQLite
        # gives its -wal and -shm files the same mode.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        if self.path.stat().st_mode & 0o077:  # a file of an older lorahpo, created 0644
            os.chmod(self.path, 0o600)
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if not tables:
                _create_tables(conn)
            elif version == 0 and {"pairs", "votes"} <= tables:
                self.notice = _upgrade_v1(conn)
            elif version != _VERSION or "assignments" not in tables:
                raise StoreError(
                    f"{self.path} is not a votes file this lorahpo can read (version {version}); "
                    "use a newer lorahpo or move the file aside"
                )
        with self._connect() as conn:
            # WAL lets the results page read while a vote is being written.
            conn.execute("PRAGMA journal_mode=WAL")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # closing() closes the connection; `with conn` makes the body one transaction, committed
        # on success and rolled back on error.
        with closing(sqlite3.connect(self.path, timeout=30)) as conn, conn:
            conn.execute("PRAGMA foreign_keys = ON")
            yield conn

    # Raters and sessions

    def rater(self, name: str) -> Rater:
        """The rater of a typed name, recorded on first use.

        Raises:
            ValueError: The name breaks :data:`lorahpo.preference.names.RULE`.
        """
        name = clean_name(name)
        with self._connect() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO raters (key, name, created) VALUES (?, ?, ?)", (name_key(name), name, _now())
            )
            row = conn.execute("SELECT id, name, invite FROM raters WHERE key = ?", (name_key(name),)).fetchone()
        return Rater(row[0], row[1], row[2] is not None)

    def add_invites(self, count: int) -> list[tuple[Rater, str]]:
        """Record ``count`` new raters named ``invitee-N``, each with a fresh invite token.

        Only a hash of each token is stored: the tokens returned here are the only copy.
        """
        made: list[tuple[Rater, str]] = []
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            number = conn.execute("SELECT count(*) FROM raters").fetchone()[0]
            while len(made) < count:
                number += 1
                name, token = f"invitee-{number}", secrets.token_urlsafe(16)
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO raters (key, name, invite, created) VALUES (?, ?, ?, ?)",
                    (name_key(name), name, _hash(token), _now()),
                )
                if cursor.rowcount:  # else the name was taken by a typed name: try the next number
                    assert cursor.lastrowid is not None
                    made.append((Rater(cursor.lastrowid, name, True), token))
        return made

    def has_invites(self) -> bool:
        """Whether raters join by invite link (then typed names are refused)."""
        with self._connect() as conn:
            return conn.execute("SELECT 1 FROM raters WHERE invite IS NOT NULL LIMIT 1").fetchone() is not None

    def invited_rater(self, token: str) -> Rater | None:
        """The rater an invite token belongs to, or None."""
        with self._connect() as conn:
            row = conn.execute("SELECT id, name FROM raters WHERE invite = ?", (_hash(token),)).fetchone()
        return None if row is None else Rater(row[0], row[1], True)

    def start_session(self, rater: Rater, *, take_over: bool = False) -> str:
        """Sign ``rater`` in: returns a new secret session id for the browser's cookie.

        Args:
            rater: Who signs in.
            take_over: End the rater's other sessions (an invite link proves who it is);
                otherwise a rater signed in elsewhere is refused.

        Raises:
            RaterBusy: ``take_over`` is false and the rater has a live session.
        """
        session = secrets.token_urlsafe(32)
        now = time.time()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM sessions WHERE last_seen < ?", (now - self.session_idle,))
            if take_over:
                conn.execute("DELETE FROM sessions WHERE rater_id = ?", (rater.id,))
            elif conn.execute("SELECT 1 FROM sessions WHERE rater_id = ?", (rater.id,)).fetchone():
                raise RaterBusy(rater.name)
            conn.execute(
                "INSERT INTO sessions (id, rater_id, last_seen) VALUES (?, ?, ?)", (_hash(session), rater.id, now)
            )
        return session

    def session_rater(self, session: str) -> Rater | None:
        """The rater signed in with this session id (and mark it used), or None if it ended."""
        now = time.time()
        with self._connect() as conn:
            row = conn.execute(
                "SELECT r.id, r.name, r.invite FROM sessions s JOIN raters r ON r.id = s.rater_id"
                " WHERE s.id = ? AND s.last_seen >= ?",
                (_hash(session), now - self.session_idle),
            ).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE sessions SET last_seen = ? WHERE id = ?", (now, _hash(session)))
        return Rater(row[0], row[1], row[2] is not None)

    def end_session(self, session: str) -> None:
        """Sign a session out; its cookie no longer identifies anyone."""
        with self._connect() as conn:
            conn.execute("DELETE FROM sessions WHERE id = ?", (_hash(session),))

    def end_all_sessions(self) -> None:
        """Sign every browser out (the server does this when it starts)."""
        with self._connect() as conn:
            conn.execute("DELETE FROM sessions")

    # Assignments and votes

    def votes(self) -> list[Vote]:
        """All votes, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT v.id, v.time, r.name, a.prompt_id, a.left_model, a.right_model, v.choice"
                " FROM votes v JOIN assignments a ON a.id = v.assignment_id JOIN raters r ON r.id = a.rater_id"
                " ORDER BY v.id"
            ).fetchall()
        return [Vote(*row) for row in rows]

    def votes_cast(self, rater: Rater) -> int:
        """How many votes ``rater`` has cast."""
        with self._connect() as conn:
            return conn.execute(
                "SELECT count(*) FROM votes v JOIN assignments a ON a.id = v.assignment_id WHERE a.rater_id = ?",
                (rater.id,),
            ).fetchone()[0]

    def add_assignment(self, rater: Rater, prompt_id: str, left: str, right: str) -> Assignment:
        """Hand a comparison to ``rater``, shown in this left/right order.

        Raises:
            sqlite3.IntegrityError: The rater already has this comparison.
        """
        with self._connect() as conn:
            return _insert_assignment(conn, rater, prompt_id, left, right)

    def next_assignment(self, answers: AnswerSet, rater: Rater, rng: random.Random) -> Assignment | None:
        """The comparison ``rater`` judges next: their open one, else a new one.

        An open assignment whose answers are gone (answers.jsonl changed) is dropped. A new one
        is chosen among the items this rater has not been handed yet: those with the fewest
        votes overall come first (ties broken at random), so votes spread evenly over prompts
        and model pairs and each item collects several raters' votes for the agreement
        measures. The left/right order is random.

        Returns:
            The assignment, or None when the rater has judged every item.
        """
        items = set(answers.items())
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute(
                "SELECT a.id, a.prompt_id, a.left_model, a.right_model, v.id IS NOT NULL FROM assignments a"
                " LEFT JOIN votes v ON v.assignment_id = a.id WHERE a.rater_id = ? ORDER BY a.created, a.id",
                (rater.id,),
            ).fetchall()
            handed = set()
            for *fields, voted in rows:
                assignment = Assignment(*fields)
                if voted:
                    handed.add(assignment.item)
                elif assignment.item in items:
                    return assignment
                else:
                    conn.execute("DELETE FROM assignments WHERE id = ?", (assignment.id,))
            todo = sorted(items - handed)
            if not todo:
                return None
            counts = Counter(
                (prompt_id, a, b)
                for prompt_id, a, b in conn.execute(
                    "SELECT a.prompt_id, a.model_a, a.model_b FROM votes v JOIN assignments a ON a.id = v.assignment_id"
                )
            )
            fewest = min(counts[item] for item in todo)
            prompt_id, first, second = rng.choice([item for item in todo if counts[item] == fewest])
            left, right = (first, second) if rng.random() < 0.5 else (second, first)
            return _insert_assignment(conn, rater, prompt_id, left, right)

    def record_vote(self, assignment_id: str, rater: Rater, choice: str) -> Vote:
        """Store ``rater``'s verdict on a comparison handed to them, in one transaction.

        Raises:
            ValueError: ``choice`` is not A, B or tie.
            UnknownPair: No such assignment was handed to this rater.
            AlreadyVoted: The assignment already has its vote.
        """
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, not {choice!r}")
        with self._connect() as conn:
            row = conn.execute(
                "SELECT prompt_id, left_model, right_model FROM assignments WHERE id = ? AND rater_id = ?",
                (assignment_id, rater.id),
            ).fetchone()
            if row is None:
                raise UnknownPair(assignment_id)
            when = _now()
            try:
                cursor = conn.execute(
                    "INSERT INTO votes (assignment_id, time, choice) VALUES (?, ?, ?)", (assignment_id, when, choice)
                )
            except sqlite3.IntegrityError as exc:  # the UNIQUE assignment_id: a second vote
                raise AlreadyVoted(assignment_id) from exc
        assert cursor.lastrowid is not None  # set by the INSERT that just succeeded
        return Vote(cursor.lastrowid, when, rater.name, row[0], row[1], row[2], cast(Choice, choice))


def _insert_assignment(conn: sqlite3.Connection, rater: Rater, prompt_id: str, left: str, right: str) -> Assignment:
    assignment = Assignment(id=secrets.token_urlsafe(16), prompt_id=prompt_id, left=left, right=right)
    conn.execute(
        "INSERT INTO assignments (id, rater_id, prompt_id, model_a, model_b, left_model, right_model, created)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (assignment.id, rater.id, *assignment.item, left, right, _now()),
    )
    return assignment


def _create_tables(conn: sqlite3.Connection) -> None:
    # Statement by statement: executescript() would commit the caller's transaction first.
    for statement in _SCHEMA.split(";"):
        conn.execute(statement)


def _upgrade_v1(conn: sqlite3.Connection) -> str:
    """Turn a version-1 file (tables pairs and votes, raters as bare names) into the current one.

    Runs inside the caller's transaction. Votes keep their ids and times; raters whose names
    are equal up to case and compatibility forms become one. Version 1 could store several
    votes of one rater on one comparison: the first counts, and all original votes stay,
    unchanged, in table ``v1_votes``. Unvoted pairs are dropped.

    Returns:
        One line saying what was kept.
    """
    old = conn.execute(
        "SELECT id, pair_id, rater, time, prompt_id, left_model, right_model, choice FROM votes ORDER BY id"
    ).fetchall()
    conn.execute("CREATE TABLE v1_votes AS SELECT * FROM votes")
    conn.execute("DROP TABLE votes")
    conn.execute("DROP TABLE pairs")
    _create_tables(conn)
    kept = 0
    for vote_id, pair_id, name, when, prompt_id, left, right, choice in old:
        name = " ".join(str(name).split())  # version 1 stored it with single spaces already
        conn.execute("INSERT OR IGNORE INTO raters (key, name, created) VALUES (?, ?, ?)", (name_key(name), name, when))
        rater_id = conn.execute("SELECT id FROM raters WHERE key = ?", (name_key(name),)).fetchone()[0]
        first, second = sorted((left, right))
        cursor = conn.execute(
            "INSERT OR IGNORE INTO assignments"
            " (id, rater_id, prompt_id, model_a, model_b, left_model, right_model, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (pair_id, rater_id, prompt_id, first, second, left, right, when),
        )
        if cursor.rowcount:
            conn.execute(
                "INSERT INTO votes (id, assignment_id, time, choice) VALUES (?, ?, ?, ?)",
                (vote_id, pair_id, when, choice),
            )
            kept += 1
    repeats = len(old) - kept
    line = f"upgraded the votes file to version {_VERSION}: {kept} votes kept"
    if repeats:
        line += f", {repeats} repeated votes of a rater on one comparison not counted (all kept in table v1_votes)"
    return line


def _hash(token: str) -> str:
    """What the file stores of a secret token: its SHA-256 (a copied file signs no one in)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
