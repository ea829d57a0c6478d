"""The lm-evaluation-harness wrapper: load a model once, run tasks on it, read the scores.

A model is lm-eval's HF backend (``HFLM``) on the study's base model, with a LoRA adapter
applied through its ``peft=`` argument. The base model is resolved as training resolves it
(:func:`lorahpo.finetune.models.resolve_model`), so a ``.gguf`` file or a folder with a
``gguf_file`` reaches lm-eval as ``pretrained=<folder>, gguf_file=<name>``; the built-in
``smollm2-135m`` resolves to the plain folder converted from its GGUF file on first use.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorahpo.evaluation.tasks import TaskSpec
from lorahpo.finetune.config import ModelConfig

#: lm-eval result keys that are not metrics.
_NOT_METRICS = ("alias", "name", "sample_len", "sample_count", " ")


@dataclass
class Scores:
    """What one lm-eval run of one task measured.

    Attributes:
        metric: The metric reported as the score.
        score: The task's score (None when lm-eval reported none).
        stderr: Its standard error, when computed.
        n: Rows scored.
        subtasks: ``{subtask: {"score": ..., "n": ...}}`` for a group of tasks.
        samples: One record per scored row: the target, the raw and the scored answer, the score.
    """

    metric: str
    score: float | None
    stderr: float | None
    n: int
    subtasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)


def load_model(
    model: ModelConfig, adapter: Path | None, *, device: str = "auto", precision: str = "auto", batch_size: int = 8
) -> Any:
    """Load the base model (and the LoRA adapter in ``adapter``) as an lm-eval ``HFLM``.

    Args:
        model: The study's base model.
        adapter: A PEFT adapter folder, or None for the base model alone.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (as training resolves it: :mod:`lorahpo.finetune.device`), ``bf16``, ``fp16`` or ``fp32``.
        batch_size: Rows per forward pass.
    """
    from lm_eval.models.huggingface import HFLM

    from lorahpo.finetune.device import resolve_device, resolve_precision
    from lorahpo.finetune.models import contiguous_head, resolve_model

    source, kwargs = resolve_model(model)
    where = resolve_device(device)
    lm = HFLM(
        pretrained=source,
        peft=str(adapter) if adapter is not None else None,
        gguf_file=kwargs.get("gguf_file"),
        revision=kwargs.get("revision") or "main",
        trust_remote_code=kwargs.get("trust_remote_code", False),
        device=str(where),
        dtype=resolve_precision(precision, where).dtype,
        batch_size=batch_size,
    )
    contiguous_head(lm.model)
    return lm


def task_manager(include_paths: list[Path], with_lm_eval_tasks: bool) -> Any:
    """An lm-eval ``TaskManager`` that knows lorahpo's generated tasks.

    Indexing lm-eval's own few thousand task configs takes ~15 s, so that happens only when a
    task from them is asked for.
    """
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return TaskManager(
        include_path=[str(p) for p in include_paths] or None,
        include_defaults=with_lm_eval_tasks,
    )


def run_task(lm: Any, spec: TaskSpec, manager: Any, *, limit: int | None = None, seed: int = 0) -> Scores:
    """Run one task on a loaded model and read its scores.

    Args:
        lm: From :func:`load_model`.
        spec: The task.
        manager: From :func:`task_manager`.
        limit: At most this many rows of each (sub)task.
        seed: Seed of lm-eval's sampling of few-shot examples (where a task samples them).
    """
    from lm_eval import simple_evaluate

    out = simple_evaluate(
        model=lm,
        tasks=[spec.lm_eval_name],
        num_fewshot=spec.num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=100,  # the means reported here have closed-form errors; this bounds the others
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if out is None:  # only non-primary ranks of a multi-process run get None
        raise RuntimeError("lm-eval returned no results")
    return read_scores(out, spec)


def read_scores(out: dict[str, Any], spec: TaskSpec) -> Scores:
    """Read the score of ``spec`` from the output of ``lm_eval.simple_evaluate``."""
    results = out["results"]
    top = results.get(spec.lm_eval_name) or {}
    leaves = _leaves(out, spec.lm_eval_name)
    metric, key = _metric_key(top or results.get(leaves[0], {}), spec)
    n_samples = out.get("n-samples", {})
    subtasks = {}
    if leaves != [spec.lm_eval_name]:
        for leaf in leaves:
            prefix = spec.lm_eval_name + "_"
            name = leaf.removeprefix(prefix) if leaf.startswith(prefix) else leaf
            subtasks[name] = {"score": _number(results.get(leaf, {}).get(key)), "n": _n(n_samples, leaf)}
    samples = [
        _sample(leaf, row, metric) for leaf in leaves for row in out.get("samples", {}).get(leaf, [])
    ]
    stderr_key = key.replace(",", "_stderr,", 1)
    return Scores(
        metric=metric,
        score=_number(top.get(key)),
        stderr=_number(top.get(stderr_key)),
        n=sum(_n(n_samples, leaf) for leaf in leaves),
        subtasks=subtasks,
        samples=samples,
    )


def _leaves(out: dict[str, Any], name: str) -> list[str]:
    """The tasks that produced rows: a group's subtasks (recursively), or the task itself."""
    groups = out.get("group_subtasks", {})
    if name not in groups or not groups[name]:
        return [name]
    return [leaf for sub in groups[name] for leaf in _leaves(out, sub)]


def _metric_key(entry: dict[str, Any], spec: TaskSpec) -> tuple[str, str]:
    """The metric name and its ``metric,filter`` key in lm-eval's results."""
    if spec.metric is not None:
        return spec.metric, f"{spec.metric},{spec.filter}"
    for key in entry:  # a task passed through: the first metric it reports
        if "," in key and "_stderr," not in key and not key.startswith(_NOT_METRICS):
            return key.split(",", 1)[0], key
    return "score", "score,none"


def _sample(task: str, row: dict[str, Any], metric: str) -> dict[str, Any]:
    resps = row.get("resps") or [[""]]
    filtered = row.get("filtered_resps") or [""]
    return {
        "task": task,
        "doc_id": row.get("doc_id"),
        "target": row.get("target"),
        "answer": resps[0][0] if resps and resps[0] else "",
        "scored": filtered[0] if isinstance(filtered, list) and filtered else filtered,
        "score": _number(row.get(metric)),
    }


def _n(n_samples: dict[str, Any], task: str) -> int:
    entry = n_samples.get(task) or {}
    return int(entry.get("effective", 0))


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
