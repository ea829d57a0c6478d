"""NomadSampler as a Ray Tune user runs it: OptunaSearch(sampler=NomadSampler(...)) on a cluster."""

import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from lorahpo import NomadSampler
from lorahpo.samplers.nomad import FALLBACK_ATTR, POINT_ATTR

SPACE = {"a": IntDistribution(0, 10), "b": FloatDistribution(-2.0, 2.0), "c": FloatDistribution(-3.0, 3.0)}


@pytest.mark.slow  # a Ray Tune experiment: ~80 s on a 2-core CPU
def test_a_ray_tune_experiment_runs_nomads_points_to_the_end(ray_address, tmp_path):
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    def trainable(config):  # defined here: Ray ships it to its workers by value
        a, b, c = config["a"], config["b"], config["c"]
        return {"loss": (a - 3) ** 2 + (b - 0.5) ** 2 + (c + 1) ** 2 + 0.1 * a * b}

    # block_size 1 with 2 trials at once: the sampler grows NOMAD's block instead of random points
    search = OptunaSearch(space=SPACE, metric="loss", mode="min", sampler=NomadSampler(SPACE, seed=0))
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=search, num_samples=20, max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="nomad", verbose=0),
    )
    results = tuner.fit()
    assert len(results) == 20 and not results.errors
    trials = search._ot_study.trials  # the Optuna study OptunaSearch keeps in the driver
    assert len(trials) == 20
    for t in trials:
        assert FALLBACK_ATTR not in t.system_attrs
        a, b, c = t.system_attrs[POINT_ATTR]  # NOMAD's point, evaluated there
        assert (t.params["a"], t.params["b"], t.params["c"]) == (int(a), b, c)
    losses = sorted(r.metrics["loss"] for r in results)
    assert losses[0] == min(t.value for t in trials) < 1.0
