"""Downstream metrics measured inside a LoRA trial, on the adapted model while it is in memory.

Three kinds of evaluator (:class:`~lorahpo.finetune.config.EvaluatorSpec`):

- ``choice``: multiple-choice accuracy by log-likelihood, as lm-eval's ``acc`` computes it: each
  option is scored by the summed log-probability of its tokens after ``Q: <question>\\nA:``,
  and the most likely option is the answer. Also the mean log-probability of the right option,
  a smoother signal than accuracy. Each question's prefix runs once; its options continue
  from the prefix's key/value cache. Built-in questions: :mod:`lorahpo.evaluation.retention`.
  With ``shots: k`` the question is asked as few-shot benchmarks ask it (k solved examples of
  its task, lettered options) and scored by whether greedy decoding gives the right `` (X)``:
  zero-shot log-likelihood misses adapters that answer few-shot prompts with nothing at all.
- ``generate``: greedy exact match (whitespace and case ignored). Built-in examples: the
  study's validation split, i.e. held-out examples of the training tasks.
- ``lm_eval``: any lm-eval task, run on the model object through lm-eval's ``HFLM``.

Every value comes with its standard error (``<name>_se``), the base model's value
(``<name>_base``, measured once per study: before training the adapter is exactly zero, so the
trial that first needs it measures it on its own model and leaves it for the others) and the
drop from the base model (``<name>_drop = base - adapted``; higher scores are better).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lorahpo.finetune.config import EvaluatorSpec, LoraTrialConfig
from lorahpo.finetune.data import IGNORE_INDEX, Example, render
from lorahpo.finetune.prefix import Prefix, cache_of, common_length, run_prefix

if TYPE_CHECKING:
    from lorahpo.finetune.device import Precision


class EvaluatorError(ValueError):
    """An evaluator's input cannot be used; the message is one line naming the evaluator."""


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: int
    task: str | None = None  # solved examples shown before a question are of its task


@dataclass(frozen=True)
class Prompted:
    prompt_ids: tuple[int, ...]
    answer: str


@dataclass
class Context:
    """What evaluators need from the trial: the model, its tokenizer and where it computes."""

    model: Any
    tokenizer: Any
    device: torch.device
    precision: Precision
    template: str
    validation: list[Example]


# ------------------------------------------------------------------ inputs


def load_questions(spec: EvaluatorSpec) -> list[Question]:
    """The questions of a ``choice`` evaluator: its JSONL file, or the built-in retention set."""
    asked, _ = _choice_rows(spec)
    return [_question(row, f"{_source(spec)} row {number}") for number, row in enumerate(asked, start=1)]


def load_examples(spec: EvaluatorSpec, questions: list[Question]) -> dict[str | None, list[Question]]:
    """The ``spec.shots`` solved examples shown before the questions of each task (``None``: no task).

    They are rows not asked: of the same task when the rows name one (the retention pool always
    does), else any. A fixed seeded draw that prefers rows with at most four options, so that the
    prompts stay short.

    Raises:
        EvaluatorError: Fewer such rows than ``spec.shots``, or a drawn row that is not a question.
    """
    import random

    for q in questions:
        if len(q.choices) > len(LETTERS):
            raise EvaluatorError(
                f"{_source(spec)}: {len(q.choices)} options are too many to letter (A-Z): {q.question!r}"
            )
    _, rest = _choice_rows(spec)
    examples: dict[str | None, list[Question]] = {}
    for task in sorted({q.task for q in questions}, key=str):
        rows = [r for r in rest if task is None or (isinstance(r, dict) and r.get("task") == task)]
        of_task = f" of task {task}" if task is not None else ""
        if len(rows) < spec.shots:
            raise EvaluatorError(
                f"evaluator {spec.name}: {spec.shots} shots need {spec.shots} rows{of_task} besides the "
                f"{len(questions)} asked; {spec.path or 'retention'} has {len(rows)}"
            )
        random.Random(f"shots:{spec.name}:{spec.seed}:{task}").shuffle(rows)
        rows.sort(
            key=lambda r: max(len(r["choices"]), 4) if isinstance(r, dict) and isinstance(r.get("choices"), list) else 4
        )
        where = f"{_source(spec)} example{of_task}"
        examples[task] = [_question(row, f"{where} {number}") for number, row in enumerate(rows[: spec.shots], 1)]
        if any(len(e.choices) > len(LETTERS) for e in examples[task]):
            raise EvaluatorError(f"{where}: more options than letters (A-Z)")
    return examples


