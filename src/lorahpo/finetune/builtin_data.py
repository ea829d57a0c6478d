"""Built-in instruction data ``bigbench-instruct``: English BIG-bench tasks as Alpaca rows.

The rows come from the JSON tasks of the ``bigbench==1.0.0`` source distribution (Apache-2.0),
read straight from its tarball: nothing is installed or extracted. The first use builds a JSONL
file in the cache (``<cache>/data/bigbench-instruct-<size>-v2.jsonl``) with a metadata file
beside it; later uses read that file.

What goes in:

- Every ``task.json`` is one unit of data; subtasks (``<task>/<subtask>/task.json``) are pooled
  under their top-level task for the per-task cap, so a task with hundreds of subtasks does not
  dominate the mix.
- English only. A file is dropped when its keywords include one of :data:`EXCLUDED_KEYWORDS`
  (other languages, translation, or non-linguistic input such as pixels or chess notation), or
  when it is one of the few untagged non-English files in :data:`_UNTAGGED_NON_ENGLISH`. A row is
  dropped when more than 10% of its letters are outside ASCII (catches untagged tasks in other
  scripts, such as Hindi or Persian).
- The BIG-Bench-Hard source tasks (:data:`BBH_TASKS`) and the retention tasks
  (:data:`RETENTION_TASKS`) are held out for downstream evaluation.
- A generative example (``target``) becomes instruction/output; a multiple-choice example
  (``target_scores``) lists its options in the input, in a fixed pseudo-random order, and answers
  with the single best option.
  The instruction is the task's ``task_prefix`` when it has one, else its description.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import tarfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorahpo.cache import cache_dir, pip_download
from lorahpo.files import write_atomic

VERSION = 2  # 2: the retention tasks are held out
_REQUIREMENT = "bigbench==1.0.0"
_TARBALL = "bigbench-1.0.0.tar.gz"
_TASKS_DIR = "/bigbench/benchmark_tasks/"

#: The 23 BIG-Bench-Hard tasks (Suzgun et al., 2022) mapped to the BIG-bench task folder each
#: comes from. BBH splits ``logical_deduction`` and ``tracking_shuffled_objects`` into three-,
#: five- and seven-object variants. ``boolean_expressions``, ``multistep_arithmetic`` and
#: ``web_of_lies`` are programmatic BIG-bench tasks with no ``task.json``, so they never appear here.
BBH_TASKS: dict[str, str] = {
    "boolean_expressions": "boolean_expressions",
    "causal_judgement": "causal_judgment",
    "date_understanding": "date_understanding",
    "disambiguation_qa": "disambiguation_qa",
    "dyck_languages": "dyck_languages",
    "formal_fallacies": "formal_fallacies_syllogisms_negation",
    "geometric_shapes": "geometric_shapes",
    "hyperbaton": "hyperbaton",
    "logical_deduction": "logical_deduction",
    "movie_recommendation": "movie_recommendation",
    "multistep_arithmetic_two": "multistep_arithmetic",
    "navigate": "navigate",
    "object_counting": "object_counting",
    "penguins_in_a_table": "penguins_in_a_table",
    "reasoning_about_colored_objects": "reasoning_about_colored_objects",
    "ruin_names": "ruin_names",
    "salient_translation_error_detection": "salient_translation_error_detection",
    "snarks": "snarks",
    "sports_understanding": "sports_understanding",
    "temporal_sequences": "temporal_sequences",
    "tracking_shuffled_objects": "tracking_shuffled_objects",
    "web_of_lies": "web_of_lies",
    "word_sorting": "word_sorting",
}

#: English multiple-choice BIG-bench tasks of knowledge and common sense, held out of the
#: training data and of BIG-Bench-Hard: the built-in ``retention`` evaluator asks them, to see
#: whether fine-tuning made the model forget what it knew (:mod:`lorahpo.evaluation.retention`).
RETENTION_TASKS: tuple[str, ...] = (
    "conceptual_combinations",
    "emoji_movie",
    "general_knowledge",
    "hindu_knowledge",
    "human_organs_senses",
    "misconceptions",
    "physical_intuition",
    "physics",
    "riddle_sense",
    "social_iqa",
)

#: Keywords of task files that are not English instruction data.
EXCLUDED_KEYWORDS = frozenset({"non-English", "multilingual", "translation", "low-resource language", "non-language"})

# Non-English files whose keywords do not say so (found by reading the tasks); the script check
# below cannot see Latin-script languages, and lets through the few all-digit rows of the others.
_UNTAGGED_NON_ENGLISH = frozenset(
    {
        "entailed_polarity_hindi",
        "linguistic_mappings/de_past_tense_irregular_json",
        "linguistic_mappings/de_past_tense_json",
        "parsinlu_qa",
    }
)
_MAX_NON_ASCII_SHARE = 0.1


@dataclass(frozen=True)
class BuildSize:
    """How much of BIG-bench one size of ``bigbench-instruct`` keeps."""

    per_task: int
    """Most rows from one top-level task (its subtasks pooled)."""
    total: int | None
    """Most rows overall, shared evenly among tasks; None for no limit."""
    max_chars: int
    """Longest row kept, counting instruction, input and output."""


SIZES: dict[str, BuildSize] = {
    # ~1600 train / ~400 validation short rows (~100 tokens with the template) from ~90 tasks.
    "cpu": BuildSize(per_task=100, total=2000, max_chars=400),
    "full": BuildSize(per_task=500, total=None, max_chars=2000),
}


def bigbench_instruct(size: str = "cpu", cache: str | os.PathLike[str] | None = None) -> Path:
    """Return the JSONL file of ``bigbench-instruct`` rows, building it on first use.

    Args:
        size: ``cpu`` (~2000 short rows) or ``full`` (up to 500 rows per task).
        cache: Cache root; default :func:`lorahpo.cache.cache_dir`.

    Returns:
        Path of a JSONL file of ``{"instruction", "input", "output", "task"}`` rows.
    """
    if size not in SIZES:
        raise ValueError(f"unknown bigbench-instruct size {size!r}; choose from {sorted(SIZES)}")
    root = cache_dir(cache)
    out = root / "data" / f"bigbench-instruct-{size}-v{VERSION}.jsonl"
    if out.exists():
        return out
    tarball = pip_download(_REQUIREMENT, _TARBALL, root / "downloads")
    start = time.perf_counter()
    rows, tasks = build_rows(tarball, SIZES[size])
    meta = {
        "name": "bigbench-instruct",
        "size": size,
        "version": VERSION,
        "source": _REQUIREMENT,
        "rows": len(rows),
        "tasks": tasks,
        "held_out": sorted(set(BBH_TASKS.values()) | set(RETENTION_TASKS)),
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    # The data file is written last: its presence means the build is complete.
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out.with_name(f"{out.stem}.meta.json"), json.dumps(meta, indent=1) + "\n")
    write_atomic(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return out


def build_rows(tarball: Path, size: BuildSize) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Read the BIG-bench tarball and return the sampled rows and the row count per task.

    Sampling is deterministic: each task draws from its own seeded random stream.
    """
    held_out = set(BBH_TASKS.values()) | set(RETENTION_TASKS)
    pools: dict[str, _Reservoir] = {}
    for name, spec in task_files(tarball):
        task = name.split("/")[0]
        if task in held_out or name in _UNTAGGED_NON_ENGLISH or EXCLUDED_KEYWORDS & set(spec.get("keywords") or []):
            continue
        pool = pools.setdefault(task, _Reservoir(task, size.per_task))
        for row in task_rows(spec):
            if sum(map(len, row.values())) <= size.max_chars and _is_english(row):
                pool.offer({**row, "task": name})
    quotas = _allocate({task: len(pool) for task, pool in pools.items()}, size)
    rows = [row for task in sorted(quotas) for row in pools[task].rows()[: quotas[task]]]
    return rows, {task: quotas[task] for task in sorted(quotas) if quotas[task]}


