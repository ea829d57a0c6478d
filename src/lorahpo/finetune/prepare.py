"""Checks and downloads done once per study, before any LoRA trial runs.

A missing model path, an unreachable built-in download or unusable data is then one error
line before the study starts, not a failed trial per evaluation.
"""

from __future__ import annotations

from lorahpo.finetune.config import LoraTrialConfig


def prepare(config: LoraTrialConfig) -> None:
    """Fetch built-in models and data into the cache and check the data has usable rows.

    Raises:
        ModelError: The model cannot be found or fetched.
        DataError: A data source is missing, empty or has no usable rows.
        EvaluatorError: An evaluator's questions are missing or malformed, or its lm-eval task unknown.
    """
    from lorahpo.evaluation.in_trial import check
    from lorahpo.finetune.data import load_rows
    from lorahpo.finetune.models import resolve_model

    resolve_model(config.model)
    load_rows(config.data)
    for spec in config.evaluate:
        check(spec)
