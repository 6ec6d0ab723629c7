"""The three record shapes yayi accepts, turned into `Conversation`s or rejected with a reason.

1. instruction:   {"instruction", "input"?, "output", "system"?}
2. conversations: {"system"?, "conversations": [{"from": "human"|"yayi", "value"}, ...]}
3. messages:      {"messages": [{"role": "system"|"user"|"assistant", "content"}, ...]}

A rejection reason names the field (`conversations[2].from`) and says what is wrong and what
was expected; `yayi data validate` prints it after `file:line:`. Things that do not stop a
record from training but are probably mistakes come back as warnings.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from yayi_cli.errors import DataError
from yayi_cli.prompt import ASSISTANT, HUMAN, Conversation, Turn, find_markers, marker_pattern

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
METADATA_KEYS = frozenset({"id", "system"})
"""Top-level keys every shape may carry besides its own."""
KNOWN_KEYS = {
    INSTRUCTION: frozenset({"instruction", "input", "output"}) | METADATA_KEYS,
    CONVERSATIONS: frozenset({CONVERSATIONS}) | METADATA_KEYS,
    MESSAGES: frozenset({MESSAGES}) | METADATA_KEYS,
}
ITEM_KEYS = {CONVERSATIONS: ("from", "value"), MESSAGES: ("role", "content")}

NO_DOMAIN = ""
"""The domain of records without a prefix: no real domain is empty, so it cannot clash."""
NO_DOMAIN_LABEL = "(none)"
"""How reports show NO_DOMAIN."""

_DOMAIN = re.compile(r"^\s*【([^【】\n]{1,40})】")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""Control characters other than tab and newline."""
_SURROGATE = re.compile(r"[\ud800-\udfff]")
"""Lone surrogates, which only an invalid \\u escape produces."""
UNUSUAL_CHARACTER = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
"""Either of the two: one scan clears almost every text."""
_MARKERS = marker_pattern()


