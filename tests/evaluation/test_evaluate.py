"""Offline evaluation of a tiny model, with and without adapters, through lm-eval for real.

The study's base model is a random 2-layer Llama; its trials carry random LoRA adapters. Each
test runs lm-eval on a couple of rows of each offline task built from the fixture data.
"""

from __future__ import annotations

import json

import pytest

from lorahpo.config import ConfigError
from lorahpo.errors import UserError
from lorahpo.evaluation import harness
from lorahpo.evaluation.runner import evaluate, make_plan
from lorahpo.evaluation.store import SUMMARY_ATTR, EvaluationStore
from lorahpo.evaluation.tasks import parse_tasks
from lorahpo.finetune.config import ModelConfig
from lorahpo.study import Study

from .conftest import lora_study

pytestmark = pytest.mark.timeout(600)
OFFLINE = parse_tasks(None)


@pytest.fixture
def study_dir(tmp_path, tiny_model, task_cache, code_sandbox):
    """Trial 0 (the start point) and trial 2 have adapters; trial 1 failed; trial 2 is best."""
    a, b = tiny_model.adapters
    lora_study(tmp_path / "study", str(tiny_model.base), [(2.5, a), (None, None), (2.0, b)])
    return tmp_path / "study"


def test_base_start_point_and_best_are_evaluated_stored_and_reused(study_dir):
    seen = []
    plan = evaluate(study_dir, OFFLINE, top=1, limit=2, device="cpu", batch_size=4,
                    on_result=seen.append, progress=False)
    assert [(m.key, m.roles) for m in plan.models] == [("base", ["base"]), ("trial-0", ["x0"]), ("trial-2", ["top-1"])]
    assert len(seen) == 6 and not plan.reused
    store = EvaluationStore(study_dir)
    results = {(r.model, r.task): r for r in store.results()}
    tasks = ("bbh-bigbench", "humaneval-offline")
    assert set(results) == {(m, t) for m in ("base", "trial-0", "trial-2") for t in tasks}

    bbh = results[("trial-2", "bbh-bigbench")]
    assert bbh.metric == "exact_match" and 0.0 <= bbh.score <= 1.0
    assert bbh.n == 8 and set(bbh.subtasks) == {
        "causal_judgement", "dyck_languages", "logical_deduction_three_objects", "object_counting"
    }
    assert all(sub["n"] == 2 for sub in bbh.subtasks.values())
    assert bbh.settings["limit"] == 2 and bbh.settings["adapter"].endswith("trials/2/adapter")
    code = results[("base", "humaneval-offline")]
    assert code.metric == "pass@1" and code.score == 0.0 and code.n == 2  # a random model writes no working code
    assert code.details["sandbox"].startswith("bwrap: ")

    # What each model answered is kept; the adapters change the answers.
    def answers(model):
        path = store.path(model, "bbh-bigbench").with_name("bbh-bigbench.samples.jsonl")
        return [json.loads(line)["answer"] for line in path.read_text().splitlines()]

    assert len(answers("base")) == 8
    assert answers("base") != answers("trial-0") and answers("trial-0") != answers("trial-2")

    # The summary is mirrored into the Optuna study.
    summary = Study.load(study_dir).optuna_study.user_attrs[SUMMARY_ATTR]
    assert summary["scores"]["trial-2"]["bbh-bigbench"] == bbh.score
    assert summary["roles"] == {"base": ["base"], "trial-0": ["x0"], "trial-2": ["top-1"]}

    # Nothing is computed again for the same request...
    again = evaluate(study_dir, OFFLINE, top=1, limit=2, device="cpu", progress=False)
    assert not again.todo and len(again.reused) == 6
    # ...but a different row limit is a different measurement.
    assert len(make_plan(study_dir, OFFLINE, top=1, limit=3).todo) == 6


