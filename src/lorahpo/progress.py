"""Live progress of a study: finished/budget, running trials, best so far, failures, ETA."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from lorahpo.result import TrialRecord


def fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def fmt_evaluator(metrics: dict[str, float], name: str) -> str:
    """An in-trial evaluator's value and its change from the base model: ``0.41 (-0.02)`` is 0.02 below it.

    The change is ``-<name>_drop``: a sign that reads the right way round (scores are higher-is-better).
    """
    value = metrics.get(name)
    if value is None:
        return "-"
    drop = metrics.get(f"{name}_drop")
    return f"{value:.3g}" if drop is None else f"{value:.3g} ({-drop:+.3g})"


def fmt_evaluators(metrics: dict[str, float], names: Sequence[str]) -> str:
    """Every evaluator of a trial on one line: ``retention 0.41 (-0.02), in_domain 0.3 (+0.2)``."""
    return ", ".join(f"{name} {fmt_evaluator(metrics, name)}" for name in names)


class Progress:
    """Receives study events; draws a live panel on a terminal, plain lines elsewhere."""

    def __init__(
        self,
        budget: int,
        finished: int,
        best: TrialRecord | None,
        direction: str,
        feasible: Callable[[dict[str, float]], bool] = lambda metrics: True,
        evaluators: Sequence[str] = (),
    ) -> None:
        self.console = Console(stderr=True)
        self.budget = budget
        self.finished = finished
        self.failures = 0
        self.best = best
        self.direction = direction
        self.feasible = feasible  # whether a trial's metrics meet the study's constraints
        self.evaluators = list(evaluators)  # in-trial downstream metrics, shown next to the best value
        self.running: dict[int, tuple[TrialRecord, float]] = {}
        self.durations: list[float] = []
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self._live = Live(self._render(), console=self.console, refresh_per_second=2, get_renderable=self._render)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def __call__(self, kind: str, record: TrialRecord) -> None:
        if kind == "start":
            self.running[record.number] = (record, time.monotonic())
            return
        _, started = self.running.pop(record.number, (record, time.monotonic()))
        self.durations.append(time.monotonic() - started)
        self.finished += 1
        feasible = self.feasible(record.metrics)
        if record.status != "complete":
            self.failures += 1
        elif feasible and (self.best is None or self._better(record.value, self.best.value)):
            self.best = record
        if self._live is None:
            value = f"{record.value:.6g}" if record.value is not None else record.status
            why = f" ({record.reason})" if record.reason else ("" if feasible else " (over a constraint)")
            print(
                f"[{self.finished}/{self.budget}] trial {record.number}: {value}{why} | {fmt_params(record.params)}"
                f" | best {self._best_text()} | ETA {self._eta()}",
                file=sys.stderr,
                flush=True,
            )

    def _better(self, a: float | None, b: float | None) -> bool:
        if a is None:
            return False
        if b is None:
            return True
        return a > b if self.direction == "maximize" else a < b

    def _best_text(self) -> str:
        if self.best is None:
            return "-"
        text = f"{self.best.value:.6g} (trial {self.best.number})"
        if self.evaluators:
            text += f" [{fmt_evaluators(self.best.metrics, self.evaluators)}]"
        return text

    def _eta(self) -> str:
        if not self.durations:
            return "?"
        parallel = max(len(self.running), 1)
        left = max(self.budget - self.finished, 0)
        seconds = sum(self.durations) / len(self.durations) * left / parallel
        return time.strftime("%H:%M:%S", time.gmtime(seconds))

    def _render(self) -> Group:
        head = Text.assemble(
            ("finished ", "bold"), f"{self.finished}/{self.budget}   ",
            ("failures ", "bold"), f"{self.failures}   ",
            ("ETA ", "bold"), self._eta(),
        )
        best = Text.assemble(("best ", "bold green"), self._best_text())
        if self.best is not None:
            best.append("  " + fmt_params(self.best.params))
        table = Table(box=None, show_header=True, header_style="dim")
        table.add_column("running")
        table.add_column("elapsed")
        table.add_column("hyperparameters")
        now = time.monotonic()
        for number, (record, started) in sorted(self.running.items()):
            table.add_row(f"trial {number}", f"{now - started:.0f} s", fmt_params(record.params))
        return Group(head, best, table)
