"""The three record shapes yayi accepts, turned into `Conversation`s or rejected with a reason.

1. instruction:   {"instruction", "input"?, "output", "system"?}
2. conversations: {"system"?, "conversations": [{"from": "human"|"yayi", "value"}, ...]}
3. messages:      {"messages": [{"role": "system"|"user"|"assistant", "content"}, ...]}

Preference records (DPO, KTO) are the same shapes with the answer moved out of the history, plus
TRL's own `{"prompt", "chosen", "rejected"}`:
- paired (DPO): the history ends with the human, then `"chosen"` and `"rejected"`;
- unpaired (KTO): the history ends with the human, then `"completion"` and `"label": true|false`.
An answer is a string, a `{"from": "yayi", "value"}` turn, a `{"role": "assistant", "content"}`
message, or a list holding one of those.
Prompt records (GRPO) are the shapes without an answer, their further fields for the rewards
(`record_files.parse_prompt_record`), read as such only where asked for (`--prompts`, `--method grpo`).

A rejection reason names the field (`conversations[2].from`) and says what is wrong and what
was expected; `yayi data validate` prints it after `file:line:`. Things that do not stop a
record from training but are probably mistakes come back as warnings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from yayi_cli.core.prompt import ASSISTANT, HUMAN, Conversation, Turn, find_markers, marker_pattern
from yayi_cli.runtime.errors import DataError


if TYPE_CHECKING:
    from yayi_cli.core.reader import SourceRecord

INSTRUCTION, CONVERSATIONS, MESSAGES, PROMPT = "instruction", "conversations", "messages", "prompt"
SHAPES = (INSTRUCTION, CONVERSATIONS, MESSAGES, PROMPT)
"""PROMPT: TRL's `{"prompt", "chosen", "rejected"}`, and `{"prompt"}` questions for `yayi chat --jsonl`."""

SFT, PAIRED, UNPAIRED, PROMPTS = "sft", "paired", "unpaired", "prompts"
"""What a record trains: an answer to imitate (sft), a chosen and a rejected answer (paired: DPO), one
answer labelled good or bad (unpaired: KTO), or a question for the model to answer (prompts: GRPO)."""
KIND_NAMES = {SFT: "SFT records (with their answers)", PAIRED: "preference pairs (chosen/rejected)",
              UNPAIRED: "unpaired preference records (completion/label)",
              PROMPTS: "prompt records (questions without answers)"}
CHOSEN, REJECTED, COMPLETION, LABEL = "chosen", "rejected", "completion", "label"
PAIRED_KEYS, UNPAIRED_KEYS = (CHOSEN, REJECTED), (COMPLETION, LABEL)

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
    PROMPT: frozenset({PROMPT}) | METADATA_KEYS,
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
    """A valid record: its turns already checked (order, markers), so the conversation is safe.

    A preference record's turns end with the human; its answers are (chosen, rejected), or
    (completion,) with its label.
    """

    shape: str
    turns: tuple[Turn, ...]
    system: str | None
    warnings: tuple[RecordWarning, ...] = ()
    answers: tuple[str, ...] = ()
    label: bool | None = None
    fields: tuple[tuple[str, str], ...] | None = None
    """A prompt record's other fields (for its rewards) as (name, JSON text) pairs; None for the other kinds."""

    @property
    def kind(self) -> str:
        return PROMPTS if self.fields is not None else kind_of(self.answers)

    @property
    def conversation(self) -> Conversation:
        """The record's history: a whole SFT conversation, or a preference record's prompt."""
        return Conversation(self.turns, self.system)

    @property
    def domain(self) -> str:
        """The domain prefix of the first message, or NO_DOMAIN."""
        return domain_of(self.turns[0].text) or NO_DOMAIN


def kind_of(answers: tuple[str, ...]) -> str:
    """SFT (no answers beside the history), PAIRED (chosen, rejected) or UNPAIRED (completion)."""
    return {0: SFT, 2: PAIRED, 1: UNPAIRED}[len(answers)]


