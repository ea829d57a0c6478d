"""The blackbox: fine-tune a LoRA adapter with one trial config and return its validation loss.

One readable recipe, ``setup -> fit -> validate``, in a plain PyTorch loop:

* **setup** (:func:`load`, :func:`add_lora`) loads the model and tokenizer, builds the data
  splits and wraps the model with LoRA (seeded by ``training.seed``, so every trial starts from
  the same adapter initialisation).
* **fit** trains with AdamW, linear warm-up then a cosine/linear/constant schedule, gradient
  accumulation up to ``effective_batch_size`` and gradient clipping. Batches are grouped by
  length (little padding) in an order fixed by ``training.seed``, the same in every trial.
* **validate** measures the mean cross-entropy per response token over the whole validation
  split: token-weighted, so a batch of long answers counts for more than one of short answers.
  The prompt template's preamble, which every example starts with, runs once per validation
  (:mod:`lorahpo.finetune.prefix`): a third of the validation tokens of the built-in study.
* **evaluate** measures the downstream metrics of ``config.evaluate`` on the adapted model in
  memory, next to the base model's (:mod:`lorahpo.evaluation.in_trial`).

Speed: with bf16 the frozen base weights are stored in bf16 while the LoRA weights stay in fp32,
and matrix products run under autocast. Logits are computed only at response positions, the
only ones the loss reads: for a vocabulary of ~50k the full logits cost a fifth of the compute.
Batches are padded on the right and attention is causal, so the padding mask changes nothing
the loss reads and is left out (attention takes its fast causal path).

Failures are results: out of memory, a non-finite loss, a divergence, bad data or a missing
model return ``TrialResult(status="failed", reason=...)``; nothing here exits the process.
With ``training.auto_batch`` a trial out of memory first runs again at half the micro-batch
(the same effective batch), down to one example.

With ``training.processes: g > 1`` the trial trains data-parallel over g processes (one per
GPU with NCCL, or gloo on a CPU): this process is rank 0 and starts the others
(:func:`_parallel_attempt`). Every rank builds the same micro-batches of each optimizer step
and takes every g-th of them; the adapter gradients are summed over the ranks (one
all-reduce of the flattened gradients per step), each rank's loss being divided by the step's
response tokens over all ranks, so the update is the single-process one, up to float
rounding. Validation batches are shared out the same way. Rank 0 alone writes the trial
files, calls the reporter and evaluators, and returns the result.

``LORAHPO_NUM_THREADS`` sets the CPU threads of a trial (else torch's default, or
``OMP_NUM_THREADS``): trials that share a CPU should split its cores rather than fight over them.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch
import torch.nn.functional as F

from lorahpo.evaluation import in_trial as evaluators
from lorahpo.files import write_atomic
from lorahpo.finetune.batching import Batch, collate, length_grouped, pack
from lorahpo.finetune.config import LoraConfig, LoraTrialConfig, TrainingConfig
from lorahpo.finetune.data import IGNORE_INDEX, DataError, Example, build_splits
from lorahpo.finetune.device import Precision, describe, resolve_device, resolve_precision
from lorahpo.finetune.models import ModelError, load_model_and_tokenizer
from lorahpo.finetune.prefix import Prefix, common_length, run_prefix
from lorahpo.result import Reporter, Status, TrialResult, report

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


#: Architectures whose language-model head is a plain linear layer on the decoder's output
#: (no logit scaling or soft-capping), so logits may be computed at response positions only.
_PLAIN_HEAD = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "gemma", "olmo2", "smollm3", "starcoder2"}
)

#: How allocation failures read when they are not a ``torch.OutOfMemoryError`` (the CPU allocator's).
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")

#: How the reason of a trial that ran out of memory starts.
_OOM_REASON = "out of memory"


#: ``curve(step, values)``: the training curves of a trial, by step, as they are measured.
Curve = Callable[[int, dict[str, float]], None]
#: Names of the curves for the fields of ``train_log.jsonl``.
_CURVE_NAMES = {"loss": "train_loss", "lr": "learning_rate", "tokens": "train_tokens"}


class TrialFailure(Exception):
    """The trial ran but its outcome is unusable (non-finite loss, divergence)."""


@dataclass
class Setup:
    """A loaded model (not yet adapted), its tokenizer and data, and where it computes."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    train: list[Example]
    validation: list[Example]
    device: torch.device
    precision: Precision
    rank: int = 0  # this process among the trial's data-parallel ones
    world: int = 1  # how many there are (``training.processes``)


