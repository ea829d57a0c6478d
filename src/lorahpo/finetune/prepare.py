"""Checks and downloads done once per study, before any LoRA trial runs.

A missing model path, an unreachable built-in download or unusable data is then one error
line before the study starts, not a failed trial per evaluation. The data is read, split and
tokenized as every trial will: what it gave (rows read, used, malformed, truncated, dropped;
the split) is told once, and too little of it is refused.
"""

from __future__ import annotations

from lorahpo.finetune.config import LoraTrialConfig
from lorahpo.finetune.data import DataError, DataReport


def prepare(config: LoraTrialConfig, batch_size: int | None = None) -> DataReport:
    """Fetch built-in models and data into the cache, and check the data is enough to train on.

    Args:
        config: The study's trial config.
        batch_size: The smallest training batch size a trial may use (default the config's).

    Returns:
        What the data gave: per source, rows read, used, malformed, truncated and dropped; the split.

    Raises:
        ModelError: The model or its tokenizer cannot be found or fetched.
        DataError: A data source is missing or empty, or fewer examples are left than one batch
            of training or of validation.
        EvaluatorError: An evaluator's questions are missing or malformed (or too few for its
            ``shots``), or its lm-eval task unknown.
    """
    from lorahpo.evaluation.in_trial import check
    from lorahpo.finetune.data import build_splits
    from lorahpo.finetune.models import load_tokenizer

    splits = build_splits(config.data, load_tokenizer(config.model))
    report = splits.report
    batch = batch_size or config.training.batch_size
    train = max(1, round(report.train * config.training.train_fraction))  # what a trial trains on
    for split, count in (("training", train), ("validation", report.validation)):
        if count < batch:
            raise DataError(
                f"data: {count} {split} example(s) left, fewer than one batch ({batch}): {report.summary()}"
            )
    for spec in config.evaluate:
        check(spec)
    return report
