"""Answer generation with a tiny Llama and a tokenizer built in code (CPU, a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorahpo.finetune.config import ModelConfig
from lorahpo.preference.generate import ALPACA_TEMPLATE, GenModel, generate_answers, load_prompts, render_prompt

from .conftest import WORDS

PROMPTS = [{"id": "one", "prompt": "why is the cat red"}, {"id": "two", "prompt": "what is a big dog"}]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_answers_of_base_and_adapter_and_resume(tiny, tmp_path):
    base, adapter = tiny
    cfg = ModelConfig(name=str(base))
    models = {"base": GenModel(cfg), "tuned": GenModel(cfg, adapter), "base-again": GenModel(cfg)}
    out = tmp_path / "preference" / "answers.jsonl"

    assert generate_answers(models, PROMPTS, out, max_new_tokens=6, progress=False) == 6
    rows = _rows(out)
    answers = {(r["model"], r["prompt_id"]): r["answer"] for r in rows}
    assert set(answers) == {(m, p["id"]) for m in models for p in PROMPTS}
    assert all(1 <= len(a.split()) <= 6 and set(a.split()) <= set(WORDS) for a in answers.values())  # 6 tokens
    # The adapter changes the answers; unloading it gives the base model back.
    assert [answers[("tuned", p["id"])] for p in PROMPTS] != [answers[("base", p["id"])] for p in PROMPTS]
    assert all(answers[("base-again", p["id"])] == answers[("base", p["id"])] for p in PROMPTS)
    tuned = next(r for r in rows if r["model"] == "tuned")
    assert tuned["generation"] == {
        "max_new_tokens": 6,
        "temperature": 0.0,
        "seed": 0,
        "template": "chat",
        "base": str(base),
        "adapter": str(adapter),
    }
    assert tuned["prompt"] == "why is the cat red"

    # Resumable: a second call writes nothing; a new prompt adds only its answers.
    assert generate_answers(models, PROMPTS, out, max_new_tokens=6, progress=False) == 0
    more = [*PROMPTS, {"id": "three", "prompt": "how good is the mat"}]
    assert generate_answers(models, more, out, max_new_tokens=6, progress=False) == 3
    assert _rows(out)[:6] == rows


def test_sampling_is_reproducible_with_a_seed(tiny, tmp_path):
    base, _ = tiny
    models = {"base": GenModel(ModelConfig(name=str(base)))}
    runs = []
    for n in range(2):
        out = tmp_path / f"{n}.jsonl"
        generate_answers(
            models, PROMPTS, out, max_new_tokens=8, temperature=1.0, seed=3, template="alpaca", progress=False
        )
        runs.append([r["answer"] for r in _rows(out)])
    assert runs[0] == runs[1]


def test_prompt_rendering(tiny):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny[0])
    assert render_prompt(tokenizer, "why", "chat") == "<s> user : why </s> assistant :"
    assert render_prompt(tokenizer, "why", "alpaca") == ALPACA_TEMPLATE.format(instruction="why")
    assert render_prompt(tokenizer, "why", "alpaca").endswith("### Instruction:\nwhy\n\n### Response:\n")
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt(tokenizer, "why", "chat")


def test_load_prompts(tmp_path):
    builtin = load_prompts("builtin")
    assert len(builtin) == 30 and len({p["id"] for p in builtin}) == 30
    assert all(p["prompt"].strip() for p in builtin)

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "first"}\n\n{"id": "x", "prompt": "second", "category": "any"}\n')
    assert load_prompts(path) == [{"id": "1", "prompt": "first"}, {"id": "x", "prompt": "second"}]

    path.write_text('{"text": "no prompt field"}\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl:1"):
        load_prompts(path)
    path.write_text('{"id": "a", "prompt": "p"}\n{"id": "a", "prompt": "q"}\n')
    with pytest.raises(ValueError, match="unique"):
        load_prompts(path)
