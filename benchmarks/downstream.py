"""Does a forgetting guard give adapters that are not worse than the base model downstream?

    python benchmarks/downstream.py                    # everything below, resumable
    python benchmarks/downstream.py --parts design     # only the configuration design
    python benchmarks/downstream.py --replay           # rebuild the results from the caches only
    python benchmarks/downstream.py --threads 1 --shard 0/2 --seeds 0 2 &   # one process per core:
    python benchmarks/downstream.py --threads 1 --shard 1/2 --seeds 1       # each fills the caches

The blackbox is the built-in study's (``lorahpo tune`` with no config: SmolLM2-135M, 12 steps
on bigbench-instruct, validation loss) with its in-trial ``retention`` evaluator. Two parts:

1. **design**: ``--design`` configurations (default 30) spread over the default space by a
   scrambled Sobol sequence, each trained and measured; then ``bbh-bigbench`` (3-shot exact
   match, ``--bbh-limit`` rows per subtask: 10 x 24 = 240 rows, the same rows for every model)
   on the first ``--bbh-design`` of them (default 15) and on the base model. Spearman's rho of
   validation loss against each downstream metric, with a bootstrap 95% CI.
2. **arms**: NOMAD with budget ``--budget`` (default 20) for each seed, three ways: on
   validation loss alone (``loss``); with the forgetting constraint ``--guard <= --bound``
   (``guarded``; default: the built-in study's guard, ``retention_drop <= 0.05``); on validation loss and the guard's
   metric as two objectives, choosing the lowest validation loss on the front within the bound
   (``front``). Each run's chosen adapter gets
   validation loss, retention and bbh-bigbench with standard errors, next to the base model.

Every trained configuration goes, with all its metrics, into ``results/downstream_cache.jsonl``
(keyed by a hash of the complete trial config, as in ``lora_hpo.py``; searches replay through
the ordinary study loop with a ``ReplayExecutor``); every bbh-bigbench score into
``results/downstream_bbh.jsonl``. Adapters are kept under ``$LORAHPO_CACHE/bench/downstream/``
(never committed): a configuration whose adapter is gone is trained again (deterministic on a
CPU) before its bbh-bigbench score is measured. Results: ``results/downstream.json`` and ``.md``,
written by an unsharded run; ``--replay`` writes them from whatever the caches hold so far (the
points not yet measured are counted under ``missing``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine, write_results
from lora_hpo import replay_study, stamped, trial_config

from lorahpo import config as cfg
from lorahpo.api import default_config_path
from lorahpo.cache import cache_dir
from lorahpo.executors.replay import Blackbox, Measurement, Measurements, ReplayExecutor, Stop, config_key
from lorahpo.report import stats
from lorahpo.result import TrialRecord

RESULTS = Path(__file__).parent / "results"
ARMS = ("loss", "guarded", "front")
#: The benchmark also asks the retention questions zero-shot (the built-in study's guard before it asked them
#: few-shot), so that both are measured on the same adapters.
ZERO_SHOT = {"name": "retention_0shot", "kind": "choice"}
METRICS = ("retention", "retention_logprob", "retention_0shot", "retention_0shot_logprob")
#: Every model is trained and scored in fp32, on any CPU: one blackbox, whichever machine measures a point.
PRECISION = "fp32"
#: The forgetting guard of the guarded arms: (metric, bound), feasible when metric <= bound.
GUARD = ("retention_drop", 0.05)


def study_config(arm: str, seed: int, budget: int, bound: float, guard: str = GUARD[0]) -> cfg.StudyConfig:
    """The built-in study (its blackbox, space and x0), as one arm: NOMAD with ``seed`` and ``budget``."""
    import yaml

    raw = yaml.safe_load(default_config_path().read_text())
    raw.update(name=f"downstream-{arm}", seed=seed, budget=budget, optimizer="nomad", constraints={})
    raw["objective"]["lora"]["save_adapter"] = True  # bbh-bigbench reads the chosen adapters
    raw["objective"]["lora"]["evaluate"] = [*raw["objective"]["lora"]["evaluate"], ZERO_SHOT]
    raw["objective"]["lora"]["training"]["precision"] = PRECISION
    if arm == "guarded":
        raw["constraints"] = {guard: bound}
    elif arm == "front":
        raw["objective"]["secondary"] = {guard: "minimize"}
    return cfg.parse(raw, f"downstream {arm}")


def training_key(config: dict[str, Any]) -> str:
    """The key of what a trial config trains: all of it but its evaluators, which run after
    training and change no weight. Measurements of one adapter under other evaluators share it,
    and so do its adapter folder and its bbh-bigbench score."""
    return config_key({k: v for k, v in config.items() if k != "evaluate"})


def adapter_dir(train_key: str) -> Path:
    return cache_dir() / "bench" / "downstream" / train_key


def lora_blackbox(trial: dict[str, Any], stop: Stop) -> Measurement:
    """Train one trial config in this process, keep its adapter, return every metric."""
    from lorahpo.finetune.config import LoraTrialConfig
    from lorahpo.finetune.train import run_trial

    result = run_trial(LoraTrialConfig.model_validate(trial), adapter_dir(training_key(trial)))
    return {
        "status": result.status,
        "value": result.metrics.get("validation_loss") if result.status == "complete" else None,
        "reason": result.reason,
        "duration_s": result.duration_s,
        "metrics": result.metrics,
    }


# ------------------------------------------------------------------ design


def keyed(blackbox: Blackbox) -> Blackbox:
    """``blackbox``, its measurements stamped with the machine and their training key."""
    return lambda trial, stop: {**stamped(blackbox)(trial, stop), "train_key": training_key(trial)}


def design_points(conf: cfg.StudyConfig, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` points of the space from a scrambled Sobol sequence (Optuna's QMC sampler)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed)
    study = optuna.create_study(sampler=sampler)
    dists = conf.space.distributions()
    points = []
    for _ in range(n):
        trial = study.ask(dists)
        points.append(dict(trial.params))
        study.tell(trial, 0.0)
    return points


def measure_design(
    conf: cfg.StudyConfig, cache: Measurements, n: int, blackbox: Blackbox | None, shard: tuple[int, int] = (0, 1)
) -> list[Measurement | None]:
    """The design's measurements, in design order: those of this ``shard`` (``k, n``: every
    n-th point from the k-th) measured where missing, the others as far as the cache has them
    (None where it has not)."""
    measured: list[Measurement | None] = []
    for i, params in enumerate(design_points(conf, n)):
        config = trial_config(conf, params)
        key = config_key(config)
        point = cache.get(key)
        if point is None:
            if blackbox is None or i % shard[1] != shard[0]:
                print(f"design [{i + 1}/{n}] not measured yet", flush=True)
                measured.append(None)
                continue
            cache.add({"key": key, "params": params, **keyed(blackbox)(config, lambda *a: False)})
            point = cache.get(key)
            assert point is not None
        retention = _fmt(_metric(point, "retention"))
        print(f"design [{i + 1}/{n}] {_fmt(point.get('value'))} retention {retention}", flush=True)
        measured.append(point)
    return measured


def bbh_scored(points: Sequence[Measurement | None], n: int) -> list[tuple[int, Measurement]]:
    """The design points scored on bbh-bigbench, with their design index: the first ``n``
    complete ones. A point not measured yet keeps its place, so that no shard scores a point
    beyond them before the rest of the design is in."""
    scored: list[tuple[int, Measurement]] = []
    places = n
    for i, point in enumerate(points):
        if places == 0:
            break
        if point is None or point["status"] == "complete":
            places -= 1
            if point is not None:
                scored.append((i, point))
    return scored


# ------------------------------------------------------------------ bbh-bigbench


class BbhScores:
    """bbh-bigbench scores by training key (:func:`training_key`; ``base`` for the base model),
    cached in a JSONL file."""

    def __init__(self, path: Path, limit: int, live: bool) -> None:
        self.path, self.limit, self.live = path, limit, live
        self.scores: dict[str, dict[str, Any]] = {}
        self._read()

    def _read(self) -> None:
        if self.path.exists():
            data = self.path.read_bytes()
            for line in data[: data.rfind(b"\n") + 1].decode().splitlines():  # a line being written: next time
                row = json.loads(line)
                if row["limit"] == self.limit:
                    self.scores.setdefault(row["key"], row)

    def get(self, key: str, conf: cfg.StudyConfig, params: dict[str, Any] | None, measure: bool = True
            ) -> dict[str, Any] | None:
        """The score of the adapter of training key ``key`` (trained with ``params`` in the study
        ``conf``), or of the base model (``base``); measured now if missing, live and ``measure``,
        else None."""
        if key not in self.scores:
            self._read()  # another process may have measured it
        if key in self.scores:
            return self.scores[key]
        if not (self.live and measure):
            return None
        from lorahpo.evaluation import harness, tasks

        adapter = None
        if params is not None:
            adapter = adapter_dir(key) / "adapter"
            if not adapter.is_dir():  # trained on another machine, or its adapter deleted: train it again
                config = trial_config(conf, params)
                assert training_key(config) == key, f"{params} trains {training_key(config)} in this study, not {key}"
                lora_blackbox(config, lambda *a: False)
        assert conf.objective.lora is not None
        spec = tasks.resolve("bbh-bigbench")
        manager = harness.task_manager([spec.prepare()] if spec.prepare else [], with_lm_eval_tasks=False)
        tic = time.perf_counter()
        lm = harness.load_model(conf.objective.lora.model, adapter, device="cpu", precision=PRECISION, batch_size=8)
        scores = harness.run_task(lm, spec, manager, limit=self.limit)
        samples = adapter_dir(key) / f"bbh-{self.limit}-samples.json"  # each row's answer, for reading (not committed)
        samples.parent.mkdir(parents=True, exist_ok=True)
        samples.write_text(json.dumps(scores.samples, indent=1))
        row = {"key": key, "limit": self.limit, "bbh": scores.score, "bbh_se": scores.stderr, "rows": scores.n,
               "precision": PRECISION, "duration_s": time.perf_counter() - tic, "measured_at": machine()}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.scores[key] = row
        print(f"bbh-bigbench {key}: {scores.score:.4f} ({scores.n} rows, {row['duration_s']:.0f} s)", flush=True)
        return row


# ------------------------------------------------------------------ arms


def chosen(records: list[TrialRecord], arm: str, guard: str, bound: float) -> TrialRecord | None:
    """The adapter an arm hands its user: the lowest validation loss (within the bound, for the guarded arms)."""
    done = [r for r in records if r.status == "complete" and r.value is not None]
    if arm != "loss":
        done = [r for r in done if r.metrics.get(guard, math.inf) <= bound]
    return min(done, key=lambda r: (r.metrics["validation_loss"], r.number), default=None)


def run_arm(
    arm: str, seed: int, args: argparse.Namespace, cache: Measurements, blackbox: Blackbox | None
) -> dict[str, Any]:
    conf = study_config(arm, seed, args.budget, args.bound, args.guard)
    executor = ReplayExecutor(cache, lambda params: trial_config(conf, params), blackbox and keyed(blackbox))

    def show(r: TrialRecord) -> None:
        print(f"{arm} seed {seed} trial {r.number}: {_fmt(r.value)}", flush=True)

    records = replay_study(conf, executor, show)
    pick = chosen(records, arm, args.guard, args.bound)
    if pick is None:
        return {"seed": seed, "chosen": None}
    return {
        "seed": seed,
        "chosen": pick.number,
        "params": pick.params,
        "train_key": executor.answers[pick.number].measurement["train_key"],
        "val_loss": pick.metrics["validation_loss"],
        "retention": pick.metrics["retention"],
        "retention_se": pick.metrics["retention_se"],
        "retention_drop": pick.metrics["retention_drop"],
        "retention_logprob_drop": pick.metrics["retention_logprob_drop"],
        "feasible_trials": sum(r.metrics.get(args.guard, math.inf) <= args.bound for r in records),
    }


# ------------------------------------------------------------------ statistics


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Spearman's rho and its bootstrap 95% interval (the report's: pairs resampled, fixed seed)."""
    ci = stats.spearman_ci(x, y)
    return {"rho": stats.spearman(x, y), "ci": list(ci) if ci else None, "n": len(x)}


