"""Specification of the data pipeline: formats, sources, mixture, split, masking, bad data."""

import csv
import json
import sys

import pytest

from lorahpo.finetune.config import DataConfig, DataSource
from lorahpo.finetune.data import (
    ALPACA_PROMPT,
    ALPACA_PROMPT_NO_INPUT,
    IGNORE_INDEX,
    DataError,
    build_splits,
    load_rows,
    render,
)


def alpaca_rows(n, tag="a"):
    return [
        {"instruction": f"Say {tag}{i}.", "input": "" if i % 2 else f"ctx {i}", "output": f"{tag}{i} done"}
        for i in range(n)
    ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(*paths, **kwargs):
    sources = [p if isinstance(p, DataSource) else DataSource(path=str(p)) for p in paths]
    return DataConfig(preset=None, sources=sources, **kwargs)


def error_of(cfg):
    with pytest.raises(DataError) as caught:
        load_rows(cfg)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- formats and file types -------------------------------------------------------------------


def test_alpaca_jsonl_rows_are_normalised(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": " Hi ", "input": None, "output": "Hello", "extra": 1}])
    rows, report = load_rows(config(path))
    assert rows == [{"instruction": "Hi", "input": "", "output": "Hello"}]
    assert report.sources[0].format == "alpaca"


def test_dolly_json_list_maps_context_and_response(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(
        json.dumps([{"instruction": "Summarise.", "context": "Long text.", "response": "Short.", "category": "x"}])
    )
    rows, report = load_rows(config(path))
    assert rows == [{"instruction": "Summarise.", "input": "Long text.", "output": "Short."}]
    assert report.sources[0].format == "dolly"


def test_json_object_with_data_list(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": alpaca_rows(3)}))
    rows, _ = load_rows(config(path))
    assert [r["output"] for r in rows] == ["a0 done", "a1 done", "a2 done"]


def test_csv_prompt_completion_becomes_instruction_rows(tmp_path):
    path = tmp_path / "p.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "completion"])
        writer.writeheader()
        writer.writerows([{"prompt": "2+3?", "completion": "5"}, {"prompt": "1+1?", "completion": "2"}])
    rows, report = load_rows(config(path))
    assert rows == [
        {"instruction": "2+3?", "input": "", "output": "5"},
        {"instruction": "1+1?", "input": "", "output": "2"},
    ]
    assert report.sources[0].format == "prompt_completion"


def test_chat_rows_keep_their_messages(tmp_path):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": messages}])
    rows, report = load_rows(config(path))
    assert rows == [{"messages": messages}]
    assert report.sources[0].format == "chat"


def test_explicit_format_overrides_detection(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "completion": "c", "instruction": "i", "output": "o"}])
    rows, _ = load_rows(config(DataSource(path=str(path), format="prompt_completion")))
    assert rows == [{"instruction": "p", "input": "", "output": "c"}]


def test_parquet(tmp_path):
    import pyarrow as pa  # optional for users; the test install has it (through the eval extra)
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(alpaca_rows(4)), path)
    rows, _ = load_rows(config(path))
    assert rows[3] == {"instruction": "Say a3.", "input": "", "output": "a3 done"}


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "a.parquet").write_bytes(b"PAR1")
    assert "pip install pyarrow" in error_of(config(tmp_path / "a.parquet"))


def test_dataset_folder_without_datasets_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    (tmp_path / "saved").mkdir()
    message = error_of(config(tmp_path / "saved"))
    assert "save_to_disk" in message and "pip install datasets" in message


def test_hub_name_without_datasets_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    message = error_of(config("some-org/some-dataset"))
    assert "hub dataset" in message and "pip install datasets" in message


# --- mixture ---------------------------------------------------------------------------------


