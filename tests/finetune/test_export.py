"""Specification of adapter export: PEFT files and merged models give the trial's validation loss."""

import pytest
import torch

from lorahpo.finetune.export import evaluate_adapter, export_adapter
from lorahpo.finetune.train import run_trial

from .tiny import write_gguf


@pytest.fixture(scope="module")
def trial(tiny, tmp_path_factory):
    """One complete trial on the tiny model (all-linear adapters), and its folder."""
    config = tiny.config(epochs=2)
    config.lora.target_modules = "all-linear"
    trial_dir = tmp_path_factory.mktemp("trial")
    result = run_trial(config, trial_dir)
    assert result.status == "complete"
    return config, trial_dir, result


def test_exported_adapter_reloads_with_the_same_validation_loss(trial, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config, trial_dir, result = trial
    out = export_adapter(trial_dir, tmp_path / "adapter")
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    base = AutoModelForCausalLM.from_pretrained(config.model.name, dtype=torch.float32)
    assert isinstance(PeftModel.from_pretrained(base, out), PeftModel)
    assert evaluate_adapter(config, out) == pytest.approx(result.metrics["validation_loss"], rel=1e-6)


def test_merged_export_gives_the_same_validation_loss(trial, tmp_path):
    config, trial_dir, result = trial
    out = export_adapter(trial_dir, tmp_path / "merged", merge=True, model_cfg=config.model)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file() and not (out / "adapter_config.json").exists()
    merged = config.model_copy(deep=True)
    merged.model.name = str(out)
    assert evaluate_adapter(merged, None) == pytest.approx(result.metrics["validation_loss"], rel=1e-4)


def test_a_bf16_adapter_is_evaluated_as_it_was_trained(trial, tmp_path):
    config, _, _ = trial
    config = config.model_copy(deep=True)
    config.training.precision = "bf16"
    config.training.max_steps = 3
    result = run_trial(config, tmp_path)
    assert evaluate_adapter(config, tmp_path / "adapter") == result.metrics["validation_loss"]


def test_the_untrained_model_gives_the_initial_loss(trial):
    config, _, result = trial
    assert evaluate_adapter(config, None) == pytest.approx(result.metrics["initial_validation_loss"], rel=1e-6)


def test_an_adapter_of_a_gguf_model_merges_into_a_plain_model(tiny, tmp_path):
    config = tiny.config(max_steps=2)
    config.model.name = str(write_gguf(tiny.model_dir, tmp_path / "tiny.gguf"))
    result = run_trial(config, tmp_path / "trial")
    out = export_adapter(tmp_path / "trial", tmp_path / "merged", merge=True, model_cfg=config.model)
    assert "quantization_config" not in (out / "config.json").read_text()
    config.model.name = str(out)
    assert evaluate_adapter(config, None) == pytest.approx(result.metrics["validation_loss"], rel=1e-4)


def test_export_needs_an_adapter_and_merging_needs_the_model(trial, tmp_path):
    _, trial_dir, _ = trial
    with pytest.raises(FileNotFoundError, match="no adapter"):
        export_adapter(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="model config"):
        export_adapter(trial_dir, tmp_path / "out", merge=True)
