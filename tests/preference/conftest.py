"""Fixtures of the preference tests: a study folder with answers of three fake models, and a tiny LLM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lorahpo.preference.answers import ANSWERS_FILE, preference_dir
from lorahpo.preference.store import VOTES_FILE, Vote

MODELS = ["zeta-base", "zeta-best", "zeta-worst"]
PROMPTS = {f"q{i}": f"Question number {i}: explain <b>something</b>." for i in range(1, 5)}
XSS = "<script>alert(1)</script>"
# Answer texts name no model: the page must not reveal who wrote them.
_QUALITY_WORD = {"zeta-base": "Plain", "zeta-best": "Excellent", "zeta-worst": "Poor"}
# Vocabulary of the tiny language model.
WORDS = ["the", "a", "cat", "dog", "runs", "sleeps", "on", "mat", "red", "blue", "big", "small"]
WORDS += ["and", "then", "why", "how", "what", "is", "it", "good", "bad"]


def answer_text(model: str, prompt_id: str) -> str:
    """The fake answer of ``model`` to ``prompt_id``; the worst model's answer to q1 is an XSS attempt."""
    payload = f" {XSS}" if (model, prompt_id) == ("zeta-worst", "q1") else ""
    return f"{_QUALITY_WORD.get(model, 'Some')} answer to {prompt_id}.{payload}\nSecond line."


def make_study(root: Path, models: list[str] = MODELS, prompts: dict[str, str] = PROMPTS) -> Path:
    """Write a study folder whose answers.jsonl holds every model's answer to every prompt."""
    folder = preference_dir(root)
    folder.mkdir(parents=True)
    rows = [
        {"model": m, "prompt_id": pid, "prompt": text, "answer": answer_text(m, pid), "generation": {"seed": 0}}
        for m in models
        for pid, text in prompts.items()
    ]
    (folder / ANSWERS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def votes_db(study: Path) -> Path:
    return preference_dir(study) / VOTES_FILE


def csrf_of(html: str) -> str:
    """The anti-forgery token in a page's first form."""
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "page has no csrf field"
    return match.group(1)


def vote(rater: str, prompt_id: str, left: str, right: str, choice: str, id: int = 0) -> Vote:
    """A vote record for the statistics tests."""
    return Vote(
        id=id, time="2024-01-01T00:00:00+00:00", rater=rater, prompt_id=prompt_id, left=left, right=right, choice=choice
    )


@pytest.fixture
def study(tmp_path: Path) -> Path:
    return make_study(tmp_path / "study")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-layer Llama with a word-level tokenizer and chat template, and a random LoRA adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny")
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", "<unk>", "user", "assistant", ":", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    base = root / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    # init_lora_weights=False: random B, so the adapter really changes the answers.
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(root / "adapter")
    return base, root / "adapter"


# Run the package's command-line entry the way the main ``lorahpo`` parser will.
SERVE = (
    "import argparse, sys\n"
    "from lorahpo.preference.cli import add_arguments\n"
    "parser = argparse.ArgumentParser(prog='lorahpo')\n"
    "add_arguments(parser.add_subparsers(required=True))\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)
