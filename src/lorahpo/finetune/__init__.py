"""The LoRA instruction-tuning blackbox: ``run_trial(config) -> TrialResult``."""