def task_rows(spec: dict[str, Any]) -> Iterator[dict[str, str]]:
    """Turn the examples of one ``task.json`` into Alpaca rows; unusable examples are skipped."""
    instruction = str(spec.get("task_prefix") or "").strip() or str(spec.get("description") or "").strip()
    seen: set[tuple[str, str]] = set()
    for example in spec.get("examples") or []:
        row = _example_row(example, str(example.get("task_prefix") or "").strip() or instruction)
        if row is None or (row["input"], row["output"]) in seen:
            continue  # duplicates would leak between the training and validation splits
        seen.add((row["input"], row["output"]))
        yield row


def _example_row(example: dict[str, Any], instruction: str) -> dict[str, str] | None:
    text = example.get("input")
    if not isinstance(text, str) or not text.strip() or not instruction:
        return None
    scores = example.get("target_scores")
    if isinstance(scores, dict) and scores:
        if not all(isinstance(score, int | float) for score in scores.values()):
            return None
        best = max(scores.values())
        answers = [option for option, score in scores.items() if score == best]
        if len(answers) != 1:
            return None  # no single correct option to teach
        # BIG-bench often lists the correct option first; a stable pseudo-random order hides that
        # (a checksum, not random.Random: seeding one per example would double the build time).
        order = sorted(scores, key=lambda option: zlib.crc32(f"{text}\0{option}".encode()))
        options = "\n".join(f"- {option}" for option in order)
        return {"instruction": instruction, "input": f"{text.strip()}\n\nOptions:\n{options}", "output": answers[0]}
    target = example.get("target")
    if isinstance(target, list):
        target = next((t for t in target if isinstance(t, str) and t.strip()), None)
    if not isinstance(target, str) or not target.strip():
        return None
    return {"instruction": instruction, "input": text.strip(), "output": target.strip()}


