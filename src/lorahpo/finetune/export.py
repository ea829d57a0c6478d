"""Export a trial's adapter, as PEFT files or merged into its base model, and re-evaluate it.

An exported adapter loads with ``PeftModel.from_pretrained(base_model, out)``; a merged export
is a plain model folder (weights and tokenizer) that loads with ``from_pretrained(out)``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lorahpo.finetune.config import LoraTrialConfig, ModelConfig

ADAPTER_DIR = "adapter"


def export_adapter(trial_dir: Path, out: Path, merge: bool = False, model_cfg: ModelConfig | None = None) -> Path:
    """Write the adapter saved in ``trial_dir`` to ``out``.

    Args:
        trial_dir: A trial folder written by :func:`~lorahpo.finetune.train.run_trial`.
        out: Destination folder (created; files of the same name are replaced).
        merge: Fold the adapter into the base weights and save the whole model and tokenizer,
            instead of copying the adapter files.
        model_cfg: The trial's model section; needed to load the base model when merging.

    Returns:
        ``out``.

    Raises:
        FileNotFoundError: The trial folder holds no adapter.
        ValueError: ``merge`` without ``model_cfg``.
    """
    adapter = Path(trial_dir) / ADAPTER_DIR
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no adapter in {trial_dir}: the trial did not complete, or save_adapter was off")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not merge:
        for path in adapter.iterdir():
            if path.is_file():
                shutil.copy2(path, out / path.name)
        return out
    if model_cfg is None:
        raise ValueError("merging an adapter needs the trial's model config (model_cfg)")

    from peft import PeftModel

    from lorahpo.finetune.models import load_model_and_tokenizer, without_gguf_tag

    # "auto": merge in the checkpoint's own dtype, so the export is as large as the base model.
    model, tokenizer = load_model_and_tokenizer(model_cfg, dtype="auto", device="cpu")
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    without_gguf_tag(merged).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def evaluate_adapter(config: LoraTrialConfig, adapter_dir: Path | None) -> float:
    """Validation loss of an adapter on the trial's validation split, measured as training does.

    Args:
        config: The trial config (model, data, precision, batch size).
        adapter_dir: A PEFT adapter folder; None evaluates the model alone (a merged export).
    """
    from peft import PeftModel

    from lorahpo.finetune.train import eval_batch_size, load, validate

    setup = load(config)
    model = setup.model if adapter_dir is None else PeftModel.from_pretrained(setup.model, adapter_dir)
    return validate(model, setup.validation, setup, eval_batch_size(config.training))
