"""Records of data files, checked the way `yayi data validate` checks them.

Every command that reads instruction data (validate, split, eval, train, quantize's check, the
tiny-model builder) goes through `valid_records`: one loop that checks each record, hands the
invalid ones to the caller's `on_problem` and yields the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from yayi_cli.data.reader import SourceRecord, read_records
from yayi_cli.errors import DataError
from yayi_cli.prompt import Conversation
from yayi_cli.records import ParsedRecord, RecordError, parse_record

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


def check_record(source: SourceRecord) -> ParsedRecord | Problem:
    """The parsed record, or the error that makes it invalid."""
    if source.error is not None:
        return Problem(source.path, source.line, source.index, ERROR, source.error_code, source.error)
    try:
        return parse_record(source.value)
    except RecordError as error:
        return Problem(source.path, source.line, source.index, ERROR, error.code, str(error))


def valid_records(
    sources: Iterable[SourceRecord], on_problem: Callable[[SourceRecord, Problem], None]
) -> Iterator[tuple[SourceRecord, ParsedRecord]]:
    """The valid records of `sources`, in order; each invalid one goes to `on_problem` instead."""
    for source in sources:
        checked = check_record(source)
        if isinstance(checked, Problem):
            on_problem(source, checked)
        else:
            yield source, checked


def skip_problem(source: SourceRecord, problem: Problem) -> None:
    """`on_problem` for readers that leave invalid records out silently."""


@dataclass(frozen=True)
class Record:
    """A valid record to train on or score: where it came from, its domain and its conversation."""

    location: str
    domain: str
    conversation: Conversation


def load_records(paths: Sequence[Path]) -> list[Record]:
    """Every record of `paths`; one invalid record stops the run, pointing at `data validate`."""
    records: list[Record] = []
    problems: list[Problem] = []
    for path in paths:
        for source, parsed in valid_records(read_records(path), lambda _, problem: problems.append(problem)):
            records.append(Record(source.location, parsed.domain, parsed.conversation))
    if problems:
        raise DataError(
            f"{len(problems)} invalid record(s), the first at {problems[0]}; `yayi data validate` lists them all"
        )
    if not records:
        raise DataError("no records in " + ", ".join(str(p) for p in paths))
    return records
