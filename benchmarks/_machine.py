"""Machine facts recorded next to every benchmark result, and the writing of the result files."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from lorahpo.files import write_atomic


def machine() -> dict[str, Any]:
    from lorahpo.finetune.device import cpu_has_bf16

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_bf16": cpu_has_bf16(),  # what precision ``auto`` picks on this CPU
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def write_results(out: Path, result: dict[str, Any], markdown: str, *, quiet: bool = False) -> None:
    """Write ``result`` as JSON to ``out`` and ``markdown`` beside it (``.md``), each replaced
    whole (never half written), and print the Markdown unless ``quiet``."""
    write_atomic(out, json.dumps(result, indent=1) + "\n")
    write_atomic(out.with_suffix(".md"), markdown)
    if not quiet:
        print(markdown)
