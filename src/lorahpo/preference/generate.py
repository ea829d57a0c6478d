"""Answers of each model to each prompt, written to ``answers.jsonl`` for the preference app.

Each base model is loaded once; adapters are applied to it one after the other with PEFT and
removed again. Rows are appended and flushed one at a time, and (model, prompt) pairs already in
the file are skipped, so an interrupted run resumes where it stopped. Every row is generated
after seeding torch with the same seed, so a resumed run writes what a single run would have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lorahpo.finetune.config import ModelConfig
from lorahpo.preference.answers import read_answers

Template = Literal["chat", "alpaca"]

# The paper's Alpaca prompt (no-input variant), the format the tuned adapters were trained on.
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class GenModel:
    """A model that answers prompts: a base model, optionally with a LoRA adapter.

    Attributes:
        model_cfg: The base model.
        adapter_dir: Folder of a PEFT adapter to apply, or None for the base model itself.
    """

    model_cfg: ModelConfig
    adapter_dir: Path | None = None


def load_prompts(source: str | Path) -> list[dict[str, str]]:
    """Read the prompts to answer.

    Args:
        source: ``"builtin"`` for the 30 general instructions shipped with lorahpo (writing,
            reasoning, advice and coding; none comes from the training data), or a JSONL file
            whose rows have a ``prompt`` field and optionally an ``id`` (default: line number).

    Returns:
        ``[{"id": ..., "prompt": ...}, ...]`` in file order.

    Raises:
        ValueError: A row has no prompt text, or two rows share an id.
        FileNotFoundError: The file does not exist.
    """
    if str(source) == "builtin":
        text = resources.files("lorahpo.preference").joinpath("builtin_prompts.json").read_text(encoding="utf-8")
        return [{"id": row["id"], "prompt": row["prompt"]} for row in json.loads(text)]

    prompts: list[dict[str, str]] = []
    with Path(source).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt = row["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{source}:{number}: expected a JSON object with a 'prompt' field") from exc
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"{source}:{number}: 'prompt' must be non-empty text")
            prompts.append({"id": str(row.get("id", number)), "prompt": prompt})
    ids = [p["id"] for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: prompt ids must be unique")
    return prompts


def render_prompt(tokenizer: Any, instruction: str, template: Template) -> str:
    """The text the model continues: the tokenizer's chat template or the Alpaca template."""
    if template == "alpaca":
        return ALPACA_TEMPLATE.format(instruction=instruction)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; use the alpaca template instead")
    messages = [{"role": "user", "content": instruction}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate_answers(
    models: dict[str, GenModel],
    prompts: list[dict[str, str]],
    out: Path,
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    seed: int = 0,
    template: Template = "chat",
    device: str = "auto",
    progress: bool = True,
) -> int:
    """Write every model's answer to every prompt to ``out`` (JSONL), skipping those present.

    Args:
        models: Name shown in results -> model.
        prompts: From :func:`load_prompts`.
        out: The ``answers.jsonl`` file; created with its folder if missing.
        max_new_tokens: Longest answer, in tokens.
        temperature: 0 for greedy decoding, else sampling at this temperature.
        seed: Seed set before each answer (sampling only).
        template: How an instruction becomes model input (see :func:`render_prompt`).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        progress: Show a progress bar.

    Returns:
        The number of answers written.
    """
    from lorahpo.finetune.device import resolve_device, resolve_precision
    from lorahpo.finetune.models import load_model_and_tokenizer

    done = {(a.model, a.prompt_id) for a in read_answers(out)}
    todo = {name: [p for p in prompts if (name, p["id"]) not in done] for name in models}
    total = sum(map(len, todo.values()))
    if not total:
        return 0
    dev = resolve_device(device)
    dtype = resolve_precision("auto", dev).dtype
    settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed, "template": template}

    # Models sharing a base load it once.
    by_base: dict[str, list[str]] = {}
    for name, spec in models.items():
        if todo[name]:
            by_base.setdefault(spec.model_cfg.model_dump_json(), []).append(name)

    out.parent.mkdir(parents=True, exist_ok=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    written = 0
    with Progress(*columns, disable=not progress) as bar, out.open("a", encoding="utf-8") as fh:
        task = bar.add_task("answers", total=total)
        for names in by_base.values():
            base, tokenizer = load_model_and_tokenizer(models[names[0]].model_cfg, dtype, dev)
            for name in names:
                bar.update(task, description=name)
                adapter_dir = models[name].adapter_dir
                model = base if adapter_dir is None else _with_adapter(base, adapter_dir)
                for prompt in todo[name]:
                    text = render_prompt(tokenizer, prompt["prompt"], template)
                    answer = _generate(model, tokenizer, text, max_new_tokens, temperature, seed, template)
                    row = {
                        "model": name,
                        "prompt_id": prompt["id"],
                        "prompt": prompt["prompt"],
                        "answer": answer,
                        "generation": {
                            **settings,
                            "base": models[name].model_cfg.name,
                            "adapter": str(models[name].adapter_dir) if models[name].adapter_dir else None,
                        },
                    }
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    fh.flush()  # a crash loses at most the answer being generated
                    written += 1
                    bar.advance(task)
                if model is not base:
                    base = model.unload()  # removes the LoRA layers, leaving the base weights as loaded
            del base
    return written


def _with_adapter(base: Any, adapter_dir: Path) -> Any:
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    return model


def _generate(
    model: Any, tokenizer: Any, text: str, max_new_tokens: int, temperature: float, seed: int, template: Template
) -> str:
    """One answer: the decoded new tokens, without special tokens and surrounding blanks."""
    import torch

    # A chat template already writes the special tokens it needs; Alpaca text gets the usual ones.
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=template == "alpaca").to(model.device)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    torch.manual_seed(seed)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            **sampling,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,  # training loads the model with the cache off
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
