"""In-trial evaluators on a tiny Llama: scores by hand, against lm-eval, and inside a real trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lorahpo.evaluation import in_trial
from lorahpo.evaluation.in_trial import Context, EvaluatorError, Prompted, Question
from lorahpo.finetune.config import EvaluatorSpec
from lorahpo.finetune.device import resolve_precision

from .conftest import choice, write_bigbench_tarball

QUESTIONS = [
    {"question": "What colour is the sky?", "choices": ["blue", "green", "red"], "answer": "blue"},
    {"question": "What colour is grass?", "choices": ["red", "green"], "answer": 1},
    {"question": "Add 2 and 3.", "choices": ["five", "six", "seven", "the sum is five"], "answer": "five"},
    {"question": "Which one barks?", "choices": ["cat", "dog"], "answer": "dog"},
]


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model.base, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.base)
    return model, tokenizer


def context(model, tokenizer) -> Context:
    cpu = torch.device("cpu")
    return Context(model, tokenizer, cpu, resolve_precision("fp32", cpu), "alpaca", [])


def answer_index(question: dict) -> int:
    """The answer of ``question`` as the index of its choice."""
    answer = question["answer"]
    return question["choices"].index(answer) if isinstance(answer, str) else answer


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_choice_logprobs_match_a_full_forward_pass_by_hand(loaded, tmp_path):
    model, tokenizer = loaded
    spec = EvaluatorSpec(name="qa", kind="choice", path=str(write_jsonl(tmp_path / "q.jsonl", QUESTIONS)))
    questions = in_trial.load_questions(spec)
    assert [q.answer for q in questions] == [0, 1, 0, 1]
    scores = in_trial.choice_logprobs(context(model, tokenizer), questions)
    for q, got in zip(questions, scores, strict=True):
        prefix = tokenizer(f"Q: {q.question}\nA:")["input_ids"]
        for option, value in zip(q.choices, got, strict=True):
            whole = tokenizer(f"Q: {q.question}\nA: {option}")["input_ids"]
            ids = torch.tensor([whole])
            with torch.no_grad():
                logp = model(input_ids=ids).logits[0].log_softmax(-1)
            expected = sum(float(logp[i - 1, whole[i]]) for i in range(len(prefix), len(whole)))
            assert value == pytest.approx(expected, abs=1e-4)
    measured = in_trial.measure_choice(context(model, tokenizer), questions)
    right = [s.index(max(s)) == q.answer for s, q in zip(scores, questions, strict=True)]
    assert measured["value"] == sum(right) / 4
    assert measured["logprob"] == pytest.approx(sum(s[q.answer] for s, q in zip(scores, questions, strict=True)) / 4)


def test_choice_batches_score_as_one_question_at_a_time(loaded, tmp_path):
    """Left-padded prefixes and option rows continuing their own question's cache change nothing."""
    model, tokenizer = loaded
    spec = EvaluatorSpec(name="qa", kind="choice", path=str(write_jsonl(tmp_path / "q.jsonl", QUESTIONS)))
    questions = in_trial.load_questions(spec)
    alone = in_trial.choice_logprobs(context(model, tokenizer), questions, batch_size=1)
    together = in_trial.choice_logprobs(context(model, tokenizer), questions, batch_size=3)
    for a, b in zip(alone, together, strict=True):
        assert b == pytest.approx(a, abs=1e-4)


def test_the_head_runs_as_one_matrix_product(tiny_model):
    """The few columns of logits an evaluator needs reach the head as one matrix. Kept as a strided
    view of the hidden states, they made the product with a frozen head weight (a trial's base
    model) a batched one over a copy of the transposed weight per row: 0.2 s a row in bf16 for
    SmolLM2's 49k vocabulary, more than the rest of the forward pass."""
    from finetune.tiny import head_products
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model.base, dtype=torch.float32).eval().requires_grad_(False)
    ctx = context(model, AutoTokenizer.from_pretrained(tiny_model.base))
    questions = [in_trial._question({**q, "task": "t"}, "row") for q in QUESTIONS]
    examples = {"t": questions[:2]}
    for run in (
        lambda: in_trial.choice_logprobs(ctx, questions, batch_size=3),
        lambda: in_trial.fewshot_answers(ctx, questions[2:], examples, batch_size=2),
    ):
        products = head_products(model, run)
        assert products and set(products) == {"aten::mm"}


