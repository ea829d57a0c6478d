"""LoRA training throughput of a trial against the hardware and against Trainer + PEFT (GPU benchmark).

    python benchmarks/gpu_throughput.py                 # 1B and 8B Llama shapes, seq 1024 and 2048, bf16; 8B 4-bit
    python benchmarks/gpu_throughput.py --cpu           # tiny shapes on a CPU (what CI runs)

Each case builds a randomly initialised Llama of real shape in code (nothing downloaded: speed
does not depend on the weights' values) and trains LoRA (rank 8 on q/k/v/o, AdamW, grad clip 1,
cosine schedule) on full-length synthetic examples whose last half is the response, two ways:

* ``run_trial``: the trial's own training loop (``lorahpo.finetune.train.fit``: bf16 base, fp32
  adapters, autocast, response-only logits), after a short warm-up run of the same loop;
* ``trainer``: transformers ``Trainer`` on the same PEFT model settings, ``bf16=True``, the same
  micro-batch, steps, learning rate and schedule; timed per step by a callback, warm-up steps
  left out.

Reported per arm: training tokens/s, model FLOPs utilisation (MFU) against the device's peak
dense bf16 rate, and peak CUDA memory. Model FLOPs per token, for LoRA on a frozen base: 4x the
base matmul weights (forward, and the backward to the activations; no weight gradients), 6x the
adapter weights, 12 x layers x hidden x sequence for attention, and 4 x hidden x vocabulary for
the head at response positions only (the tokens the loss reads). Recomputation under gradient
checkpointing is not counted. The 4-bit cases load the random weights through lorahpo's loading
path (``model.quantization: 4bit``: NF4, double quantization, bf16 compute).

Results: ``results/gpu_throughput.json`` and ``.md`` (or ``--out``), with the GPU named.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine, write_results  # noqa: E402

#: Llama shapes: Llama-3.2-1B and Llama-3.1-8B, and a tiny one for CPU runs.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": True},
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True},
    "llama-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False},
}

#: (shape, sequence length, micro-batch, quantization) of a full GPU run.
GPU_CASES = [
    ("llama-1b", 1024, 8, "none"),
    ("llama-1b", 2048, 4, "none"),
    ("llama-8b", 1024, 4, "none"),
    ("llama-8b", 2048, 2, "none"),
    ("llama-8b", 1024, 4, "4bit"),
    ("llama-8b", 2048, 2, "4bit"),
]
CPU_CASES = [("tiny", 64, 4, "none"), ("tiny", 128, 2, "none"), ("tiny", 64, 4, "4bit")]

#: Peak dense bf16 tensor rates in TFLOP/s, by a name fragment of ``torch.cuda.get_device_name``
#: (vendors' data sheets; without sparsity). The first fragment found in the name wins.
PEAK_BF16_TFLOPS = {
    "H200": 989.5, "H100 PCIe": 756.0, "H100": 989.5, "B200": 2250.0, "A100": 312.0, "L40S": 362.1,
    "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.2, "RTX 3090": 71.0, "A6000": 154.8,
}

RANK = 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LEARNING_RATE = 1e-4


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def flops_per_token(shape: dict[str, Any], length: int, response_share: float) -> float:
    """Model FLOPs of one trained token (see the module docstring)."""
    h, f, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    base = layers * (2 * h * h + 2 * h * kv + 3 * h * f)  # q, o; k, v; gate, up, down
    adapters = layers * RANK * (4 * h + 2 * (h + kv))  # A and B of q, o (h -> h) and k, v (h -> kv)
    attention = 12 * layers * h * length
    head = 4 * h * shape["vocab_size"] * response_share
    return 4 * base + 6 * adapters + attention + head


def examples(count: int, length: int, vocab: int, seed: int = 0) -> list[Any]:
    """Full-length synthetic examples; the second half is the response (the loss reads it)."""
    from lorahpo.finetune.data import IGNORE_INDEX, Example

    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        ids = torch.randint(2, vocab, (length,), generator=g).tolist()
        rows.append(Example(ids, [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]))
    return rows


def random_model(shape: str, length: int, quantization: str, device: torch.device, dtype: torch.dtype,
                 folder: Path) -> Any:
    """A random Llama of ``shape``; a quantized one goes through lorahpo's loading options."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from lorahpo.finetune.config import ModelConfig
    from lorahpo.finetune.models import loading_options

    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=max(length, 128), use_cache=False, **SHAPES[shape])
    with torch.device(device):  # initialised where it runs, in its dtype: an 8B model in seconds
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if quantization == "none":
        return model.eval()
    if not (folder / "config.json").is_file():  # saved once per case, loaded by both arms
        model.save_pretrained(folder)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    options = loading_options(ModelConfig(name=str(folder), quantization=quantization), dtype, device)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **options)
    model.config.use_cache = False
    return model.eval()


def measure_run_trial(model: Any, data: list[Any], batch: int, steps: int, warmup: int, device: torch.device,
                      precision: Any) -> dict[str, Any]:
    """Tokens/s of ``fit``, the trial's training loop, after a warm-up run of the same loop."""
    from lorahpo.finetune.config import LoraConfig, TrainingConfig
    from lorahpo.finetune.train import Progress, Setup, adapters_follow_autocast, add_lora, fit

    model = add_lora(model, LoraConfig(rank=RANK, alpha=2 * RANK, dropout=0.0, target_modules=TARGETS), seed=0)
    adapters_follow_autocast(model, precision)
    setup = Setup(model, _Pad(), data, data[:1], device, precision)
    done: list[float] = []
    for n in (warmup, steps):
        cfg = TrainingConfig(learning_rate=LEARNING_RATE, batch_size=batch, effective_batch_size=batch, max_steps=n,
                             warmup_ratio=0.0, divergence_factor=1e9)
        progress = Progress()
        _reset_peak(device)
        fit(model, setup, cfg, progress, None, lambda **record: None)
        done = [progress.metrics["train_tokens_per_s"], progress.metrics["train_tokens"]]
    return {"tokens_per_s": done[0], "tokens": done[1], "peak_memory_mb": _peak_mb(device)}


