"""The built-in ``retention`` question set: what the base model knew, asked again after fine-tuning.

Multiple-choice questions of knowledge and common sense from the BIG-bench tasks in
:data:`~lorahpo.finetune.builtin_data.RETENTION_TASKS`: English, held out of the built-in training
data and of ``bbh-bigbench``. The ``bigbench==1.0.0`` source distribution is read once; every
usable question (a single best option, at most :data:`MAX_CHARS` characters of question and
longest option) is kept in the cache as ``<cache>/evaluation/retention-v<VERSION>.jsonl``, and
:func:`retention_questions` draws a fixed, task-balanced sample of it.
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path
from typing import Any

from lorahpo.cache import cache_dir, pip_download
from lorahpo.files import write_atomic
from lorahpo.finetune.builtin_data import RETENTION_TASKS, task_files

VERSION = 1
MAX_CHARS = 300
_REQUIREMENT = "bigbench==1.0.0"
_TARBALL = "bigbench-1.0.0.tar.gz"


def retention_pool(cache: str | Path | None = None) -> Path:
    """The JSONL file of every usable retention question, built on first use."""
    root = cache_dir(cache)
    path = root / "evaluation" / f"retention-v{VERSION}.jsonl"
    if not path.exists():
        tarball = pip_download(_REQUIREMENT, _TARBALL, root / "downloads")
        rows = [row for name, spec in task_files(tarball, set(RETENTION_TASKS)) for row in questions(name, spec)]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def questions(task: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The usable multiple-choice questions of one ``task.json``, as ``{task, question, choices, answer}``.

    Options are listed in a fixed pseudo-random order (BIG-bench often lists the right one
    first; the scoring does not see the order, but a reader of the file should not either).
    """
    prefix = str(spec.get("task_prefix") or "")
    rows = []
    for example in spec.get("examples") or []:
        text, scores = example.get("input"), example.get("target_scores")
        if not isinstance(text, str) or not text.strip() or not isinstance(scores, dict) or len(scores) < 2:
            continue
        if not all(isinstance(v, int | float) for v in scores.values()):
            continue
        best = max(scores.values())
        answers = [option for option, score in scores.items() if score == best]
        question = f"{prefix}{text}".strip()
        if len(answers) != 1 or len(question) + max(map(len, scores)) > MAX_CHARS:
            continue
        choices = sorted(scores, key=lambda option: zlib.crc32(f"{question}\0{option}".encode()))
        rows.append({"task": task, "question": question, "choices": choices, "answer": choices.index(answers[0])})
    return rows


def retention_questions(size: int, seed: int = 0, cache: str | Path | None = None) -> list[dict[str, Any]]:
    """``size`` questions, as evenly spread over the tasks as they allow, the same for the same seed."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for line in retention_pool(cache).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        by_task.setdefault(row["task"].split("/")[0], []).append(row)
    for task, rows in by_task.items():
        random.Random(f"retention:{seed}:{task}").shuffle(rows)
    picked: list[dict[str, Any]] = []
    depth = 0
    while len(picked) < size and any(len(rows) > depth for rows in by_task.values()):
        picked += [rows[depth] for _, rows in sorted(by_task.items()) if len(rows) > depth][: size - len(picked)]
        depth += 1
    return picked
