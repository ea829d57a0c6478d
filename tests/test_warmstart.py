"""Warm start: a study's first trials are the best points of earlier studies, once."""

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from lorahpo import config as cfg
from lorahpo.executors.replay import Measurements, ReplayExecutor
from lorahpo.study import Study
from lorahpo.warmstart import WARM_START_ATTR

X0 = {"x": 1, "y": 1}
#: The earlier study's trials: (x, y, value); its space is wider than the new one's ([-4, 4]).
EARLIER = [(3, 3, 18.0), (0, 2, 4.0), (6, 0, 0.5), (-1, 0, 1.0), (2, -2, 8.0), (0, 1, 1.5)]
#: Its three best points inside the new space, best first ((6, 0) is outside it).
BEST_INSIDE = [{"x": -1, "y": 0}, {"x": 0, "y": 1}, {"x": 0, "y": 2}]


def config(**changes):
    data = {
        "name": "warm",
        "optimizer": "random",
        "budget": 5,
        "space": {"params": {"x": {"type": "int", "low": -4, "high": 4, "x0": X0["x"]},
                             "y": {"type": "int", "low": -4, "high": 4, "x0": X0["y"]}}},
        "objective": {"python": "lorahpo.toys:sphere"},
    }
    data.update(changes)
    return cfg.parse(data)


def earlier_study(folder, direction="minimize"):
    """A finished study over a wider space, written straight into its store."""
    conf = config(space={"params": {"x": {"type": "int", "low": -8, "high": 8},
                                    "y": {"type": "int", "low": -8, "high": 8}}},
                  objective={"python": "lorahpo.toys:sphere", "direction": direction})
    study = Study.open(folder, conf)
    dists = conf.space.distributions()
    for x, y, value in EARLIER:
        study.optuna_study.add_trial(create_trial(params={"x": x, "y": y}, distributions=dists, values=[value]))
    study.optuna_study.add_trial(create_trial(params={"x": 0, "y": 0}, distributions=dists, state=TrialState.FAIL))
    return folder


def sphere(config, stop):
    return {"status": "complete", "value": float(config["x"] ** 2 + config["y"] ** 2), "duration_s": 0.0}


def run(study):
    return study.run(executor=ReplayExecutor(Measurements(study.directory / "cache.jsonl"), blackbox=sphere))


@pytest.mark.parametrize("optimizer", ["random", "tpe", "nomad"])
def test_the_first_trials_are_the_earlier_studys_best_points_inside_the_space_then_x0(tmp_path, optimizer):
    earlier = earlier_study(tmp_path / "earlier")
    study = Study.open(tmp_path / "new", config(optimizer=optimizer, warm_start=[str(earlier)], warm_start_points=3))
    summary = run(study)
    params = [r.params for r in study.records()]
    assert summary.finished == 5 and params[:4] == [*BEST_INSIDE, X0]
    assert study.optuna_study.user_attrs[WARM_START_ATTR] == BEST_INSIDE


@pytest.mark.parametrize("optimizer", ["random", "nomad"])
def test_a_resumed_warm_started_study_does_not_enqueue_its_points_again(tmp_path, optimizer):
    earlier = earlier_study(tmp_path / "earlier")
    conf = config(optimizer=optimizer, warm_start=[str(earlier)], warm_start_points=3, budget=2)
    study = Study.open(tmp_path / "new", conf)
    run(study)
    # The earlier study grows a better point: the resumed study keeps the points it chose.
    Study.load(earlier).optuna_study.add_trial(create_trial(
        params={"x": 0, "y": 0}, distributions=conf.space.distributions(), values=[0.0]))
    study = Study.open(tmp_path / "new", conf.model_copy(update={"budget": 7}))
    run(study)
    params = [r.params for r in study.records()]
    assert len(params) == 7 and params[:4] == [*BEST_INSIDE, X0]
    assert all(params.count(p) == 1 for p in params)  # nothing evaluated twice


def test_a_missing_earlier_study_is_one_line_and_nothing_is_written(tmp_path):
    with pytest.raises(cfg.ConfigError) as caught:
        Study.open(tmp_path / "new", config(warm_start=[str(tmp_path / "nope")]))
    assert str(caught.value) == f"warm_start: {tmp_path / 'nope'} is not a lorahpo study folder (no config.yaml)"
    assert not (tmp_path / "new").exists()
    with pytest.raises(cfg.ConfigError, match=r"^warm_start: no SQLite store at sqlite:///"):
        Study.open(tmp_path / "new", config(warm_start=[f"sqlite:///{tmp_path / 'none.db'}"]))
    assert not (tmp_path / "new").exists() and not (tmp_path / "none.db").exists()


def test_an_earlier_study_in_the_other_direction_is_refused(tmp_path):
    earlier = earlier_study(tmp_path / "earlier", direction="maximize")
    study = Study.open(tmp_path / "new", config(warm_start=[str(earlier)]))
    with pytest.raises(cfg.ConfigError, match="maximizes its objective; this study minimizes it"):
        run(study)
    assert study.optuna_study.trials == []


def test_a_storage_url_names_its_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'other.db'}"
    dists = config().space.distributions()
    for name in ("a", "b"):
        other = optuna.create_study(study_name=name, storage=url)
        for params, value in (({"x": 2, "y": 0}, 4.0), ({"x": 0, "y": 3}, 3.0)):
            other.add_trial(create_trial(params=params, distributions=dists, values=[value if name == "a" else 9.0]))
    with pytest.raises(cfg.ConfigError, match=r"holds 2 studies; name one as sqlite:///.*#NAME"):
        run(Study.open(tmp_path / "any", config(warm_start=[url])))
    study = Study.open(tmp_path / "new", config(warm_start=[f"{url}#a"], budget=3))
    run(study)
    assert [r.params for r in study.records()] == [{"x": 0, "y": 3}, {"x": 2, "y": 0}, X0]


def test_grid_search_takes_no_warm_start(tmp_path):
    with pytest.raises(cfg.ConfigError, match="warm_start: grid search evaluates every point"):
        config(optimizer="grid", warm_start=[str(tmp_path)])


@pytest.mark.parametrize("optimizer", ["random", "tpe", "nomad"])
def test_a_point_whose_evaluation_was_interrupted_is_evaluated_on_resume(tmp_path, optimizer):
    from lorahpo.study import attach_sampler

    earlier = earlier_study(tmp_path / "earlier")
    conf = config(optimizer=optimizer, warm_start=[str(earlier)], warm_start_points=3, budget=6)
    study = Study.open(tmp_path / "new", conf)
    attach_sampler(study.optuna_study, conf)
    # The driver is killed while it runs the first point: the trial stays running in the store.
    assert study.store.ask(conf.space.distributions()).params == BEST_INSIDE[0]
    study = Study.open(tmp_path / "new", conf)
    assert run(study).finished == 6
    records = study.records()
    done = [r.params for r in records if r.status == "complete"]
    assert records[0].status == "interrupted" and len(done) == 6
    assert all(point in done for point in [*BEST_INSIDE, X0])  # no start point lost
    assert all(done.count(p) == 1 for p in done)  # nothing evaluated twice
    assert not [t for t in study.optuna_study.trials if t.state == TrialState.WAITING]  # nothing left queued