@dataclass
class Progress:
    """What a trial has measured so far; a pruned or failed trial returns it as its metrics."""

    metrics: dict[str, float] = field(default_factory=dict)
    intermediate: list[tuple[int, float]] = field(default_factory=list)


def run_trial(
    config: LoraTrialConfig,
    trial_dir: Path | None = None,
    reporter: Reporter | None = None,
    curve: Curve | None = None,
) -> TrialResult:
    """Fine-tune one LoRA adapter and measure its validation loss.

    Args:
        config: The trial's model, data, LoRA and training settings.
        trial_dir: Folder for ``train_log.jsonl`` and ``adapter/`` (PEFT
            format) when ``config.save_adapter``; nothing is written when None.
        reporter: Called with ``(step, validation_loss)`` after every intermediate evaluation
            (each epoch, or every ``training.eval_every`` steps); returning True stops the
            trial with status ``pruned``. A stop request after the last step is ignored; a
            reporter that takes a ``final`` keyword gets ``final=True`` with that last report.
        curve: Called with ``(step, values)`` at each optimizer step (``train_loss``,
            ``learning_rate``, ``train_tokens``) and each validation (``validation_loss``): the
            curves of ``train_log.jsonl``, as they are measured (experiment tracking).

    Returns:
        The trial's result. Its metrics are ``validation_loss`` (the objective),
        ``initial_validation_loss`` (of the untrained adapter), ``train_loss`` (token-weighted
        mean over the last epoch's worth of optimizer steps), ``runtime_s`` (training time
        without evaluation), ``train_tokens`` (non-pad tokens trained on),
        ``train_tokens_per_s``, ``peak_memory_mb`` (CUDA peak allocation, or the process's peak
        resident memory on CPU), ``trainable_params``, ``steps``, ``epochs`` and
        ``micro_batch_size`` (the batch size that ran: smaller than configured when
        ``training.auto_batch`` retried after running out of memory); then each
        evaluator's metrics (``config.evaluate``, :mod:`lorahpo.evaluation.in_trial`) and
        ``evaluation_s``, the time they took.
    """
    start = time.perf_counter()
    if trial_dir is not None:
        trial_dir.mkdir(parents=True, exist_ok=True)
    attempt = _attempt if config.training.processes == 1 else _parallel_attempt
    result = attempt(config, trial_dir, reporter, curve)
    while config.training.auto_batch and (result.reason or "").startswith(_OOM_REASON):
        smaller = smaller_batch_size(config.training)
        if smaller is None:
            break
        _say(f"out of memory at batch_size {config.training.batch_size}: retrying at {smaller}")
        training = config.training.model_copy(update={"batch_size": smaller})
        config = config.model_copy(update={"training": training})
        result = attempt(config, trial_dir, reporter, curve)
    result.duration_s = time.perf_counter() - start
    _say(f"trial {result.status}" + (f": {result.reason}" if result.reason else ""))
    return result


def smaller_batch_size(cfg: TrainingConfig) -> int | None:
    """The batch size an out-of-memory trial retries at: at most half, and a divisor of the effective batch."""
    size = cfg.batch_size // 2
    while size > 1 and cfg.effective_batch_size % size:
        size -= 1
    return size or None


