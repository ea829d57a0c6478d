"""Data extraction of reports, checked without drawing anything."""

from __future__ import annotations

import math

import pytest

from lorahpo.evaluation.store import model_key
from lorahpo.report.data import (
    ParamInfo,
    axis_position,
    best_so_far,
    compare_report,
    study_report,
)
from lorahpo.study import Study

from .conftest import FAILURE_REASON, lowest_loss


def test_best_so_far_skips_failures_and_follows_the_direction():
    values = [None, 3.0, 4.0, None, 2.5, 2.7]
    assert best_so_far(values) == [None, 3.0, 3.0, 3.0, 2.5, 2.5]
    assert best_so_far(values, "maximize") == [None, 3.0, 4.0, 4.0, 4.0, 4.0]
    assert best_so_far([float("nan"), 1.0]) == [None, 1.0]


def test_axis_positions_follow_the_scale_of_each_parameter():
    assert axis_position(ParamInfo("lr", "log", 1e-6, 1e-3), 1e-4) == pytest.approx(2 / 3)
    assert axis_position(ParamInfo("alpha", "linear", 1, 65), 33) == pytest.approx(0.5)
    rank = ParamInfo("rank", "choice", values=(4, 8, 16))
    assert [axis_position(rank, v) for v in (4, 8, 16, 5)] == [0.0, 0.5, 1.0, None]


def test_study_report_holds_curve_top_trials_baselines_and_failures(synthetic):
    report = study_report(synthetic.directory, top=3)
    study = Study.load(synthetic.directory)
    records = study.records()
    assert report.name == "toy-nomad" and report.optimizer == "nomad" and report.metric == "validation_loss"
    assert [p.name for p in report.params] == ["rank", "dropout", "alpha", "learning_rate"]
    assert [p.scale for p in report.params] == ["choice", "choice", "linear", "log"]

    # One point per finished evaluation, in trial order; the failure has no value.
    assert [(i, n) for i, n, _, _ in report.curve] == [(i + 1, r.number) for i, r in enumerate(records)]
    assert report.curve[synthetic.failed][2] is None
    running, lowest = [], math.inf
    for r in records:
        lowest = min(lowest, r.value) if r.status == "complete" else lowest
        running.append(lowest)
    assert [b for _, _, _, b in report.curve] == running

    ranked = sorted((r for r in records if r.status == "complete"), key=lambda r: r.value)
    assert [t.number for t in report.top] == [r.number for r in ranked[:3]]
    assert report.x0 is not None and report.x0.number == 0
    assert [(t.number, t.status, t.reason) for t in report.failures] == [(synthetic.failed, "failed", FAILURE_REASON)]
    assert report.status_counts == {"complete": 8, "failed": 1}
    durations = [r.duration_s for r in records if r.duration_s is not None]
    assert report.timing["trial_s_total"] == pytest.approx(sum(durations)) and max(durations) > 0
    assert report.timing["first_start"] <= report.timing["last_end"]
    assert "lorahpo.toys:lora_surface" in report.config_yaml


def test_downstream_results_line_up_with_roles_and_correlations(synthetic):
    report = study_report(synthetic.directory, top=3)
    best = [t.number for t in report.top]
    assert [(m.key, m.roles) for m in report.models] == [
        ("base", ("base",)),
        ("trial-0", ("x0",)),
        (model_key(best[0]), ("top-1",)),
        (model_key(best[1]), ("top-2",)),
        (model_key(best[2]), ("top-3",)),
    ]
    assert report.tasks == {"bbh-bigbench": "exact_match", "humaneval-offline": "pass@1"}
    assert report.limits == {"bbh-bigbench": 2, "humaneval-offline": 2}
    corr = {c.task: c for c in report.correlations}
    bbh, humaneval = corr["bbh-bigbench"], corr["humaneval-offline"]
    # Base has no validation loss; top-3 was not evaluated on humaneval.
    assert bbh.base_score == 0.210 and {n for n, _, _ in bbh.points} == {0, *best}
    assert humaneval.base_score == 0.050 and {n for n, _, _ in humaneval.points} == {0, *best[:2]}
    # Loss ranks (top-1, top-2, top-3, x0) = 1 2 3 4; bbh score ranks 3 4 2 1: sum of squared
    # rank differences 18, rho = 1 - 6 * 18 / (4 * 15) = -0.8.
    assert bbh.rho == pytest.approx(-0.8)
    # Loss ranks (top-1, top-2, x0) = 1 2 3; humaneval score ranks 1 3 2: rho = 1 - 6 * 2 / (3 * 8) = 0.5.
    assert humaneval.rho == pytest.approx(0.5)


def test_compare_reads_each_study_and_the_downstream_scores_of_its_best(synthetic, plain):
    compare = compare_report([synthetic.directory, plain.directory])
    labels = [s.label for s in compare.studies]
    assert labels == ["toy", "toy-random"]
    assert compare.metric == "validation_loss" and compare.warnings == []
    nomad, random_ = compare.studies
    assert nomad.report.best.number == lowest_loss(synthetic.directory).number
    assert nomad.best_scores == synthetic.scores[model_key(nomad.report.best.number)]
    assert random_.best_scores == {} and len(random_.report.curve) == 6
    assert compare.tasks == ["bbh-bigbench", "humaneval-offline"]
    reached = nomad.reached_best_at
    assert nomad.report.curve[reached - 1][3] == nomad.report.best.value
    assert reached == 1 or nomad.report.curve[reached - 2][3] > nomad.report.best.value
