"""Specification of the built-in bigbench-instruct data, on a small tarball in BIG-bench's layout."""

import io
import json
import tarfile

import pytest

from lorahpo.finetune import builtin_data
from lorahpo.finetune.builtin_data import BBH_TASKS, BuildSize, bigbench_instruct, build_rows, task_rows
from lorahpo.finetune.config import DataConfig
from lorahpo.finetune.data import load_rows


def generative(n, prefix="gen"):
    return [{"input": f"{prefix} question {i}", "target": f"{prefix} answer {i}"} for i in range(n)]


TASKS = {
    # A generative task with a task_prefix; also one empty, one oversized, one duplicate and a list target.
    "echo": {
        "task_prefix": "Answer the question.",
        "description": "unused when a task_prefix exists",
        "keywords": ["zero-shot"],
        "examples": [
            *generative(12),
            {"input": "", "target": "empty input"},
            {"input": "x" * 3000, "target": "too long"},
            {"input": "gen question 0", "target": "gen answer 0"},
            {"input": "list target", "target": ["first", "second"]},
        ],
    },
    # Multiple choice: the single best option is the answer; a tie has no answer to teach.
    "choose": {
        "description": "Pick the animal.",
        "keywords": ["multiple choice"],
        "examples": [
            {"input": "Which one barks?", "target_scores": {"cat": 0, "dog": 1, "cow": 0}},
            {"input": "Which one meows?", "target_scores": {"cat": 1, "dog": 0}},
            {"input": "A tie", "target_scores": {"cat": 1, "dog": 1}},
        ],
    },
    # A task with subtasks: the parent has no examples, each subtask has its own prefix.
    "family": {"description": "Parent.", "keywords": ["arithmetic"]},
    "family/add": {"task_prefix": "Add.", "keywords": ["arithmetic"], "examples": generative(3, "add")},
    "family/sub": {"task_prefix": "Subtract.", "keywords": ["arithmetic"], "examples": generative(3, "sub")},
    # Held out: the BIG-bench source of BBH's causal_judgement.
    "causal_judgment": {
        "description": "Judge causes.",
        "keywords": ["causal reasoning"],
        "examples": generative(5, "bbh"),
    },
    # Not English, by keyword and (untagged) by script.
    "german": {"description": "Beantworte.", "keywords": ["non-English"], "examples": generative(5, "de")},
    "hindi": {"description": "Answer.", "keywords": [], "examples": [{"input": "प्रश्न क्या है", "target": "उत्तर"}] * 3},
}


def make_tarball(path, tasks=TASKS):
    with tarfile.open(path, "w:gz") as tar:
        for name, spec in tasks.items():
            data = json.dumps({"name": name, **spec}).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{name}/task.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        # Programmatic tasks have task.py and no task.json: ignored.
        info = tarfile.TarInfo("bigbench-1.0.0/bigbench/benchmark_tasks/web_of_lies/task.py")
        tar.addfile(info, io.BytesIO(b""))
    return path


@pytest.fixture
def data_cache(tmp_path):
    """A cache root whose downloads already hold the (fixture) BIG-bench tarball."""
    (tmp_path / "downloads").mkdir()
    make_tarball(tmp_path / "downloads" / "bigbench-1.0.0.tar.gz")
    return tmp_path


ROOMY = BuildSize(per_task=100, total=None, max_chars=2000)


def test_rows_come_from_english_non_bbh_tasks(tmp_path):
    rows, tasks = build_rows(make_tarball(tmp_path / "bb.tar.gz"), ROOMY)
    assert tasks == {"choose": 2, "echo": 13, "family": 6}
    assert {r["task"] for r in rows} == {"choose", "echo", "family/add", "family/sub"}
    assert all(set(r) == {"instruction", "input", "output", "task"} for r in rows)


def test_generative_examples_become_instruction_rows(tmp_path):
    rows, _ = build_rows(make_tarball(tmp_path / "bb.tar.gz"), ROOMY)
    echo = {r["input"]: r for r in rows if r["task"] == "echo"}
    assert echo["gen question 3"] == {
        "instruction": "Answer the question.",
        "input": "gen question 3",
        "output": "gen answer 3",
        "task": "echo",
    }
    assert echo["list target"]["output"] == "first"
    assert {r["instruction"] for r in rows if r["task"].startswith("family/")} == {"Add.", "Subtract."}


