"""Entry point of one trial's process: ``python -m lorahpo.executors.worker TRIAL_DIR``.

Reads ``trial.json`` (objective and hyperparameters), evaluates, writes ``result.json``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lorahpo.executors.intermediate import reporter
from lorahpo.executors.local import PARENT_ENV
from lorahpo.objectives import ObjectiveSpec, evaluate
from lorahpo.result import Reporter


def _die_with_parent() -> None:
    """End this trial (and the commands it started) if the study process disappears."""
    parent = int(os.environ.get(PARENT_ENV) or os.getppid())
    while True:
        if os.getppid() != parent:
            os.killpg(os.getpgid(0), signal.SIGKILL)
        time.sleep(0.5)


def main(trial_dir: Path) -> None:
    threading.Thread(target=_die_with_parent, daemon=True).start()
    task = json.loads((trial_dir / "trial.json").read_text())
    objective = ObjectiveSpec.model_validate(task["objective"])
    start = time.monotonic()
    report = reporter(trial_dir, wait=bool(task.get("pruning")))
    curve = None
    if task.get("tracking"):
        from lorahpo.tracking import CurveLogger

        curves = CurveLogger(task["tracking"])
        curve = curves.log
        if objective.kind != "lora":  # a LoRA trial logs its own curves; another objective's are its reports
            report = _logged(report, curves, objective.metric_name)
    result = evaluate(objective, task["params"], trial_dir, report, curve)
    result.duration_s = result.duration_s or time.monotonic() - start
    result.save(trial_dir / "result.json")
    if curve is not None:
        curves.close()


def _logged(report: Reporter, curves: Any, metric: str) -> Reporter:
    """``report``, whose values are also logged as the curve of ``metric``."""

    def both(step: int, value: float, final: bool = False) -> bool:
        curves.log(step, {metric: value})
        return report(step, value, final=final)

    return both


if __name__ == "__main__":
    main(Path(sys.argv[1]))
