"""The downstream tasks lorahpo knows, and how each one reaches lm-eval.

Offline tasks are built from data in PyPI packages and need no hub access:

- ``bbh-bigbench``: BIG-Bench-Hard-style 3-shot exact match (:mod:`lorahpo.evaluation.bbh`);
- ``humaneval-offline``: HumanEval 0-shot pass@1 (:mod:`lorahpo.evaluation.humaneval`).

The paper's four benchmarks run from lm-eval's own task definitions (their data comes from the
hub), with the paper's few-shot counts: ``mmlu`` 5-shot, ``bbh`` 3-shot (lm-eval's
``bbh_fewshot``, answers without chain of thought, as InstructEval asked them), ``drop`` 3-shot;
and ``humaneval`` 0-shot pass@1, with lm-eval's data but scored in lorahpo's sandbox. Any other
name is passed to lm-eval as it is, with the task's own few-shot count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lorahpo.evaluation import bbh, humaneval

#: The tasks ``lorahpo evaluate`` runs when none are named: the two that work offline.
DEFAULT_TASKS = ("bbh-bigbench", "humaneval-offline")


@dataclass(frozen=True)
class TaskSpec:
    """A downstream task as lorahpo runs it.

    Attributes:
        name: The name users give (``bbh-bigbench``, ``mmlu``...).
        lm_eval_name: The task or group name inside lm-eval.
        num_fewshot: Few-shot examples; None keeps the task config's own count.
        metric: The metric reported as the task's score (first part of lm-eval's ``metric,filter`` key).
        filter: The lm-eval filter whose output is scored (``none`` when the task has none).
        prepare: Builds the task's lm-eval folder (generated YAML) and returns it; None for
            tasks lm-eval defines itself.
        version: Changes when lorahpo changes how the task is built or scored.
        offline: Whether it runs without hub access.
    """

    name: str
    lm_eval_name: str
    num_fewshot: int | None
    metric: str | None
    filter: str = "none"
    prepare: Callable[[], Path] | None = None
    version: int = 1
    offline: bool = False


KNOWN_TASKS: dict[str, TaskSpec] = {
    "bbh-bigbench": TaskSpec(
        "bbh-bigbench", bbh.GROUP, None, "exact_match", "extract", bbh.prepare, bbh.VERSION, offline=True
    ),
    "humaneval-offline": TaskSpec(
        "humaneval-offline",
        humaneval.OFFLINE_TASK,
        None,
        "pass@1",
        prepare=humaneval.prepare_offline,
        version=humaneval.VERSION,
        offline=True,
    ),
    "humaneval": TaskSpec(
        "humaneval", humaneval.HUB_TASK, None, "pass@1", prepare=humaneval.prepare_hub, version=humaneval.VERSION
    ),
    "mmlu": TaskSpec("mmlu", "mmlu", 5, "acc"),
    "bbh": TaskSpec("bbh", "bbh_fewshot", 3, "exact_match"),
    "drop": TaskSpec("drop", "drop", 3, "f1"),
}


def resolve(name: str) -> TaskSpec:
    """The spec of a task name: a known task, or an lm-eval task passed through as it is."""
    name = name.strip()
    if not name:
        raise ValueError("empty task name")
    return KNOWN_TASKS.get(name) or TaskSpec(name, name, None, None)


def parse_tasks(text: str | list[str] | None) -> list[TaskSpec]:
    """Specs of comma- or space-separated task names (default :data:`DEFAULT_TASKS`), duplicates dropped."""
    if text is None:
        names: list[str] = list(DEFAULT_TASKS)
    else:
        items = [text] if isinstance(text, str) else text
        names = [n for item in items for n in item.replace(",", " ").split()]
    seen: dict[str, TaskSpec] = {}
    for name in names:
        seen.setdefault(name, resolve(name))
    if not seen:
        raise ValueError("no task given")
    return list(seen.values())
