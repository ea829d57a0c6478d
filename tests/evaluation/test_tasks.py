"""The offline task builders on fixture data: what lm-eval will read, row by row."""

from __future__ import annotations

import json

import pytest
import yaml

from lorahpo.evaluation import bbh, humaneval
from lorahpo.evaluation.tasks import DEFAULT_TASKS, KNOWN_TASKS, parse_tasks

from .conftest import PROBLEMS


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bbh_bigbench_rebuilds_the_bbh_tasks_present_and_nothing_else(task_cache):
    folder = bbh.prepare()
    group = yaml.safe_load((folder / "_group.yaml").read_text())
    names = ["causal_judgement", "dyck_languages", "logical_deduction_three_objects", "object_counting"]
    assert group["group"] == bbh.GROUP
    assert group["task"] == [f"{bbh.GROUP}_{n}" for n in names]  # BBH names; no 'arithmetic'
    assert group["aggregate_metric_list"][0] == {
        "metric": "exact_match", "aggregation": "mean", "weight_by_size": True, "filter_list": "extract"
    }
    for name in names:
        assert len(_rows(folder / f"{name}.fewshot.jsonl")) == bbh.SHOTS
    assert bbh.prepare() == folder  # built once


def test_multiple_choice_rows_letter_the_options_and_answer_with_a_letter(task_cache):
    folder = bbh.prepare()
    rows = _rows(folder / "causal_judgement.test.jsonl") + _rows(folder / "causal_judgement.fewshot.jsonl")
    assert len(rows) == 8
    for row in rows:
        assert row["input"].startswith("How would a typical person answer?\n\nDid event")
        options = dict(line.split(" ", 1) for line in row["input"].split("Options:\n")[1].splitlines())
        assert set(options.values()) == {"Yes", "No"}
        number = int(row["input"].split("event ")[1].split()[0])
        assert options[row["target"]] == ["Yes", "No"][number % 2]  # the option scored 1 in the source
    config = yaml.safe_load((folder / "causal_judgement.yaml").read_text())
    assert config["filter_list"][0]["filter"][0] == {
        "function": "regex", "regex_pattern": r"\([A-Z]\)", "group_select": -1  # the last letter counts
    }
    assert config["num_fewshot"] == 3 and config["description"] == "Answer questions about causal attribution.\n\n"
    assert config["doc_to_text"] == "Q: {{input}}\nA:" and config["fewshot_split"] == "fewshot"
    assert config["dataset_kwargs"]["data_files"]["test"] == str(folder / "causal_judgement.test.jsonl")


def test_generative_rows_prefer_digits_and_many_options_become_text(task_cache):
    folder = bbh.prepare()
    counting = _rows(folder / "object_counting.test.jsonl") + _rows(folder / "object_counting.fewshot.jsonl")
    assert sorted(int(r["target"]) for r in counting) == list(range(8))  # "3", not "n3"
    dyck = _rows(folder / "dyck_languages.test.jsonl")
    assert {r["target"] for r in dyck} == {"] )"} and "Options" not in dyck[0]["input"]
    config = yaml.safe_load((folder / "dyck_languages.yaml").read_text())
    assert config["filter_list"][0]["filter"][0]["group_select"] == 0  # the first line of the answer
    assert config["generation_kwargs"]["until"] == ["\n\n", "\nQ:"]


def test_subtask_test_rows_are_capped_and_sampled_with_a_fixed_seed(monkeypatch):
    spec = {"description": "d", "examples": [{"input": f"q{i}", "target": f"a{i}"} for i in range(40)]}
    monkeypatch.setattr(bbh, "MAX_TEST_ROWS", 10)
    first, second = bbh.build_subtask("word_sorting", spec), bbh.build_subtask("word_sorting", spec)
    assert first is not None and len(first.test) == 10 and len(first.fewshot) == 3
    assert first == second
    assert not {r["input"] for r in first.fewshot} & {r["input"] for r in first.test}
    assert bbh.build_subtask("word_sorting", {"examples": spec["examples"][:3]}) is None  # nothing left to test


def test_humaneval_offline_reads_the_wheel_and_scores_in_the_sandbox(task_cache, code_sandbox):
    folder = humaneval.prepare_offline()
    assert _rows(folder / "HumanEval.jsonl") == PROBLEMS
    text = (folder / "task.yaml").read_text()
    assert text.rstrip().endswith("process_results: !function utils.process_results")
    config = yaml.safe_load(text.replace("!function ", ""))
    assert config["task"] == humaneval.OFFLINE_TASK and config["num_fewshot"] == 0
    assert config["generation_kwargs"]["until"][:2] == ["\nclass", "\ndef"]
    assert "lorahpo.evaluation.humaneval import process_results" in (folder / "utils.py").read_text()
    right, wrong = PROBLEMS[0]["canonical_solution"], "    return a - b\n"
    assert humaneval.process_results(PROBLEMS[0], [right]) == {"pass@1": 1.0}
    assert humaneval.process_results(PROBLEMS[0], [wrong]) == {"pass@1": 0.0}


def test_humaneval_from_the_hub_is_scored_in_the_sandbox_too(task_cache):
    text = (humaneval.prepare_hub() / "task.yaml").read_text()
    assert "dataset_path: openai/openai_humaneval" in text and "!function utils.process_results" in text


def test_task_names_resolve_to_lm_eval_tasks_with_the_paper_shots():
    assert [t.name for t in parse_tasks(None)] == list(DEFAULT_TASKS)
    specs = {t.name: t for t in parse_tasks(["mmlu,bbh", "drop humaneval", "mmlu", "arc_easy"])}
    assert list(specs) == ["mmlu", "bbh", "drop", "humaneval", "arc_easy"]
    assert (specs["mmlu"].num_fewshot, specs["bbh"].num_fewshot, specs["drop"].num_fewshot) == (5, 3, 3)
    assert specs["bbh"].lm_eval_name == "bbh_fewshot"
    assert specs["humaneval"].lm_eval_name == humaneval.HUB_TASK  # never lm-eval's unsandboxed one
    passed_through = specs["arc_easy"]
    assert (passed_through.lm_eval_name, passed_through.num_fewshot, passed_through.metric) == ("arc_easy", None, None)
    assert {n: KNOWN_TASKS[n].offline for n in DEFAULT_TASKS} == {"bbh-bigbench": True, "humaneval-offline": True}
    with pytest.raises(ValueError):
        parse_tasks([" , "])
