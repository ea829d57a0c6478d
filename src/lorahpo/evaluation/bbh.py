"""The offline task ``bbh-bigbench``: BIG-Bench-Hard-style 3-shot exact match, from BIG-bench.

BIG-Bench-Hard (Suzgun et al., 2022) is 23 hard BIG-bench tasks, asked in a fixed format:
``Q: <question>`` / ``A: <answer>``, three solved examples first, the answer compared exactly.
The ``bigbench==1.0.0`` source distribution holds the JSON source of 20 of them (the other three
are programmatic); this module rebuilds them from its tarball, the same tasks the built-in
training data holds out (:data:`lorahpo.finetune.builtin_data.BBH_TASKS`).

- ``logical_deduction`` and ``tracking_shuffled_objects`` become three subtasks each (three,
  five and seven objects), as in BBH: 24 subtasks in all.
- A multiple-choice task lists its options as ``(A) ...`` in a fixed pseudo-random order (the
  source often lists the right one first) and expects the letter, e.g. ``(B)``; the last
  ``(X)`` in the answer counts. Its examples with more than 26 options are dropped.
- A task whose examples mostly have no options, or more than 26 (``dyck_languages``), is
  generative: the expected text is the target (for ``object_counting``, the digits), compared
  with the first line of the answer, ignoring case.
- Each subtask keeps 3 fixed few-shot examples and at most 250 test rows (BBH's size), both
  drawn with a seed of its own.

The lm-eval task folder (JSONL data and YAML configs) is built once in the cache.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lorahpo.cache import cache_dir, pip_download
from lorahpo.finetune.builtin_data import BBH_TASKS, task_files

VERSION = 1
GROUP = "lorahpo_bbh_bigbench"
SHOTS = 3
MAX_TEST_ROWS = 250
_REQUIREMENT = "bigbench==1.0.0"
_TARBALL = "bigbench-1.0.0.tar.gz"
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Where a model's answer stops: the blank line before the next question.
_UNTIL = ["\n\n", "\nQ:"]


@dataclass(frozen=True)
class Subtask:
    """One BBH subtask rebuilt from BIG-bench.

    Attributes:
        name: BBH's name, e.g. ``logical_deduction_three_objects``.
        description: One line put before the examples.
        generative: True when the answer is free text, False for a lettered option.
        fewshot: The solved examples shown first (``input``, ``target``).
        test: The rows to answer.
    """

    name: str
    description: str
    generative: bool
    fewshot: list[dict[str, str]]
    test: list[dict[str, str]]


def prepare(cache: str | Path | None = None) -> Path:
    """The lm-eval task folder of ``bbh-bigbench``, built on first use from the bigbench sdist."""
    root = cache_dir(cache)
    folder = root / "evaluation" / f"bbh-bigbench-v{VERSION}"
    if (folder / "_group.yaml").is_file():
        return folder
    tarball = pip_download(_REQUIREMENT, _TARBALL, root / "downloads")
    return write_task_folder(read_subtasks(tarball), folder)


def read_subtasks(tarball: Path) -> list[Subtask]:
    """Read the BBH source tasks present in a BIG-bench tarball, in BBH's name order."""
    sources = {folder: bbh for bbh, folder in BBH_TASKS.items()}
    subtasks = []
    for path, spec in task_files(tarball, set(sources)):
        top, _, variant = path.partition("/")
        name = sources[top] + (f"_{variant}" if variant else "")
        subtask = build_subtask(name, spec)
        if subtask is not None:
            subtasks.append(subtask)
    return sorted(subtasks, key=lambda s: s.name)


def build_subtask(name: str, spec: dict[str, Any]) -> Subtask | None:
    """Turn one ``task.json`` into a subtask; None when it has too few usable examples."""
    examples = [e for e in spec.get("examples") or [] if isinstance(e.get("input"), str) and e["input"].strip()]
    letterable = sum(_is_letterable(e) for e in examples)
    generative = letterable * 2 <= len(examples)
    prefix = str(spec.get("task_prefix") or "")
    rows = []
    for example in examples:
        row = _generative_row(example, prefix) if generative else _choice_row(example, prefix)
        if row is not None:
            rows.append(row)
    if len(rows) <= SHOTS:
        return None
    random.Random(f"bbh-bigbench:{name}").shuffle(rows)
    description = str(spec.get("description") or "").strip().rstrip(".") + "."
    return Subtask(name, description, generative, rows[:SHOTS], rows[SHOTS : SHOTS + MAX_TEST_ROWS])


