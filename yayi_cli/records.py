"""The three record shapes of DESIGN.md, turned into `Conversation`s or rejected with a reason.

1. instruction:   {"instruction", "input"?, "output", "system"?}
2. conversations: {"system"?, "conversations": [{"from": "human"|"yayi", "value"}, ...]}
3. messages:      {"messages": [{"role": "system"|"user"|"assistant", "content"}, ...]}

A rejection reason names the field (`conversations[2].from`) and says what is wrong and what
was expected; `yayi data validate` prints it after `file:line:`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from yayi_cli.errors import DataError
from yayi_cli.prompt import ASSISTANT, HUMAN, Conversation, Turn, find_markers

INSTRUCTION, CONVERSATIONS, MESSAGES = "instruction", "conversations", "messages"
SHAPES = (INSTRUCTION, CONVERSATIONS, MESSAGES)

ROLE_ALIASES = {
    "human": HUMAN,
    "user": HUMAN,
    "yayi": ASSISTANT,
    "assistant": ASSISTANT,
    "gpt": ASSISTANT,
    "system": "system",
}
_LIST_KEYS = {CONVERSATIONS: ("from", "value"), MESSAGES: ("role", "content")}
_DOMAIN = re.compile(r"^\s*【([^【】\n]{1,40})】")


class RecordError(DataError):
    """A record that cannot become a conversation; the message is the reason."""


@dataclass(frozen=True)
class ParsedRecord:
    shape: str
    conversation: Conversation


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _text(value: Any, where: str, *, required: bool) -> str:
    """A string field: refused when missing (if required), not a string, or holding a marker."""
    if value is None:
        if required:
            raise RecordError(f"{where} is missing")
        return ""
    if not isinstance(value, str):
        raise RecordError(f"{where} must be a string, found {_type_name(value)}")
    if required and not value.strip():
        raise RecordError(f"{where} is empty")
    found = find_markers(value)
    if found:
        offset, marker = found[0]
        raise RecordError(
            f"{where} contains the marker {marker!r} at character {offset}; the tokenizer would "
            "read it as a control token: remove it or write it differently"
        )
    return value


def _optional_system(record: dict[str, Any]) -> str | None:
    """A record's own system prompt; empty or absent means the template's."""
    system = _text(record.get("system"), "field 'system'", required=False)
    return system if system.strip() else None


def _shape(record: dict[str, Any]) -> str:
    present = [shape for shape in (CONVERSATIONS, MESSAGES) if shape in record]
    if "instruction" in record or "output" in record:
        present.append(INSTRUCTION)
    if len(present) == 1:
        return present[0]
    keys = ", ".join(repr(key) for key in record) or "none"
    if present:
        raise RecordError(f"record mixes the shapes {' and '.join(present)}; use one per record")
    raise RecordError(
        "unknown record shape: expected 'instruction' and 'output', 'conversations', or "
        f"'messages'; found keys: {keys}"
    )


def _instruction(record: dict[str, Any], require_answer: bool) -> Conversation:
    instruction = _text(record.get("instruction"), "field 'instruction'", required=True)
    extra = _text(record.get("input"), "field 'input'", required=False)
    turns = [Turn(HUMAN, instruction, extra)]
    if require_answer or record.get("output") is not None:
        turns.append(Turn(ASSISTANT, _text(record.get("output"), "field 'output'", required=True)))
    return Conversation(tuple(turns), _optional_system(record))


def _turn_list(record: dict[str, Any], shape: str, require_answer: bool) -> Conversation:
    role_key, text_key = _LIST_KEYS[shape]
    items = record[shape]
    if not isinstance(items, list):
        raise RecordError(f"field '{shape}' must be an array, found {_type_name(items)}")
    if not items:
        raise RecordError(f"field '{shape}' is empty")
    system, turns = _optional_system(record), []
    for index, item in enumerate(items):
        where = f"{shape}[{index}]"
        if not isinstance(item, dict):
            raise RecordError(f"{where} must be an object, found {_type_name(item)}")
        role_value = item.get(role_key)
        role = ROLE_ALIASES.get(role_value.lower()) if isinstance(role_value, str) else None
        if role is None:
            raise RecordError(
                f"{where}.{role_key}: unknown role {role_value!r} (expected one of "
                f"{', '.join(ROLE_ALIASES)})"
            )
        if role == "system":
            if index != 0 or "system" in record:
                raise RecordError(f"{where}: a system message may only come first, and only once")
            system = _text(item.get(text_key), f"{where}.{text_key}", required=False) or None
            continue
        expected = HUMAN if len(turns) % 2 == 0 else ASSISTANT
        if role != expected:
            raise RecordError(_order_problem(where, role, expected, first=not turns))
        turns.append(Turn(role, _text(item.get(text_key), f"{where}.{text_key}", required=True)))
    if not turns:
        raise RecordError(f"field '{shape}' holds no human message")
    if require_answer and turns[-1].role == HUMAN:
        raise RecordError(
            f"field '{shape}' ends with a human message; a training record ends with the answer"
        )
    return Conversation(tuple(turns), system)


def _order_problem(where: str, role: str, expected: str, *, first: bool) -> str:
    if first:
        return f"{where}: the conversation starts with the assistant; the human speaks first"
    return f"{where}: two {role} messages in a row; turns must alternate human and assistant"


def parse_record(value: Any, *, require_answer: bool = True) -> ParsedRecord:
    """Turn one JSON value into a conversation, or raise `RecordError` saying why not.

    With `require_answer=False` a record may end with a human message (a prompt to answer).
    """
    if not isinstance(value, dict):
        raise RecordError(f"expected a JSON object, found {_type_name(value)}")
    shape = _shape(value)
    if shape == INSTRUCTION:
        return ParsedRecord(shape, _instruction(value, require_answer))
    return ParsedRecord(shape, _turn_list(value, shape, require_answer))


def domain_of(conversation: Conversation) -> str | None:
    """The YaYi domain prefix of the first human message, `【媒宣领域任务】` -> `媒宣领域任务`."""
    if not conversation.turns:
        return None
    match = _DOMAIN.match(conversation.turns[0].text)
    return match.group(1) if match else None
