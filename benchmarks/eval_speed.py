"""Tokens/s of a trial's passes on the built-in model, in one process: training, validation, 3-shot retention.

    python benchmarks/eval_speed.py                       # fp32 and bf16, one thread
    python benchmarks/eval_speed.py --precision bf16 --reps 5

The built-in study's blackbox (SmolLM2-135M, bigbench-instruct, LoRA of the default config with
random B matrices, as after training) on the tabular benchmark's validation split (800 rows, a
quarter held out: 167 examples). Each repetition times, in turn:

- ``train``: 4 micro-batches of 8 training examples, forward and backward (no optimizer step);
- ``validation_whole``: the validation loss with every example run whole (before the preamble
  was shared);
- ``validation``: the validation loss as trials measure it (``train.validate``: the prompt
  template's preamble, shared by all examples, run once);
- ``retention_3shot``: the built-in study's evaluator (100 questions, 3 solved examples each);
- ``generate``: the ``in_domain`` evaluator (greedy answers, up to 32 new tokens, batches of 8)
  on 16 held-out validation examples.

Tokens are those of the examples (padding not counted; for the 3-shot evaluator, the tokens it
runs: each task's shared examples once, then each question's own; for ``generate``, the prompts'
tokens plus 32 per example, the most it generates). Background load changes every
number, but alike within a repetition: compare ratios. Results: ``results/eval_speed.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine, write_results

RESULTS = Path(__file__).parent / "results"


def measure(precision: str, reps: int) -> dict[str, Any]:
    from lorahpo import api
    from lorahpo.evaluation import in_trial
    from lorahpo.finetune import train
    from lorahpo.finetune.batching import collate, length_grouped
    from lorahpo.finetune.config import EvaluatorSpec
    from lorahpo.finetune.prefix import common_length

    conf, _ = api.study_config()
    lora = conf.objective.lora
    assert lora is not None
    data = lora.data.model_copy(update={"max_examples": 800, "validation_fraction": 0.25})
    training = lora.training.model_copy(update={"precision": precision})
    config = lora.model_copy(update={"data": data, "training": training})
    setup = train.load(config)
    model = train.add_lora(setup.model, config.lora, config.training.seed)
    train.adapters_follow_autocast(model, setup.precision)
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # an adapter that changes the outputs, as after training
            torch.nn.init.normal_(param, std=0.02)
    examples, device, pad = setup.validation, setup.device, setup.tokenizer.pad_token_id
    spec = config.evaluate[0]
    context = in_trial.Context(model, setup.tokenizer, device, setup.precision, config.data.template, examples)
    questions = in_trial.load_questions(spec)
    shots = in_trial.load_examples(spec, questions)

    def run_train() -> int:
        model.train()
        tokens = 0
        for indices in length_grouped(setup.train, 8, seed="0")[:4]:
            batch = collate(setup.train, indices, pad, device)
            with setup.precision.autocast(device):
                train.response_loss_sum(model, batch).backward()
            tokens += batch.tokens
        model.zero_grad(set_to_none=True)
        return tokens

    @torch.no_grad()
    def run_whole() -> int:
        model.eval()
        for indices in length_grouped(examples, train.eval_batch_size(config.training), seed=None):
            with setup.precision.autocast(device):
                train.response_loss_sum(model, collate(examples, indices, pad, device))
        return sum(len(e.input_ids) for e in examples)

    def run_validate() -> int:
        train.validate(model, examples, setup, train.eval_batch_size(config.training))
        return sum(len(e.input_ids) for e in examples)

    by_task: dict[Any, list[list[int]]] = {}
    for q in questions:
        prompt = in_trial.fewshot_prompt(q, shots[q.task]) + f" ({in_trial.LETTERS[q.answer]})"
        by_task.setdefault(q.task, []).append(setup.tokenizer(prompt)["input_ids"])
    # each task's shared tokens once, then each question's own
    retention_tokens = sum(sum(map(len, rows)) - (len(rows) - 1) * common_length(rows) for rows in by_task.values())

    def run_retention() -> int:
        model.eval()
        in_trial.fewshot_answers(context, questions, shots, spec.batch_size)
        return retention_tokens

    generating = EvaluatorSpec.model_validate({"name": "in_domain", "size": 16})
    prompts = in_trial.load_prompts(generating, context)
    generate_tokens = sum(len(p.prompt_ids) + generating.max_new_tokens for p in prompts)

    def run_generate() -> int:
        model.eval()
        in_trial.measure_generate(context, prompts, generating)
        return generate_tokens

    passes = {"train": run_train, "validation_whole": run_whole, "validation": run_validate,
              "retention_3shot": run_retention, "generate": run_generate}
    rates: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(reps):
        for name, run in passes.items():
            start = time.perf_counter()
            tokens = run()
            rates[name].append(tokens / (time.perf_counter() - start))
    model.eval()
    total = count = 0.0  # the loss with every example whole, to show that both ways agree
    with torch.no_grad():
        for indices in length_grouped(examples, train.eval_batch_size(config.training), seed=None):
            batch = collate(examples, indices, pad, device)
            with setup.precision.autocast(device):
                total += train.response_loss_sum(model, batch).item()
            count += batch.targets
    shared = train.shared_prompt(examples)
    return {
        "precision": precision,
        "validation_examples": len(examples),
        "shared_prompt_tokens": shared,
        "shared_share_of_validation_tokens": round(shared * len(examples) / sum(len(e.input_ids) for e in examples), 3),
        "validation_loss": train.validate(model, examples, setup, train.eval_batch_size(config.training)),
        "validation_loss_whole": total / count,
        "tokens_per_s": {name: [round(v) for v in values] for name, values in rates.items()},
        "median_tokens_per_s": {name: round(statistics.median(values)) for name, values in rates.items()},
    }


def markdown(result: dict[str, Any]) -> str:
    names = ["train", "validation_whole", "validation", "retention_3shot", "generate"]
    lines = ["# Tokens/s of a trial's passes (built-in model, one process)", "",
             f"Machine: {result['machine'].get('cpu')} ({result['machine'].get('cores')} cores), "
             f"{result['threads']} thread(s); load average before: {result['load_before']}. {result['note']}", "",
             "| precision | " + " | ".join(names) + " | validation speed-up | losses (shared / whole) |",
             "|---" * (len(names) + 3) + "|"]
    for r in result["runs"]:
        m = r["median_tokens_per_s"]
        lines.append(f"| {r['precision']} | " + " | ".join(str(m[n]) for n in names)
                     + f" | {m['validation'] / m['validation_whole']:.2f}x"
                     + f" | {r['validation_loss']:.8f} / {r['validation_loss_whole']:.8f} |")
    lines += ["", "Medians over the repetitions (tokens/s); train is forward and backward."]
    return "\n".join(lines) + "\n"


def main() -> None:
    import os

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--note", default="", help="a line for the Markdown, e.g. what else ran on the machine")
    p.add_argument("--out", type=Path, default=RESULTS / "eval_speed.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    runs = [measure(precision, args.reps) for precision in args.precision]
    result = {"machine": machine(), "threads": args.threads, "load_before": load, "note": args.note, "runs": runs}
    write_results(args.out, result, markdown(result))


if __name__ == "__main__":
    main()
