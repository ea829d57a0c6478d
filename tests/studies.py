"""A synthetic LoRA study whose trials measured in-trial downstream metrics, written straight into the store.

No model is trained: each trial's metrics are the ones a LoRA trial with
``evaluate: [retention, in_domain]`` reports, with values chosen by hand.
"""

from __future__ import annotations

from pathlib import Path

from lorahpo import config as cfg
from lorahpo.study import Study

RETENTION_BASE = 0.45
IN_DOMAIN_BASE = 0.10
DROP_BOUND = 0.05  # constraint on retention_drop

#: (validation_loss, retention, in_domain) of each complete trial, in trial order.
TRIALS = [
    (1.20, 0.44, 0.12),
    (0.95, 0.41, 0.30),
    (0.90, 0.38, 0.34),  # retention_drop 0.07: over the bound, infeasible
    (1.05, 0.43, 0.22),
    (0.85, 0.42, 0.36),  # the best feasible trial
]
BEST = 4
INFEASIBLE = 2
FAILED = len(TRIALS)  # one crashed trial after the complete ones


def evaluated_config(**changes: object) -> cfg.StudyConfig:
    return cfg.parse(
        {
            "name": "evaluated",
            "optimizer": "random",
            "budget": len(TRIALS) + 1,
            "space": {"preset": "paper"},
            "objective": {"lora": {"evaluate": ["retention", "in_domain"]}},
            "constraints": {"retention_drop": DROP_BOUND},
            **changes,
        }
    )


def trial_metrics(loss: float, retention: float, in_domain: float) -> dict[str, float]:
    """The metrics of a complete LoRA trial with a ``choice`` (retention) and a ``generate`` (in_domain) evaluator."""
    return {
        "validation_loss": loss,
        "initial_validation_loss": 1.5,
        "retention": retention,
        "retention_se": 0.05,
        "retention_base": RETENTION_BASE,
        "retention_drop": round(RETENTION_BASE - retention, 10),
        "retention_logprob": -1.2,
        "retention_logprob_drop": 0.01,
        "in_domain": in_domain,
        "in_domain_se": 0.04,
        "in_domain_base": IN_DOMAIN_BASE,
        "in_domain_drop": round(IN_DOMAIN_BASE - in_domain, 10),
        "evaluation_s": 3.0,
    }


def evaluated_study(folder: Path, **changes: object) -> Study:
    """Write the study of :data:`TRIALS` (and one failed trial) into ``folder``."""
    from optuna.trial import TrialState, create_trial

    conf = evaluated_config(**changes)
    study = Study.open(folder, conf)
    distributions = conf.space.distributions()
    main = conf.objective.metric_name
    for i, (loss, retention, in_domain) in enumerate(TRIALS):
        metrics = trial_metrics(loss, retention, in_domain)
        study.optuna_study.add_trial(create_trial(
            params=dict(conf.space.x0(), alpha=8 * (i + 1)),
            distributions=distributions,
            values=[metrics[main]],
            user_attrs={"status": "complete", "metrics": metrics},
        ))
    study.optuna_study.add_trial(create_trial(
        params=dict(conf.space.x0(), alpha=60),
        distributions=distributions,
        state=TrialState.FAIL,
        user_attrs={"status": "failed", "reason": "RuntimeError: out of memory", "metrics": {}},
    ))
    return study