def _source(spec: EvaluatorSpec) -> str:
    return f"evaluator {spec.name}: {spec.path or 'retention'}"


def _choice_rows(spec: EvaluatorSpec) -> tuple[list[Any], list[Any]]:
    """The rows asked and, when the evaluator shows solved examples, the rows left for them."""
    if spec.path is None:
        from lorahpo.evaluation.retention import retention_pool, retention_questions

        asked = retention_questions(spec.size, spec.seed)
        if not spec.shots:
            return asked, []
        seen = {json.dumps(row, sort_keys=True) for row in asked}
        pool = [json.loads(line) for line in retention_pool().read_text(encoding="utf-8").splitlines()]
        return asked, [row for row in pool if json.dumps(row, sort_keys=True) not in seen]
    rows = _read_jsonl(spec)
    keep = _sample_indices(len(rows), spec)
    kept = set(keep)
    return [rows[i] for i in keep], [row for i, row in enumerate(rows) if i not in kept]


def _question(row: Any, where: str) -> Question:
    if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not row["question"].strip():
        raise EvaluatorError(f"{where}: needs a non-empty `question`")
    choices = row.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise EvaluatorError(f"{where}: needs `choices`, a list of at least two non-empty strings")
    answer = row.get("answer")
    if isinstance(answer, str):
        if answer not in choices:
            raise EvaluatorError(f"{where}: answer {answer!r} is not among its choices")
        answer = choices.index(answer)
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        raise EvaluatorError(f"{where}: `answer` must be one of the choices (or its index)")
    task = row.get("task")
    return Question(row["question"], tuple(choices), answer, task if isinstance(task, str) else None)


def load_prompts(spec: EvaluatorSpec, context: Context) -> list[Prompted]:
    """The examples of a ``generate`` evaluator: its JSONL file, or held-out validation examples."""
    if spec.path is None:
        out = []
        for example in context.validation[: spec.size]:
            start = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
            answer = [t for t in example.labels[start:] if t != context.tokenizer.eos_token_id]
            out.append(Prompted(tuple(example.input_ids[:start]), context.tokenizer.decode(answer)))
        return out
    out = []
    for row in check_prompts(spec):
        instruction = {"instruction": row["prompt"], "input": "", "output": ""}
        prompt, _ = render(instruction, context.template, context.tokenizer)
        ids = context.tokenizer(prompt, add_special_tokens=context.template != "chat")["input_ids"]
        out.append(Prompted(tuple(ids), row["answer"]))
    return out


def check_prompts(spec: EvaluatorSpec) -> list[dict[str, str]]:
    rows = _sample(_read_jsonl(spec), spec)
    required = ("prompt", "answer")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip() for k in required):
            raise EvaluatorError(
                f"evaluator {spec.name}: {spec.path} row {number}: needs non-empty `prompt` and `answer`"
            )
    return rows


def check(spec: EvaluatorSpec) -> None:
    """Fetch and check an evaluator's input once, before any trial runs.

    Raises:
        EvaluatorError: A missing file, a row without choices, an answer not among them, an
            empty set, too few rows left for ``shots``, or an unknown lm-eval task.
    """
    if spec.kind == "choice":
        questions = load_questions(spec)
        if spec.shots:
            load_examples(spec, questions)
    elif spec.kind == "generate" and spec.path is not None:
        check_prompts(spec)
    elif spec.kind == "lm_eval":
        _lm_eval_task(spec)


