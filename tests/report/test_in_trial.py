"""In-trial evaluators in the report and the comparison, on a synthetic study with hand-chosen metrics."""

from __future__ import annotations

import pytest
from studies import (
    BEST,
    DROP_BOUND,
    INFEASIBLE,
    RETENTION_BASE,
    TRIALS,
    evaluated_study,
)

from lorahpo.report.data import compare_report, study_report
from lorahpo.report.in_trial import evaluator_summaries
from lorahpo.report.render import EVALUATOR_NOTE, write_compare, write_report
from lorahpo.report.stats import spearman_ci

from .test_render import Page, png_of


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    return evaluated_study(tmp_path_factory.mktemp("in-trial") / "evaluated").directory


def test_each_evaluator_is_summarised_over_the_complete_trials(evaluated):
    report = study_report(evaluated)
    retention, in_domain = report.evaluators
    assert [e.name for e in report.evaluators] == ["retention", "in_domain"]
    assert retention.points == [(n, loss, r) for n, (loss, r, _) in enumerate(TRIALS)]  # the failed trial is left out
    assert retention.base == RETENTION_BASE and in_domain.base == 0.10
    # A bound on the drop is a floor on the value: base - bound.
    assert retention.bound == pytest.approx(RETENTION_BASE - DROP_BOUND)
    assert retention.constraint == "retention_drop <= 0.05"
    assert in_domain.bound is None and in_domain.constraint is None
    # Ranks by loss 5 3 2 4 1, by retention 5 2 1 4 3: sum d^2 = 6, rho = 1 - 6 * 6 / (5 * 24) = 0.7.
    assert retention.rho == pytest.approx(0.7)
    assert retention.ci == spearman_ci([p[1] for p in retention.points], [p[2] for p in retention.points])
    # in_domain rises exactly as the loss falls: rho = -1 in every resample.
    assert in_domain.rho == pytest.approx(-1.0) and in_domain.ci == pytest.approx((-1.0, -1.0))
    assert report.infeasible == [INFEASIBLE]


def test_a_constraint_on_the_value_itself_and_too_few_trials():
    class Trial:
        def __init__(self, number, status, metrics):
            self.number, self.status, self.metrics = number, status, metrics

    trials = [Trial(0, "complete", {"validation_loss": 1.0, "acc": 0.5}), Trial(1, "failed", {})]
    (acc,) = evaluator_summaries(["acc"], trials, {"acc": 0.9})
    assert (acc.bound, acc.constraint, acc.base) == (0.9, "acc <= 0.9", None)
    assert acc.rho is None and acc.ci is None and acc.missing_reason == "fewer than 3 trials"


def test_the_report_draws_and_tabulates_each_evaluator(evaluated, tmp_path):
    report = study_report(evaluated)
    paths = write_report(report, tmp_path / "out")
    page = Page(paths["html"].read_text())
    png = png_of(page.images["fig-evaluators_vs_loss"])
    assert png.startswith(b"\x89PNG") and png == paths["evaluators_vs_loss"].read_bytes()
    header, *rows = page.tables["evaluators"]
    table = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    low, high = report.evaluators[0].ci
    assert table["retention"] == {
        "evaluator": "retention",
        "trials (n)": "5",
        "base model": "0.450",
        f"best (trial {BEST})": "0.42 (-0.03)",
        "constraint": "retention_drop <= 0.05",
        "Spearman ρ (loss, value)": "+0.70",
        "95% CI": f"[{low:+.2f}, {high:+.2f}]",
    }
    in_domain = table["in_domain"]
    assert in_domain["Spearman ρ (loss, value)"] == "-1.00" and in_domain["95% CI"] == "[-1.00, -1.00]"
    assert in_domain[f"best (trial {BEST})"] == "0.36 (+0.26)" and in_domain["constraint"] == ""
    md = paths["markdown"].read_text()
    assert "![in-trial evaluators against loss](evaluators_vs_loss.png)" in md
    row = f"| retention | 5 | 0.450 | 0.42 (-0.03) | retention_drop <= 0.05 | +0.70 | [{low:+.2f}, {high:+.2f}] |"
    assert row in md
    assert EVALUATOR_NOTE in md and "2000 resamples" in EVALUATOR_NOTE


def test_compare_shows_each_best_trials_evaluators(evaluated, tmp_path):
    # A tighter bound on the drop leaves trials 0 (drop 0.01) and 3 (drop 0.02): trial 3 has the lower loss.
    strict = evaluated_study(tmp_path / "strict", constraints={"retention_drop": 0.02})
    paths = write_compare(compare_report([evaluated, strict.directory]), tmp_path / "cmp")
    header, *rows = Page(paths["html"].read_text()).tables["studies"]
    table = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert header.index("retention (vs base)") == header.index("found at evaluation") + 1
    assert (table["evaluated"]["best trial"], table["evaluated"]["retention (vs base)"]) == (str(BEST), "0.42 (-0.03)")
    assert (table["strict"]["best trial"], table["strict"]["retention (vs base)"]) == ("3", "0.43 (-0.02)")
    assert table["strict"]["in_domain (vs base)"] == "0.22 (+0.12)"
