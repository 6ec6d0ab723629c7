"""Records of data files, checked the way `yayi data validate` checks them.

Every command that reads instruction data (validate, split, eval, train, quantize's check, the
tiny-model builder) goes through `valid_records`: one loop that checks each record, hands the
invalid ones to the caller's `on_problem` and yields the valid ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli.core.prompt import HUMAN, Conversation
from yayi_cli.core.reader import SourceRecord, read_records, refuse_repeated_inputs
from yayi_cli.core.records import (
    CHOSEN,
    COMPLETION,
    KIND_NAMES,
    KNOWN_KEYS,
    OUTPUT,
    REJECTED,
    ParsedRecord,
    Record,
    RecordError,
    RecordWarning,
    parse_question,
    parse_record,
)
from yayi_cli.runtime.errors import DataError


ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a record, at its file and line."""

    path: str
    line: int
    index: int | None
    severity: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.severity}: {self.message}"


ANSWER_KEYS = (OUTPUT, CHOSEN, REJECTED, COMPLETION)
_SHAPED_KEYS = frozenset().union(*KNOWN_KEYS.values())


def parse_prompt_record(value: Any) -> ParsedRecord:
    """A prompt record: a record of any shape that ends with the human's message and holds no answer
    (an instruction without `output`, a conversation without its last answer, `{"prompt": ...}`). Its
    other top-level fields (`label`, `answer`, ...) are kept for the reward functions."""
    if not isinstance(value, dict):
        return parse_question(value)  # the error every shape gives a non-object
    answers = [key for key in ANSWER_KEYS if key in value]
    parsed = parse_question({key: item for key, item in value.items() if key in _SHAPED_KEYS})
    if answers or parsed.turns[-1].role != HUMAN:
        raise RecordError(f"a prompt record ends with the human's message and holds no answer "
                          f"({', '.join(map(repr, answers)) or 'a last assistant turn'}): the model writes the answers",
                          "has-answer")
    fields = tuple((key, json.dumps(item, ensure_ascii=False, sort_keys=True))
                   for key, item in sorted(value.items()) if key not in _SHAPED_KEYS)
    return parsed._replace(fields=fields)


def check_record(source: SourceRecord, *, prompts: bool = False) -> ParsedRecord | Problem:
    """The parsed record (a prompt record with `prompts`), or the error that makes it invalid."""
    if source.error is not None:
        return Problem(source.path, source.line, source.index, ERROR, source.error_code, source.error)
    try:
        record = parse_prompt_record(source.value) if prompts else parse_record(source.value)
    except RecordError as error:
        return Problem(source.path, source.line, source.index, ERROR, error.code, str(error))
    repeated = repeated_keys(source.raw, source.value)
    if repeated:
        names = ", ".join(repr(key) for key in dict.fromkeys(repeated))
        warning = RecordWarning(DUPLICATE_KEY, f"key {names} appears twice in one object; JSON keeps only the last value, "
                                "so the first is lost: rename one of them")
        record = record._replace(warnings=(*record.warnings, warning))
    return record


def content_keys(record: ParsedRecord) -> tuple[int, int]:
    """64-bit hashes of everything before the last answer, and of that answer.

    A preference record's "prompt" is its history with its answers in either order, and its
    "answer" is the verdict (which answer is chosen, or the label): several pairs or labelled
    completions for one question are normal, while the same answers judged the other way are
    worth a warning. A prompt record's "answer" is its other fields (the reward's label or answer).
    """
    if record.fields is not None:
        return conversation_keys(record.system, record.turns, record.fields)
    if record.answers:
        return conversation_keys(record.system, (*record.turns, tuple(sorted(record.answers))),
                                 (record.answers, record.label))
    *prompt, answer = record.turns
    return conversation_keys(record.system, tuple(prompt), answer)


def conversation_keys(system: str | None, prompt: tuple[tuple[str, ...], ...], answer: tuple[str, ...]) -> tuple[int, int]:
    """Python's own string hash: fast, and equal for equal text within this process and the
    processes it forks (they share its hash secret), which is all the warnings need. Two
    different records share both keys with a chance of about 2^-128. Turns may be `Turn`s or
    plain tuples of the same fields: they hash alike.
    """
    return hash((system, *prompt)) & MASK_64, hash(answer) & MASK_64


MASK_64 = (1 << 64) - 1


DUPLICATE_KEY = "duplicate-key"
_CONTAINERS = (dict, list)


def _count_keys(value: Any) -> int:
    """Keys of every object in a JSON value (without recursion: values may be deeply nested)."""
    count, pending = 0, [value]
    while pending:
        item = pending.pop()
        if type(item) is dict:
            count += len(item)
            pending += [child for child in item.values() if type(child) in _CONTAINERS]
        else:
            pending += [child for child in item if type(child) in _CONTAINERS]
    return count


_KEY_ENDING = re.compile(r'"\s*:')


def _key_endings(raw: str) -> int:
    """`":` and `" :` counted with str.count (fast); other whitespace before a colon, rarer, with a regex."""
    if any(spaced in raw for spaced in ('"  ', '"\t', '"\n', '"\r')):
        return len(_KEY_ENDING.findall(raw))
    return raw.count('":') + raw.count('" :')


def repeated_keys(raw: str, value: Any) -> list[str]:
    """Keys written twice in one object of `raw`, which `json` silently collapses to the last.

    Cheap first: with no repeat, the parsed value has as many keys as the text has key endings
    (`":` or `" :`; inside a string a quote is escaped, so `\\":` there is counted too and only
    makes the counts differ). Only a record where they differ is walked again, noting every key.
    """
    if not raw or _key_endings(raw) == _count_keys(value):
        return []
    return _keys_written_twice(raw)


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:]')


