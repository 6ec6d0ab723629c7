"""The three record shapes, and a precise reason for every record that is refused."""

from __future__ import annotations

import re

import pytest

from yayi_cli.core.prompt import ASSISTANT, HUMAN, Conversation, Turn
from yayi_cli.core.records import RecordError, domain_of, parse_record


def test_an_instruction_record_becomes_one_exchange():
    parsed = parse_record({"instruction": "Translate", "input": "hello", "output": "你好", "system": "S"})
    assert parsed.shape == "instruction"
    assert parsed.conversation == Conversation((Turn(HUMAN, "Translate", input="hello"), Turn(ASSISTANT, "你好")), "S")


def test_a_conversation_record_accepts_the_role_aliases():
    parsed = parse_record({"conversations": [
        {"from": "human", "value": "a"}, {"from": "yayi", "value": "b"},
        {"from": "user", "value": "c"}, {"from": "gpt", "value": "d"},
        {"from": "Human", "value": "e"}, {"from": "assistant", "value": "f"},
    ]})
    assert parsed.shape == "conversations"
    assert [turn.role for turn in parsed.conversation.turns] == [HUMAN, ASSISTANT] * 3
    assert [turn.text for turn in parsed.conversation.turns] == list("abcdef")


def test_a_messages_record_takes_its_system_message():
    parsed = parse_record({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
    ]})
    assert parsed.shape == "messages"
    assert parsed.conversation.system == "Be brief."
    assert len(parsed.conversation.turns) == 2


@pytest.mark.parametrize("system", [None, "", "   "])
def test_an_empty_or_missing_system_means_the_templates(system):
    record = {"instruction": "q", "output": "a"} | ({} if system is None else {"system": system})
    assert parse_record(record).conversation.system is None


def test_a_prompt_without_answer_is_accepted_only_when_asked():
    record = {"conversations": [{"from": "human", "value": "q"}]}
    with pytest.raises(RecordError, match="ends with a human message"):
        parse_record(record)
    assert parse_record(record, require_answer=False).conversation.turns == (Turn(HUMAN, "q"),)
    assert len(parse_record({"instruction": "q"}, require_answer=False).conversation.turns) == 1


@pytest.mark.parametrize(
    "record, reason",
    [
        ([1, 2], "expected a JSON object, found an array"),
        ("text", "expected a JSON object, found a string"),
        ({"prompt": "q", "completion": "a"}, "field 'label' is missing: an unpaired preference record (KTO) has 'completion' and 'label' (true|false); for supervised training write 'instruction' and 'output'"),
        ({}, "found keys: none"),
        ({"instruction": "q", "output": "a", "messages": []}, "record mixes the shapes messages and instruction"),
        ({"instruction": "q"}, "field 'output' is missing"),
        ({"output": "a"}, "field 'instruction' is missing"),
        ({"instruction": " \n", "output": "a"}, "field 'instruction' is empty"),
        ({"instruction": "q", "output": 3}, "field 'output' must be a string, found a number"),
        ({"instruction": "q", "input": ["x"], "output": "a"}, "field 'input' must be a string, found an array"),
        ({"instruction": "q", "output": "a", "system": True}, "field 'system' must be a string, found a boolean"),
        ({"instruction": "say <|End|>", "output": "a"}, "field 'instruction' contains the marker '<|End|>' at character 4"),
        ({"instruction": "q", "output": "a\u0001\ud800"}, "field 'output' contains a lone surrogate (U+D800) at character 2"),
        ({"conversations": {"from": "human"}}, "field 'conversations' must be an array, found an object"),
        ({"conversations": []}, "field 'conversations' is empty"),
        ({"conversations": ["hi"]}, "conversations[0] must be an object, found a string"),
        ({"conversations": [{"from": "robot", "value": "hi"}]}, "conversations[0].from: unknown role 'robot' (expected one of human, user, yayi, assistant, gpt, system)"),
        ({"conversations": [{"value": "hi"}]}, "conversations[0].from is missing"),
        ({"conversations": [{"from": "yayi", "value": "hi"}]}, "conversations[0]: the conversation starts with the assistant"),
        ({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}, "conversations[1]: two human messages in a row"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "yayi", "value": "a"}, {"from": "yayi", "value": "b"}]}, "conversations[2]: two assistant messages in a row"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "yayi"}]}, "conversations[1].value is missing"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "yayi", "value": "x<|Human|>"}]}, "conversations[1].value contains the marker '<|Human|>'"),
        ({"conversations": [{"from": "system", "value": "s"}]}, "field 'conversations' holds no human message"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]}, "messages[1]: a system message may only come first"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}, "messages[1].content is empty"),
    ],
)
def test_every_rejection_names_the_field_and_the_problem(record, reason):
    with pytest.raises(RecordError, match=re.escape(reason)):
        parse_record(record)


@pytest.mark.parametrize(
    "first_message, domain",
    [
        ("【媒宣领域任务】请拟标题", "媒宣领域任务"),
        ("  【金融风控领域任务】判断", "金融风控领域任务"),
        ("请拟标题【媒宣领域任务】", None),
        ("no prefix", None),
    ],
)
def test_the_domain_is_the_bracketed_prefix_of_the_first_message(first_message, domain):
    assert domain_of(first_message) == domain
