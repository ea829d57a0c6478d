"""The plain progress line (no terminal): the best trial's evaluators next to its objective."""

from __future__ import annotations

from studies import BEST, TRIALS, evaluated_study

from lorahpo.progress import Progress, fmt_evaluator


def test_the_progress_line_shows_the_evaluators_of_the_best_feasible_trial(tmp_path, capsys):
    study = evaluated_study(tmp_path / "s")
    conf = study.config
    bar = Progress(conf.budget, 0, None, conf.objective.direction, conf.feasible, conf.evaluators)
    for record in study.records():
        bar("finish", record)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(TRIALS) + 1
    assert lines[0].endswith("| best 1.2 (trial 0) [retention 0.44 (-0.01), in_domain 0.12 (+0.02)] | ETA 00:00:00")
    # Trial 2 has a lower loss than trial 1 but is over the retention_drop bound: trial 1 stays best.
    assert "| best 0.95 (trial 1) [retention 0.41 (-0.04), in_domain 0.3 (+0.2)] |" in lines[2]
    assert f"| best 0.85 (trial {BEST}) [retention 0.42 (-0.03), in_domain 0.36 (+0.26)] |" in lines[-1]


def test_an_evaluator_without_a_drop_or_a_value_is_still_shown():
    assert fmt_evaluator({"retention": 0.5}, "retention") == "0.5"
    assert fmt_evaluator({}, "retention") == "-"
