"""``lorahpo evaluate``: downstream scores of a study's best adapters and of two baselines.

The models are the top-K completed trials by the study's objective, plus two baselines: the
base model without adapter (``base``) and the trial of the starting point (``x0``, the default
LoRA configuration every optimizer starts from). Each (model, task) pair is one unit of work,
stored as soon as it finishes (:mod:`lorahpo.evaluation.store`): a finished pair is reused on
the next call, and an interrupted call resumes at the pair it was on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from lorahpo.config import ConfigError
from lorahpo.errors import UserError
from lorahpo.evaluation import sandbox
from lorahpo.evaluation.store import BASE, EvaluationStore, TaskResult, model_key
from lorahpo.evaluation.tasks import TaskSpec

#: lm-eval's own output (its progress bars, warnings), under ``DIR/evaluation/``.
LOG_FILE = "lm-eval.log"


class EvaluationError(RuntimeError):
    """One (model, task) pair could not be evaluated; the pairs finished before it are stored."""


@dataclass
class ModelEntry:
    """A model to evaluate.

    Attributes:
        key: ``base`` or ``trial-<number>``.
        roles: Why it is evaluated: ``base``, ``x0``, ``top-1``, ``top-2``...
        adapter: The adapter folder; None for the base model.
        trial: The trial number; None for the base model.
        value: The trial's objective value (validation loss), if any.
    """

    key: str
    roles: list[str]
    adapter: Path | None = None
    trial: int | None = None
    value: float | None = None


@dataclass
class Plan:
    """What an evaluation will do: the models, the tasks, and the pairs already stored."""

    models: list[ModelEntry]
    tasks: list[TaskSpec]
    todo: list[tuple[ModelEntry, TaskSpec]]
    reused: list[TaskResult]
    skipped: list[str] = field(default_factory=list)


def plan_models(study: Any, top: int) -> tuple[list[ModelEntry], list[str]]:
    """The base model, the starting-point trial and the ``top`` best trials, with their adapters.

    Returns:
        The models (a trial that is both x0 and among the best appears once, with both roles),
        and one line per trial left out because its adapter is not on disk.
    """
    roles: dict[int, tuple[Any, list[str]]] = {}
    x0 = study.x0_record()
    if x0 is not None and x0.status == "complete":
        roles[x0.number] = (x0, ["x0"])
    for rank, record in enumerate(study.best(top), 1):
        roles.setdefault(record.number, (record, []))[1].append(f"top-{rank}")
    models = [ModelEntry(BASE, ["base"])]
    skipped = []
    for record, names in roles.values():
        adapter = record.directory / "adapter"
        if adapter.is_dir():
            models.append(ModelEntry(model_key(record.number), names, adapter, record.number, record.value))
        else:
            skipped.append(f"trial {record.number} ({'/'.join(names)}): no adapter on disk")
    return models, skipped


def settings(spec: TaskSpec, entry: ModelEntry, base_model: str, limit: int | None) -> dict[str, Any]:
    """What a stored result depends on: it is reused only when these are equal."""
    return {
        "task": spec.lm_eval_name,
        "task_version": spec.version,
        "num_fewshot": spec.num_fewshot,
        "limit": limit,
        "base_model": base_model,
        "adapter": str(entry.adapter) if entry.adapter else None,
    }


def make_plan(study_dir: Path, tasks: list[TaskSpec], top: int, limit: int | None) -> Plan:
    """Decide what to evaluate in a study folder and what is already stored.

    Raises:
        ConfigError: Not a LoRA study.
    """
    from lorahpo.study import Study

    study = Study.load(study_dir)
    lora = study.config.objective.lora
    if lora is None:
        raise ConfigError(f"{study_dir} is not a LoRA study: it has no models to evaluate")
    models, skipped = plan_models(study, top)
    store = EvaluationStore(study_dir)
    todo, reused = [], []
    for entry in models:
        for spec in tasks:
            found = store.reusable(entry.key, spec.name, settings(spec, entry, lora.model.name, limit))
            if found is None:
                todo.append((entry, spec))
            else:
                reused.append(found)
    return Plan(models, tasks, todo, reused, skipped)


def evaluate(
    study_dir: str | Path,
    tasks: list[TaskSpec],
    *,
    top: int = 3,
    limit: int | None = None,
    device: str = "auto",
    batch_size: int = 8,
    on_result: Callable[[TaskResult], None] | None = None,
    progress: bool = True,
    allow_unsandboxed: bool = False,
) -> Plan:
    """Evaluate a study's models on ``tasks``; store each result as soon as it is known.

    Args:
        study_dir: The study folder.
        tasks: The tasks (see :func:`lorahpo.evaluation.tasks.parse_tasks`).
        top: How many of the best trials to evaluate besides the baselines.
        limit: At most this many rows of each (sub)task; None for all.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: Rows per forward pass.
        on_result: Called with each new result.
        progress: Show a progress bar.
        allow_unsandboxed: Where the sandbox cannot run, run generated code (HumanEval) without it
            instead of refusing.

    Returns:
        The plan that was carried out.

    Raises:
        UserError: A task runs generated code, the sandbox cannot run here, and
            ``allow_unsandboxed`` is False (nothing is evaluated).
    """
    from lorahpo.evaluation import harness
    from lorahpo.study import Study

    study_dir = Path(study_dir)
    plan = make_plan(study_dir, tasks, top, limit)
    study = Study.load(study_dir)
    assert study.config.objective.lora is not None
    base_model = study.config.objective.lora.model
    store = EvaluationStore(study_dir)
    if plan.todo:
        if any(_runs_code(spec) for _, spec in plan.todo):
            _check_sandbox(allow_unsandboxed)
        include = [spec.prepare() for spec in tasks if spec.prepare is not None]
        manager = harness.task_manager(include, with_lm_eval_tasks=any(s.prepare is None for s in tasks))
        store.folder.mkdir(parents=True, exist_ok=True)
        # lm-eval and transformers draw progress bars and warnings of their own on stderr, and lm-eval
        # runs git: all of it goes to a log file, so that it neither clutters the output nor breaks
        # the bar drawn here.
        with (
            _Bar(len(plan.todo), enabled=progress) as bar,
            open(store.folder / LOG_FILE, "a") as log,
            sandbox.unsandboxed_allowed(allow_unsandboxed),
        ):
            for entry in plan.models:
                pairs = [spec for e, spec in plan.todo if e is entry]
                if not pairs:
                    continue
                bar.show(f"{entry.key}: loading")
                with _stderr_to(log), _failure(f"loading {entry.key}", log):
                    lm = harness.load_model(base_model, entry.adapter, device=device, batch_size=batch_size)
                for spec in pairs:
                    bar.show(f"{entry.key} · {spec.name}")
                    print(f"--- {entry.key} {spec.name} (limit {limit})", file=log, flush=True)
                    with _stderr_to(log), _failure(f"{entry.key} on {spec.name}", log):
                        result, samples = _run_pair(lm, entry, spec, manager, limit, base_model.name)
                    store.put(result, samples)
                    bar.advance()
                    if on_result is not None:
                        on_result(result)
                del lm
    store.write_summary(study.optuna_study, {e.key: e.roles for e in plan.models})
    return plan


def _run_pair(
    lm: Any, entry: ModelEntry, spec: TaskSpec, manager: Any, limit: int | None, base_model: str
) -> tuple[TaskResult, list[dict[str, Any]]]:
    """Score one model on one task: the result to store, and the per-row answers."""
    from lorahpo.evaluation import harness

    start = time.monotonic()
    scores = harness.run_task(lm, spec, manager, limit=limit)
    result = TaskResult(
        model=entry.key,
        task=spec.name,
        metric=scores.metric,
        score=scores.score,
        n=scores.n,
        settings=settings(spec, entry, base_model, limit),
        stderr=scores.stderr,
        subtasks=scores.subtasks,
        duration_s=round(time.monotonic() - start, 1),
        details=_details(spec),
    )
    return result, scores.samples


def _runs_code(spec: TaskSpec) -> bool:
    """Whether the task runs generated code (in the sandbox)."""
    return spec.name.startswith("humaneval")


def _check_sandbox(allow_unsandboxed: bool) -> None:
    """Refuse, in one line naming the fix, to run generated code where the sandbox cannot run."""
    with sandbox.unsandboxed_allowed(allow_unsandboxed):
        try:
            sandbox.sandboxed()
        except sandbox.SandboxUnavailable as exc:
            raise UserError(f"HumanEval runs generated code: {exc}") from None


def _details(spec: TaskSpec) -> dict[str, Any]:
    from importlib.metadata import version

    details: dict[str, Any] = {"lm_eval": version("lm_eval"), "lm_eval_task": spec.lm_eval_name}
    if _runs_code(spec):
        details["sandbox"] = sandbox.describe(sandbox.sandboxed())
    return details


@contextlib.contextmanager
def _failure(what: str, log: TextIO) -> Iterator[None]:
    """Turn an error of lm-eval or the model into one :class:`EvaluationError`; the traceback goes to ``log``."""
    try:
        yield
    except Exception as exc:
        import traceback

        traceback.print_exc(file=log)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise EvaluationError(f"{what} failed: {type(exc).__name__}: {first} (details in {log.name})") from exc


@contextlib.contextmanager
def _stderr_to(log: TextIO) -> Iterator[None]:
    """Send what is written to stderr, by Python code or by child processes (file descriptor 2), to ``log``."""
    sys.stderr.flush()
    log.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2: Python-level output only
        with contextlib.redirect_stderr(log):
            yield
        return
    try:
        os.dup2(log.fileno(), 2)
        with contextlib.redirect_stderr(log):
            yield
    finally:
        log.flush()
        os.dup2(saved, 2)
        os.close(saved)


class _Bar:
    """A rich progress bar over (model, task) pairs, or nothing when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        # The bar draws on a copy of the terminal's descriptor: stderr itself is redirected to the
        # log while lm-eval runs.
        self._out = os.fdopen(os.dup(sys.stderr.fileno()), "w") if enabled else None
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        self._progress = Progress(*columns, console=Console(file=self._out), disable=not enabled)
        self._task = self._progress.add_task("evaluation", total=total)

    def __enter__(self) -> _Bar:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)
        if self._out is not None:
            self._out.close()

    def show(self, text: str) -> None:
        self._progress.update(self._task, description=text)

    def advance(self) -> None:
        self._progress.advance(self._task)