def _parallel_attempt(
    config: LoraTrialConfig, trial_dir: Path | None, reporter: Reporter | None, curve: Curve | None
) -> TrialResult:
    """One data-parallel run of the trial: this process is rank 0 and starts ranks 1 to g - 1.

    A failure on one rank fails the others at their next collective (gloo sees the closed
    connection; NCCL waits for its timeout), so rank 0's result is the trial's either way.
    """
    import socket

    import torch.distributed as dist
    import torch.multiprocessing as mp

    world = config.training.processes
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    backend = "nccl" if resolve_device(config.training.device).type == "cuda" else "gloo"
    context = mp.get_context("spawn")
    others = [
        context.Process(target=_rank_main, args=(rank, world, address, backend, config.model_dump_json()))
        for rank in range(1, world)
    ]
    for proc in others:
        proc.start()
    try:
        dist.init_process_group(backend, init_method=address, rank=0, world_size=world)
        try:
            return _attempt(config, trial_dir, reporter, curve, rank=0, world=world)
        finally:
            dist.destroy_process_group()
    finally:
        for proc in others:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
                proc.join()


def _rank_main(rank: int, world: int, address: str, backend: str, config_json: str) -> None:
    """Rank ``rank`` (> 0) of a data-parallel trial: it trains, and rank 0 writes and reports."""
    import torch.distributed as dist

    sys.stdout = open(os.devnull, "w")  # noqa: SIM115  # rank 0 prints the trial's progress
    config = LoraTrialConfig.model_validate_json(config_json)
    dist.init_process_group(backend, init_method=address, rank=rank, world_size=world)
    try:
        result = _attempt(config, None, None, None, rank=rank, world=world)
    finally:
        dist.destroy_process_group()
    if result.status == "failed":
        print(f"rank {rank}: {result.reason}", file=sys.stderr, flush=True)


