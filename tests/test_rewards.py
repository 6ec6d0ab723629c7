"""Rewards for GRPO: the built-ins for the YaYi tasks, a user's `path.py:function`, and every way naming one fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yayi_cli.core.record_files import load_prompt_records
from yayi_cli.core.rewards import RewardError, RewardSpec, load_reward, load_rewards, normalized
from yayi_cli.runtime.errors import DataError, UsageError


def score(text: str, answers: list[str], ended: list[bool] | None = None, fields: set[str] = frozenset({"label", "answer"}),
          **columns) -> list[float]:
    return load_reward(RewardSpec.parse(text), set(fields)).score(answers, ended or [True] * len(answers), columns)


# --- built-ins ------------------------------------------------------------------------------------


def test_exact_compares_after_normalizing_width_case_and_spaces():
    assert normalized("  Ｈｅｌｌｏ   World\n") == "hello world"
    assert score("exact", ["Ｈｅｌｌｏ  world", "hello", "42"], answer=["hello world", "hello world", 42]) == [1.0, 0.0, 1.0]


def test_label_takes_the_first_line_and_may_restrict_the_labels():
    answers = ["正面\n因为评论夸了产品", "负面", "正面的"]
    assert score("label", answers, label=["正面", "正面", "正面"]) == [1.0, 0.0, 0.0]
    assert score("label:负面,中性", ["正面"], label=["正面"]) == [0.0]  # right, but not one of the labels given


def test_format_wants_the_end_marker_and_no_marker_in_the_text():
    assert score("format", ["好", "好", "好<|Human|>"], ended=[True, False, True]) == [1.0, 0.0, 0.0]


def test_length_penalizes_only_beyond_its_limit():
    assert score("length:4", ["1234", "123456", "1" * 100]) == [0.0, -0.5, -1.0]


# --- a user's file --------------------------------------------------------------------------------


def write(tmp_path: Path, code: str) -> Path:
    path = tmp_path / "rewards.py"
    path.write_text(code, encoding="utf-8")
    return path


def test_a_users_function_gets_the_answers_and_the_fields_it_names(tmp_path):
    path = write(tmp_path, "def starts(completions, label):\n    return [float(c.startswith(l)) for c, l in zip(completions, label)]\n"
                           "def ends(completions, ended, **rest):\n    return [float(e) + len(rest) for e in ended]\n")
    assert score(f"{path}:starts", ["正面。", "负面"], label=["正面", "正面"]) == [1.0, 0.0]
    assert score(f"{path}:ends@2", ["a"], ended=[False], label=["x"], answer=["y"]) == [2.0]
    assert RewardSpec.parse(f"{path}:ends@2").weight == 2.0


@pytest.mark.parametrize(("code", "reference", "words"), [
    (None, "missing.py:check", "no such file"),
    ("def other(completions):\n    return []\n", "{path}:check", "has no function 'check'"),
    ("def check(completions:\n", "{path}:check", "rewards.py:1:"),
    ("raise RuntimeError('boom')\n", "{path}:check", "importing it raised RuntimeError: boom"),
    ("def check(answers):\n    return []\n", "{path}:check", "must take 'completions'"),
    ("def check(completions, category):\n    return []\n", "{path}:check", "takes 'category', which the prompt records lack"),
])
def test_each_reward_file_problem_is_one_line_before_the_run(tmp_path, code, reference, words):
    path = write(tmp_path, code) if code else tmp_path / "missing.py"
    with pytest.raises(UsageError) as caught:
        load_rewards([reference.format(path=path)], {"label"})
    assert words in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("text", "words"), [
    ("accuracy", "name a built-in"), ("length", "length needs its limit"), ("exact:x", "takes no argument"),
    ("format@heavy", "weight after @ must be a number"), ("exact", "'answer' field"),
])
def test_bad_reward_names_are_refused(text, words):
    with pytest.raises(UsageError, match=words):
        load_rewards([text], {"label"})


def test_a_reward_that_fails_while_scoring_names_its_file_and_line(tmp_path):
    path = write(tmp_path, "def check(completions, label):\n    return [1 / 0 for _ in completions]\n")
    with pytest.raises(RewardError) as caught:
        score(f"{path}:check", ["a"], label=["x"])
    assert str(caught.value).startswith(f"{path}:2: reward check raised ZeroDivisionError")
    wrong = write(tmp_path, "def check(completions):\n    return [1.0]\n")
    with pytest.raises(RewardError, match="one number per answer"):
        score(f"{wrong}:check", ["a", "b"])


# --- prompt records -------------------------------------------------------------------------------


def jsonl(tmp_path: Path, records: list) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def test_prompt_records_come_in_every_shape_with_their_fields(tmp_path):
    records = load_prompt_records([jsonl(tmp_path, [
        {"instruction": "判断情感", "input": "很好", "label": "正面"},
        {"messages": [{"role": "system", "content": "简短"}, {"role": "user", "content": "差"}], "label": "负面"},
        {"conversations": [{"from": "human", "value": "a"}, {"from": "yayi", "value": "b"}, {"from": "human", "value": "c"}],
         "label": "中性"},
        {"prompt": "一般", "label": "中性"},
    ])])
    assert [record.fields for record in records] == [{"label": "正面"}, {"label": "负面"}, {"label": "中性"}, {"label": "中性"}]
    assert records[1].conversation.system == "简短" and len(records[2].conversation.turns) == 3


@pytest.mark.parametrize(("record", "words"), [
    ({"instruction": "a", "output": "b", "label": "x"}, "holds no answer ('output')"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "label": "x"},
     "a last assistant turn"),
    ({"prompt": "a", "chosen": "b", "rejected": "c"}, "'chosen', 'rejected'"),
    ({"prompt": "a <|End|>", "label": "x"}, "<|End|>"),
    ({"prompt": "a"}, "differ from those of the first record"),
])
def test_a_bad_prompt_record_is_one_line_at_its_file_and_line(tmp_path, record, words):
    path = jsonl(tmp_path, [{"prompt": "ok", "label": "x"}, record])
    with pytest.raises(DataError) as caught:
        load_prompt_records([path])
    assert str(caught.value).startswith(f"{path}:2: ") and words in str(caught.value)
