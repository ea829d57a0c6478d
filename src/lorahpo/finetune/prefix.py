"""Tokens that every row of a batch starts with, run once: their key/value cache, continued by each row.

Validation examples all begin with the prompt template's preamble (a third of their tokens on
the built-in data), and the few-shot evaluator's prompts of one task with its solved examples.
Attention is causal, so the keys and values of those tokens do not depend on what follows:
they are computed once, and each row of a batch continues from them. The logits are those of
one full pass over each row, up to float rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Prefix:
    """The key/value cache of the first ``length`` tokens of every row, and the keyword that
    passes it to the model (``cache`` from transformers 5, ``past_key_values`` before)."""

    length: int
    cache: Any
    keyword: str
    device: torch.device

    def continued_by(self, rows: int) -> dict[str, Any]:
        """The model's keyword argument that continues the prefix in ``rows`` rows.

        A copy: the model appends each row's keys and values to the cache it is given.
        """
        cache = copy.deepcopy(self.cache)
        cache.reorder_cache(torch.zeros(rows, dtype=torch.long, device=self.device))
        return {self.keyword: cache}


def run_prefix(model: Any, ids: Sequence[int], device: torch.device) -> Prefix | None:
    """Run ``ids`` through ``model``'s decoder (no head: only the cache is kept); None when empty.

    The adapters of a PEFT model sit inside the base model's layers, so its decoder computes the
    adapted keys and values. Call it under the autocast the rows will run under.
    """
    if not ids:
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    output = base.get_decoder()(input_ids=torch.tensor([list(ids)], device=device), use_cache=True)
    cache, keyword = cache_of(output)
    return Prefix(len(ids), cache, keyword, device)


def cache_of(output: Any) -> tuple[Any, str]:
    """A forward pass's key/value cache, and the keyword that passes it back (``cache`` from transformers 5)."""
    cache = getattr(output, "cache", None)
    return (cache, "cache") if cache is not None else (output.past_key_values, "past_key_values")


def common_length(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``rows`` share."""
    n = 0
    while all(len(r) > n for r in rows) and len({r[n] for r in rows}) == 1:
        n += 1
    return n