def write_task_folder(subtasks: list[Subtask], folder: Path) -> Path:
    """Write the JSONL data and lm-eval YAML configs of ``subtasks`` into ``folder`` (atomically)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        for subtask in subtasks:
            for split, rows in (("test", subtask.test), ("fewshot", subtask.fewshot)):
                lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
                (tmp / f"{subtask.name}.{split}.jsonl").write_text(lines, encoding="utf-8")
            config = _task_config(subtask, folder)
            (tmp / f"{subtask.name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        group = {
            "group": GROUP,
            "task": [f"{GROUP}_{s.name}" for s in subtasks],
            "aggregate_metric_list": [
                {"metric": "exact_match", "aggregation": "mean", "weight_by_size": True, "filter_list": "extract"}
            ],
            "metadata": {"version": VERSION},
        }
        (tmp / "_group.yaml").write_text(yaml.safe_dump(group, sort_keys=False), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _task_config(subtask: Subtask, folder: Path) -> dict[str, Any]:
    if subtask.generative:
        # The first non-empty line of the answer; the longest target bounds the answer length.
        extract = {"function": "regex", "regex_pattern": r"[^\n]*\S[^\n]*", "group_select": 0}
        longest = max(len(row["target"]) for row in subtask.fewshot + subtask.test)
        max_tokens = min(256, longest // 2 + 16)
    else:
        extract = {"function": "regex", "regex_pattern": r"\([A-Z]\)", "group_select": -1}
        max_tokens = 32
    files = {split: str(folder / f"{subtask.name}.{split}.jsonl") for split in ("test", "fewshot")}
    return {
        "task": f"{GROUP}_{subtask.name}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "test_split": "test",
        "fewshot_split": "fewshot",
        "fewshot_config": {"sampler": "first_n"},
        "num_fewshot": SHOTS,
        "output_type": "generate_until",
        "description": subtask.description + "\n\n",
        "doc_to_text": "Q: {{input}}\nA:",
        "doc_to_target": "{{target}}",
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "generation_kwargs": {"until": _UNTIL, "do_sample": False, "max_gen_toks": max_tokens},
        "filter_list": [{"name": "extract", "filter": [extract, {"function": "take_first"}]}],
        "metric_list": [
            {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True}
        ],
        "metadata": {"version": VERSION},
    }


def _is_letterable(example: dict[str, Any]) -> bool:
    scores = example.get("target_scores")
    return isinstance(scores, dict) and 2 <= len(scores) <= len(_LETTERS)


def _single_best(scores: dict[str, Any]) -> str | None:
    if not scores or not all(isinstance(v, int | float) for v in scores.values()):
        return None
    best = max(scores.values())
    answers = [option for option, score in scores.items() if score == best]
    return answers[0] if len(answers) == 1 else None


def _choice_row(example: dict[str, Any], prefix: str) -> dict[str, str] | None:
    if not _is_letterable(example):
        return None
    scores = example["target_scores"]
    answer = _single_best(scores)
    if answer is None:
        return None
    text = example["input"].strip()
    # A checksum order: stable across runs and machines, and unrelated to the source's order.
    order = sorted(scores, key=lambda option: zlib.crc32(f"{text}\0{option}".encode()))
    options = "\n".join(f"({_LETTERS[i]}) {option}" for i, option in enumerate(order))
    return {"input": f"{prefix}{text}\nOptions:\n{options}", "target": f"({_LETTERS[order.index(answer)]})"}


def _generative_row(example: dict[str, Any], prefix: str) -> dict[str, str] | None:
    target = example.get("target")
    if isinstance(target, list):
        texts = [t.strip() for t in target if isinstance(t, str) and t.strip()]
        target = next((t for t in texts if t.isdigit()), texts[0] if texts else None)  # BBH answers in digits
    elif target is None and isinstance(example.get("target_scores"), dict):
        target = _single_best(example["target_scores"])
    if not isinstance(target, str) or not target.strip() or "\n" in target.strip():
        return None
    return {"input": f"{prefix}{example['input'].strip()}", "target": target.strip()}
