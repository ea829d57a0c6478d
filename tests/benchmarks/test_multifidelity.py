"""``benchmarks/multifidelity.py`` on synthetic learning curves: budgets, pruning, exact replay."""

import json
import statistics

import pytest

from lorahpo.toys import lora_surface

STEPS, TOKENS_PER_STEP = 24, 100


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("multifidelity")


def curves(calls):
    """Curves falling by the same amount to lora_surface's value: they never cross."""

    def blackbox(trial, stop):
        calls.append(trial)
        params = {**trial["lora"], "learning_rate": trial["training"]["learning_rate"]}
        final = lora_surface(params)["validation_loss"]
        curve = []
        for s in range(4, STEPS + 1, 4):
            curve.append([s, final + 1.0 - s / STEPS, s * TOKENS_PER_STEP])
            if stop(*curve[-1]) and s < STEPS:
                return {"status": "stopped", "value": None, "reason": None, "duration_s": s / STEPS, "curve": curve}
        return {"status": "complete", "value": curve[-1][1], "reason": None, "duration_s": 1.0, "curve": curve}

    return blackbox


def test_arms_share_a_token_budget_and_replay_exactly(bench, tmp_path):
    files = ["--cache", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "r.json")]
    args = ["--seeds", "0", "1", "--full-budget", "6", *files]
    calls = []
    result = bench.main(args, blackbox=curves(calls))
    budget = 6 * STEPS * TOKENS_PER_STEP
    assert result["budget_tokens"] == budget
    for run in result["runs"]:
        assert budget <= run["tokens"] < budget + STEPS * TOKENS_PER_STEP  # stops once the budget is spent
        assert run["tokens"] == sum(t["tokens"] for t in run["trials"])
        if run["arm"] == "nomad-full":
            assert len(run["trials"]) == 6 and all(t["status"] == "complete" for t in run["trials"])
        else:  # ASHA stops trials at 4 or 12 steps: more trials for the same tokens
            pruned = [t for t in run["trials"] if t["status"] == "pruned"]
            assert pruned and all(t["tokens"] in (4 * TOKENS_PER_STEP, 12 * TOKENS_PER_STEP) for t in pruned)
            assert len(run["trials"]) > 6
    summary = result["summary"]
    assert set(summary) == {"nomad-full", "nomad-asha", "tpe-asha"}
    fractions = summary["nomad-full"]["fraction_to_target"]  # one per seed
    assert len(fractions) == 2 and all(f is not None and f <= 1.0 for f in fractions)
    assert 0 < summary["nomad-full"]["median_fraction_to_target"] <= 1.0
    for arm, row in summary.items():  # the best so far, by tokens spent: it can only fall
        at = row["best_at"]
        assert list(at) == ["10%", "20%", "40%", "60%", "80%", "end"]
        finals = [r["best"] for r in result["runs"] if r["arm"] == arm]
        assert at["end"] == {"median": statistics.median(finals), "min": min(finals), "max": max(finals), "missing": 0}
        full = [s["median"] for s in at.values() if s["missing"] == 0]
        assert full == sorted(full, reverse=True)

    # Configurations are trained only as far as a pruner let them go; one is trained again only
    # when a later run lets it go further than its cached curve.
    cache = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert len(calls) == len(cache)
    by_key = {}
    for p in cache:
        by_key.setdefault(p["key"], []).append(p)
    for measurements in by_key.values():
        assert all(m["status"] == "stopped" for m in measurements[:-1])
        assert [len(m["curve"]) for m in measurements] == sorted({len(m["curve"]) for m in measurements})
    stopped = [p for p in cache if p["status"] == "stopped"]
    assert len(stopped) > len(cache) / 2 and all(len(p["curve"]) < STEPS // 4 for p in stopped)

    again = bench.main([*args, "--replay"], blackbox=None)
    assert [r["trace"] for r in again["runs"]] == [r["trace"] for r in result["runs"]]
    # A configuration never measured: replay alone refuses, naming it.
    with pytest.raises(LookupError, match=r"nomad seed 5: point 1 \{.*\} was never measured"):
        bench.main([*args, "--arms", "nomad-full", "tpe-asha", "--seeds", "5", "--replay"], blackbox=None)
    # Without pruning, a configuration ASHA stopped has to be trained further: replay alone refuses.
    alone = ["--full-budget", "6", "--cache", str(tmp_path / "alone.jsonl"), "--out", str(tmp_path / "alone.json")]
    bench.main([*alone, "--arms", "nomad-asha", "--seeds", "0"], blackbox=curves([]))
    with pytest.raises(LookupError, match="nomad seed 0: point 1 .* was not measured far enough"):
        bench.main([*alone, "--arms", "nomad-full", "--seeds", "0", "--replay"], blackbox=None)
    md = (tmp_path / "r.md").read_text()
    assert "| nomad-asha |" in md and "| arm | 10% | 20% |" in md
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_median_curve_starts_once_every_seed_has_a_value(bench):
    traces = [[(10, 3.0), (20, 1.0)], [(5, None), (15, 2.0)]]
    assert bench.median_curve(traces, 20, points=4) == [(0.75, 2.5), (1.0, 1.5)]
    assert bench.best_by(traces[0], 9) is None and bench.best_by(traces[0], 19) == 3.0
