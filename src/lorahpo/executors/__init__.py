"""Where trials run. An executor takes a trial and returns a future TrialResult.

``local``: subprocesses on this machine (:class:`LocalExecutor`); ``ray``: Ray tasks on a
cluster (:class:`~lorahpo.executors.ray_executor.RayExecutor`, imported only when used). A
``tabular`` objective is answered in the study's process from its table
(:class:`~lorahpo.tabular.TableExecutor`).
Benchmarks give ``Study.run`` a :class:`~lorahpo.executors.replay.ReplayExecutor`, which
answers trials from measurements made before.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Protocol

from lorahpo.executors.local import LocalExecutor, TrialTask
from lorahpo.result import Report, TrialResult

if TYPE_CHECKING:
    from lorahpo.config import StudyConfig


class Executor(Protocol):
    """Runs trials somewhere and carries their intermediate values to the study.

    ``submit`` starts a trial. While it runs, ``reports`` returns its new ``(step, value)``
    reports and ``decide`` gives the study's verdict on them: go on, or stop now (the trial then
    returns as ``pruned``). Once its future is done, one more ``reports`` call returns its last
    reports. ``shutdown`` waits for all trials, or ends them.
    """

    def submit(self, task: TrialTask) -> Future[TrialResult]: ...

    def reports(self, number: int) -> list[Report]: ...

    def decide(self, number: int, go_on: bool) -> None: ...

    def shutdown(self, kill: bool = False) -> None: ...


def make_executor(conf: StudyConfig) -> Executor:
    """The executor a study config names, with ``conf.parallel`` slots."""
    from lorahpo.config import ConfigError

    if conf.objective.tabular is not None:
        from lorahpo.tabular import TableExecutor, load_table

        return TableExecutor(load_table(conf.objective.tabular.table))
    if conf.executor == "ray":
        from lorahpo.executors.ray_executor import RayExecutor

        return RayExecutor(conf.parallel, conf.ray)
    try:
        return LocalExecutor(conf.parallel, gpus_per_trial=conf.gpus_per_trial)
    except ValueError as e:
        raise ConfigError(str(e)) from None


__all__ = ["Executor", "LocalExecutor", "TrialTask", "make_executor"]
