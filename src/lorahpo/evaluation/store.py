"""Downstream results in the study folder: one JSON file per (model, task), reused across runs.

Layout, under ``DIR/evaluation/``::

    <model>/<task>.json            the score, its settings and per-subtask scores
    <model>/<task>.samples.jsonl   what the model answered on each row (for reading, not reuse)

``<model>`` is ``base`` (no adapter) or ``trial-<number>``. A result is reused when its
settings (task version, row limit, few-shot count, base model, adapter) equal the new request's;
otherwise it is computed again and replaced. The files are the truth; a summary of the scores is
mirrored into the Optuna study's user attribute ``evaluation``, for tools that read only the store
(optuna-dashboard).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lorahpo.files import write_atomic

EVALUATION_DIR = "evaluation"
SUMMARY_ATTR = "evaluation"
BASE = "base"


def model_key(trial: int | None) -> str:
    """The folder name of a model: ``base`` for the base model, else ``trial-<number>``."""
    return BASE if trial is None else f"trial-{trial}"


def trial_of(key: str) -> int | None:
    """The trial number of a model key (None for ``base``)."""
    return int(key.removeprefix("trial-")) if key.startswith("trial-") else None


@dataclass
class TaskResult:
    """The score of one model on one task.

    Attributes:
        model: ``base`` or ``trial-<number>`` (see :func:`model_key`).
        task: The task's name as the user gave it (``bbh-bigbench``, ``mmlu``...).
        metric: What ``score`` measures (``exact_match``, ``pass@1``, ``acc``...).
        score: The task's score (the size-weighted mean over subtasks for a group), or None
            when lm-eval reported none.
        n: Rows scored.
        settings: What the score depends on; a result is reused only for equal settings.
        stderr: Standard error of the score, when lm-eval computed one.
        subtasks: Per-subtask ``{"score": ..., "n": ...}`` for task groups.
        duration_s: Wall time of the evaluation.
        finished: When it finished (ISO 8601, UTC).
        details: Anything else worth keeping (lm-eval version, sandbox layers...).
    """

    model: str
    task: str
    metric: str
    score: float | None
    n: int
    settings: dict[str, Any]
    stderr: float | None = None
    subtasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    duration_s: float = 0.0
    finished: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskResult:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class EvaluationStore:
    """The downstream results of one study folder."""

    def __init__(self, study_dir: str | Path) -> None:
        self.folder = Path(study_dir) / EVALUATION_DIR

    def path(self, model: str, task: str) -> Path:
        return self.folder / model / f"{task}.json"

    def get(self, model: str, task: str) -> TaskResult | None:
        """The stored result of ``model`` on ``task``, if any (an unreadable file counts as none)."""
        try:
            return TaskResult.from_dict(json.loads(self.path(model, task).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def reusable(self, model: str, task: str, settings: dict[str, Any]) -> TaskResult | None:
        """The stored result when it was computed with exactly these settings."""
        result = self.get(model, task)
        return result if result is not None and result.settings == _jsonable(settings) else None

    def put(self, result: TaskResult, samples: list[dict[str, Any]] | None = None) -> Path:
        """Store a result (and optionally its per-row answers); each file is written atomically."""
        if not result.finished:
            result.finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        path = self.path(result.model, result.task)
        path.parent.mkdir(parents=True, exist_ok=True)
        if samples is not None:
            lines = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in samples)
            write_atomic(path.with_name(f"{result.task}.samples.jsonl"), lines)
        write_atomic(path, json.dumps(result.to_dict(), indent=1, default=str) + "\n")
        return path

    def results(self) -> list[TaskResult]:
        """Every stored result, ordered by model (base first, then trial number) and task."""
        found = [self.get(p.parent.name, p.stem) for p in self.folder.glob("*/*.json")]
        return sorted((r for r in found if r is not None), key=lambda r: (_order(r.model), r.task))

    def scores(self) -> dict[str, dict[str, float | None]]:
        """``{model: {task: score}}`` of every stored result."""
        table: dict[str, dict[str, float | None]] = {}
        for r in self.results():
            table.setdefault(r.model, {})[r.task] = r.score
        return table

    def write_summary(self, optuna_study: Any, roles: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """Mirror the scores into the study's user attribute ``evaluation`` and return the summary.

        Args:
            optuna_study: The ``optuna.Study`` of the folder.
            roles: Optional ``{model: ["base" | "x0" | "top-1" ...]}`` from the last evaluation.
        """
        results = self.results()
        summary = {
            "scores": self.scores(),
            "metrics": {r.task: r.metric for r in results},
            "rows": {r.task: r.n for r in results},
            "roles": roles or {},
            "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        optuna_study.set_user_attr(SUMMARY_ATTR, summary)
        return summary


def _order(model: str) -> tuple[int, int]:
    trial = trial_of(model)
    return (0, 0) if trial is None else (1, trial)


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))