class RecordError(DataError):
    """A record that cannot become a conversation; the message is the reason, `code` its kind."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class RecordWarning(NamedTuple):
    code: str
    message: str


class ParsedRecord(NamedTuple):
    """A valid record: its turns already checked (order, markers), so the conversation is safe."""

    shape: str
    turns: tuple[Turn, ...]
    system: str | None
    warnings: tuple[RecordWarning, ...] = ()

    @property
    def conversation(self) -> Conversation:
        return Conversation(self.turns, self.system)

    @property
    def domain(self) -> str:
        """The domain prefix of the first message, or NO_DOMAIN."""
        return domain_of(self.turns[0].text) or NO_DOMAIN


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _shape(record: dict[str, Any]) -> str:
    present = [shape for shape in (CONVERSATIONS, MESSAGES) if shape in record]
    if "instruction" in record or "output" in record:
        present.append(INSTRUCTION)
    if len(present) == 1:
        return present[0]
    if present:
        raise RecordError(f"record mixes the shapes {' and '.join(present)}; use one per record", "mixed-shape")
    keys = ", ".join(repr(key) for key in record) or "none"
    raise RecordError(
        "unknown record shape: expected 'instruction' and 'output', 'conversations', or "
        f"'messages'; found keys: {keys}",
        "unknown-shape",
    )


class _RecordParser:
    """Parses one record, collecting warnings on the way; raises at the first error."""

    def __init__(self, require_answer: bool) -> None:
        self.require_answer = require_answer
        self.warnings: list[RecordWarning] = []

    def warn(self, code: str, message: str) -> None:
        self.warnings.append(RecordWarning(code, message))

    def unknown_keys(self, item: dict[str, Any], known: frozenset[str] | tuple[str, ...], where: str) -> None:
        for key in item:
            if key not in known:
                self.warn("unknown-key", f"{where}unknown key {key!r} is ignored")

    def text(self, value: Any, where: str, *, required: bool) -> str:
        """A string field: refused when missing (if required), not a string, or holding a marker."""
        if value is None:
            if required:
                raise RecordError(f"{where} is missing", "missing-field")
            return ""
        if not isinstance(value, str):
            raise RecordError(f"{where} must be a string, found {_type_name(value)}", "wrong-type")
        if required and not value.strip():
            raise RecordError(f"{where} is empty", "empty-field")
        if _MARKERS.search(value) or (not value.isprintable() and UNUSUAL_CHARACTER.search(value)):
            self.suspicious(value, where)
        if value[:1].isspace() or value[-1:].isspace():
            self.warn("whitespace", f"{where} has leading or trailing whitespace")
        return value

    def suspicious(self, value: str, where: str) -> None:
        found = find_markers(value)
        if found:
            offset, marker = found[0]
            raise RecordError(
                f"{where} contains the marker {marker!r} at character {offset}; the tokenizer would "
                "read it as a control token: remove it or write it differently",
                "marker-in-text",
            )
        surrogate = _SURROGATE.search(value)
        if surrogate:
            raise RecordError(
                f"{where} contains a lone surrogate (U+{ord(surrogate.group()):04X}) at character "
                f"{surrogate.start()}, from an invalid \\u escape; it cannot be encoded or tokenized",
                "invalid-unicode",
            )
        control = _CONTROL.search(value)
        if control:
            self.warn(
                "control-character",
                f"{where} contains the control character U+{ord(control.group()):04X} at character {control.start()}",
            )

    def system(self, record: dict[str, Any]) -> str | None:
        """A record's own system prompt; empty or absent means the template's."""
        system = self.text(record.get("system"), "field 'system'", required=False)
        return system if system.strip() else None

    def instruction(self, record: dict[str, Any]) -> tuple[tuple[Turn, ...], str | None]:
        instruction = self.text(record.get("instruction"), "field 'instruction'", required=True)
        extra = self.text(record.get("input"), "field 'input'", required=False)
        turns = [Turn(HUMAN, instruction, extra)]
        if self.require_answer or record.get("output") is not None:
            turns.append(Turn(ASSISTANT, self.text(record.get("output"), "field 'output'", required=True)))
        return tuple(turns), self.system(record)

    def turn_list(self, record: dict[str, Any], shape: str) -> tuple[tuple[Turn, ...], str | None]:
        role_key, text_key = ITEM_KEYS[shape]
        items = record[shape]
        if not isinstance(items, list):
            raise RecordError(f"field '{shape}' must be an array, found {_type_name(items)}", "wrong-type")
        if not items:
            raise RecordError(f"field '{shape}' is empty", "empty-field")
        system, turns = self.system(record), []
        for index, item in enumerate(items):
            where = f"{shape}[{index}]"
            if not isinstance(item, dict):
                raise RecordError(f"{where} must be an object, found {_type_name(item)}", "wrong-type")
            role = self.role(item.get(role_key), f"{where}.{role_key}")
            self.unknown_keys(item, ITEM_KEYS[shape], f"{where}: ")
            if role == "system":
                if index != 0 or "system" in record:
                    raise RecordError(f"{where}: a system message may only come first, and only once", "bad-turn-order")
                system = self.text(item.get(text_key), f"{where}.{text_key}", required=False) or None
                continue
            expected = HUMAN if len(turns) % 2 == 0 else ASSISTANT
            if role != expected:
                raise RecordError(_order_problem(where, role, first=not turns), "bad-turn-order")
            turns.append(Turn(role, self.text(item.get(text_key), f"{where}.{text_key}", required=True)))
        if not turns:
            raise RecordError(f"field '{shape}' holds no human message", "no-human-turn")
        if self.require_answer and turns[-1].role == HUMAN:
            raise RecordError(
                f"field '{shape}' ends with a human message; a training record ends with the answer", "no-answer"
            )
        return tuple(turns), system

    @staticmethod
    def role(value: Any, where: str) -> str:
        if value is None:
            raise RecordError(f"{where} is missing", "missing-field")
        role = ROLE_ALIASES.get(value.lower()) if isinstance(value, str) else None
        if role is None:
            raise RecordError(
                f"{where}: unknown role {value!r} (expected one of {', '.join(ROLE_ALIASES)})", "unknown-role"
            )
        return role


def _order_problem(where: str, role: str, *, first: bool) -> str:
    if first:
        return f"{where}: the conversation starts with the assistant; the human speaks first"
    return f"{where}: two {role} messages in a row; turns must alternate human and assistant"


def parse_record(value: Any, *, require_answer: bool = True) -> ParsedRecord:
    """Turn one JSON value into a conversation, or raise `RecordError` saying why not.

    With `require_answer=False` a record may end with a human message (a prompt to answer).
    """
    if not isinstance(value, dict):
        raise RecordError(f"expected a JSON object, found {_type_name(value)}", "not-object")
    shape = _shape(value)
    parser = _RecordParser(require_answer)
    turns, system = parser.instruction(value) if shape == INSTRUCTION else parser.turn_list(value, shape)
    parser.unknown_keys(value, KNOWN_KEYS[shape], "")
    return ParsedRecord(shape, turns, system, tuple(parser.warnings))


PROMPT = "prompt"
"""`{"prompt": ..., "system"?}`: a question for `yayi chat --jsonl`, checked like any record."""


def parse_question(value: Any) -> ParsedRecord:
    """A record to be answered: `{"prompt": ...}` or a record of any shape that may end with a
    human message; the same checks (types, markers, turn order) as training records."""
    if not (isinstance(value, dict) and PROMPT in value):
        return parse_record(value, require_answer=False)
    parser = _RecordParser(require_answer=False)
    turn = Turn(HUMAN, parser.text(value[PROMPT], f"field '{PROMPT}'", required=True))
    system = parser.system(value)
    parser.unknown_keys(value, METADATA_KEYS | {PROMPT}, "")
    return ParsedRecord(PROMPT, (turn,), system, tuple(parser.warnings))


def domain_of(first_message: str) -> str | None:
    """The YaYi domain prefix of a conversation's first message, `【媒宣领域任务】…` -> `媒宣领域任务`."""
    match = _DOMAIN.match(first_message)
    return match.group(1) if match else None
