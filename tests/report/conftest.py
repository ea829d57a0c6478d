"""A small synthetic study (the toy LoRA-shaped loss surface), run for real, with fake downstream results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from lorahpo import config as cfg
from lorahpo.evaluation.store import EvaluationStore, TaskResult, model_key
from lorahpo.study import Study, TrialRecord

FAILURE_REASON = "RuntimeError: <b>CUDA</b> out of memory & more"


def toy_config(optimizer: str = "nomad", budget: int = 8, seed: int = 0) -> cfg.StudyConfig:
    return cfg.parse(
        {
            "name": f"toy-{optimizer}",
            "optimizer": optimizer,
            "seed": seed,
            "budget": budget,
            "space": {"preset": "paper"},
            "objective": {"python": "lorahpo.toys:lora_surface", "metric": "validation_loss"},
        }
    )


def run_toy(folder: Path, optimizer: str = "nomad", budget: int = 8) -> Study:
    study = Study.open(folder, toy_config(optimizer, budget))
    study.run()
    return study


def lowest_loss(directory: Path) -> TrialRecord:
    """The complete trial of the lowest loss, read from the study's records, not from a report."""
    complete = [r for r in Study.load(directory).records() if r.status == "complete"]
    return min(complete, key=lambda r: (r.value, r.number))


def add_failed_trial(study: Study) -> int:
    """Record one more evaluation that failed (as a crashed trial would be recorded)."""
    from optuna.trial import TrialState, create_trial

    conf = study.config
    study = Study.open(study.directory, conf.model_copy(update={"budget": conf.budget + 1}))
    params = dict(conf.space.x0(), alpha=3)
    trial = create_trial(
        params=params,
        distributions=conf.space.distributions(),
        state=TrialState.FAIL,
        user_attrs={"status": "failed", "reason": FAILURE_REASON, "metrics": {}},
    )
    study.optuna_study.add_trial(trial)
    return len(study.records()) - 1


@dataclass
class Synthetic:
    """The study folder and the fake downstream scores written for it."""

    directory: Path
    scores: dict[str, dict[str, float]]  # model -> task -> score
    failed: int


def fake_results(directory: Path, scores: dict[str, dict[str, float]]) -> None:
    store = EvaluationStore(directory)
    metrics = {"bbh-bigbench": "exact_match", "humaneval-offline": "pass@1"}
    for model, by_task in scores.items():
        for task, score in by_task.items():
            store.put(TaskResult(model, task, metrics[task], score, n=48, settings={"limit": 2, "task": task}))


@pytest.fixture(scope="package")
def synthetic(tmp_path_factory) -> Synthetic:
    folder = tmp_path_factory.mktemp("report") / "toy"
    study = run_toy(folder)
    failed = add_failed_trial(study)
    best = [r.number for r in Study.load(folder).best(3)]
    x0 = Study.load(folder).x0_record().number
    # Scores chosen so that a lower loss does not always mean a higher score.
    scores = {
        "base": {"bbh-bigbench": 0.210, "humaneval-offline": 0.050},
        model_key(x0): {"bbh-bigbench": 0.250, "humaneval-offline": 0.100},
        model_key(best[0]): {"bbh-bigbench": 0.300, "humaneval-offline": 0.075},
        model_key(best[1]): {"bbh-bigbench": 0.350, "humaneval-offline": 0.125},
        model_key(best[2]): {"bbh-bigbench": 0.275},
    }
    fake_results(folder, scores)
    return Synthetic(folder, scores, failed)


@pytest.fixture(scope="package")
def plain(tmp_path_factory) -> Study:
    """A random search of the same toy, without downstream results: the second study to compare."""
    return run_toy(tmp_path_factory.mktemp("plain") / "toy-random", optimizer="random", budget=6)
