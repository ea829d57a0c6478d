"""``benchmarks/bbob.py --quick``: a complete, sane result, and NomadSampler equal to native NOMAD."""

import json
import math
import subprocess
import sys
from pathlib import Path

import cmaes  # noqa: F401  -- imported for a clear failure here: the benchmark's process needs it
import cocoex  # noqa: F401  -- the same, for the BBOB suite
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bbob.py"
OPTIMIZERS = ["nomad", "native", "tpe", "cmaes", "random"]
GROUPS = {"separable", "high conditioning, unimodal", "multimodal, weak global structure", "all"}  # of f1, f10, f20


def run_quick(out: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,  # a guard against a hang; it takes ~15 s on an idle 2-core machine
    )
    return done.stdout


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bbob") / "bbob-quick.json"
    run_quick(out)
    return out


@pytest.fixture(scope="module")
def result(quick):
    return json.loads(quick.read_text())


def test_every_job_ran_every_optimizer_to_its_budget(result):
    config = result["config"]
    assert config["optimizers"] == OPTIMIZERS
    assert result["jobs_done"] == result["jobs_total"] == len(result["runs"]) > 0
    assert {(r["suite"], r["dim"]) for r in result["runs"]} == {("bbob", 2), ("bbob-mixint", 5)}
    for rec in result["runs"]:
        assert math.isfinite(rec["f_opt"])
        assert list(rec["runs"]) == OPTIMIZERS
        for run in rec["runs"].values():
            assert run["status"] == "ok"
            assert run["evaluations"] == max(config["budgets"]) * rec["dim"]
            assert len(run["gaps"]) == len(config["budgets"])
            assert all(math.isfinite(g) and g >= 0 for g in run["gaps"])
            assert run["gaps"] == sorted(run["gaps"], reverse=True)  # more budget, never worse


def test_summary_is_complete_and_sane(result):
    rows = result["summary"]
    config = result["config"]
    assert {r["group"] for r in rows} == GROUPS
    expected = 2 * len(config["budgets"]) * len(OPTIMIZERS) * len(GROUPS)
    assert len(rows) == expected
    for row in rows:
        assert 0.0 <= row["targets_reached"] <= 1.0
        gaps = [row["log10_gap_q1"], row["log10_gap_median"], row["log10_gap_q3"]]
        assert all(math.isfinite(g) and g >= -8 for g in gaps)
        assert gaps == sorted(gaps)
        assert row["budget"] == row["budget_per_dim"] * row["dim"]


def test_nomad_sampler_proposes_exactly_native_nomads_points(result):
    assert result["nomad_vs_native"]
    for c in result["nomad_vs_native"]:
        assert c["identical"] == c["pairs"] > 0
        assert c["identical_evaluations"] == c["native_evaluations"]


def test_markdown_has_the_headline_table(quick):
    text = quick.with_suffix(".md").read_text()
    assert "| suite | d | budget | nomad | native | tpe | cmaes | random |" in text
    assert "| bbob-mixint | 5 | 50 (10·d) |" in text


def test_a_rerun_keeps_the_finished_jobs(quick, result):
    stdout = run_quick(quick)
    assert f"{result['jobs_total']} already in" in stdout and "0 to run" in stdout
    assert json.loads(quick.read_text())["summary"] == result["summary"]
