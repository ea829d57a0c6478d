"""Where trials run. An executor takes a trial folder and returns a future TrialResult."""

from lorahpo.executors.local import LocalExecutor, TrialTask

__all__ = ["LocalExecutor", "TrialTask"]