def _read_jsonl(spec: EvaluatorSpec) -> list[Any]:
    path = Path(spec.path or "").expanduser()
    if not path.is_file():
        raise EvaluatorError(f"evaluator {spec.name}: file not found: {spec.path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise EvaluatorError(f"evaluator {spec.name}: {spec.path} line {number}: not JSON ({e.msg})") from None
    if not rows:
        raise EvaluatorError(f"evaluator {spec.name}: {spec.path} has no rows")
    return rows


def _sample(rows: list[Any], spec: EvaluatorSpec) -> list[Any]:
    """At most ``spec.size`` rows: all of them when there are few enough, else a seeded sample in file order."""
    return [rows[i] for i in _sample_indices(len(rows), spec)]


def _sample_indices(count: int, spec: EvaluatorSpec) -> list[int]:
    if count <= spec.size:
        return list(range(count))
    import random

    return sorted(random.Random(f"{spec.name}:{spec.seed}").sample(range(count), spec.size))


# ------------------------------------------------------------------ measuring


@torch.no_grad()
def choice_logprobs(context: Context, questions: list[Question], batch_size: int = 8) -> list[list[float]]:
    """Summed log-probability of each option's tokens after its question (lm-eval's loglikelihood).

    Questions go ``batch_size`` at a time: their prefixes, left-padded, in one forward pass that
    keeps its key/value cache; then every option's later tokens in a second pass, each option
    row continuing its own question's cache rows. A question costs about one forward pass of
    its own length, and a small model is not held back by per-call overhead.
    """
    tokenizer = context.tokenizer
    encoded = [encode_options(tokenizer, f"Q: {q.question}\nA:", [f" {c}" for c in q.choices]) for q in questions]
    # Batches of similar lengths pad little: by the longest option, then by the prefix.
    order = sorted(range(len(encoded)), key=lambda i: (max(map(len, encoded[i][1])), len(encoded[i][0])))
    out: list[list[float]] = [[] for _ in encoded]
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for i, scores in zip(batch, _choice_batch(context, [encoded[i] for i in batch]), strict=True):
            out[i] = scores
    return out


def _choice_batch(context: Context, encoded: list[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
    """Scores of the options of a few questions, given as ``(prefix tokens, [option tokens])``."""
    model, device, tokenizer = context.model, context.device, context.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    width = max(len(prefix) for prefix, _ in encoded)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p, _ in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in encoded], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with context.precision.autocast(device):
        first = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=_last(1, ids)
        )
    head = first.logits[:, -1].float().log_softmax(-1)  # left padding: every prefix ends in the last column
    scores = [[float(head[b, o[0]]) for o in options] for b, (_, options) in enumerate(encoded)]
    rows = [(b, i, o) for b, (_, options) in enumerate(encoded) for i, o in enumerate(options) if len(o) > 1]
    if rows:  # the options' later tokens, each option row continuing its question's prefix
        cache, name = cache_of(first)
        owner = torch.tensor([b for b, _, _ in rows], device=device)
        cache.reorder_cache(owner)
        longest = max(len(o) for _, _, o in rows) - 1
        ids = torch.tensor([o[:-1] + [pad] * (longest + 1 - len(o)) for _, _, o in rows], device=device)
        mask = torch.cat([mask[owner], torch.ones_like(ids)], dim=1)  # padding after an option is never attended to
        lengths = torch.tensor([len(encoded[b][0]) for b, _, _ in rows], device=device)
        positions = lengths[:, None] + torch.arange(longest, device=device)[None, :]
        with context.precision.autocast(device):
            logits = model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{name: cache}
            ).logits
        rest = logits.float().log_softmax(-1)
        for r, (b, i, o) in enumerate(rows):
            scores[b][i] += sum(float(rest[r, j, o[j + 1]]) for j in range(len(o) - 1))
    return scores


def _last(count: int, ids: torch.Tensor) -> torch.Tensor:
    """``logits_to_keep`` for the last ``count`` columns of ``ids``, given as their indices.

    Given as a number, the model keeps them as a strided view of its hidden states, which the
    head's matrix product cannot fold into one matrix: it multiplies each row against its own
    contiguous copy of the transposed head weight (vocabulary x hidden). On a CPU in bf16 that
    copy took ~0.2 s per row for SmolLM2's 49k-token vocabulary, more than the rest of a
    forward pass. Indices give a contiguous copy of just those columns, and the same logits.
    """
    width = ids.shape[1]
    return torch.arange(width - count, width, device=ids.device)