def answered(prompt: Conversation, answer: str) -> Conversation:
    """A preference record's prompt followed by one of its answers: what the model is scored on."""
    return Conversation((*prompt.turns, Turn(ASSISTANT, answer)), prompt.system)


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _shape(record: dict[str, Any]) -> str:
    present = [shape for shape in (CONVERSATIONS, MESSAGES, PROMPT) if shape in record]
    if "instruction" in record or "output" in record:
        present.append(INSTRUCTION)
    if len(present) == 1:
        return present[0]
    if present:
        raise RecordError(f"record mixes the shapes {' and '.join(present)}; use one per record", "mixed-shape")
    keys = ", ".join(repr(key) for key in record) or "none"
    raise RecordError(
        "unknown record shape: expected 'instruction' and 'output', 'conversations', 'messages', or "
        f"'prompt' with 'chosen' and 'rejected'; found keys: {keys}",
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
        if self.require_answer or record.get(OUTPUT) is not None:
            turns.append(Turn(ASSISTANT, self.text(record.get(OUTPUT), f"field '{OUTPUT}'", required=True)))
        return tuple(turns), self.system(record)

    def turn_list(self, record: dict[str, Any], shape: str, *, field: str | None = None) -> tuple[tuple[Turn, ...], str | None]:
        """The turns of `record[shape]` (`field` names it in messages when it came from another key)."""
        role_key, text_key = ITEM_KEYS[shape]
        items, field = record[shape], field or shape
        if not isinstance(items, list):
            raise RecordError(f"field '{field}' must be an array, found {_type_name(items)}", "wrong-type")
        if not items:
            raise RecordError(f"field '{field}' is empty", "empty-field")
        system, turns = self.system(record), []
        for index, item in enumerate(items):
            where = f"{field}[{index}]"
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
            raise RecordError(f"field '{field}' holds no human message", "no-human-turn")
        if self.require_answer and turns[-1].role == HUMAN:
            raise RecordError(
                f"field '{field}' ends with a human message; a training record ends with the answer (or, for "
                "preference training, add 'chosen' and 'rejected')", "no-answer"
            )
        return tuple(turns), system

    def prompt(self, record: dict[str, Any]) -> tuple[tuple[Turn, ...], str | None]:
        """TRL's prompt: a string (one human message) or a list of messages."""
        if isinstance(record[PROMPT], list):
            return self.turn_list({**record, MESSAGES: record[PROMPT]}, MESSAGES, field=PROMPT)
        return (Turn(HUMAN, self.text(record[PROMPT], f"field '{PROMPT}'", required=True)),), self.system(record)

    def preference(self, record: dict[str, Any], keys: tuple[str, ...]) -> tuple[tuple[str, ...], bool | None]:
        """The answers (chosen, rejected) or (completion,), and an unpaired record's label."""
        if keys == UNPAIRED_KEYS:
            label = record[LABEL]
            if not isinstance(label, bool):
                raise RecordError(f"field '{LABEL}' must be true or false, found {_type_name(label)}", "wrong-type")
            return (self.answer(record[COMPLETION], COMPLETION),), label
        chosen, rejected = self.answer(record[CHOSEN], CHOSEN), self.answer(record[REJECTED], REJECTED)
        if chosen == rejected:
            raise RecordError("fields 'chosen' and 'rejected' are the same answer; a pair teaches nothing unless "
                              "they differ: fix or drop it", "same-answers")
        return (chosen, rejected), None

    def answer(self, value: Any, key: str) -> str:
        """A string, an assistant turn or message, or a list holding one."""
        where = f"field '{key}'"
        if isinstance(value, list):
            if len(value) != 1:
                raise RecordError(f"{where} must hold one assistant message, found {len(value)}", "wrong-type")
            value, where = value[0], f"{where}[0]"
        if isinstance(value, dict):
            shape = CONVERSATIONS if "from" in value else MESSAGES
            role_key, text_key = ITEM_KEYS[shape]
            if self.role(value.get(role_key), f"{where}.{role_key}") != ASSISTANT:
                raise RecordError(f"{where}.{role_key}: an answer comes from the assistant, found {value[role_key]!r}",
                                  "bad-turn-order")
            self.unknown_keys(value, ITEM_KEYS[shape], f"{where}: ")
            value, where = value.get(text_key), f"{where}.{text_key}"
        return self.text(value, where, required=True)

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
    """Turn one JSON value into a conversation (and a preference record's answers), or raise
    `RecordError` saying why not.

    With `require_answer=False` a record may end with a human message (a prompt to answer).
    """
    if not isinstance(value, dict):
        raise RecordError(f"expected a JSON object, found {_type_name(value)}", "not-object")
    shape = _shape(value)
    preference = _preference_keys(value)
    if shape == PROMPT and not preference and require_answer:
        raise RecordError(f"field '{PROMPT}' needs 'chosen' and 'rejected' (or 'completion' and 'label') beside it, "
                          "or write the record as 'instruction' and 'output'", "no-answer")
    parser = _RecordParser(require_answer and not preference)
    if shape == INSTRUCTION:
        if preference and OUTPUT in value:
            raise RecordError(f"field '{OUTPUT}' and '{preference[0]}' in one record: a preference record holds its "
                              f"answers in {' and '.join(preference)}; drop '{OUTPUT}'", "mixed-shape")
        turns, system = parser.instruction(value)
    elif shape == PROMPT:
        turns, system = parser.prompt(value)
    else:
        turns, system = parser.turn_list(value, shape)
    if not preference:
        parser.unknown_keys(value, KNOWN_KEYS[shape], "")
        return ParsedRecord(shape, turns, system, tuple(parser.warnings))
    if turns[-1].role != HUMAN:
        raise RecordError(f"field '{shape}' ends with an answer; in a preference record the history ends with the "
                          f"human, and the answers go in {' and '.join(preference)}", "bad-turn-order")
    parser.unknown_keys(value, KNOWN_KEYS[shape] | set(preference), "")
    answers, label = parser.preference(value, preference)
    return ParsedRecord(shape, turns, system, tuple(parser.warnings), answers, label)


OUTPUT = "output"


def _preference_keys(record: dict[str, Any]) -> tuple[str, ...]:
    """PAIRED_KEYS, UNPAIRED_KEYS, or () for a record without either (refusing a mixture)."""
    paired = [key for key in PAIRED_KEYS if key in record]
    unpaired = [key for key in UNPAIRED_KEYS if key in record]
    if paired and unpaired:
        raise RecordError(f"fields {paired[0]!r} and {unpaired[0]!r} in one record: a pair has 'chosen' and "
                          "'rejected', an unpaired record 'completion' and 'label'", "mixed-shape")
    if paired or unpaired:
        keys = PAIRED_KEYS if paired else UNPAIRED_KEYS
        missing = [key for key in keys if key not in record]
        if missing:
            needs = ("a preference pair has 'chosen' and 'rejected'" if keys == PAIRED_KEYS else
                     "an unpaired preference record (KTO) has 'completion' and 'label' (true|false)")
            raise RecordError(f"field {missing[0]!r} is missing: {needs}; for supervised training write "
                              "'instruction' and 'output'", "missing-field")
        return keys
    return ()


def parse_question(value: Any) -> ParsedRecord:
    """A record to be answered: `{"prompt": ...}` or a record of any shape that may end with a
    human message; the same checks (types, markers, turn order) as training records."""
    return parse_record(value, require_answer=False)


def domain_of(first_message: str) -> str | None:
    """The YaYi domain prefix of a conversation's first message, `【媒宣领域任务】…` -> `媒宣领域任务`."""
    match = _DOMAIN.match(first_message)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Record:
    """A valid record to train on or score: where it came from, its domain and its conversation
    (a preference record's: the prompt, with its answers and label beside it)."""

    location: str
    domain: str
    conversation: Conversation
    answers: tuple[str, ...] = ()
    label: bool | None = None

    @classmethod
    def of(cls, source: SourceRecord, parsed: ParsedRecord) -> Record:
        """What is kept of a checked record: enough to train on it and to say where it came from."""
        return cls(source.location, parsed.domain, parsed.conversation, parsed.answers, parsed.label)

    @property
    def kind(self) -> str:
        return kind_of(self.answers)
