"""A data-parallel trial (``training.processes: 2``, gloo on the CPU) learns what one process learns."""

import json

import pytest
from safetensors.torch import load_file

from lorahpo import config as cfg
from lorahpo.finetune.train import run_trial

RELATIVE = 1e-4


@pytest.fixture(autouse=True)
def one_thread_per_rank(monkeypatch):
    monkeypatch.setenv("LORAHPO_NUM_THREADS", "1")  # the second rank's process reads it


def test_two_processes_give_the_validation_loss_of_one(tiny, tmp_path):
    # 3 micro-batches of 4 per step: rank 0 takes 2, rank 1 one; the last step of each epoch
    # (38 examples: 10 micro-batches) has a single micro-batch, and rank 1 none.
    config = tiny.config(effective_batch_size=12, epochs=2, precision="fp32")  # the same on every CPU
    alone = run_trial(config, tmp_path / "alone")
    config.training.processes = 2
    shared = run_trial(config, tmp_path / "shared")

    assert alone.status == shared.status == "complete", shared.reason
    a, s = alone.metrics, shared.metrics
    assert a["validation_loss"] < a["initial_validation_loss"] - 0.1  # it learned something
    for key in ("validation_loss", "initial_validation_loss", "train_loss"):
        assert s[key] == pytest.approx(a[key], rel=RELATIVE), key
    assert s["steps"] == a["steps"] == 8
    assert s["train_tokens"] == a["train_tokens"]
    assert [step for step, _ in shared.intermediate] == [step for step, _ in alone.intermediate] == [4, 8]
    for (_, va), (_, vs) in zip(alone.intermediate, shared.intermediate, strict=True):
        assert vs == pytest.approx(va, rel=RELATIVE)

    # Rank 0 wrote the trial's files: the whole log and the adapter, which matches one process's.
    steps = [json.loads(line) for line in (tmp_path / "shared" / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in steps if "loss" in line] == list(range(1, 9))
    weights_a = load_file(tmp_path / "alone" / "adapter" / "adapter_model.safetensors")
    weights_s = load_file(tmp_path / "shared" / "adapter" / "adapter_model.safetensors")
    assert weights_a.keys() == weights_s.keys()
    for name, value in weights_a.items():
        assert weights_s[name].allclose(value, rtol=1e-3, atol=1e-6), name


def test_a_prune_on_rank_0_stops_every_rank(tiny, tmp_path):
    config = tiny.config(max_steps=6, eval_every=2, effective_batch_size=8, processes=2)
    seen = []
    result = run_trial(config, tmp_path, reporter=lambda step, value: seen.append(step) or True)
    assert result.status == "pruned", result.reason
    assert seen == [2] and result.metrics["steps"] == 2


def test_gpus_per_trial_sets_the_processes_of_a_lora_trial():
    study = {"name": "s", "optimizer": "random", "space": {"preset": "paper"}, "objective": {"lora": {}}}
    assert cfg.parse(study).objective.lora.training.processes == 1
    assert cfg.parse({**study, "gpus_per_trial": 4}).objective.lora.training.processes == 4
    mine = {"lora": {"training": {"processes": 2}}}
    assert cfg.parse({**study, "gpus_per_trial": 4, "objective": mine}).objective.lora.training.processes == 2