def test_an_interrupted_evaluation_resumes_at_the_missing_pair(study_dir):
    def stop_after_first(result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(study_dir, OFFLINE[1:], top=1, limit=1, device="cpu", on_result=stop_after_first, progress=False)
    store = EvaluationStore(study_dir)
    assert [(r.model, r.task) for r in store.results()] == [("base", "humaneval-offline")]
    plan = make_plan(study_dir, OFFLINE[1:], top=1, limit=1)
    assert [(m.key, t.name) for m, t in plan.todo] == [(m, "humaneval-offline") for m in ("trial-0", "trial-2")]
    assert len(plan.reused) == 1


def test_trials_without_adapter_are_skipped_and_named(tmp_path, tiny_model, task_cache):
    a, _ = tiny_model.adapters
    lora_study(tmp_path / "s", str(tiny_model.base), [(2.5, None), (2.0, a)])
    plan = make_plan(tmp_path / "s", OFFLINE, top=2, limit=1)
    assert [m.key for m in plan.models] == ["base", "trial-1"]
    assert plan.skipped == ["trial 0 (x0/top-2): no adapter on disk"]


def test_a_study_without_models_is_refused(tmp_path):
    from lorahpo import config as cfg

    conf = cfg.parse({"space": {"preset": "paper"}, "objective": {"python": "lorahpo.toys:lora_surface"}})
    Study.open(tmp_path / "toy", conf)
    with pytest.raises(ConfigError, match="not a LoRA study"):
        make_plan(tmp_path / "toy", OFFLINE, top=1, limit=1)


def test_a_gguf_model_reaches_lm_eval_with_its_gguf_file(tmp_path, tiny_model, task_cache):
    from finetune.tiny import write_gguf

    gguf = write_gguf(tiny_model.base, tmp_path / "tiny.gguf")
    lm = harness.load_model(ModelConfig(name=str(gguf)), tiny_model.adapters[0], device="cpu", batch_size=2)
    manager = harness.task_manager([OFFLINE[0].prepare()], with_lm_eval_tasks=False)
    scores = harness.run_task(lm, OFFLINE[0], manager, limit=1)
    assert scores.n == 4 and 0.0 <= scores.score <= 1.0  # one row of each of the 4 subtasks
    assert set(scores.subtasks) == {"causal_judgement", "dyck_languages", "logical_deduction_three_objects",
                                    "object_counting"}


def test_lm_eval_generates_with_the_head_as_one_matrix_product(tiny_model):
    """An adapter loaded for lm-eval freezes the head weight; its prefill's last column still reaches
    the head as one matrix (not one product per row against a copy of the transposed weight)."""
    import torch
    from finetune.tiny import head_products

    lm = harness.load_model(ModelConfig(name=str(tiny_model.base)), tiny_model.adapters[0], device="cpu")
    ids = torch.tensor([lm.tokenizer("Q: (A) or (B)?\nA:").input_ids])
    pad = lm.tokenizer.eos_token_id

    def run():
        with torch.no_grad():
            lm.model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=pad)

    assert not lm.model.get_output_embeddings().weight.requires_grad
    assert set(head_products(lm.model, run)) == {"aten::mm"}


def test_a_failing_pair_is_one_error_and_keeps_what_was_stored(study_dir, monkeypatch):
    from lorahpo.evaluation import runner

    calls = []

    def flaky(lm, spec, *args, **kwargs):
        calls.append(spec.name)
        if len(calls) == 2:
            raise OSError("Couldn't reach the hub\nmore lines")
        return real(lm, spec, *args, **kwargs)

    real = harness.run_task
    monkeypatch.setattr(harness, "run_task", flaky)
    expected = r"base on bbh-bigbench failed: OSError: Couldn't reach the hub \(details in .*lm-eval.log\)"
    with pytest.raises(runner.EvaluationError, match=expected):
        evaluate(study_dir, OFFLINE[::-1], top=0, limit=1, device="cpu", progress=False)
    assert [(r.model, r.task) for r in EvaluationStore(study_dir).results()] == [("base", "humaneval-offline")]
    assert "Traceback" in (EvaluationStore(study_dir).folder / runner.LOG_FILE).read_text()


def test_generated_code_is_not_run_without_the_sandbox_unless_allowed(tmp_path, tiny_model, task_cache, no_sandbox):
    lora_study(tmp_path / "s", str(tiny_model.base), [(2.5, None)])
    with pytest.raises(UserError, match=r"^HumanEval runs generated code: bubblewrap .* \(--allow-unsandboxed\)$"):
        evaluate(tmp_path / "s", OFFLINE, top=0, limit=1, device="cpu", progress=False)
    assert not EvaluationStore(tmp_path / "s").folder.exists()
    evaluate(tmp_path / "s", OFFLINE[1:], top=0, limit=1, device="cpu", progress=False, allow_unsandboxed=True)
    (result,) = EvaluationStore(tmp_path / "s").results()
    assert result.task == "humaneval-offline" and result.details["sandbox"].startswith("UNSANDBOXED")
