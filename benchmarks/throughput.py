"""Training throughput of the blackbox next to a plain transformers Trainer + peft script.

    python benchmarks/throughput.py [--steps 20] [--threads N] [--out benchmarks/results/throughput.json]

Both sides fine-tune the built-in smollm2-135m with LoRA (rank 8, alpha 16, dropout 0.05, on
q/k/v/o), AdamW at 2e-4 with 3% warm-up and a cosine schedule, on the same ``steps x 8``
training examples of the built-in bigbench-instruct (cpu) data cut at 128 tokens, one pass in
batches of 8. They see the same examples, so the same non-pad tokens; what differs is how:

  trainer    ``Trainer`` with ``DataCollatorForSeq2Seq`` (pads each batch to its longest row),
             fp32, full-vocabulary logits at every position, as most fine-tuning scripts do;
  run_trial  lorahpo's loop: length-grouped batches, logits only where the loss reads them,
             bf16 where the hardware runs it fast (``precision: auto``), else fp32.

Throughput is non-pad training tokens per second of training (model loading and validation
excluded on both sides), by the wall clock and by the CPU time of this process. Both sides run
in this one process, one after the other, on the same thread count. On a machine shared with
other work the wall clock of each side depends on the load while it ran (recorded); the CPU
time much less, so its ratio is the fairer comparison there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine  # noqa: E402

from lorahpo.finetune import train  # noqa: E402
from lorahpo.finetune.batching import length_grouped  # noqa: E402
from lorahpo.finetune.config import DataConfig, LoraTrialConfig, ModelConfig  # noqa: E402
from lorahpo.finetune.data import build_splits  # noqa: E402
from lorahpo.finetune.device import resolve_device, resolve_precision  # noqa: E402
from lorahpo.finetune.models import load_model_and_tokenizer  # noqa: E402
from lorahpo.finetune.train import run_trial  # noqa: E402

BATCH, MAX_LENGTH, SEED = 8, 128, 0
LORA = {"rank": 8, "alpha": 16, "dropout": 0.05}
# A small validation split keeps run_trial's two validation passes (not timed) short.
DATA = DataConfig(
    preset="bigbench-instruct", size="cpu", max_length=MAX_LENGTH, max_examples=600, validation_fraction=0.05
)


class CountingCollator:
    """``DataCollatorForSeq2Seq`` that also counts the padded tokens it hands to the model."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorForSeq2Seq

        self._collate = DataCollatorForSeq2Seq(tokenizer, padding=True)
        self.padded = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self._collate(features)
        self.padded += batch["input_ids"].numel()
        return batch