def _attempt(
    config: LoraTrialConfig,
    trial_dir: Path | None,
    reporter: Reporter | None,
    curve: Curve | None,
    rank: int = 0,
    world: int = 1,
) -> TrialResult:
    """One run of the trial at its batch size (as rank ``rank`` of ``world``); every failure becomes a failed result."""
    progress = Progress()
    try:
        setup = load(config, rank, world)
        model = add_lora(setup.model, config.lora, config.training.seed)
        if config.training.gradient_checkpointing:
            checkpointing(model.get_base_model())
        adapters_follow_autocast(model, setup.precision)
        progress.metrics["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        # Ranks measure the untrained loss together: none may read it from a file alone.
        untrained = _untrained_loss_file(config, setup, trial_dir) if world == 1 else None
        evaluate = config.evaluate if rank == 0 else []
        if evaluate:  # the base model's scores, while the adapters are still zero
            context = evaluators.Context(
                model, setup.tokenizer, setup.device, setup.precision, config.data.template, setup.validation
            )
            base = evaluators.base_values(context, evaluate, config, trial_dir.parent if trial_dir else None)
        with _train_log(trial_dir, curve) as log:
            stopped = fit(
                model, setup, config.training, progress, reporter, log, untrained, config.lora.loraplus_lr_ratio
            )
        status: Status = "pruned" if stopped else "complete"
        if status == "complete" and evaluate:
            progress.metrics.update(evaluators.trial_metrics(context, evaluate, base))
            _say("evaluated: " + ", ".join(f"{s.name} {progress.metrics[s.name]:.4g}" for s in config.evaluate))
        if status == "complete" and config.save_adapter and trial_dir is not None:
            model.save_pretrained(trial_dir / "adapter")
        result = TrialResult(status, progress.metrics, None, progress.intermediate)
    except (DataError, ModelError, TrialFailure) as exc:
        result = TrialResult.failure(_one_line(exc), metrics=progress.metrics, intermediate=progress.intermediate)
    except Exception as exc:  # a failure is a result: the study goes on
        traceback.print_exc(file=sys.stdout)
        text = _one_line(exc)
        if isinstance(exc, torch.OutOfMemoryError) or any(m in text.lower() for m in _OOM_MESSAGES):
            reason = f"{_OOM_REASON}: {text}"
        else:
            reason = f"{type(exc).__name__}: {text}"
        result = TrialResult.failure(reason, metrics=progress.metrics, intermediate=progress.intermediate)
    finally:
        if torch.cuda.is_available():
            gc.collect()  # the failed attempt's model, before a retry loads another
            torch.cuda.empty_cache()
    return result


def load(config: LoraTrialConfig, rank: int = 0, world: int = 1) -> Setup:
    """Load the model, tokenizer and data splits of a trial, on its device and in its precision.

    Rank ``rank`` of a data-parallel trial on CUDA computes on GPU ``rank``.
    """
    device = resolve_device(config.training.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    precision = resolve_precision(config.training.precision, device)
    threads = os.environ.get("LORAHPO_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _say(describe(device, precision))
    model, tokenizer = load_model_and_tokenizer(config.model, precision.dtype, device)
    splits = build_splits(config.data, tokenizer)
    _say(splits.report.summary())
    n_train = max(1, round(len(splits.train) * config.training.train_fraction))
    # The split is already a seeded shuffle: its prefix is a fixed random subset, nested across fractions.
    return Setup(model, tokenizer, splits.train[:n_train], splits.validation, device, precision, rank, world)


def add_lora(model: PreTrainedModel, cfg: LoraConfig, seed: int) -> Any:
    """Wrap ``model`` with fresh LoRA adapters; the base weights are frozen, the adapters fp32."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    torch.manual_seed(seed)  # same adapter initialisation (and dropout stream) in every trial
    peft_cfg = PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # annotated int, but PEFT scales by alpha / r: a float works
        lora_dropout=cfg.dropout,
        target_modules=target_modules(model, cfg.target_modules),
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        init_lora_weights=True if cfg.init == "default" else cfg.init,
        bias="none",
        task_type="CAUSAL_LM",
    )
    # autocast_adapter_dtype keeps adapter weights in fp32 over a bf16/fp16 base: small
    # updates to bf16 weights would round away.
    return get_peft_model(model, peft_cfg, autocast_adapter_dtype=True)


#: Words in a module's path that place it in a block of a ``target_modules`` preset.
_BLOCK_WORDS = {"attention": ("attn", "attention"), "mlp": ("mlp", "feed_forward", "ffn")}


def target_modules(model: Any, spec: list[str] | str) -> list[str] | str:
    """The layers that get adapters: a list as given, ``all-linear`` as PEFT reads it, and the
    ``attention`` and ``mlp`` presets as the full paths of the linear layers inside the model's
    attention or feed-forward blocks (found by name, so any architecture's layer names work).

    Raises:
        ModelError: The model has no linear layer in the preset's blocks.
    """
    if not isinstance(spec, str) or spec == "all-linear":
        return spec
    words = _BLOCK_WORDS[spec]
    paths = [
        path
        for path, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and any(w in part for part in path.split(".")[:-1] for w in words)
    ]
    if not paths:
        raise ModelError(f"lora.target_modules {spec}: the model has no linear layer in such blocks; list them by name")
    return paths


def checkpointing(model: Any) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them.

    Non-reentrant checkpointing: gradients reach the adapters though the frozen inputs need none.
    """
    # transformers 5 renamed the method; 4.x has only the old name.
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})


def optimizer_groups(model: Any, learning_rate: float, loraplus_lr_ratio: float) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable weights; with LoRA+ the B matrices learn faster."""
    plain: list[torch.nn.Parameter] = []
    b: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (b if loraplus_lr_ratio != 1 and ".lora_B." in name else plain).append(param)
    groups = [{"params": plain, "lr": learning_rate}]
    if b:
        groups.append({"params": b, "lr": learning_rate * loraplus_lr_ratio})
    return groups


def adapters_follow_autocast(model: Any, precision: Precision) -> None:
    """Under bf16/fp16 autocast, feed the adapters the base model's activations as they are.

    PEFT casts each adapter's input up to the fp32 of the adapter weights, and autocast casts it
    straight back down for the product: extra passes over the activations, for the same result
    (autocast runs the adapter products in half precision either way). Turning the cast off
    gave 1.12x training tokens/s on a 1.1B Llama (bf16, H200) with the same loss to the last
    digit (``benchmarks/adapter_cast.py``).
    """
    from peft.tuners.lora import LoraLayer

    if precision.dtype == torch.float32:
        return
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.cast_input_dtype_enabled = False


def fit(
    model: Any,
    setup: Setup,
    cfg: TrainingConfig,
    progress: Progress,
    reporter: Reporter | None,
    log: Callable[..., None],
    untrained_file: Path | None = None,
    loraplus_lr_ratio: float = 1.0,
) -> bool:
    """Train ``model`` in place, filling ``progress``; return True when the reporter stopped it.

    The untrained adapter's validation loss is read from ``untrained_file`` when it is there,
    else measured and written to it.

    Raises:
        TrialFailure: The training loss became non-finite, or the final validation loss
            diverged from the untrained one.
    """
    from transformers import get_scheduler

    device, metrics = setup.device, progress.metrics
    accumulation = cfg.effective_batch_size // cfg.batch_size
    steps_per_epoch = math.ceil(math.ceil(len(setup.train) / cfg.batch_size) / accumulation)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    eval_every = cfg.eval_every or steps_per_epoch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = optimizer_groups(model, cfg.learning_rate, loraplus_lr_ratio)
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        "constant_with_warmup" if cfg.scheduler == "constant" else cfg.scheduler,
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    # fp16 gradients of the frozen activations can underflow; the scaler rescales them.
    scaler = torch.amp.GradScaler(device.type, enabled=setup.precision.name == "fp16")

    initial = _remembered(untrained_file, lambda: validate(model, setup.validation, setup, eval_batch_size(cfg)))
    metrics.update(initial_validation_loss=initial, micro_batch_size=cfg.batch_size)
    _say(f"initial validation loss {initial:.4f}; {total_steps} steps of {cfg.effective_batch_size} examples")

    recent: deque[tuple[float, int]] = deque(maxlen=steps_per_epoch)  # (loss sum, targets) of each step
    tokens, train_time = 0, 0.0
    print_every = max(1, total_steps // 50)
    model.train()
    for step, micro_batches in enumerate(_step_batches(setup.train, cfg, accumulation, total_steps), start=1):
        tic = time.perf_counter()
        batches = [
            pack(setup.train, indices, device)
            if cfg.packing
            else collate(setup.train, indices, setup.tokenizer.pad_token_id, device)
            for indices in micro_batches[setup.rank :: setup.world]  # data-parallel: this rank's share
        ]
        targets, step_tokens = sum(b.targets for b in batches), sum(b.tokens for b in batches)
        if setup.world > 1:
            targets, step_tokens = (int(v) for v in _summed(setup, [targets, step_tokens]))
        loss_sum = torch.zeros((), device=device)
        for batch in batches:
            with setup.precision.autocast(device):
                loss = response_loss_sum(model, batch)
            scaler.scale(loss / targets).backward()  # token-weighted over the whole effective batch
            loss_sum += loss.detach()
        step_loss = loss_sum.item()
        if setup.world > 1:
            _sum_gradients(params)
            step_loss = _summed(setup, [step_loss])[0]
        if not math.isfinite(step_loss):
            raise TrialFailure(f"non-finite loss at step {step}")
        if cfg.max_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        tokens += step_tokens
        train_time += time.perf_counter() - tic

        recent.append((step_loss, targets))
        metrics.update(
            train_loss=sum(s for s, _ in recent) / sum(n for _, n in recent),
            runtime_s=train_time,
            train_tokens=tokens,
            train_tokens_per_s=tokens / train_time,
            steps=step,
            epochs=step / steps_per_epoch,
        )
        log(step=step, loss=step_loss / targets, lr=lr, tokens=tokens)
        if step % print_every == 0 or step == total_steps:
            _say(
                f"step {step}/{total_steps} loss {step_loss / targets:.4f} lr {lr:.2e} "
                f"tokens/s {tokens / train_time:.0f}"
            )
        if step % eval_every == 0 or step == total_steps:
            value = validate(model, setup.validation, setup, eval_batch_size(cfg))
            progress.intermediate.append((step, value))
            metrics.update(validation_loss=value, peak_memory_mb=_peak_memory_mb(device))
            log(step=step, validation_loss=value)
            _say(f"step {step} validation loss {value:.4f}")
            last = step >= total_steps
            stop = reporter is not None and report(reporter, step, value, final=last) and not last
            if setup.world > 1:  # only rank 0 has the reporter: the others learn its answer
                stop = _summed(setup, [float(stop)])[0] > 0
            if stop:
                return True

    final = metrics["validation_loss"]
    if not math.isfinite(final):
        raise TrialFailure(f"non-finite validation loss after step {total_steps}")
    if final > cfg.divergence_factor * initial:
        raise TrialFailure(f"diverged: validation loss {final:.4g} > {cfg.divergence_factor:g} x initial {initial:.4g}")
    return False


def _step_batches(
    examples: list[Example], cfg: TrainingConfig, accumulation: int, total_steps: int
) -> Iterator[list[list[int]]]:
    """The micro-batches (example indices) of each optimizer step, epoch after epoch."""
    step, epoch = 0, 0
    while True:
        batches = length_grouped(examples, cfg.batch_size, seed=f"{cfg.seed}-{epoch}")
        for start in range(0, len(batches), accumulation):
            if step == total_steps:
                return
            step += 1
            yield batches[start : start + accumulation]
        epoch += 1


@torch.no_grad()
def validate(model: Any, examples: list[Example], setup: Setup, batch_size: int) -> float:
    """Mean cross-entropy per response token over ``examples`` (token-weighted, dropout off)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    with setup.precision.autocast(setup.device):
        prefix = run_prefix(model, examples[0].input_ids[: shared_prompt(examples)], setup.device) if examples else None
    # Sorted by length, no shuffle: the least padding, and the same batches every time.
    batches = length_grouped(examples, batch_size, seed=None)
    for indices in batches[setup.rank :: setup.world]:  # data-parallel: this rank's share
        batch = collate(examples, indices, setup.tokenizer.pad_token_id, setup.device)
        with setup.precision.autocast(setup.device):
            total += response_loss_sum(model, batch, prefix).item()
        count += batch.targets
    model.train(was_training)
    if setup.world > 1:
        total, count = _summed(setup, [total, count])
    return total / max(count, 1)


def shared_prompt(examples: list[Example]) -> int:
    """How many leading tokens all ``examples`` share before any loss target: the prompt
    template's preamble, run once for all of them (:mod:`lorahpo.finetune.prefix`).

    Nor is the token after them: it is predicted from the last shared token's hidden state,
    which the batches do not compute again.
    """
    first_targets = (next((i for i, t in enumerate(e.labels) if t != IGNORE_INDEX), len(e.labels)) for e in examples)
    return max(0, min(common_length([e.input_ids for e in examples]), *(t - 1 for t in first_targets)))


def _summed(setup: Setup, values: list[float]) -> list[float]:
    """``values`` summed over the ranks of a data-parallel trial (float64)."""
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=setup.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``params`` over the ranks, in one all-reduce of them flattened.

    Not DistributedDataParallel: it averages over ranks and expects the same number of
    backward passes on each, while a step's micro-batches may not share out evenly and each
    rank's loss is already divided by the step's targets over all ranks. A rank with no
    micro-batch in a step adds zeros.
    """
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for param in params:
        param.grad = flat[offset : offset + param.numel()].view_as(param)
        offset += param.numel()


def _untrained_loss_file(config: LoraTrialConfig, setup: Setup, trial_dir: Path | None) -> Path | None:
    """Where sibling trials share the untrained adapter's validation loss, or None.

    LoRA's B matrices start at zero, so before training every trial computes the base model's
    loss: the same number for all trials of a study. The file name hashes everything that
    number depends on (model, precision, device, batch size, the validation tokens). Adapters
    that do not start at zero (PiSSA, OLoRA: the base weights change; DoRA: a rescaling) give
    the base model's function only up to rounding, so each such trial measures its own.
    """
    if trial_dir is None or config.lora.init not in ("default", "gaussian") or config.lora.use_dora:
        return None
    key = hashlib.sha256()
    what = [
        config.model.model_dump(mode="json"),
        setup.precision.name,
        setup.device.type,
        eval_batch_size(config.training),
    ]
    key.update(json.dumps([what, torch.__version__], sort_keys=True).encode())
    for example in setup.validation:
        key.update(json.dumps([example.input_ids, example.labels]).encode())
    return trial_dir.parent / f".untrained-loss-{key.hexdigest()[:16]}.json"


def _remembered(path: Path | None, compute: Callable[[], float]) -> float:
    """``compute()``, kept in ``path`` (written atomically) and read back from it next time."""
    if path is not None and path.exists():
        try:
            return float(json.loads(path.read_text())["value"])
        except (ValueError, KeyError, TypeError):
            pass  # a damaged file is measured again and rewritten
    value = compute()
    if path is not None and math.isfinite(value):
        write_atomic(path, json.dumps({"value": value}))
    return value


def eval_batch_size(cfg: TrainingConfig) -> int:
    """Validation batch size: twice the training one, as no activations are kept for backward."""
    return 2 * cfg.batch_size


def response_loss_sum(model: Any, batch: Batch, prefix: Prefix | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy over the response tokens of ``batch`` (fp32).

    For architectures with a plain head, the decoder runs without the padding mask: padding
    is on the right and attention is causal, so no real token attends to a pad, and attention
    takes its fast causal path. The head then runs only at the positions the loss reads.
    A packed batch passes its position ids and no mask: transformers then confines attention
    to each example (a block-diagonal mask, or variable-length flash attention), as long as
    no key/value cache is asked for.

    With a ``prefix`` (validation; no packed batch), the rows continue the cache of their shared
    first tokens, none of which is a target (:func:`shared_prompt`), and run only their own.
    """
    skip = prefix.length if prefix is not None else 0
    cached = prefix.continued_by(len(batch.input_ids)) if prefix is not None else {}
    ids = batch.input_ids[:, skip:]
    targets = batch.labels[:, skip + 1 :]
    keep = targets != IGNORE_INDEX
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    packed = batch.position_ids is not None
    if base.config.model_type in _PLAIN_HEAD:
        decoder = base.get_decoder()
        hidden = decoder(input_ids=ids, position_ids=batch.position_ids, use_cache=bool(cached), **cached)
        logits = base.get_output_embeddings()(hidden.last_hidden_state[:, :-1][keep])
    else:
        mask = None if packed else batch.attention_mask
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=batch.position_ids, use_cache=bool(cached), **cached
        ).logits
        logits = logits[:, :-1][keep]
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource  # Unix only, like the CPU peak it reads

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _say(message: str) -> None:
    """A progress line; flushed, because the caller keeps stdout in a log file."""
    print(message, flush=True)


@contextmanager
def _train_log(trial_dir: Path | None, curve: Curve | None) -> Iterator[Callable[..., None]]:
    """``log(step=..., **values)``: a line of ``train_log.jsonl`` in the trial folder (line-buffered,
    so a killed trial keeps its log), and the same values to ``curve``."""
    file: TextIO | None = None if trial_dir is None else (trial_dir / "train_log.jsonl").open("w", buffering=1)

    def log(step: int, **values: float) -> None:
        if file is not None:
            file.write(json.dumps({"step": step, **values}) + "\n")
        if curve is not None:
            curve(step, {_CURVE_NAMES.get(k, k): float(v) for k, v in values.items()})

    try:
        yield log
    finally:
        if file is not None:
            file.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
