"""A study's Optuna store, and the processes that share it.

One process runs a study's trials, or many do (``lorahpo worker`` on several machines, one
storage URL); either way the store is the truth. This module holds what sharing it takes, and
every call lorahpo makes to Optuna's private storage API:

* **liveness**: with a shared store each process marks its running trials alive (heartbeats)
  every ``HEARTBEAT_S / 2`` seconds; a trial not marked for ``GRACE_S`` seconds belongs to a
  process that died, and is recorded as interrupted. With a private store, a trial found running
  when a study starts was left by a killed process of the same folder, and is interrupted too.
* **surplus**: processes asking at the same moment can together ask more trials than the budget
  leaves; the store numbers trials in order, so the first ``budget`` trials (interrupted ones
  aside) run and the rest are recorded as interrupted, never run.

An interrupted trial is evaluated again; optimizers never learn from it. One that evaluated an
enqueued point (a warm start's, an x0) has its point enqueued again.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Literal

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, Trial, TrialState

from lorahpo.result import INTERRUPTED_ATTR, REASON_ATTR

#: With a shared store, each process marks its running trials alive this often (seconds);
#: a trial not marked for ``GRACE_S`` belongs to a process that died, and is interrupted.
HEARTBEAT_S = 5
GRACE_S = 30
#: Optuna's system attribute of an enqueued trial: the params it evaluates.
_FIXED = "fixed_params"


class TrialStore:
    """The Optuna study of a lorahpo study, and the liveness of its trials."""

    def __init__(self, study: optuna.Study, shared: bool) -> None:
        self.study = study
        self.shared = shared
        self._alive_at = 0.0  # when this process last marked its trials alive

    @classmethod
    def open(
        cls, url: str, name: str, directions: Sequence[Literal["minimize", "maximize"]], shared: bool
    ) -> TrialStore:
        """Create the study ``name`` in the store at ``url``, or load it."""
        study = optuna.create_study(
            study_name=name,
            storage=_open_storage(url, shared),
            directions=directions,
            load_if_exists=True,
        )
        return cls(study, shared)

    @property
    def _heartbeats(self) -> BaseHeartbeat:
        """The heartbeat API of the store; every store lorahpo opens is an RDB storage, which has one."""
        storage = self.study._storage
        assert isinstance(storage, BaseHeartbeat)
        return storage

    def ask(self, distributions: dict[str, BaseDistribution]) -> Trial:
        """A new trial; with a shared store, marked alive at once."""
        with warnings.catch_warnings():
            # Optuna expects heartbeats with Study.optimize only; this process sends its own.
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = self.study.ask(distributions)
        if self.shared:
            self._heartbeats.record_heartbeat(trial._trial_id)
        return trial

    def report(self, trial: Trial, step: int, value: float) -> None:
        """Record an intermediate value of a running trial (a step already recorded keeps its first value).

        Optuna's ``Trial.report`` refuses a study with several objectives; its storage takes the
        value all the same, and a LoRA trial of such a study reports its validation loss as any other.
        """
        if len(self.study.directions) == 1:
            trial.report(value, step)
        elif step not in self.snapshot(trial).intermediate_values:
            self.study._storage.set_trial_intermediate_value(trial._trial_id, step, float(value))

    def snapshot(self, trial: Trial) -> FrozenTrial:
        """``trial`` as the store holds it now."""
        return self.study._storage.get_trial(trial._trial_id)

    def keep_alive(self, trials: Iterable[Trial]) -> None:
        """With a shared store: mark this process's running ``trials`` alive, and interrupt the
        trials of processes that died; at most every ``HEARTBEAT_S / 2`` seconds."""
        if not self.shared or time.monotonic() - self._alive_at < HEARTBEAT_S / 2:
            return
        for trial in trials:
            self._heartbeats.record_heartbeat(trial._trial_id)
        self.interrupt_lost()
        self._alive_at = time.monotonic()

    def interrupt_lost(self) -> None:
        """Record as interrupted the running trials whose process is gone (see the module docstring)."""
        storage = self.study._storage
        if self.shared:
            lost = self._heartbeats._get_stale_trial_ids(self.study._study_id)
        else:
            lost = [t._trial_id for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        for trial_id in lost:
            try:
                storage.set_trial_system_attr(trial_id, INTERRUPTED_ATTR, True)
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # finished meanwhile, or another process was first
        self._requeue_interrupted()

    def _requeue_interrupted(self) -> None:
        """Enqueue again the fixed point (a warm start's, an x0 the study enqueued) of each
        interrupted trial that no other trial holds: the next ask evaluates it.

        The sampler never sees such a point (Optuna hands it out from its queue), so nothing
        else would evaluate it again. Idempotent: a point re-enqueued, run or running is held.
        """
        trials = self.study.get_trials(deepcopy=False)
        held = [t.system_attrs.get(_FIXED) for t in trials if not t.system_attrs.get(INTERRUPTED_ATTR)]
        for t in trials:
            point = t.system_attrs.get(_FIXED)
            if point is not None and t.system_attrs.get(INTERRUPTED_ATTR) and point not in held:
                self.study.enqueue_trial(point)
                held.append(point)

    def surplus(self, trial: Trial, budget: int) -> bool:
        """With a shared store: drop ``trial`` (interrupted, never run) if, counted by number,
        it falls past the ``budget``."""
        if not self.shared:
            return False
        before = [
            t
            for t in self.study.get_trials(deepcopy=False)
            if t.number < trial.number and not t.system_attrs.get(INTERRUPTED_ATTR)
        ]
        if len(before) < budget:
            return False
        self.tell_interrupted(trial, "not run: other processes had already taken the budget")
        return True

    def tell_interrupted(self, trial: Trial, reason: str | None = None) -> None:
        """Record a trial of this process that will not finish as interrupted."""
        self.study._storage.set_trial_system_attr(trial._trial_id, INTERRUPTED_ATTR, True)
        if reason:
            trial.set_user_attr(REASON_ATTR, reason)
        self.study.tell(trial, state=TrialState.FAIL)


def _open_storage(url: str, shared: bool) -> optuna.storages.RDBStorage:
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=HEARTBEAT_S if shared else None,
                    grace_period=GRACE_S if shared else None,
                )
        except Exception:  # workers starting together race to create the tables: the loser retries
            if attempt == 4 or not shared:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")