def _keys_written_twice(raw: str) -> list[str]:
    """Every key repeated within one object of the (valid) JSON text `raw`.

    A flat walk over strings and brackets with a stack of the open objects' keys, so the answer
    does not depend on the interpreter's recursion limit (which other libraries raise, and which a
    deeply nested record would otherwise hit).
    """
    repeated: list[str] = []
    open_objects: list[set[str] | None] = []  # None for an array
    last_string = ""
    for match in _JSON_TOKEN.finditer(raw):
        token = match.group()
        if token in ("{", "["):
            open_objects.append(set() if token == "{" else None)
        elif token in ("}", "]"):
            open_objects.pop()
        elif token == ":":
            keys = open_objects[-1]
            key = json.loads(last_string)  # escapes decoded: "\u0061" and "a" are one key
            if key in keys:
                repeated.append(key)
            keys.add(key)
        else:
            last_string = token
    return repeated


def valid_records(
    sources: Iterable[SourceRecord], on_problem: Callable[[SourceRecord, Problem], None], *, prompts: bool = False
) -> Iterator[tuple[SourceRecord, ParsedRecord]]:
    """The valid records of `sources` (prompt records with `prompts`), in order; each invalid one goes to
    `on_problem` instead."""
    for source in sources:
        checked = check_record(source, prompts=prompts)
        if isinstance(checked, Problem):
            on_problem(source, checked)
        else:
            yield source, checked


def skip_problem(source: SourceRecord, problem: Problem) -> None:
    """`on_problem` for readers that leave invalid records out silently."""


class KindMixer:
    """Remembers the first record of each kind, to refuse a second kind in one data set."""

    def __init__(self) -> None:
        self.first: dict[str, str] = {}

    def problem(self, kind: str, shape: str, location: str) -> str | None:
        """Why this record cannot join the ones seen so far (None: it can)."""
        self.first.setdefault(kind, f"{location} ({shape})")
        other = next((seen for seen in self.first if seen != kind), None)
        if other is None:
            return None
        return (f"the data mixes {KIND_NAMES[other]} (the first at {self.first[other]}) with {KIND_NAMES[kind]} "
                f"(the first at {self.first[kind]}); one training set holds one kind: put them in separate files")


def _checked_records(paths: Sequence[Path]) -> Iterator[tuple[SourceRecord, ParsedRecord]]:
    """Every valid record of `paths`; once all are read, any invalid one (or a record of another
    kind than the first: SFT, paired, unpaired) stops the run."""
    refuse_repeated_inputs(paths)
    problems: list[Problem] = []
    kinds = KindMixer()
    for path in paths:
        for source, parsed in valid_records(read_records(path), lambda _, problem: problems.append(problem)):
            mixed = kinds.problem(parsed.kind, parsed.shape, source.location)
            if mixed:
                raise DataError(f"{source.location}: {mixed}")
            yield source, parsed
    if problems:
        raise DataError(
            f"{len(problems)} invalid record(s), the first at {problems[0]}; `yayi data validate` lists them all"
        )


def _none_in(paths: Sequence[Path]) -> DataError:
    return DataError("no records in " + ", ".join(str(p) for p in paths))


def load_records(paths: Sequence[Path]) -> list[Record]:
    """Every record of `paths`; one invalid record stops the run, pointing at `data validate`."""
    records = [Record.of(source, parsed) for source, parsed in _checked_records(paths)]
    if not records:
        raise _none_in(paths)
    return records


def count_records(paths: Sequence[Path]) -> tuple[int, str]:
    """How many records `paths` hold, checked as `load_records` checks them, without keeping them, and
    their kind (SFT, PAIRED or UNPAIRED)."""
    count, kind = 0, ""
    for count, (_, parsed) in enumerate(_checked_records(paths), start=1):
        kind = parsed.kind
    if not count:
        raise _none_in(paths)
    return count, kind


@dataclass(frozen=True)
class PromptRecord:
    """A prompt to answer (GRPO, `yayi eval --task reward`): its conversation, which ends with the human, and the
    record's other fields (`label`, `answer`, ...) for the reward functions."""

    location: str
    conversation: Conversation
    fields: dict[str, Any]


def prompt_record(source: SourceRecord) -> PromptRecord:
    """One prompt record (`records.parse_prompt_record`), or a DataError at its file:line."""
    checked = check_record(source, prompts=True)
    if isinstance(checked, Problem):
        raise DataError(str(checked).replace(": error:", ":", 1))
    fields = {key: value for key, value in source.value.items() if key in dict(checked.fields)}
    return PromptRecord(source.location, checked.conversation, fields)


def load_prompt_records(paths: Sequence[Path]) -> list[PromptRecord]:
    """Every prompt record of `paths`; the first bad one stops the run at its file:line. Every record has the same
    fields, so that each reward gets one value per answer."""
    refuse_repeated_inputs(paths)
    records = [prompt_record(source) for path in paths for source in read_records(path)]
    if not records:
        raise _none_in(paths)
    first = records[0]
    for record in records[1:]:
        if set(record.fields) != set(first.fields):
            raise DataError(f"{record.location}: fields {sorted(record.fields)} differ from those of the first record "
                            f"({first.location}: {sorted(first.fields)}); every prompt record carries the same fields")
    return records
