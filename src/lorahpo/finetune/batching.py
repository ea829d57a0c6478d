"""Batches of tokenized examples: length-grouped, right-padded, in a seeded order.

Batches are grouped by length (little padding) in an order fixed by a seed, so every trial of a
study sees the same batches in the same order; validation batches are sorted by length with no
shuffle, so they are the same every time. With packing (:func:`pack`) a batch's examples form
one unpadded row instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from lorahpo.finetune.data import IGNORE_INDEX, Example

#: Length grouping: examples are shuffled, cut into chunks of this many batches, sorted by
#: length within a chunk, and the batches shuffled again (as HF's LengthGroupedSampler does).
_BATCHES_PER_GROUP = 50


@dataclass
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    tokens: int  # non-pad tokens
    targets: int  # response tokens the loss covers
    position_ids: torch.Tensor | None = None  # packed: positions restart at each example


def length_grouped(examples: list[Example], batch_size: int, seed: str | None) -> list[list[int]]:
    """Batches of example indices with similar lengths.

    With a seed: shuffle, sort by length within chunks of :data:`_BATCHES_PER_GROUP` batches,
    then shuffle the batches, so each batch has little padding yet the order stays random and
    is the same for the same seed. Without a seed: sorted by length, longest first.
    """
    order = list(range(len(examples)))
    rng = random.Random(seed)
    if seed is None:
        chunk = len(order) or 1
    else:
        rng.shuffle(order)
        chunk = batch_size * _BATCHES_PER_GROUP
    batches = []
    for start in range(0, len(order), chunk):
        group = sorted(order[start : start + chunk], key=lambda i: -len(examples[i].input_ids))
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    if seed is not None:
        rng.shuffle(batches)
    return batches


def collate(examples: list[Example], indices: list[int], pad_id: int, device: torch.device) -> Batch:
    """Right-pad a batch to its longest example."""
    rows = [examples[i] for i in indices]
    length = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        input_ids[i, :n] = torch.tensor(row.input_ids)
        labels[i, :n] = torch.tensor(row.labels)
        mask[i, :n] = 1
    targets = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return Batch(input_ids.to(device), labels.to(device), mask.to(device), int(mask.sum()), targets)


def pack(examples: list[Example], indices: list[int], device: torch.device) -> Batch:
    """A batch as one row: the examples end to end, no padding, positions restarting at each.

    The first token of each example after the first is no target: it would be predicted from
    the end of the example before, which it does not follow. So a packed batch has exactly the
    targets of the padded one, and attention confined to each example (the position ids mark
    where one starts) gives the same loss.
    """
    rows = [examples[i] for i in indices]
    input_ids = [t for r in rows for t in r.input_ids]
    labels: list[int] = []
    positions: list[int] = []
    for row in rows:
        labels += [IGNORE_INDEX, *row.labels[1:]] if labels else row.labels
        positions += range(len(row.input_ids))
    ids = torch.tensor([input_ids], dtype=torch.long)
    label_tensor = torch.tensor([labels], dtype=torch.long)
    targets = int((label_tensor[:, 1:] != IGNORE_INDEX).sum())
    return Batch(
        ids.to(device),
        label_tensor.to(device),
        torch.ones_like(ids).to(device),
        len(input_ids),
        targets,
        torch.tensor([positions], dtype=torch.long).to(device),
    )
