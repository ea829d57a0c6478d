"""Where a model computes and in which precision: one resolver for training, evaluation and generation.

``device: auto`` is the first CUDA device when there is one, else the CPU. ``precision: auto``
is bf16 wherever the hardware runs it fast (CUDA devices with bf16, CPUs with AMX or
AVX512-BF16), else fp32. Validation loss, in-trial evaluators, ``lorahpo evaluate`` and
``lorahpo generate`` all resolve through here, so their numbers come from the same arithmetic.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Precision:
    """How the frozen base model computes: its weight dtype and the autocast dtype."""

    name: str
    dtype: torch.dtype

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """Pick the compute precision; ``auto`` is bf16 wherever the hardware runs it fast.

    On a CPU without bf16 matrix instructions (AMX or AVX512-BF16) bf16 is emulated and many
    times slower than fp32, so ``auto`` keeps fp32 there.
    """
    if name == "auto":
        fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else device.type == "cpu" and cpu_has_bf16()
        name = "bf16" if fast else "fp32"
    return Precision(name, _DTYPES[name])


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 matrix instructions (Linux only: other systems keep fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("amx_bf16", "avx512_bf16"))


def describe(device: torch.device, precision: Precision) -> str:
    """One line for a log: ``device cuda (NVIDIA H200), precision bf16``."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    return f"device {device} ({where}), precision {precision.name}"