def test_choice_accuracy_and_loglikelihoods_match_lm_eval(loaded, tmp_path):
    """The same items as a local lm-eval multiple-choice task give the same acc and log-likelihoods."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = loaded
    rows = [{**q, "answer": answer_index(q)} for q in QUESTIONS]
    data = write_jsonl(tmp_path / "items.jsonl", rows)
    (tmp_path / "task.yaml").write_text(
        "task: lorahpo_choice_check\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Q: {{question}}\\nA:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    out = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4),
        tasks=["lorahpo_choice_check"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        log_samples=True,
    )
    spec = EvaluatorSpec(name="qa", kind="choice", path=str(data))
    questions = in_trial.load_questions(spec)
    ours = in_trial.choice_logprobs(context(model, tokenizer), questions)
    theirs = {s["doc_id"]: [float(r[0][0]) for r in s["resps"]] for s in out["samples"]["lorahpo_choice_check"]}
    for i, scores in enumerate(ours):
        assert scores == pytest.approx(theirs[i], abs=1e-4)
    acc = out["results"]["lorahpo_choice_check"]["acc,none"]
    assert in_trial.measure_choice(context(model, tokenizer), questions)["value"] == pytest.approx(acc)


def test_generate_exact_match_counts_the_greedy_answers(loaded):
    """Answers set to what greedy decoding gives one prompt at a time; half of them spoiled."""
    model, tokenizer = loaded
    ctx = context(model, tokenizer)
    texts = ["Name a colour.", "Add two and three:", "The sky is", "Count to three:", "Q: A:", "The thing is the sun."]
    prompts = []
    for i, text in enumerate(texts):
        ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            alone = model.generate(
                torch.tensor([ids]), max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        answer = tokenizer.decode(alone[0, len(ids) :], skip_special_tokens=True)
        prompts.append(Prompted(tuple(ids), answer.upper() if i % 2 == 0 else answer + " nope"))
    spec = EvaluatorSpec(name="gen", kind="generate", path="unused.jsonl", max_new_tokens=5, batch_size=4)
    measured = in_trial.measure_generate(ctx, prompts, spec)
    assert measured["value"] == pytest.approx(0.5)  # case ignored; a different answer is wrong
    assert measured["se"] == pytest.approx((0.25 / 5) ** 0.5)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (None, "evaluator qa: file not found: "),
        ([], "has no rows"),
        ([{"question": "Why?", "answer": "no"}], "row 1: needs `choices`, a list of at least two non-empty strings"),
        ([{"question": "Why?", "choices": ["a", "b"], "answer": "c"}], "row 1: answer 'c' is not among its choices"),
        ([{"question": "", "choices": ["a", "b"], "answer": "a"}], "row 1: needs a non-empty `question`"),
    ],
)
def test_bad_choice_input_is_one_line_naming_the_evaluator(tmp_path, rows, message):
    path = tmp_path / "q.jsonl"
    if rows is not None:
        write_jsonl(path, rows)
    with pytest.raises(EvaluatorError) as err:
        in_trial.check(EvaluatorSpec(name="qa", kind="choice", path=str(path)))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("evaluator qa: ")


def test_an_unknown_lm_eval_task_is_refused(tmp_path):
    spec = EvaluatorSpec(name="x", kind="lm_eval", task="no_such_task_anywhere", include_path=str(tmp_path))
    with pytest.raises(EvaluatorError, match="evaluator x: unknown lm-eval task 'no_such_task_anywhere'"):
        in_trial._lm_eval_task(spec)


def test_a_sample_of_a_long_file_is_fixed_by_the_seed(tmp_path):
    rows = [{"question": f"q{i}", "choices": ["a", "b"], "answer": "a"} for i in range(50)]
    path = str(write_jsonl(tmp_path / "q.jsonl", rows))
    first = in_trial.load_questions(EvaluatorSpec(name="qa", kind="choice", path=path, size=10))
    again = in_trial.load_questions(EvaluatorSpec(name="qa", kind="choice", path=path, size=10))
    other = in_trial.load_questions(EvaluatorSpec(name="qa", kind="choice", path=path, size=10, seed=1))
    assert len(first) == 10 and first == again and first != other
    assert isinstance(first[0], Question)


def test_evaluators_given_by_name():
    from lorahpo.finetune.config import LoraTrialConfig

    conf = LoraTrialConfig.model_validate({"evaluate": ["retention", "in_domain", "mmlu", "bbh-bigbench"]})
    assert [(e.name, e.kind, e.task) for e in conf.evaluate] == [
        ("retention", "choice", None),
        ("in_domain", "generate", None),
        ("mmlu", "lm_eval", "mmlu"),
        ("bbh_bigbench", "lm_eval", "bbh-bigbench"),
    ]
    with pytest.raises(ValueError, match="two evaluators report 'retention'"):
        LoraTrialConfig.model_validate(
            {"evaluate": ["retention", {"name": "retention", "kind": "choice", "path": "x"}]}
        )


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from finetune.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-trial"))


def test_a_trial_reports_each_evaluator_next_to_the_base_model_measured_once(tiny_data, tmp_path, monkeypatch):
    from lorahpo.finetune.train import run_trial

    questions = write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
    conf = tiny_data.config(epochs=1, precision="fp32")
    evaluate = [
        EvaluatorSpec(name="qa", kind="choice", path=str(questions)),
        EvaluatorSpec(name="in_domain", kind="generate", size=4, max_new_tokens=8),
    ]
    conf = conf.model_copy(update={"evaluate": evaluate})
    calls = []
    real = in_trial.measure
    monkeypatch.setattr(in_trial, "measure", lambda c, s: calls.append(s.name) or real(c, s))
    first = run_trial(conf, tmp_path / "trials" / "0")
    assert first.status == "complete", first.reason
    assert calls == ["qa", "in_domain", "qa", "in_domain"]  # base before training, then the adapted model
    m = first.metrics
    for name in ("qa", "in_domain"):
        assert 0 <= m[name] <= 1 and 0 <= m[f"{name}_base"] <= 1
        assert m[f"{name}_drop"] == pytest.approx(m[f"{name}_base"] - m[name])
    base_qa = json.loads(next((tmp_path / "trials").glob(".base-qa-*.json")).read_text())
    assert m["qa_logprob_drop"] == pytest.approx(base_qa["logprob"] - m["qa_logprob"])
    assert m["evaluation_s"] > 0
    calls.clear()
    rank_2 = conf.model_copy(update={"lora": conf.lora.model_copy(update={"rank": 2})})
    second = run_trial(rank_2, tmp_path / "trials" / "1")
    assert calls == ["qa", "in_domain"]  # the base values were read back
    assert second.metrics["qa_base"] == m["qa_base"] and second.metrics["in_domain_base"] == m["in_domain_base"]


def test_retention_questions_come_balanced_from_the_held_out_tasks(tmp_path, monkeypatch):
    from lorahpo.evaluation.retention import retention_questions
    from lorahpo.finetune.builtin_data import RETENTION_TASKS, BuildSize, build_rows

    tasks = {
        "general_knowledge": {
            "description": "Answer.",
            "examples": [choice(f"Fact {i}?", ["yes", "no", "maybe"], i % 3) for i in range(9)],
        },
        "physics": {
            "task_prefix": "Physics: ",
            "examples": [choice(f"Force {i}?", ["up", "down"], i % 2) for i in range(3)],
        },
        "social_iqa": {
            "examples": [
                choice("x" * 400, ["a", "b"], 0),
                choice("Tie?", ["a", "b"], 0) | {"target_scores": {"a": 1, "b": 1}},
            ]
        },
        "arithmetic": {"description": "not held out", "examples": [choice("1+1?", ["2", "3"], 0)] * 3},
    }
    tarball = write_bigbench_tarball(tmp_path / "cache" / "downloads" / "bigbench-1.0.0.tar.gz", tasks)
    monkeypatch.setenv("LORAHPO_CACHE", str(tmp_path / "cache"))
    picked = retention_questions(6, seed=0)
    assert [q["task"] for q in picked] == ["general_knowledge", "physics"] * 3  # round robin while both last
    assert all(q["choices"][q["answer"]] in ("yes", "no", "maybe", "up", "down") for q in picked)
    assert picked[1]["question"].startswith("Physics: Force")
    assert len(retention_questions(20, seed=0)) == 12  # every usable question: too long and tied ones dropped
    assert retention_questions(6, seed=0) == picked and retention_questions(6, seed=1) != picked
    rows, _ = build_rows(tarball, BuildSize(per_task=100, total=None, max_chars=2000))
    assert {r["task"] for r in rows} == {"arithmetic"}  # the retention tasks are not trained on
    assert {"general_knowledge", "physics", "social_iqa"} <= set(RETENTION_TASKS)


def test_the_paper_mmlu_example_maximises_an_lm_eval_task_measured_in_each_trial(tiny_data, tmp_path):
    """examples/paper-mmlu.yaml on the tiny model, its MMLU replaced by a local lm-eval task file."""
    import yaml

    from lorahpo import config as cfg
    from lorahpo.study import Study

    rows = [{**q, "answer": answer_index(q)} for q in QUESTIONS]
    data = write_jsonl(tmp_path / "items.jsonl", rows)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_mmlu.yaml").write_text(
        "task: tiny_mmlu\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Q: {{question}}\\nA:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    root = Path(__file__).resolve().parents[2]
    raw = yaml.safe_load((root / "examples" / "paper-mmlu.yaml").read_text())
    assert raw["objective"]["metric"] == "mmlu" and raw["objective"]["direction"] == "maximize"
    tiny = tiny_data.config(max_steps=2, precision="fp32").model_dump(mode="json")
    raw["objective"]["lora"].update(model=tiny["model"], data=tiny["data"], training=tiny["training"])
    raw["objective"]["lora"]["evaluate"][0].update(
        task="tiny_mmlu", include_path=str(tmp_path / "tasks"), num_fewshot=0
    )
    raw["budget"] = 2
    study = Study.open(tmp_path / "study", cfg.parse(raw))
    summary = study.run()
    records = study.records()
    statuses = [r.status for r in records]
    assert summary.finished == 2 and statuses == ["complete", "complete"], [r.reason for r in records]
    for r in records:
        assert r.value == r.metrics["mmlu"] and r.value in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert r.metrics["mmlu_drop"] == pytest.approx(r.metrics["mmlu_base"] - r.metrics["mmlu"])
    assert summary.best is not None and summary.best.value == max(r.value for r in records)