def measure_trainer(model: Any, data: list[Any], batch: int, steps: int, warmup: int, device: torch.device,
                    precision: Any) -> dict[str, Any]:
    """Tokens/s of transformers ``Trainer`` + PEFT at the same settings, warm-up steps left out."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, target_modules=TARGETS),
                           autocast_adapter_dtype=True)
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in data]
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="trainer-"), per_device_train_batch_size=batch, max_steps=warmup + steps,
        learning_rate=LEARNING_RATE, lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0,
        weight_decay=0.0, optim="adamw_torch", bf16=precision.name == "bf16", report_to=[], save_strategy="no",
        logging_strategy="no", use_cpu=device.type == "cpu", dataloader_num_workers=0, seed=0,
    )
    _reset_peak(device)
    Trainer(model=model, args=args, train_dataset=_Rows(rows), data_collator=_stack, callbacks=[Clock()]).train()
    timed = times[warmup - 1 :]  # from the end of the last warm-up step
    tokens = steps * batch * len(data[0].input_ids)
    return {"tokens_per_s": tokens / (timed[-1] - timed[0]), "tokens": tokens, "peak_memory_mb": _peak_mb(device)}


def run_case(shape: str, length: int, batch: int, quantization: str, steps: int, warmup: int, device: torch.device,
             peak: float | None) -> dict[str, Any]:
    from lorahpo.finetune.device import resolve_precision

    precision = resolve_precision("bf16" if device.type == "cuda" else "auto", device)
    data = examples(batch * (warmup + steps), length, SHAPES[shape]["vocab_size"])
    per_token = flops_per_token(SHAPES[shape], length, response_share=0.5)
    row: dict[str, Any] = {"shape": shape, "length": length, "batch": batch, "quantization": quantization,
                           "precision": precision.name, "steps": steps, "flops_per_token": per_token}
    with tempfile.TemporaryDirectory(prefix="gpu-throughput-") as folder:
        for arm, measure in (("run_trial", measure_run_trial), ("trainer", measure_trainer)):
            model = random_model(shape, length, quantization, device, precision.dtype, Path(folder))
            result = measure(model, data, batch, steps, warmup, device, precision)
            del model
            gc.collect()  # the trainer and optimizer of the arm hold the model until collected
            if device.type == "cuda":
                torch.cuda.empty_cache()
            result["mfu"] = result["tokens_per_s"] * per_token / (peak * 1e12) if peak else None
            row[arm] = result
            print(f"{shape} seq {length} x {batch} {quantization} {arm}: {result['tokens_per_s']:.0f} tokens/s",
                  flush=True)
    row["speedup"] = row["run_trial"]["tokens_per_s"] / row["trainer"]["tokens_per_s"]
    return row


def markdown(report: dict[str, Any]) -> str:
    where = report["machine"].get("gpu") or report["machine"]["cpu"]
    lines = [f"# LoRA training throughput on {where}", "",
             "| shape | seq x batch | base | run_trial tokens/s | MFU | peak MB | Trainer tokens/s | MFU | peak MB "
             "| speedup |", "|---|---|---|---|---|---|---|---|---|---|"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    def mb(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0f}"

    for r in report["cases"]:
        ours, theirs = r["run_trial"], r["trainer"]
        base = "bf16" if r["quantization"] == "none" else r["quantization"]
        lines.append(
            f"| {r['shape']} | {r['length']} x {r['batch']} | {base} | {ours['tokens_per_s']:.0f} | {pct(ours['mfu'])} "
            f"| {mb(ours['peak_memory_mb'])} | {theirs['tokens_per_s']:.0f} | {pct(theirs['mfu'])} "
            f"| {mb(theirs['peak_memory_mb'])} | {r['speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU (a test of the script, not of a GPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per arm (default 20 on a GPU, 3 on a CPU)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    p.add_argument("--only", nargs="*", default=None, help="run only the cases of these shapes")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak bf16 rate, if not in the table")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_throughput.json")
    args = p.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        p.error("no CUDA device: run with --cpu for the tiny CPU shapes")
    device = torch.device("cpu" if args.cpu else "cuda")
    steps = args.steps or (3 if args.cpu else 20)
    cases = CPU_CASES if args.cpu else GPU_CASES
    if args.only:
        cases = [c for c in cases if c[0] in args.only]
    if not _has_bitsandbytes():
        print("bitsandbytes is not installed: the 4-bit cases are left out (pip install 'lorahpo[quant]')")
        cases = [c for c in cases if c[3] == "none"]
    peak = peak_tflops(device, args.peak_tflops)
    import peft
    import transformers

    threads = torch.get_num_threads()
    if args.cpu:
        torch.set_num_threads(1)  # tiny matrices run fastest on one thread
    try:
        rows = [run_case(*case, steps, args.warmup, device, peak) for case in cases]
    finally:
        torch.set_num_threads(threads)
    report: dict[str, Any] = {
        "benchmark": "gpu_throughput", "device": str(device), "machine": machine(), "peak_bf16_tflops": peak,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "cases": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_results(args.out, report, markdown(report))
    return report


class _Pad:
    """The one thing ``fit`` asks of a tokenizer: its pad id (synthetic examples are never padded)."""

    pad_token_id = 0


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, list[int]]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]


def _stack(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "labels")}


def _has_bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    """Peak CUDA allocation since the last reset; None on a CPU (no per-arm peak there)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


if __name__ == "__main__":
    main()
    sys.exit(0)
