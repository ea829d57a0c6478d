"""Search spaces: validation, presets, and the one NOMAD encoding."""

import math

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import ValidationError

from lorahpo import space
from lorahpo.space import PRESETS, ParamSpec, SpaceSpec


@pytest.mark.parametrize(
    "dist, values, encoded",
    [
        (IntDistribution(-3, 7), [-3, 0, 7], [-3, 0, 7]),
        (IntDistribution(2, 64, step=2), [2, 4, 64], [1, 2, 32]),
        (FloatDistribution(-1.5, 2.5), [-1.5, 0.25, 2.5], [-1.5, 0.25, 2.5]),
        (FloatDistribution(1e-6, 1e-3, log=True), [1e-6, 1e-5, 1e-3], [-6, -5, -3]),
        (FloatDistribution(0.1, 1.0, step=0.1), [0.1, 0.5, 1.0], [1, 5, 10]),
        (CategoricalDistribution([0.0, 1e-4, 0.1, 1.0]), [0.0, 1e-4, 1.0], [1, 2, 4]),
        (CategoricalDistribution(["q_proj,v_proj", "all-linear"]), ["all-linear"], [2]),
    ],
)
def test_encode_decode_round_trip(dist, values, encoded):
    var = space.nomad_variable(dist)
    for value, x in zip(values, encoded, strict=True):
        assert space.encode(dist, value) == pytest.approx(x)
        assert var.lower <= x <= var.upper
        back = space.decode(dist, space.encode(dist, value))
        assert back == pytest.approx(value) if isinstance(value, float) else back == value
        assert dist._contains(dist.to_internal_repr(back))


def test_a_log_real_comes_back_exactly():
    # An x0 proposed by NOMAD must be the very value the user wrote (same trial config, same cache key).
    dist = FloatDistribution(1e-5, 1e-2, log=True)
    for value in (2e-4, 3e-5, 1e-3, 7.5e-3):
        assert space.decode(dist, space.encode(dist, value)) == value


def test_decode_clips_and_rounds_into_the_distribution():
    assert space.decode(IntDistribution(0, 5), 7.4) == 5
    assert space.decode(IntDistribution(0, 5), 2.6) == 3
    assert space.decode(CategoricalDistribution([4, 8, 16]), 9) == 16
    assert space.decode(FloatDistribution(1e-6, 1e-3, log=True), -2.0) == 1e-3


def test_nomad_types_of_the_paper_space():
    dists = SpaceSpec(preset="paper").distributions()
    assert [space.nomad_variable(d).type for d in dists.values()] == ["I", "I", "I", "R"]
    bounds = [(v.lower, v.upper) for v in map(space.nomad_variable, dists.values())]
    assert bounds == [(1, 6), (1, 6), (1, 64), (-6, -3)]


def test_paper_preset_is_the_papers_space_and_x0():
    spec = SpaceSpec(preset="paper")
    assert spec.x0() == {"rank": 8, "dropout": 0.1, "alpha": 32, "learning_rate": 1e-5}
    p = PRESETS["paper"]
    assert p["rank"].values == [4, 8, 16, 32, 64, 128]
    assert p["dropout"].values == [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert (p["alpha"].low, p["alpha"].high) == (1, 64)
    assert (p["learning_rate"].low, p["learning_rate"].high, p["learning_rate"].log) == (1e-6, 1e-3, True)


def test_params_override_a_preset_and_x0_needs_every_param():
    spec = SpaceSpec(preset="default", params={"epochs": {"type": "int", "low": 1, "high": 3}})
    assert list(spec.distributions()) == ["rank", "dropout", "alpha", "learning_rate", "epochs"]
    assert spec.x0() is None
    spec = SpaceSpec(preset="default", params={"rank": {"type": "choice", "values": [2, 4], "x0": 2}})
    assert spec.x0()["rank"] == 2 and spec.resolved()["rank"].values == [2, 4]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"type": "int", "low": 0.5, "high": 3}, "whole numbers"),
        ({"type": "int", "low": 1, "high": 8, "log": True}, "use a choice"),
        ({"type": "real", "low": 1, "high": 2, "log": True, "step": 0.5}, "cannot be combined"),
        ({"type": "choice", "values": [1, 1]}, "duplicates"),
        ({"type": "choice", "values": [1, 2], "low": 0}, "not low/high"),
        ({"type": "real", "values": [1, 2]}, "not `values`"),
        ({"type": "real", "low": 1}, "both `low` and `high`"),
        ({"type": "real", "low": 0, "high": 1, "x0": "a"}, "must be a number"),
    ],
)
def test_param_spec_errors(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        ParamSpec(**kwargs)


def test_center_is_the_default_start():
    assert space.center(IntDistribution(0, 9)) == 4
    assert space.center(FloatDistribution(1e-6, 1e-2, log=True)) == pytest.approx(math.log10(1e-4))
    assert space.center(CategoricalDistribution([1, 2, 3, 4])) == 2


def test_same_point_takes_reals_within_the_tolerance_and_the_rest_exactly():
    lr = 0.0004950654691183206
    point = {"rank": 8, "dropout": 0.1, "learning_rate": lr, "schedule": "cosine"}
    assert space.same_point(point, {**point, "learning_rate": math.nextafter(lr, 0.0)})  # one ulp off
    assert not space.same_point(point, {**point, "learning_rate": lr * (1 + 1e-6)})
    assert not space.same_point(point, {**point, "rank": 9})
    assert not space.same_point(point, {**point, "schedule": "linear"})
    assert not space.same_point(point, {k: v for k, v in point.items() if k != "rank"})
    assert not space.same_point({"x": 0.0}, {"x": 5e-324})  # relative: zero matches only zero
