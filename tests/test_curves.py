"""Learning-curve extrapolation: the curve families recover curves of their own shape."""

import math

import pytest

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