def encode_options(tokenizer: Any, context: str, continuations: list[str]) -> tuple[list[int], list[list[int]]]:
    """Tokens of a context and of each continuation, split as lm-eval splits them.

    Trailing spaces of the context move to the continuation; each continuation's tokens are
    what encoding context + continuation adds after the context's own tokens.
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuations = context[:-spaces], [context[-spaces:] + c for c in continuations]
    prefix = tokenizer(context)["input_ids"]
    options = [tokenizer(context + c)["input_ids"][len(prefix) :] for c in continuations]
    return prefix, options


def measure_choice(context: Context, questions: list[Question], batch_size: int = 8) -> dict[str, float]:
    scores = choice_logprobs(context, questions, batch_size)
    right = [s.index(max(s)) == q.answer for s, q in zip(scores, questions, strict=True)]
    return {
        **_share(right),
        "logprob": sum(s[q.answer] for s, q in zip(scores, questions, strict=True)) / len(questions),
    }


def _share(right: list[bool]) -> dict[str, float]:
    """The share of right answers (``value``) and its standard error (``se``)."""
    accuracy = sum(right) / len(right)
    return {"value": accuracy, "se": math.sqrt(accuracy * (1 - accuracy) / max(len(right) - 1, 1))}


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def lettered(question: Question, solved: bool = False) -> str:
    """A question as BBH asks it: ``Q: ...\nOptions:\n(A) ...\nA:``, with its `` (X)`` when solved."""
    options = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(question.choices))
    text = f"Q: {question.question}\nOptions:\n{options}\nA:"
    return f"{text} ({LETTERS[question.answer]})" if solved else text


def fewshot_prompt(question: Question, examples: list[Question]) -> str:
    """The solved examples, then the question, a blank line apart."""
    return "\n\n".join([lettered(e, solved=True) for e in examples] + [lettered(question)])


@dataclass(frozen=True)
class Answered:
    """One few-shot question: the right `` (X)``'s log-probability, whether greedy decoding gives it,
    and the token greedy decoding puts first after ``A:`` (end of text or a newline: an empty answer)."""

    logprob: float
    greedy: bool
    first: int


@torch.no_grad()
def fewshot_answers(
    context: Context, questions: list[Question], examples: dict[str | None, list[Question]], batch_size: int = 8
) -> list[Answered]:
    """Each question after its task's solved examples, scored as lm-eval's loglikelihood scores
    the right continuation (summed log-probability, ``is_greedy``).

    The tokens the prompts of a task share (its examples) run once, and that key/value cache is
    copied to each batch of the task's questions: the rest of each prompt, left-padded, with the
    right continuation appended (teacher-forced) is then one forward pass.
    """
    tokenizer = context.tokenizer
    encoded = []  # (context + continuation tokens, context length), split as lm-eval splits them
    for q in questions:
        prompt, (right,) = encode_options(tokenizer, fewshot_prompt(q, examples[q.task]), [f" ({LETTERS[q.answer]})"])
        encoded.append((prompt + right, len(prompt)))
    out: list[Answered | None] = [None] * len(questions)
    for task in {q.task for q in questions}:
        members = [i for i, q in enumerate(questions) if q.task == task]
        # Every question keeps at least one context token: its pass predicts the first answer token.
        shared = min(common_length([encoded[i][0] for i in members]), *(encoded[i][1] - 1 for i in members))
        members.sort(key=lambda i: len(encoded[i][0]))  # batches of similar lengths pad little
        with context.precision.autocast(context.device):
            prefix = run_prefix(context.model, encoded[members[0]][0][:shared], context.device)
        for start in range(0, len(members), batch_size):
            batch = members[start : start + batch_size]
            answers = _fewshot_batch(context, prefix, [encoded[i] for i in batch])
            for i, answered in zip(batch, answers, strict=True):
                out[i] = answered
    return [a for a in out if a is not None]


def _fewshot_batch(context: Context, prefix: Prefix | None, encoded: list[tuple[list[int], int]]) -> list[Answered]:
    """A few questions continuing their task's prefix, each row left-padded."""
    model, device, tokenizer = context.model, context.device, context.tokenizer
    shared = prefix.length if prefix is not None else 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    own = [tokens[shared:] for tokens, _ in encoded]
    width = max(map(len, own))
    ids = torch.tensor([[pad] * (width - len(o)) + o for o in own], device=device)
    mine = torch.tensor([[0] * (width - len(o)) + [1] * len(o) for o in own], device=device)
    positions = shared + (mine.cumsum(-1) - 1).clamp(min=0)
    mask = torch.cat([torch.ones(len(own), shared, dtype=mine.dtype, device=device), mine], dim=1)
    kwargs = prefix.continued_by(len(own)) if prefix is not None else {}
    answer_lengths = [len(tokens) - length for tokens, length in encoded]
    keep = max(answer_lengths) + 1  # left padding: every row ends its answer in the last columns
    with context.precision.autocast(device):
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=_last(keep, ids),
            **kwargs,
        ).logits
    logp = logits.float().log_softmax(-1)
    out = []
    for row, ((tokens, length), n) in enumerate(zip(encoded, answer_lengths, strict=True)):
        right = torch.tensor(tokens[length:], device=device)
        scores = logp[row, keep - n - 1 : keep - 1]  # column j predicts the answer's token j
        picked = scores.argmax(-1)
        out.append(
            Answered(
                logprob=float(scores.gather(-1, right[:, None]).sum()),
                greedy=bool((picked == right).all()),
                first=int(picked[0]),
            )
        )
    return out