def summarize_arms(arms: dict[str, list[dict[str, Any]]], base: dict[str, Any]) -> dict[str, Any]:
    """Per arm: median validation loss, retention, bbh-bigbench, and the verdict on the target."""
    out: dict[str, Any] = {}
    best_loss = [r["val_loss"] for r in arms.get("loss", []) if r.get("val_loss") is not None]
    reference = statistics.median(best_loss) if best_loss else None
    for arm, runs in arms.items():
        done = [r for r in runs if r.get("bbh") is not None]
        if not done:
            continue
        not_worse = [r["bbh"] >= base["bbh"] - r["bbh_se"] for r in done]
        within = [reference is not None and r["val_loss"] <= 1.1 * reference for r in done]
        out[arm] = {
            "val_loss": statistics.median(r["val_loss"] for r in done),
            "retention": statistics.median(r["retention"] for r in done),
            "bbh": statistics.median(r["bbh"] for r in done),
            "runs": len(done),
            "bbh_not_worse_than_base": sum(not_worse),
            "val_loss_within_10pct_of_loss_arm": sum(within),
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    base = result["base"]
    lines = [
        "# Downstream: does a forgetting guard keep the base model's ability?",
        "",
        f"Machine: {result['machine'].get('cpu')} ({result['machine'].get('cores')} cores). "
        f"Base model: validation loss {_fmt(base.get('val_loss'))}, retention {_fmt(base.get('retention'))}, "
        f"bbh-bigbench {_fmt(base.get('bbh'))} ± {_fmt(base.get('bbh_se'))} ({base.get('bbh_rows')} rows).",
        "",
        "## Validation loss against downstream metrics (Spearman, bootstrap 95% CI)",
        "",
        "| metric | rho | 95% CI | configurations |",
        "|---|---|---|---|",
    ]
    for metric, s in result["spearman"].items():
        ci = f"[{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]" if s["ci"] else "-"
        lines.append(f"| {metric} | {_fmt(s['rho'])} | {ci} | {s['n']} |")
    if result.get("predicts_bbh"):
        lines += ["", "## In-trial metrics against bbh-bigbench on the scored configurations (Spearman, 95% CI)", "",
                  "| in-trial metric | rho with bbh-bigbench | 95% CI | configurations |", "|---|---|---|---|"]
        for metric, s in result["predicts_bbh"].items():
            ci = f"[{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]" if s["ci"] else "-"
            lines.append(f"| {metric} | {_fmt(s['rho'])} | {ci} | {s['n']} |")
    if not result["arms"]:
        return "\n".join(lines + _gaps(result)) + "\n"
    lines += ["", "## Chosen adapters by arm (NOMAD, budget "
              f"{result['config']['budget']}, bound {result['config']['guard']} <= {result['config']['bound']})", "",
              "| arm | seed | validation loss | retention | bbh-bigbench ± se |", "|---|---|---|---|---|"]
    for arm, runs in result["arms"].items():
        for r in runs:
            bbh = f"{_fmt(r.get('bbh'))} ± {_fmt(r.get('bbh_se'))}" if r.get("bbh") is not None else "-"
            lines.append(f"| {arm} | {r['seed']} | {_fmt(r.get('val_loss'))} | {_fmt(r.get('retention'))} | {bbh} |")
    if result.get("summary"):
        lines += ["", "Per arm (medians over seeds): runs whose adapter is not worse than the base model on "
                  "bbh-bigbench beyond one standard error, and whose validation loss is within 10% of the "
                  "loss arm's median.", "",
                  "| arm | runs | validation loss | retention | bbh-bigbench | not worse than base | loss within 10% |",
                  "|---|---|---|---|---|---|---|"]
        for arm, a in result["summary"].items():
            lines.append(f"| {arm} | {a['runs']} | {_fmt(a['val_loss'])} | {_fmt(a['retention'])} | {_fmt(a['bbh'])} "
                         f"| {a['bbh_not_worse_than_base']} | {a['val_loss_within_10pct_of_loss_arm']} |")
    return "\n".join(lines + _gaps(result)) + "\n"


def _gaps(result: dict[str, Any]) -> list[str]:
    what = {"design": "design points", "bbh": "bbh-bigbench scores", "arms": "arm runs"}
    gaps = [f"{count} {what[part]}" for part, count in result.get("missing", {}).items() if count]
    return ["", "Not measured yet: " + ", ".join(gaps) + "."] if gaps else []


def _metric(point: Measurement, name: str) -> float | None:
    return (point.get("metrics") or {}).get(name)


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", choices=("design", "arms"), default=["design", "arms"])
    p.add_argument("--design", type=int, default=30, help="configurations in the design")
    p.add_argument("--bbh-design", type=int, default=15, help="design configurations also scored on bbh-bigbench")
    p.add_argument("--bbh-limit", type=int, default=10, help="rows per bbh-bigbench subtask (24 subtasks)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=20)
    p.add_argument("--guard", default=GUARD[0], choices=("retention_drop", "retention_logprob_drop"),
                   help="the metric the forgetting bound is on")
    p.add_argument("--bound", type=float, default=GUARD[1], help="the forgetting bound: feasible when guard <= bound")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="the arms to run")
    p.add_argument("--threads", type=int, help="torch threads (one process per core: --threads 1)")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="K/N",
                   help="one of N processes sharing the caches: measure only design points (and their "
                        "bbh-bigbench scores) K, K+N, ...; the base model's score when K is 0; write no results")
    p.add_argument("--replay", action="store_true", help="measure nothing: write the results from the caches")
    p.add_argument("--cache", type=Path, default=RESULTS / "downstream_cache.jsonl")
    p.add_argument("--bbh-cache", type=Path, default=RESULTS / "downstream_bbh.jsonl")
    p.add_argument("--out", type=Path, default=RESULTS / "downstream.json")
    return p.parse_args(argv)