def test_mixture_follows_weights_without_repeating_rows(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(100, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", alpaca_rows(50, "b"))
    # size = min(100 * 4 / 1, 50 * 4 / 3) = 66.7 rows: all of b (weight 3) and 17 of a (weight 1).
    cfg = config(DataSource(path=str(a), weight=1), DataSource(path=str(b), weight=3))
    rows, report = load_rows(cfg)
    assert [s.used for s in report.sources] == [17, 50]
    assert sum(r["output"].startswith("a") for r in rows) == 17
    assert len({r["output"] for r in rows}) == len(rows)


def test_mixture_is_deterministic_in_the_seed(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(100, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", alpaca_rows(50, "b"))
    sources = [DataSource(path=str(a), weight=1), DataSource(path=str(b), weight=3)]
    first, _ = load_rows(config(*sources, seed=1))
    again, _ = load_rows(config(*sources, seed=1))
    other, _ = load_rows(config(*sources, seed=2))
    assert first == again
    assert first != other


def test_max_examples_caps_the_mixture_in_proportion(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(100, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", alpaca_rows(100, "b"))
    rows, report = load_rows(config(a, b, max_examples=40))
    assert len(rows) == 40
    assert [s.used for s in report.sources] == [20, 20]


def test_alpaca_dolly_preset_keeps_every_row_of_its_two_sources(tmp_path):
    a = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(70, "a"))
    d = write_jsonl(
        tmp_path / "dolly.jsonl", [{"instruction": f"q{i}", "context": "", "response": f"r{i}"} for i in range(20)]
    )
    cfg = DataConfig(preset="alpaca-dolly", sources=[DataSource(path=str(a)), DataSource(path=str(d), weight=5)])
    rows, report = load_rows(cfg)
    assert len(rows) == 90
    assert [s.format for s in report.sources] == ["alpaca", "dolly"]


def test_presets_reject_sources_they_cannot_use(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(3))
    assert "preset: null" in error_of(DataConfig(preset="bigbench-instruct", sources=[DataSource(path=str(a))]))
    assert "two sources" in error_of(DataConfig(preset="alpaca-dolly", sources=[DataSource(path=str(a))]))


# --- split and tokenization ------------------------------------------------------------------


def test_split_is_deterministic_and_sized(tmp_path, data_tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(50))
    first = build_splits(config(path, seed=3), data_tokenizer)
    again = build_splits(config(path, seed=3), data_tokenizer)
    other = build_splits(config(path, seed=4), data_tokenizer)
    assert (len(first.train), len(first.validation)) == (40, 10)
    assert (first.report.train, first.report.validation) == (40, 10)
    assert [e.input_ids for e in first.validation] == [e.input_ids for e in again.validation]
    assert [e.input_ids for e in first.validation] != [e.input_ids for e in other.validation]
    held_out = {tuple(e.input_ids) for e in first.validation}
    assert not held_out & {tuple(e.input_ids) for e in first.train}


def test_alpaca_template_has_the_two_standard_variants(data_tokenizer):
    with_input = render({"instruction": "Add.", "input": "2 and 3", "output": "5"}, "alpaca", data_tokenizer)
    without = render({"instruction": "Add.", "input": "", "output": "5"}, "alpaca", data_tokenizer)
    assert with_input == (ALPACA_PROMPT.format(instruction="Add.", input="2 and 3"), "5")
    assert with_input[0].endswith("### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:\n")
    assert without == (ALPACA_PROMPT_NO_INPUT.format(instruction="Add."), "5")
    assert "### Input:" not in without[0]


def test_chat_template_renders_instruction_rows_as_one_exchange(data_tokenizer):
    prompt, response = render({"instruction": "Add.", "input": "2 and 3", "output": "5"}, "chat", data_tokenizer)
    assert prompt == "<|user|>Add.\n\n2 and 3<eos>\n<|assistant|>"
    assert response == "5<eos>"


def unmasked_text(example, tokenizer):
    return tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_loss_covers_the_response_and_eos_only(tmp_path, data_tokenizer, template):
    rows = alpaca_rows(10)
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    splits = build_splits(config(path, template=template, validation_fraction=0.5), data_tokenizer)
    outputs = {r["output"] for r in rows}
    for example in splits.train + splits.validation:
        assert len(example.labels) == len(example.input_ids)
        n_prompt = example.labels.count(IGNORE_INDEX)
        assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt  # the mask is one prefix
        assert example.labels[n_prompt:] == example.input_ids[n_prompt:]
        text = unmasked_text(example, data_tokenizer)
        assert text.endswith("<eos>") and text.count("<eos>") == 1
        assert text.removesuffix("<eos>") in outputs


def test_chat_rows_learn_only_the_final_assistant_turn(tmp_path, data_tokenizer):
    messages = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Red."},
    ]
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": messages}] * 4)
    splits = build_splits(config(path), data_tokenizer)
    example = splits.train[0]
    assert unmasked_text(example, data_tokenizer) == "Red.<eos>"
    assert data_tokenizer.decode(example.input_ids).startswith("<|user|>Name a colour.<eos>\n<|assistant|>Blue.")


def test_chat_rows_need_a_chat_template(tmp_path, data_tokenizer):
    tokenizer = data_tokenizer.__class__(tokenizer_object=data_tokenizer.backend_tokenizer, eos_token="<eos>")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": messages}] * 4)
    with pytest.raises(DataError, match="chat template"):
        build_splits(config(path), tokenizer)


def test_truncation_cuts_the_response_and_drops_examples_without_one(tmp_path, data_tokenizer):
    long = {"instruction": "Say it.", "input": "", "output": "the sky is blue " * 40}
    huge = {"instruction": "word " * 200, "input": "", "output": "ok"}
    path = write_jsonl(tmp_path / "a.jsonl", [long] * 4 + [huge] + alpaca_rows(5))
    splits = build_splits(config(path, max_length=64, validation_fraction=0.2), data_tokenizer)
    source = splits.report.sources[0]
    assert (source.truncated, source.dropped) == (4, 1)
    examples = splits.train + splits.validation
    assert len(examples) == 9
    assert max(len(e.input_ids) for e in examples) == 64
    cut = [e for e in examples if len(e.input_ids) == 64]
    assert len(cut) == 4
    assert all(e.labels[-1] != IGNORE_INDEX and e.input_ids[-1] != data_tokenizer.eos_token_id for e in cut)


# --- bad data --------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    assert "file not found" in error_of(config(tmp_path / "nope.jsonl"))


def test_unknown_extension(tmp_path):
    (tmp_path / "rows.txt").write_text("hello")
    assert "unsupported file type .txt" in error_of(config(tmp_path / "rows.txt"))


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_text("")
    assert error_of(config(tmp_path / name)) == f"{name}: no rows"


def test_invalid_json_file(tmp_path):
    (tmp_path / "bad.json").write_text("[{")
    assert error_of(config(tmp_path / "bad.json")).startswith("bad.json: invalid JSON")


def test_undetectable_format(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "a"}])
    assert "cannot detect the row format" in error_of(config(path))


def test_field_missing_from_every_row(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "answer": "a"}] * 3)
    message = error_of(config(DataSource(path=str(path), format="alpaca")))
    assert message == "a.jsonl: field 'output' of format alpaca is missing from every row"


