"""The answers raters judge: ``DIR/preference/answers.jsonl``, one row per (model, prompt).

:mod:`lorahpo.preference.generate` writes the file; the web app reads it when it starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

ANSWERS_FILE = "answers.jsonl"


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