def _shard(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, got {text!r}")
    return int(k), int(n)


def main(argv: Sequence[str] | None = None, blackbox: Blackbox | None = lora_blackbox) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["LORAHPO_NUM_THREADS"] = str(args.threads)
    live = None if args.replay else blackbox
    k, n = args.shard
    cache = Measurements(args.cache)
    bbh = BbhScores(args.bbh_cache, args.bbh_limit, live=live is not None)
    conf = study_config("loss", 0, args.budget, args.bound)
    result: dict[str, Any] = {
        "config": {"design": args.design, "bbh_design": args.bbh_design, "bbh_limit": args.bbh_limit,
                   "seeds": args.seeds, "budget": args.budget, "guard": args.guard,
                   "bound": args.bound, "arms": args.arms},
        "machine": machine(),
        "base": {},
        "spearman": {},
        "arms": {},
        "missing": {"design": 0, "bbh": 0, "arms": 0},
    }
    missing = result["missing"]
    points = measure_design(conf, cache, args.design, live, args.shard) if "design" in args.parts else []
    missing["design"] = sum(p is None for p in points)
    complete = [p for p in points if p is not None and p["status"] == "complete"]
    if complete:
        some = complete[0]["metrics"]
        result["base"] = {"val_loss": some["initial_validation_loss"], "retention": some["retention_base"],
                          "retention_logprob": some["retention_logprob"] + some["retention_logprob_drop"]}
    base_bbh = bbh.get("base", conf, None, measure=k == 0)
    if base_bbh is None:
        missing["bbh"] += 1
    else:
        result["base"].update(bbh=base_bbh["bbh"], bbh_se=base_bbh["bbh_se"], bbh_rows=base_bbh["rows"])
    for metric in METRICS:
        if len(complete) >= 3 and all(metric in p["metrics"] for p in complete):
            result["spearman"][metric] = spearman(
                [p["value"] for p in complete], [p["metrics"][metric] for p in complete]
            )
    scored = []
    for i, p in bbh_scored(points, args.bbh_design):
        score = bbh.get(p["train_key"], conf, p["params"], measure=i % n == k)
        if score is None:
            missing["bbh"] += 1
        else:
            scored.append((p, score))
    if len(scored) >= 3:
        result["spearman"]["bbh-bigbench"] = spearman([p["value"] for p, _ in scored], [s["bbh"] for _, s in scored])
        # Which in-trial metric tells bbh-bigbench: each one's rho with it over the scored adapters.
        result["predicts_bbh"] = {
            metric: spearman([p["metrics"][metric] for p, _ in scored], [s["bbh"] for _, s in scored])
            for metric in ("validation_loss", *METRICS)
            if all(metric in p["metrics"] for p, _ in scored)
        }
    if "arms" in args.parts:
        for seed in args.seeds:  # seeds outermost: a partial run already compares the arms
            for arm in args.arms:
                try:
                    run = run_arm(arm, seed, args, cache, live)
                except LookupError:  # replaying a search whose points are not all measured yet
                    missing["arms"] += 1
                    continue
                if run.get("train_key"):
                    score = bbh.get(run["train_key"], study_config(arm, seed, args.budget, args.bound, args.guard),
                                    run["params"])
                    if score is None:
                        missing["bbh"] += 1
                    else:
                        run.update(bbh=score["bbh"], bbh_se=score["bbh_se"])
                result["arms"].setdefault(arm, []).append(run)
        if "bbh" in result["base"]:
            result["summary"] = summarize_arms(result["arms"], result["base"])
    if n > 1:
        print("caches filled; `--replay` writes the results", flush=True)
        return result
    write_results(args.out, result, markdown(result))
    return result


if __name__ == "__main__":
    main()
