"""How a trial's process and the local executor exchange intermediate values: two files.

The trial (``worker.py``) appends each ``(step, value)`` report to ``intermediate.jsonl`` in its
folder; the executor reads the new lines (:class:`IntermediateReader`) and, once the study has
decided to let the trial go on, writes the last step it read into ``continue``. With a pruner,
the trial waits after each report until ``continue`` reaches that step, so it never trains past
a decision; a trial to stop is killed instead. A trial's last report (``final``: a LoRA trial's
validation after its last step) is marked so: the trial does not wait on it, and the executor
never kills a trial for it, since there is nothing left to save but the trial's own result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lorahpo.files import write_atomic
from lorahpo.result import Report, Reporter

INTERMEDIATE_FILE = "intermediate.jsonl"
VERDICT_FILE = "continue"  # holds the last step the study let the trial go on from

#: How often a waiting trial looks for the study's verdict (seconds).
_POLL_S = 0.02


def reporter(trial_dir: Path, wait: bool) -> Reporter:
    """The callback a trial reports through; it never asks to stop (the study kills it instead).

    With ``wait``, each report but the ``final`` one blocks until the study lets the trial go on
    (or kills it).
    """
    path = trial_dir / INTERMEDIATE_FILE
    verdict = trial_dir / VERDICT_FILE

    def report(step: int, value: float, final: bool = False) -> bool:
        line = {"step": int(step), "value": float(value), **({"final": True} if final else {})}
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        while wait and not final and allowed_step(verdict) < step:
            time.sleep(_POLL_S)
        return False

    return report


def allowed_step(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return -1


class IntermediateReader:
    """Reads the reports a running trial has appended since the last call, and lets it go on."""

    def __init__(self, trial_dir: Path) -> None:
        self.trial_dir = trial_dir
        self._offset = 0
        self._last_step: int | None = None
        #: Whether the trial has made its final report: no verdict can stop it any more.
        self.final = False

    def new(self) -> list[Report]:
        path = self.trial_dir / INTERMEDIATE_FILE
        try:
            with path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        self._offset += len(complete)
        reports = [json.loads(line) for line in complete.decode().splitlines() if line.strip()]
        if reports:
            self._last_step = int(reports[-1]["step"])
            self.final = self.final or any(r.get("final") for r in reports)
        return [(r["step"], r["value"]) for r in reports]

    def let_continue(self) -> None:
        """Let the trial go on past the last report read."""
        if self._last_step is None:
            return
        write_atomic(self.trial_dir / VERDICT_FILE, str(self._last_step))
