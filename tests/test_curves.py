"""Learning-curve extrapolation: the curve families recover curves of their own shape."""

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from lorahpo.curves import MODELS, CurvePruner, fit, predictions

STEPS = [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    "model, curve",
    [
        ("power", lambda x: 0.9 + 2.0 * x**-0.5),
        ("exponential", lambda x: 1.1 + 3.0 * math.exp(-2.0 * x / 6)),
        ("inverse_log", lambda x: 0.5 + 1.5 / math.log(x + 1)),
    ],
)
def test_each_family_recovers_a_curve_of_its_shape_and_extrapolates_it(model, curve):
    fitted = fit(STEPS, [curve(x) for x in STEPS], model)
    assert fitted(40) == pytest.approx(curve(40), rel=1e-6)


def test_every_family_predicts_and_the_right_one_is_exact():
    values = [1.0 + 2.0 / x for x in STEPS]  # a power law with c = 1: 1.05 at step 40
    predicted = predictions(STEPS, values, 40)
    assert set(predicted) == set(MODELS)
    assert predicted["power"] == pytest.approx(1.05, rel=1e-6)
    # The families disagree away from the data; the pruner trusts the most hopeful one.
    assert predicted["inverse_log"] < predicted["power"] < predicted["exponential"]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"min_points": 2}, "min_points must be an integer >= 3, got 2"),
        ({"top_k": True}, "top_k must be an integer >= 1, got True"),
        ({"margin": float("inf")}, "margin must be a number >= 0, got inf"),
        ({"final_step": 0}, "final_step must be an integer >= 1, got 0"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        CurvePruner(**options)


def _study(direction, finals):
    """A study whose complete trials ended at ``finals`` after 8 steps."""
    study = optuna.create_study(direction=direction)
    for final in finals:
        study.add_trial(create_trial(params={"x": 0.0}, distributions={"x": FloatDistribution(0, 1)},
                                     value=final, intermediate_values={s: final for s in range(1, 9)}))
    return study


def _running(values):
    return create_trial(params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, state=TrialState.RUNNING,
                        intermediate_values=dict(enumerate(values, 1)))


@pytest.mark.parametrize(
    "direction, finals, curve, verdict",
    [
        ("minimize", [2.0], [1.0 + 2.0 / s for s in (1, 2, 3, 4)], False),  # heads for 1.25
        ("minimize", [2.0], [3.0 + 2.0 / s for s in (1, 2, 3, 4)], True),  # heads for 3.25
        ("maximize", [0.8], [0.9 - 0.4 / s for s in (1, 2, 3, 4)], False),  # rises to 0.85
        ("maximize", [0.8], [0.6 - 0.4 / s for s in (1, 2, 3, 4)], True),  # rises to 0.55 at best
        ("minimize", [2.0], [3.0 + 2.0 / s for s in (1, 2, 3)], False),  # fewer than min_points
        ("minimize", [2.0, 3.4], [3.0 + 2.0 / s for s in (1, 2, 3, 4)], False),  # within reach of the 2nd best
    ],
)
def test_the_rule_in_both_directions(direction, finals, curve, verdict):
    pruner = CurvePruner(min_points=4, top_k=len(finals))
    assert pruner.prune(_study(direction, finals), _running(curve)) is verdict


def test_margin_keeps_a_trial_predicted_slightly_worse():
    study = _study("minimize", [2.0])
    curve = [2.1 + 2.0 / s for s in (1, 2, 3, 4)]  # heads for 2.35, 17.5% worse
    assert CurvePruner().prune(study, _running(curve))
    assert not CurvePruner(margin=0.2).prune(study, _running(curve))


def test_a_trial_that_reported_at_the_final_step_is_not_stopped_even_if_that_value_is_not_finite():
    # Its finite values end at step 7, but it has trained to the end (step 8): nothing to save.
    study = _study("minimize", [2.0])
    curve = [3.0 + 2.0 / s for s in range(1, 8)]  # heads for 3.25
    assert CurvePruner().prune(study, _running(curve))
    assert not CurvePruner().prune(study, _running([*curve, math.nan]))


def test_only_trials_that_meet_their_constraints_set_the_bar():
    # The best complete trial (1.0) broke its constraint: it cannot be the best, so a trial heading
    # for 1.25 is measured against the feasible 2.0, not stopped for missing 1.0.
    study = _study("minimize", [2.0])
    study.add_trial(create_trial(params={"x": 0.0}, distributions={"x": FloatDistribution(0, 1)}, value=1.0,
                                 intermediate_values={s: 1.0 for s in range(1, 9)},
                                 system_attrs={"constraints": [0.5]}))
    curve = [1.0 + 2.0 / s for s in (1, 2, 3, 4)]  # heads for 1.25
    assert study.trials[-1].constraints and not CurvePruner().prune(study, _running(curve))
    study.add_trial(create_trial(params={"x": 0.0}, distributions={"x": FloatDistribution(0, 1)}, value=1.1,
                                 intermediate_values={s: 1.1 for s in range(1, 9)},
                                 system_attrs={"constraints": [-0.5]}))  # feasible and better: it is stopped
    assert CurvePruner().prune(study, _running(curve))