def test_multiple_choice_examples_list_options_and_answer_the_best(tmp_path):
    rows, _ = build_rows(make_tarball(tmp_path / "bb.tar.gz"), ROOMY)
    barks = next(r for r in rows if r["input"].startswith("Which one barks?"))
    question, options = barks["input"].split("\n\nOptions:\n")
    assert question == "Which one barks?"
    assert sorted(options.split("\n")) == ["- cat", "- cow", "- dog"]
    assert (barks["instruction"], barks["output"]) == ("Pick the animal.", "dog")


def test_multiple_choice_options_are_shuffled_deterministically():
    scores = {f"option {i}": int(i == 0) for i in range(6)}
    spec = {"description": "Pick.", "examples": [{"input": f"q{i}", "target_scores": scores} for i in range(20)]}
    rows = list(task_rows(spec))
    first_options = {r["input"].split("Options:\n- ")[1].split("\n")[0] for r in rows}
    assert len(first_options) > 1  # the correct option is not always listed first
    assert all(r["output"] == "option 0" for r in rows)
    assert rows == list(task_rows(spec))


def test_caps_share_the_total_evenly_and_are_deterministic(tmp_path):
    tarball = make_tarball(tmp_path / "bb.tar.gz")
    small = BuildSize(per_task=5, total=9, max_chars=2000)
    rows, tasks = build_rows(tarball, small)
    # choose has only 2 rows, so echo and family share the remaining 7 (4 and 3).
    assert tasks == {"choose": 2, "echo": 4, "family": 3}
    assert len(rows) == 9
    assert build_rows(tarball, small) == (rows, tasks)
    assert build_rows(tarball, BuildSize(per_task=5, total=None, max_chars=2000))[1] == {
        "choose": 2,
        "echo": 5,
        "family": 5,
    }


def test_max_chars_skips_long_rows(tmp_path):
    rows, _ = build_rows(make_tarball(tmp_path / "bb.tar.gz"), BuildSize(per_task=100, total=None, max_chars=40))
    assert rows and all(len(r["instruction"]) + len(r["input"]) + len(r["output"]) <= 40 for r in rows)
    assert not any(r["task"] == "choose" for r in rows)  # its options make every row longer


def test_bigbench_instruct_builds_once_into_the_cache(data_cache, monkeypatch):
    path = bigbench_instruct("cpu", data_cache)
    assert path == data_cache / "data" / "bigbench-instruct-cpu-v2.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    meta = json.loads((data_cache / "data" / "bigbench-instruct-cpu-v2.meta.json").read_text())
    assert meta["rows"] == len(rows) == 21
    assert meta["tasks"] == {"choose": 2, "echo": 13, "family": 6}
    # The held-out BBH source task, German and Hindi are in the tarball and not in the data.
    assert not [r for r in rows if r["input"].startswith(("bbh ", "de ", "प्रश्न"))]
    assert not list((data_cache / "data").glob("*.tmp"))

    def no_rebuild(*args):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(builtin_data, "build_rows", no_rebuild)
    assert bigbench_instruct("cpu", data_cache) == path


def test_unknown_size_is_rejected(data_cache):
    with pytest.raises(ValueError, match="unknown bigbench-instruct size"):
        bigbench_instruct("huge", data_cache)


def test_load_rows_reads_the_preset(data_cache):
    rows, report = load_rows(DataConfig(preset="bigbench-instruct", size="cpu", cache_dir=str(data_cache)))
    assert len(rows) == 21
    assert all(set(r) == {"instruction", "input", "output"} for r in rows)
    assert report.sources[0].name == "bigbench-instruct-cpu-v2.jsonl"


def test_bbh_tasks_are_the_23_tasks_with_their_source_folders():
    assert len(BBH_TASKS) == 23
    assert BBH_TASKS["causal_judgement"] == "causal_judgment"
    assert BBH_TASKS["formal_fallacies"] == "formal_fallacies_syllogisms_negation"
    assert BBH_TASKS["multistep_arithmetic_two"] == "multistep_arithmetic"
    assert BBH_TASKS["word_sorting"] == "word_sorting"
