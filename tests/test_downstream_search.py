"""Downstream metrics drive real studies: as the objective, as a constraint and as a secondary objective.

The blackbox is ``toys.forgetting``: a synthetic validation loss whose lowest values (high
learning rates) lose the most of a downstream score, as real fine-tunes do.
"""

import pytest

from lorahpo import config as cfg
from lorahpo import toys
from lorahpo.study import Study

BOUND = 0.03


def run(tmp_path, optimizer="nomad", budget=30, **objective_and_constraints):
    constraints = objective_and_constraints.pop("constraints", {})
    conf = cfg.parse(
        {
            "optimizer": optimizer,
            "seed": 0,
            "budget": budget,
            "space": {"preset": "default"},
            "objective": {
                "python": "lorahpo.toys:forgetting",
                "metric": "validation_loss",
                **objective_and_constraints,
            },
            "constraints": constraints,
        }
    )
    study = Study.open(tmp_path / optimizer, conf)
    study.run()
    done = [r for r in study.records() if r.status == "complete"]
    assert len(done) == budget
    return study, done


@pytest.mark.parametrize("optimizer", ["nomad", "tpe"])
def test_a_downstream_metric_as_the_objective(tmp_path, optimizer):
    study, done = run(tmp_path, optimizer, metric="retention", direction="maximize")
    best = study.best(1)[0]
    assert best.value == max(r.metrics["retention"] for r in done)
    assert best.value > done[0].metrics["retention"]  # better than the start point
    assert best.value > 0.49  # the search found the low-update corner (0.5 is the base model)


@pytest.mark.parametrize("optimizer", ["nomad", "tpe"])
def test_the_best_trial_honours_a_forgetting_bound(tmp_path, optimizer):
    study, done = run(tmp_path, optimizer, constraints={"retention_drop": BOUND})
    best = study.best(1)[0]
    feasible = [r for r in done if r.metrics["retention_drop"] <= BOUND]
    assert best.metrics["retention_drop"] <= BOUND
    assert best.value == min(r.metrics["validation_loss"] for r in feasible)
    assert len(feasible) < len(done)  # the search met the bound, and went past it too
    # The bound matters: the toy's lowest loss (learning rate at its valley floor) is past it.
    unguarded = toys.forgetting({"rank": 8, "alpha": 16, "dropout": 0.0, "learning_rate": 10 ** (-3.7 - 0.5 * 0.30103)})
    assert unguarded["validation_loss"] < best.value and unguarded["retention_drop"] > BOUND


def test_validation_loss_against_retention_as_two_objectives(tmp_path):
    study, done = run(tmp_path, "nomad", budget=40, secondary={"retention": "maximize"})
    front = study.best(len(done))
    assert len(front) >= 3
    for r in front:  # nothing measured beats a front member on both
        assert not any(
            o.metrics["validation_loss"] <= r.metrics["validation_loss"]
            and o.metrics["retention"] >= r.metrics["retention"]
            and (o.metrics["validation_loss"], o.metrics["retention"])
            != (r.metrics["validation_loss"], r.metrics["retention"])
            for o in done
        )
    # The front spans the trade-off: its lowest loss forgets more than its best retention.
    by_loss = sorted(front, key=lambda r: r.metrics["validation_loss"])
    assert by_loss[0].metrics["retention"] < by_loss[-1].metrics["retention"]


def test_the_toy_forgets_more_at_higher_learning_rates():
    slow = toys.forgetting({"learning_rate": 1e-5, "rank": 8, "alpha": 16})
    fast = toys.forgetting({"learning_rate": 1e-2, "rank": 8, "alpha": 16})
    assert fast["retention_drop"] > 0.2 > 0.01 > slow["retention_drop"] >= 0
    assert fast["validation_loss"] != slow["validation_loss"]
