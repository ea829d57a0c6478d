"""The few-shot choice evaluator (``shots``): by hand, against ``generate`` and against lm-eval."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from lorahpo.evaluation import in_trial
from lorahpo.evaluation.in_trial import LETTERS, Context, EvaluatorError
from lorahpo.finetune.config import EvaluatorSpec, LoraTrialConfig
from lorahpo.finetune.device import resolve_precision

# Two tasks; rows with `task` give their solved examples to the questions of the same task.
ROWS = [
    {"task": "colours", "question": "What colour is the sky?", "choices": ["blue", "green", "red"], "answer": 0},
    {"task": "colours", "question": "What colour is grass?", "choices": ["red", "green"], "answer": 1},
    {"task": "colours", "question": "What colour is snow?", "choices": ["black", "white"], "answer": 1},
    {"task": "colours", "question": "What colour is coal?", "choices": ["black", "pink", "white"], "answer": 0},
    {"task": "colours", "question": "What colour is a lemon?", "choices": ["blue", "yellow"], "answer": 1},
    {"task": "sums", "question": "Add 2 and 3.", "choices": ["five", "six", "seven", "four"], "answer": 0},
    {"task": "sums", "question": "Add 1 and 1.", "choices": ["three", "two"], "answer": 1},
    {"task": "sums", "question": "Add 4 and 4.", "choices": ["eight", "nine"], "answer": 0},
    {"task": "sums", "question": "Add 0 and 3.", "choices": ["one", "two", "three"], "answer": 2},
    {"task": "sums", "question": "Add 5 and 1.", "choices": ["six", "seven"], "answer": 0},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def drilled(tiny_model):
    """The tiny Llama taught a few of the lettered answers, so that greedy decoding gets some right.

    A random model never answers `` (X)``; a few optimizer steps on some solved prompts make it
    answer those (and sometimes others), so the greedy checks below see both outcomes.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.base)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.base, dtype=torch.float32)
    questions = [in_trial._question(row, "row") for row in ROWS]
    texts = [in_trial.lettered(q, solved=True) for q in questions[::2]]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(25):
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return model.eval(), tokenizer


def context(model, tokenizer) -> Context:
    cpu = torch.device("cpu")
    return Context(model, tokenizer, cpu, resolve_precision("fp32", cpu), "alpaca", [])


def spec(tmp_path: Path, **fields) -> EvaluatorSpec:
    fields = {"size": 6, "shots": 2, "seed": 2, **fields}  # seed 2 asks three questions of each task
    return EvaluatorSpec(name="fs", kind="choice", path=str(write_jsonl(tmp_path / "q.jsonl", ROWS)), **fields)


def test_examples_are_unasked_rows_of_the_same_task(tmp_path):
    s = spec(tmp_path)
    questions = in_trial.load_questions(s)
    examples = in_trial.load_examples(s, questions)
    asked = {q.question for q in questions}
    assert len(questions) == 6 and set(examples) == {"colours", "sums"}
    for task, shown in examples.items():
        assert len(shown) == 2 and all(e.task == task and e.question not in asked for e in shown)
    assert in_trial.load_examples(s, questions) == examples  # a fixed draw
    prompt = in_trial.fewshot_prompt(questions[0], examples[questions[0].task])
    first = examples[questions[0].task][0]
    assert prompt.startswith(f"Q: {first.question}\nOptions:\n(A) {first.choices[0]}\n")
    assert prompt.count("\n\n") == 2 and prompt.endswith("\nA:")
    assert prompt.split("\n\n")[0].endswith(f"\nA: ({LETTERS[first.answer]})")


def test_fewshot_scores_match_each_full_prompt_by_hand(drilled, tmp_path):
    """Shared-prefix cache, left padding and batches give what one uncached pass per prompt gives."""
    model, tokenizer = drilled
    s = spec(tmp_path, batch_size=2)
    questions = in_trial.load_questions(s)
    examples = in_trial.load_examples(s, questions)
    answers = in_trial.fewshot_answers(context(model, tokenizer), questions, examples, batch_size=2)
    logprobs, greedy = [], []
    for q in questions:
        prompt = in_trial.fewshot_prompt(q, examples[q.task])
        head = tokenizer(prompt)["input_ids"]
        whole = tokenizer(f"{prompt} ({LETTERS[q.answer]})")["input_ids"]
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([whole])).logits[0].log_softmax(-1)
        logprobs.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(head), len(whole))))
        greedy.append(all(int(logp[i - 1].argmax()) == whole[i] for i in range(len(head), len(whole))))
    assert [a.logprob for a in answers] == pytest.approx(logprobs, abs=1e-4)
    assert [a.greedy for a in answers] == greedy
    assert any(greedy) and not all(greedy)  # the check sees both outcomes
    measured = in_trial.measure(context(model, tokenizer), s)
    assert measured["value"] == pytest.approx(sum(greedy) / len(greedy))
    assert measured["logprob"] == pytest.approx(sum(logprobs) / len(logprobs), abs=1e-4)
    single = in_trial.fewshot_answers(context(model, tokenizer), questions, examples, batch_size=1)
    assert [a.logprob for a in single] == pytest.approx(logprobs, abs=1e-4)


