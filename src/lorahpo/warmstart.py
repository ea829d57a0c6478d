"""Warm start: a new study begins at the best points of earlier studies (``warm_start``).

Each earlier study, a lorahpo study folder or an Optuna storage URL, gives its
``warm_start_points`` best complete trials that meet their constraints and lie inside the new
study's space (their values for the new space's parameters; parameters it does not search are
dropped). The earlier studies must optimise in the same direction. The points, best first, in
the order the studies are listed and without repeats, are chosen once, at the study's first
run, and kept in its store (the study's user attribute ``lorahpo:warm_start``): a resumed study
starts from the same points, even if an earlier study has grown since, and nothing is enqueued
twice. On a tabular objective, points that snap to the same grid point count as one.

They are evaluated again, not copied with their values: an earlier study usually differs in
data, steps or model (that is why it is a warm start, not a resume), so its values are not this
study's. NOMAD starts from them (the best one as X0, then the others and the space's x0, all
before its first poll); every other optimizer gets them enqueued, followed by x0.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorahpo import space
from lorahpo.config import ConfigError, StudyConfig

if TYPE_CHECKING:
    import optuna

#: Study user attribute: the warm start's points, chosen at the first run.
WARM_START_ATTR = "lorahpo:warm_start"


def check_sources(conf: StudyConfig) -> None:
    """Refuse, in one line, an earlier study that is not there (before anything is written).

    Raises:
        ConfigError: A folder that is not a lorahpo study, or an SQLite URL whose file is missing.
    """
    from lorahpo.study import CONFIG_FILE  # the study module uses this one

    for source in conf.warm_start:
        url = source.partition("#")[0]
        if "://" in url:
            if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
                raise ConfigError(f"warm_start: no SQLite store at {url}")
        elif not (Path(source) / CONFIG_FILE).is_file():
            raise ConfigError(f"warm_start: {source} is not a lorahpo study folder (no {CONFIG_FILE})")


def points(study: optuna.Study, conf: StudyConfig) -> list[dict[str, Any]]:
    """The warm start's points of ``study``, chosen at its first run and kept in its store."""
    if not conf.warm_start:
        return []
    saved = study.user_attrs.get(WARM_START_ATTR)
    if saved is not None:
        return list(saved)
    chosen = best_points(conf)
    study.set_user_attr(WARM_START_ATTR, chosen)
    return chosen


def best_points(conf: StudyConfig) -> list[dict[str, Any]]:
    """The best points of the studies of ``conf.warm_start`` that lie in ``conf``'s space, best first.

    Raises:
        ConfigError: An earlier study that is missing, holds no single study, or optimises in
            the other direction.
    """
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    check_sources(conf)
    dists = conf.space.distributions()
    direction = conf.objective.directions[0]
    configuration = _configuration(conf)
    chosen: list[dict[str, Any]] = []
    for source in conf.warm_start:
        earlier = _open(source)
        theirs = "maximize" if earlier.directions[0] == StudyDirection.MAXIMIZE else "minimize"
        if theirs != direction:
            raise ConfigError(f"warm_start: {source} {theirs}s its objective; this study {direction}s it")
        sign = -1.0 if theirs == "maximize" else 1.0
        trials = [
            t
            for t in earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values
            and all(c <= 0 for c in t.constraints.values())
            and all(n in t.params and space.contains(d, t.params[n]) for n, d in dists.items())
        ]
        trials.sort(key=lambda t: (sign * t.values[0], t.number))
        for t in trials[: conf.warm_start_points]:
            point = {n: t.params[n] for n in dists}
            if not any(space.same_point(configuration(point), configuration(p)) for p in chosen):
                chosen.append(point)
    return chosen


def _configuration(conf: StudyConfig) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """What a point evaluates: the point itself, or on a tabular objective the grid point it
    snaps to (two points snapping to one grid point are one configuration: evaluating both
    would spend the budget twice on the same measurement)."""
    if conf.objective.tabular is None:
        return lambda point: point
    from lorahpo.tabular import load_table

    return load_table(conf.objective.tabular.table).snap


def _open(source: str) -> optuna.Study:
    """The Optuna study of a lorahpo folder, or of a storage URL (``URL#study_name`` if it holds several)."""
    import optuna

    url, _, name = source.partition("#")
    if "://" not in url:
        from lorahpo.study import Study

        folder = Study.load(source)
        url, name = folder.storage_url, folder.config.name
    names = optuna.get_all_study_names(url)
    if not name:
        if len(names) != 1:
            raise ConfigError(f"warm_start: {url} holds {len(names)} studies; name one as {url}#NAME")
        name = names[0]
    if name not in names:
        raise ConfigError(f"warm_start: {url} holds no study {name!r}")
    return optuna.load_study(study_name=name, storage=url)
