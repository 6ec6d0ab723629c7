"""The quick check that most records pass, so that only the rest pay for the exact one.

A plain instruction record (`instruction`, `output`, and maybe `input`, `system` and `id`, all
strings but `id`) is decoded by msgspec straight into a typed struct: the JSON and the types are
checked in C. A few string tests then make sure the exact checks (`records.parse_record`) would
accept it without a single warning. Whatever the screen is unsure of (another shape, a wrong type, a
null, an unknown or repeated key, an empty field, whitespace at an edge, a control character, a
marker, invalid JSON) returns None and goes through the exact checks, which say what is wrong: the
screen may only ever accept what they accept, with the same numbers.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec

from yayi_cli.core.prompt import ASSISTANT, HUMAN
from yayi_cli.core.record_files import MASK_64
from yayi_cli.core.records import NO_DOMAIN, UNUSUAL_CHARACTER, domain_of


MARKER_START = "<|"
"""How every marker begins: text without it holds none (tested)."""


class PlainInstruction(msgspec.Struct, forbid_unknown_fields=True):
    """A record as the screen decodes it; `input` and `system` are UNSET (falsy) when absent."""

    instruction: str
    output: str
    input: str | msgspec.UnsetType = msgspec.UNSET
    system: str | msgspec.UnsetType = msgspec.UNSET
    id: Any = msgspec.UNSET

    @property
    def domain(self) -> str:
        return (domain_of(self.instruction) if self.instruction[0] == "【" else None) or NO_DOMAIN


_decode = msgspec.json.Decoder(PlainInstruction).decode
_NOT_PLAIN = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def plain_keys(records: list[PlainInstruction]) -> tuple[list[int], list[int]]:
    """The prompt and answer keys `checked.content_keys` gives the records `parse_record` makes
    (a `Turn` hashes as the tuple of its fields; tested alike), in two loops without a call each."""
    return (
        [hash((record.system or None, (HUMAN, record.instruction, record.input or ""))) & MASK_64 for record in records],
        [hash((ASSISTANT, record.output, "")) & MASK_64 for record in records],
    )


def _no_edge_space(text: str) -> bool:
    """Not empty, and no whitespace at either end (`parse_record` warns of that)."""
    return bool(text) and not text[0].isspace() and not text[-1].isspace()


def _unusual(text: str) -> bool:
    """A marker, a control character or a lone surrogate: the exact checks refuse or warn."""
    return MARKER_START in text or UNUSUAL_CHARACTER.search(text) is not None


def _decoded(line: bytes) -> PlainInstruction | None:
    """The line decoded as a plain instruction record with no key twice and a plain system text."""
    try:
        record = _decode(line)
    except _NOT_PLAIN:
        return None
    keys = 2 + (record.input is not msgspec.UNSET) + (record.system is not msgspec.UNSET) + (record.id is not msgspec.UNSET)
    # every key has its colon: with no other colon in the line, no key can be there twice
    if line.count(b":") != keys:
        return None
    if record.system and (not _no_edge_space(record.system) or _unusual(record.system)):
        return None
    return record


def _is_plain(record: PlainInstruction) -> bool:
    """The screen's test of one record's texts (system aside): what `parse_record` passes silently."""
    extra = record.input or ""
    return (
        _no_edge_space(record.instruction)
        and _no_edge_space(record.output)
        and (not extra or _no_edge_space(extra))
        and not any(map(_unusual, (record.instruction, record.output, extra)))
    )


def _all_plain(records: list[PlainInstruction], texts: list[str]) -> bool:
    """`_is_plain` of every record at once (`texts`: theirs): C loops over all of them."""
    joined = " ".join(texts)  # a space is printable, and no marker holds one
    return (
        all([record.instruction and record.output for record in records])
        and [text.strip() for text in texts] == texts
        and MARKER_START not in joined
        and (joined.isprintable() or UNUSUAL_CHARACTER.search(joined) is None)  # the first is quicker, and usually enough
    )


@dataclass
class ScreenedLines:
    """The plain records of some lines (None where the exact checks must look), and their totals."""

    records: list[PlainInstruction | None]
    domains: Counter[str]
    characters: int

    @classmethod
    def none(cls, count: int) -> ScreenedLines:
        """`count` lines for the exact checks alone."""
        return cls([None] * count, Counter(), 0)


_DOMAINS = re.compile("\x00【([^【】\n\x00]{1,40})】")
"""`records.domain_of` of NUL-joined instructions at once: screened text holds no NUL (tested alike)."""


def _texts(records: list[PlainInstruction]) -> list[str]:
    """The instructions first, then the outputs and the inputs."""
    return [record.instruction for record in records] + [record.output for record in records] + [
        record.input or "" for record in records
    ]


def screen_lines(lines: list[bytes]) -> ScreenedLines:
    """Screen each line: decoded one by one, their texts then tested all at once, and one by one
    only when that finds something (it is rare)."""
    records = [_decoded(line) for line in lines]
    plain = [record for record in records if record is not None]
    texts = _texts(plain)
    if not _all_plain(plain, texts):
        records = [record if record is not None and _is_plain(record) else None for record in records]
        plain = [record for record in records if record is not None]
        texts = _texts(plain)
    domains = Counter(_DOMAINS.findall("\x00" + "\x00".join(texts[: len(plain)])))
    domains[NO_DOMAIN] += len(plain) - domains.total()
    return ScreenedLines(records, domains, sum(map(len, texts)))