def measure_fewshot(
    context: Context, questions: list[Question], examples: dict[str | None, list[Question]], batch_size: int = 8
) -> dict[str, float]:
    """The share of questions whose greedy answer is the right letter, and its log-probability."""
    answers = fewshot_answers(context, questions, examples, batch_size)
    return {**_share([a.greedy for a in answers]), "logprob": sum(a.logprob for a in answers) / len(answers)}


@torch.no_grad()
def measure_generate(context: Context, prompts: list[Prompted], spec: EvaluatorSpec) -> dict[str, float]:
    """Greedy answers, left-padded in batches; exact match ignoring case and spacing."""
    tokenizer, model = context.tokenizer, context.model
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    right = []
    for start in range(0, len(prompts), spec.batch_size):
        batch = prompts[start : start + spec.batch_size]
        longest = max(len(p.prompt_ids) for p in batch)
        ids = torch.tensor([[pad] * (longest - len(p.prompt_ids)) + list(p.prompt_ids) for p in batch])
        mask = torch.tensor([[0] * (longest - len(p.prompt_ids)) + [1] * len(p.prompt_ids) for p in batch])
        with context.precision.autocast(context.device):
            generated = model.generate(
                input_ids=ids.to(context.device),
                attention_mask=mask.to(context.device),
                max_new_tokens=spec.max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
        for p, row in zip(batch, generated[:, longest:].tolist(), strict=True):
            answer = tokenizer.decode(row, skip_special_tokens=True)
            right.append(_normal(answer) == _normal(p.answer))
    return _share(right)


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def measure_lm_eval(context: Context, spec: EvaluatorSpec) -> dict[str, float]:
    from lm_eval.models.huggingface import HFLM

    from lorahpo.evaluation import harness

    task, manager = _lm_eval_task(spec)
    # The adapters sit inside the base model's layers, so the unwrapped model computes the adapted outputs.
    model = context.model.get_base_model() if hasattr(context.model, "get_base_model") else context.model
    lm = HFLM(pretrained=model, tokenizer=context.tokenizer, batch_size=spec.batch_size)
    if spec.num_fewshot is not None:
        from dataclasses import replace

        task = replace(task, num_fewshot=spec.num_fewshot)
    with context.precision.autocast(context.device):
        scores = harness.run_task(lm, task, manager, limit=spec.size, seed=spec.seed)
    if scores.score is None:
        raise EvaluatorError(f"evaluator {spec.name}: lm-eval reported no {scores.metric} for {spec.task}")
    return {"value": scores.score, "se": scores.stderr if scores.stderr is not None else math.nan}


def _lm_eval_task(spec: EvaluatorSpec) -> tuple[Any, Any]:
    """The task spec and an lm-eval task manager that knows it."""
    from lorahpo.evaluation import harness, tasks
    from lorahpo.extras import require

    require("eval", "lm_eval")
    task = tasks.resolve(spec.task or "")
    include = [p for p in (task.prepare() if task.prepare else None, spec.include_path) if p]
    # lm-eval's own few thousand task configs take ~15 s to index: only when the task is not among these.
    for defaults in (False, True) if include else (True,):
        manager = harness.task_manager([Path(p) for p in include], with_lm_eval_tasks=defaults)
        if task.lm_eval_name in manager.all_tasks:
            return task, manager
        if task.offline:
            break
    raise EvaluatorError(f"evaluator {spec.name}: unknown lm-eval task {spec.task!r}")


def measure(context: Context, spec: EvaluatorSpec) -> dict[str, float]:
    """``value`` and ``se`` (and ``logprob`` for choice) of one evaluator on ``context.model``."""
    was_training = context.model.training
    context.model.eval()
    try:
        if spec.kind == "choice" and spec.shots:
            questions = load_questions(spec)
            return measure_fewshot(context, questions, load_examples(spec, questions), spec.batch_size)
        if spec.kind == "choice":
            return measure_choice(context, load_questions(spec), spec.batch_size)
        if spec.kind == "generate":
            return measure_generate(context, load_prompts(spec, context), spec)
        return measure_lm_eval(context, spec)
    finally:
        context.model.train(was_training)


# ------------------------------------------------------------------ in a trial


def base_values(
    context: Context, specs: list[EvaluatorSpec], config: LoraTrialConfig, folder: Path | None
) -> dict[str, dict[str, float]]:
    """Each evaluator's values on the base model, read from ``folder`` or measured now and kept there.

    Call it before training: LoRA's B matrices start at zero, so the model is then the base model.
    """
    return {
        spec.name: _remembered(_base_file(spec, context, config, folder), partial(measure, context, spec))
        for spec in specs
    }


def trial_metrics(context: Context, specs: list[EvaluatorSpec], base: dict[str, dict[str, float]]) -> dict[str, float]:
    """Every evaluator's metrics on the adapted model, with the base values and the drops."""
    metrics: dict[str, float] = {}
    tic = time.perf_counter()
    for spec in specs:
        values, before = measure(context, spec), base[spec.name]
        n = spec.name
        metrics.update({n: values["value"], f"{n}_se": values["se"], f"{n}_base": before["value"]})
        metrics[f"{n}_drop"] = before["value"] - values["value"]
        if "logprob" in values:
            metrics[f"{n}_logprob"] = values["logprob"]
            metrics[f"{n}_logprob_drop"] = before["logprob"] - values["logprob"]
    metrics["evaluation_s"] = time.perf_counter() - tic
    return metrics


def _base_file(spec: EvaluatorSpec, context: Context, config: LoraTrialConfig, folder: Path | None) -> Path | None:
    """Where sibling trials share a base value: the name hashes everything the value depends on."""
    if folder is None:
        return None
    what = [
        spec.model_dump(mode="json"),
        config.model.model_dump(mode="json"),
        config.data.model_dump(mode="json") if spec.kind == "generate" else None,
        context.precision.name,
        context.device.type,
        torch.__version__,
    ]
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    return folder / f".base-{spec.name}-{key}.json"


def _remembered(path: Path | None, compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    from lorahpo.files import write_atomic

    if path is not None and path.exists():
        try:
            return {k: float(v) for k, v in json.loads(path.read_text()).items()}
        except (ValueError, TypeError, AttributeError):
            pass  # a damaged file is measured again and rewritten
    values = compute()
    if path is not None:
        write_atomic(path, json.dumps(values))
    return values
