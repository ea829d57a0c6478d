"""Tiny stand-ins for a real model and data, built in code: the blackbox tests run in seconds.

* a byte-level BPE tokenizer trained on the fixture texts (exact round trip, EOS and pad);
* a 2-layer Llama with hidden size 32 and random weights, saved with ``save_pretrained``, and
  the same model and tokenizer written as a GGUF file the way llama.cpp's converter writes them;
* Alpaca-format instruction rows with simple, learnable answers, written as JSONL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorahpo.finetune.config import LoraTrialConfig

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
THINGS = ["sky", "grass", "sun", "coal", "snow", "carrot", "plum", "leaf"]


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny matrices run fastest on one thread, which also keeps other processes' load out."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def head_products(model: Any, run: Callable[[], Any]) -> list[str]:
    """The matrix-product ops that take the head's weight (hidden x vocabulary) while ``run()`` runs.

    ``aten::mm`` is the head as one matrix product; ``aten::bmm`` is one product per row, each
    against its own copy of the transposed weight (a strided input and a frozen weight).
    """
    from torch.profiler import ProfilerActivity, profile

    weight = tuple(model.get_output_embeddings().weight.shape[::-1])
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    products = [e for e in prof.events() if e.name in ("aten::mm", "aten::bmm")]
    return [e.name for e in products if any(tuple(shape[-2:]) == weight for shape in e.input_shapes)]


def instruction_rows(n: int = 48) -> list[dict[str, str]]:
    """Arithmetic and colour questions of varied lengths, with answers a small model can learn."""
    rows = []
    for i in range(n):
        a, b = i % 7 + 1, i % 5 + 2
        if i % 3 == 0:
            rows.append({"instruction": f"Add {a} and {b}.", "input": "", "output": f"The sum is {a + b}."})
        elif i % 3 == 1:
            thing, colour = THINGS[i % 8], COLOURS[i % 8]
            rows.append(
                {
                    "instruction": "Name the colour of the thing.",
                    "input": f"The thing is the {thing}. " * (1 + i % 4),
                    "output": f"The {thing} is {colour}.",
                }
            )
        else:
            rows.append(
                {
                    "instruction": f"Count from {a} to {a + b}.",
                    "input": "",
                    "output": " ".join(map(str, range(a, a + b + 1))),
                }
            )
    return rows


def build_tokenizer(texts: list[str]) -> Any:
    """A byte-level BPE tokenizer with ``<eos>`` and ``<pad>``, trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>")


def build_model(folder: Path, tokenizer: Any, seed: int = 0, max_positions: int = 256, hidden_size: int = 32) -> Path:
    """Save a random 2-layer Llama and ``tokenizer`` into ``folder``, loadable by ``from_pretrained``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_gguf(model_dir: Path, path: Path) -> Path:
    """Write the model and tokenizer in ``model_dir`` as an F32 GGUF file (llama architecture)."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_vocab_size(c.vocab_size)

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [""] * len(tokenizer)
    for token, index in backend["model"]["vocab"].items():
        tokens[index] = token
    special = {t["content"] for t in backend["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in backend["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.eos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)

    def permute(w: Any, heads: int) -> Any:  # llama.cpp's rotary layout of q/k rows
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    names = {
        "attn_norm": "input_layernorm",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(c.num_hidden_layers):
        hf = f"model.layers.{i}."
        writer.add_tensor(
            f"blk.{i}.attn_q.weight", permute(weights[hf + "self_attn.q_proj.weight"], c.num_attention_heads)
        )
        writer.add_tensor(
            f"blk.{i}.attn_k.weight", permute(weights[hf + "self_attn.k_proj.weight"], c.num_key_value_heads)
        )
        for gguf_name, hf_name in names.items():
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", weights[hf + hf_name + ".weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@dataclass
class Tiny:
    """Paths of a tiny model folder and its instruction data."""

    model_dir: Path
    data_path: Path

    def config(self, **training: Any) -> LoraTrialConfig:
        """A trial config on the tiny model and data; ``training`` overrides training fields."""
        return LoraTrialConfig.model_validate(
            {
                "model": {"name": str(self.model_dir)},
                "data": {"preset": None, "sources": [{"path": str(self.data_path)}], "max_length": 128},
                "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
                "training": {"batch_size": 4, "effective_batch_size": 4, "learning_rate": 1e-2, **training},
            }
        )


def make_tiny(folder: Path) -> Tiny:
    """Write the tiny model, tokenizer and data into ``folder``."""
    from lorahpo.finetune.data import ALPACA_PROMPT

    rows = instruction_rows()
    data_path = folder / "data.jsonl"
    data_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    texts = [ALPACA_PROMPT] + [" ".join(row.values()) for row in rows]
    model_dir = build_model(folder / "model", build_tokenizer(texts))
    return Tiny(model_dir, data_path)
