"""The sandbox cost benchmark: every way runs every program, in a rotating order, summarised."""

from __future__ import annotations

import pytest


def test_every_way_runs_every_program_in_a_rotating_order(load_benchmark):
    bench = load_benchmark("sandbox_cost")
    calls = []

    def way(name, ok=True):
        return lambda code: calls.append((name, code)) or ok

    times = bench.measure({"a": way("a"), "b": way("b"), "c": way("c", ok=False)}, ["p0", "p1", "p2", "p3"])
    assert [n for n, _ in calls] == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert {n: [c for m, c in calls if m == n] for n in "abc"} == {n: ["p0", "p1", "p2", "p3"] for n in "abc"}
    summary = {name: bench.summarize(t) for name, t in times.items()}
    assert summary["a"]["problems"] == 4 and summary["a"]["passed"] == 4 and summary["c"]["passed"] == 0
    assert summary["a"]["median_s"] <= summary["a"]["p90_s"] and summary["a"]["total_s"] >= 0
    table = bench.markdown({"summary": summary})
    assert table.splitlines()[0].startswith("| path | problems | passed |") and len(table.splitlines()) == 5


def test_summary_statistics(load_benchmark):
    summarize = load_benchmark("sandbox_cost").summarize
    s = summarize([(0.1, True), (0.3, True), (0.2, False), (0.4, True), (1.0, True)])
    assert (s["problems"], s["passed"], s["median_s"], s["total_s"]) == (5, 4, 0.3, 2.0)
    assert s["mean_s"] == pytest.approx(0.4) and s["p90_s"] == 0.4  # of 5 sorted times, the 4th