def _is_english(row: dict[str, str]) -> bool:
    if all(value.isascii() for value in row.values()):
        return True  # the common case, checked at C speed
    letters = [c for value in row.values() for c in value if c.isalpha()]
    return sum(not c.isascii() for c in letters) <= _MAX_NON_ASCII_SHARE * len(letters)


def task_files(tarball: Path, folders: set[str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(task path, parsed task.json)`` of each JSON task, streaming the tarball.

    With ``folders``, only tasks under those top-level task folders are parsed.
    """
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith("/task.json") and _TASKS_DIR in member.name):
                continue
            name = member.name.split(_TASKS_DIR, 1)[1].removesuffix("/task.json")
            if folders is not None and name.split("/")[0] not in folders:
                continue
            handle = tar.extractfile(member)
            if handle is not None:
                yield name, json.load(handle)


class _Reservoir:
    """A uniform random sample of at most ``capacity`` rows, in random order."""

    def __init__(self, task: str, capacity: int) -> None:
        self._rng = random.Random(f"bigbench-instruct:{task}")
        self._capacity = capacity
        self._heap: list[tuple[float, int, dict[str, str]]] = []
        self._offered = 0

    def offer(self, row: dict[str, str]) -> None:
        # Keep the rows with the smallest random keys (a max-heap on the negated key).
        self._offered += 1
        item = (-self._rng.random(), self._offered, row)  # the counter breaks ties before rows compare
        if len(self._heap) < self._capacity:
            heapq.heappush(self._heap, item)
        elif item > self._heap[0]:
            heapq.heapreplace(self._heap, item)

    def rows(self) -> list[dict[str, str]]:
        return [row for _, _, row in sorted(self._heap, reverse=True)]

    def __len__(self) -> int:
        return len(self._heap)


def _allocate(available: dict[str, int], size: BuildSize) -> dict[str, int]:
    """Share ``size.total`` evenly among tasks; a task short of its share leaves the rest to others."""
    if size.total is None:
        return dict(available)
    quotas: dict[str, int] = {}
    budget = size.total
    ordered = sorted(available, key=lambda task: (available[task], task))
    for i, task in enumerate(ordered):
        share = -(-budget // (len(ordered) - i))  # ceiling division
        quotas[task] = min(available[task], share)
        budget -= quotas[task]
    return quotas