def test_the_greedy_check_agrees_with_generate(drilled, tmp_path):
    model, tokenizer = drilled
    s = spec(tmp_path, batch_size=4)
    questions = in_trial.load_questions(s)
    examples = in_trial.load_examples(s, questions)
    answers = in_trial.fewshot_answers(context(model, tokenizer), questions, examples, batch_size=4)
    for q, answered in zip(questions, answers, strict=True):
        prompt = in_trial.fewshot_prompt(q, examples[q.task])
        head = tokenizer(prompt)["input_ids"]
        right = tokenizer(f"{prompt} ({LETTERS[q.answer]})")["input_ids"][len(head) :]
        with torch.no_grad():
            out = model.generate(
                torch.tensor([head]), max_new_tokens=len(right), do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        generated = out[0, len(head) :].tolist()
        assert answered.greedy == (generated == right)
        assert answered.first == generated[0]
    assert any(a.greedy for a in answers)


def test_fewshot_scores_match_lm_eval_loglikelihood(drilled, tmp_path):
    """The same prompts as a local lm-eval task: its log-likelihood and is_greedy of the right answer."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = drilled
    s = spec(tmp_path)
    questions = in_trial.load_questions(s)
    examples = in_trial.load_examples(s, questions)
    items = [
        {"prompt": in_trial.fewshot_prompt(q, examples[q.task]), "right": f" ({LETTERS[q.answer]})"} for q in questions
    ]
    data = write_jsonl(tmp_path / "items.jsonl", items)
    (tmp_path / "task.yaml").write_text(
        "task: lorahpo_fewshot_check\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\noutput_type: loglikelihood\n"
        'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{right}}"\ntarget_delimiter: ""\n'
        "metric_list:\n  - metric: perplexity\n  - metric: acc\n"
    )
    out = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4),
        tasks=["lorahpo_fewshot_check"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        log_samples=True,
    )
    theirs = {s["doc_id"]: s["resps"][0][0] for s in out["samples"]["lorahpo_fewshot_check"]}
    ours = in_trial.fewshot_answers(context(model, tokenizer), questions, examples)
    for i, answered in enumerate(ours):
        assert answered.logprob == pytest.approx(float(theirs[i][0]), abs=1e-4)
        assert answered.greedy == bool(theirs[i][1])
    assert out["results"]["lorahpo_fewshot_check"]["acc,none"] == pytest.approx(
        in_trial.measure_fewshot(context(model, tokenizer), questions, examples)["value"]
    )


def test_too_few_rows_for_the_shots_is_one_line_before_any_trial(tmp_path):
    with pytest.raises(EvaluatorError) as err:
        in_trial.check(spec(tmp_path, size=8, shots=2))
    message = str(err.value)
    assert message.startswith("evaluator fs: 2 shots need 2 rows of task ") and "\n" not in message
    in_trial.check(spec(tmp_path, size=6, shots=2))  # two left of each task: enough


def test_rows_without_a_task_lend_any_unasked_row(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "task"} for row in ROWS]
    s = EvaluatorSpec(name="fs", kind="choice", path=str(write_jsonl(tmp_path / "q.jsonl", rows)), size=7, shots=3)
    questions = in_trial.load_questions(s)
    examples = in_trial.load_examples(s, questions)
    assert set(examples) == {None} and len(examples[None]) == 3
    assert not {e.question for e in examples[None]} & {q.question for q in questions}
    with pytest.raises(EvaluatorError, match=r"^evaluator fs: 4 shots need 4 rows besides the 7 asked; .* has 3$"):
        in_trial.check(s.model_copy(update={"shots": 4}))


def test_shots_belong_to_choice_evaluators_and_default_to_none_written():
    with pytest.raises(ValidationError, match="`shots` belongs to choice evaluators"):
        EvaluatorSpec(name="g", kind="generate", shots=2)
    with pytest.raises(ValidationError):
        EvaluatorSpec(name="r", kind="choice", shots=9)
    # At its default the field is not written: trial configs hash as they did before it existed.
    dumped = LoraTrialConfig(evaluate=["retention"]).model_dump(mode="json")["evaluate"][0]
    assert "shots" not in dumped and EvaluatorSpec.model_validate(dumped).shots == 0
    assert EvaluatorSpec(name="r", kind="choice", shots=3).model_dump()["shots"] == 3
    assert copy.deepcopy(EvaluatorSpec(name="r", kind="choice", shots=3)).shots == 3


def test_more_options_than_letters_is_one_line(tmp_path):
    many = {"task": "sums", "question": "Pick one.", "choices": [f"c{i}" for i in range(27)], "answer": 0}
    path = str(write_jsonl(tmp_path / "q.jsonl", [*ROWS, many]))
    s = EvaluatorSpec(name="fs", kind="choice", path=path, size=len(ROWS) + 1, shots=1)
    with pytest.raises(EvaluatorError, match=r"^evaluator fs: .*27 options are too many to letter \(A-Z\)"):
        in_trial.check(s)


def test_a_built_in_evaluator_named_in_a_mapping_keeps_its_kind():
    from lorahpo.finetune.config import EvaluatorSpec

    spec = EvaluatorSpec.model_validate({"name": "retention", "shots": 3})
    assert (spec.kind, spec.shots, spec.path) == ("choice", 3, None)
    assert EvaluatorSpec.model_validate({"name": "in_domain"}).kind == "generate"