@contextmanager
def training_cpu_time() -> Iterator[dict[str, float]]:
    """CPU seconds ``run_trial`` spends training: inside ``fit``, less its validation passes."""
    fit, validate = train.fit, train.validate
    spent = {"fit": 0.0, "validate": 0.0}

    def timed(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.process_time() - start

        return wrapper

    train.fit, train.validate = timed(fit, "fit"), timed(validate, "validate")
    try:
        yield spent
    finally:
        train.fit, train.validate = fit, validate


def run_trainer(examples: list[Any], steps: int) -> dict[str, float]:
    """Time a plain Trainer + peft fine-tune (fp32) over ``examples``."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    model, tokenizer = load_model_and_tokenizer(ModelConfig(), torch.float32, "cpu")
    torch.manual_seed(SEED)
    model = get_peft_model(
        model,
        LoraConfig(
            r=LORA["rank"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    collator = CountingCollator(tokenizer)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            max_steps=steps,
            learning_rate=2e-4,
            lr_scheduler_type="cosine",
            warmup_steps=0.03,
            weight_decay=0.0,
            use_cpu=True,
            save_strategy="no",
            logging_steps=max(1, steps // 4),
            report_to="none",
            label_names=["labels"],
            remove_unused_columns=False,
            dataloader_pin_memory=False,
            seed=SEED,
        )
        rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
        cpu_start = time.process_time()
        metrics = trainer.train().metrics
        cpu_seconds = time.process_time() - cpu_start
    tokens = sum(len(e.input_ids) for e in examples)
    seconds = metrics["train_runtime"]
    return {
        "steps": steps,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "cpu_seconds": cpu_seconds,
        "tokens_per_cpu_s": tokens / cpu_seconds,
        "padding_efficiency": tokens / collator.padded,
        "train_loss": metrics["train_loss"],
    }


def run_lorahpo(n_train: int, total_train: int, steps: int) -> dict[str, float]:
    """Time ``run_trial`` over the first ``n_train`` training examples."""
    config = LoraTrialConfig.model_validate(
        {
            "data": DATA.model_dump(),
            "lora": LORA,
            "training": {
                "batch_size": BATCH,
                "effective_batch_size": BATCH,
                "epochs": 1,
                "seed": SEED,
                "train_fraction": n_train / total_train,
            },
            "save_adapter": False,
        }
    )
    with training_cpu_time() as spent:
        result = run_trial(config)
    cpu_seconds = spent["fit"] - spent["validate"]
    if result.status != "complete":
        raise SystemExit(f"run_trial {result.status}: {result.reason}")
    m = result.metrics
    if m["steps"] != steps:
        raise SystemExit(f"run_trial made {m['steps']} steps, expected {steps}")
    return {
        "steps": m["steps"],
        "tokens": m["train_tokens"],
        "seconds": m["runtime_s"],
        "tokens_per_s": m["train_tokens_per_s"],
        "cpu_seconds": cpu_seconds,
        "tokens_per_cpu_s": m["train_tokens"] / cpu_seconds,
        "train_loss": m["train_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of 8 examples, each side")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "throughput.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["LORAHPO_NUM_THREADS"] = str(args.threads)  # run_trial sets it again from here
    load_before = os.getloadavg()

    _, tokenizer = load_model_and_tokenizer(ModelConfig(), torch.float32, "cpu")
    splits = build_splits(DATA, tokenizer)
    n_train = args.steps * BATCH
    if len(splits.train) < n_train:
        raise SystemExit(f"only {len(splits.train)} training examples; lower --steps")
    examples = splits.train[:n_train]
    grouped = length_grouped(examples, BATCH, seed=f"{SEED}-0")  # run_trial's first-epoch batches
    padded = sum(len(b) * max(len(examples[i].input_ids) for i in b) for b in grouped)

    results = {"trainer": run_trainer(examples, args.steps)}
    results["trainer"]["loadavg_after"] = os.getloadavg()
    results["run_trial"] = run_lorahpo(n_train, len(splits.train), args.steps)
    results["run_trial"]["loadavg_after"] = os.getloadavg()
    results["run_trial"]["padding_efficiency"] = results["run_trial"]["tokens"] / padded
    if results["trainer"]["tokens"] != results["run_trial"]["tokens"]:
        raise SystemExit("the two sides trained on different tokens")
    ours, theirs = results["run_trial"], results["trainer"]
    speedup = {
        "wall": ours["tokens_per_s"] / theirs["tokens_per_s"],
        "cpu": ours["tokens_per_cpu_s"] / theirs["tokens_per_cpu_s"],
    }

    print(
        f"\n{'variant':<10} {'steps':>5} {'tokens':>7} {'wall_s':>7} {'tok/s':>6} {'cpu_s':>7} "
        f"{'tok/cpu_s':>9} {'pad eff':>7}"
    )
    for name, r in results.items():
        print(
            f"{name:<10} {r['steps']:>5} {r['tokens']:>7} {r['seconds']:>7.1f} {r['tokens_per_s']:>6.1f} "
            f"{r['cpu_seconds']:>7.1f} {r['tokens_per_cpu_s']:>9.1f} {r['padding_efficiency']:>7.2f}"
        )
    print(f"speed-up of run_trial over Trainer: {speedup['wall']:.2f}x wall clock, {speedup['cpu']:.2f}x CPU time")

    device = resolve_device("auto")
    info = machine() | {
        "cpu_bf16": resolve_precision("auto", torch.device("cpu")).name == "bf16",
        "threads": torch.get_num_threads(),
        "transformers": __import__("transformers").__version__,
        "peft": __import__("peft").__version__,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    report = {
        "benchmark": "training tokens/s, run_trial vs transformers Trainer + peft (fp32)",
        "model": "smollm2-135m",
        "data": DATA.model_dump(exclude={"cache_dir", "sources"}),
        "batch_size": BATCH,
        "lora": LORA,
        "run_trial_precision": resolve_precision("auto", device).name,
        "machine": info,
        "results": results,
        "speedup": speedup,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
