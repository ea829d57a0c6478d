"""Does PEFT's fp32 cast of adapter inputs slow down bf16 LoRA training? (GPU benchmark)

    python benchmarks/adapter_cast.py [--shapes smollm2-135m tinyllama-1.1b] [--steps 20]

lorahpo trains as ``finetune/train.py`` sets up a trial in bf16: base weights in bf16, LoRA
weights in fp32 (``autocast_adapter_dtype``), forward and backward under bf16 autocast. PEFT
then casts each adapter's input up to the fp32 of the adapter weights, and autocast casts it
back down for the product. This script measures training tokens/s with that cast on (PEFT's
default) and off (``cast_input_dtype_enabled = False`` on every LoRA layer), on randomly
initialised Llama models of real shapes (speed does not depend on the weights' values), LoRA
rank 8 on q/k/v/o, AdamW. Runs alternate on/off/on/off on the same model; each run is
``--steps`` timed steps after 3 warm-up steps. It also reports how far the losses of the two
settings are apart on the same batch (they should agree to bf16 rounding).

Results: ``results/adapter_cast.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": True},
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                     "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True},
    "tinyllama-1.1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                       "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
                       "tie_word_embeddings": False},
}


def set_input_cast(model: Any, enabled: bool) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = enabled


def measure(shape: str, batch: int, length: int, steps: int, device: torch.device) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=max(length, 128), **SHAPES[shape])
    base = LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(base, lora, autocast_adapter_dtype=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (batch, length), device=device)

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    runs: dict[str, list[float]] = {"cast_on": [], "cast_off": []}
    for enabled in (True, False, True, False):
        set_input_cast(model, enabled)
        for _ in range(3):
            step()
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        runs["cast_on" if enabled else "cast_off"].append(batch * length * steps / (time.perf_counter() - start))
    model.eval()
    losses = {}
    with torch.no_grad():
        for enabled in (True, False):
            set_input_cast(model, enabled)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                losses[enabled] = float(model(input_ids=ids, labels=ids).loss)
    on, off = statistics.mean(runs["cast_on"]), statistics.mean(runs["cast_off"])
    return {
        "shape": shape,
        "batch": batch,
        "length": length,
        "steps": steps,
        "tokens_per_s_cast_on": [round(v) for v in runs["cast_on"]],
        "tokens_per_s_cast_off": [round(v) for v in runs["cast_off"]],
        "speedup_cast_off": round(off / on, 3),
        "loss_cast_on": losses[True],
        "loss_cast_off": losses[False],
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.type == "cuda" else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["smollm2-135m", "tinyllama-1.1b"], choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "adapter_cast.json")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import peft
    import transformers

    rows = []
    for shape in args.shapes:
        row = measure(shape, args.batch, args.length, args.steps, device)
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {"benchmark": "adapter_cast", "device": str(device), "machine": machine(),
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "peft": peft.__version__},
              "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
