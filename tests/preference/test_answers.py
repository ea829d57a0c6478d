"""Reading answers.jsonl and listing what can be judged."""

from __future__ import annotations

import pytest

from lorahpo.preference.answers import AnswerSet, preference_dir, read_answers

from .conftest import MODELS, PROMPTS, make_study


def test_answers_index_every_judgeable_item(study):
    answers = AnswerSet(read_answers(preference_dir(study) / "answers.jsonl"))
    assert answers.models == MODELS
    assert len(answers.items()) == len(PROMPTS) * 3  # three model pairs per prompt
    assert answers.answer("zeta-best", "q2").startswith("Excellent answer to q2.")


def test_read_answers_names_the_bad_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"model": "m", "prompt_id": "1", "prompt": "p", "answer": "a"}\n\nnot json\n')
    with pytest.raises(ValueError, match=r"answers.jsonl:3"):
        read_answers(path)
    assert read_answers(tmp_path / "missing.jsonl") == []


def test_items_need_both_answers(tmp_path):
    root = make_study(tmp_path / "s", models=["m1"], prompts={"a": "x"})
    assert AnswerSet(read_answers(preference_dir(root) / "answers.jsonl")).items() == []