def test_all_rows_malformed(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "output": ""}, {"instruction": "i", "output": 3}])
    message = error_of(config(path))
    assert message == "a.jsonl: no usable rows out of 2 (first problem: row 1: field 'output' is empty)"


def test_some_malformed_rows_are_counted_not_fatal(tmp_path):
    path = tmp_path / "a.jsonl"
    good = [json.dumps(r) for r in alpaca_rows(4)]
    bad = ['{"instruction": "i"', json.dumps({"instruction": "i", "output": ["list"]}), json.dumps(["not", "a", "row"])]
    path.write_text("\n".join(good[:2] + bad + good[2:]) + "\n")
    rows, report = load_rows(config(path))
    source = report.sources[0]
    assert len(rows) == 4
    assert (source.read, source.malformed, source.used) == (7, 3, 4)
    assert source.first_problem == "line 3 is not valid JSON"
    assert "3 malformed (first: line 3 is not valid JSON)" in report.summary()
    assert report.to_dict()["sources"][0]["malformed"] == 3


def test_chat_row_must_end_with_an_assistant_answer(tmp_path):
    ok = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    bad = {"messages": [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Hi"}]}
    path = write_jsonl(tmp_path / "c.jsonl", [ok, bad])
    _, report = load_rows(config(path))
    assert report.sources[0].first_problem == "row 2: the last message must be a non-empty assistant answer"


def test_undecodable_file(tmp_path):
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    assert error_of(config(tmp_path / "bin.jsonl")).startswith("bin.jsonl: cannot read it:")
