"""The tally of a checking pass: per-file counts, problems, and the compact keys that find repeats.

Each record is checked and counted here: plain instruction records by the bulk screen of
`data.screen`, everything else (and whatever the screen is unsure of) by `records.parse_record`.
Only compact per-record keys (for duplicates) are kept, so memory stays small whatever the file
size; tallies of byte ranges merge in file order.
"""

from __future__ import annotations

import bisect
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from yayi_cli.core.reader import LineChunk, SourceRecord, line_record
from yayi_cli.core.record_files import ERROR, WARNING, KindMixer, Problem, content_keys, valid_records
from yayi_cli.core.records import INSTRUCTION, KIND_NAMES, SFT, SHAPES, ParsedRecord, answered
from yayi_cli.core.sampling import BLOCK
from yayi_cli.data.screen import ScreenedLines, plain_keys, screen_lines
from yayi_cli.runtime.errors import DataError


DUPLICATE, CONFLICTING_ANSWER, CONFLICTING_PREFERENCE = "duplicate", "conflicting-answer", "conflicting-preference"
MIXED_KINDS, MIXED_FIELDS = "mixed-kinds", "mixed-fields"


@dataclass
class FileStats:
    path: str
    records: int = 0
    valid: int = 0
    errors: int = 0
    warnings: int = 0
    turns: int = 0
    characters: int = 0
    shapes: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    """Valid records by what they train: sft, paired, unpaired (records.KIND_NAMES)."""

    def merge(self, other: FileStats) -> None:
        for name in ("records", "valid", "errors", "warnings", "turns", "characters"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.shapes.update(other.shapes)
        self.kinds.update(other.kinds)

    def count(self, row: str) -> int:
        """A row of the records table: a count, a shape's or a kind's."""
        if row in SHAPES:
            return self.shapes[row]
        return self.kinds[row] if row in KIND_NAMES else getattr(self, row)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "shapes": {shape: self.shapes[shape] for shape in SHAPES},
                "kinds": {kind: self.kinds[kind] for kind in KIND_NAMES}}


@dataclass
class Tally:
    """Everything checking a run of records found; tallies of chunks merge into one."""

    max_listed: int
    files: dict[str, FileStats] = field(default_factory=dict)
    domains: Counter[str] = field(default_factory=Counter)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    prompt_keys: array = field(default_factory=lambda: array("Q"))
    answer_keys: array = field(default_factory=lambda: array("Q"))
    run_starts: array = field(default_factory=lambda: array("Q"))
    run_offsets: array = field(default_factory=lambda: array("q"))
    """Line numbers as runs: from ordinal `run_starts[i]` on, line = ordinal + `run_offsets[i]`.
    A JSON-lines file without blank or invalid lines is one run, so lines cost nothing per record."""
    reserved: frozenset[str] = frozenset()
    """With --model: the tokenizer's special tokens, refused inside text like the markers."""
    first_ordinal: dict[str, int] = field(default_factory=dict)
    """Where each file's records start among the keys: records of a file are consecutive."""
    listed: frozenset[str] = frozenset({ERROR, WARNING})
    """The severities `problems` lists (`data split` needs only its first error)."""
    domain_ids: array | None = None
    """With `keep_domains()`: each valid record's domain, an index into `domain_names`."""
    domain_names: list[str] = field(default_factory=list)
    first_of_kind: dict[str, tuple[int, str]] = field(default_factory=dict)
    """The ordinal and shape of the first valid record of each kind, to refuse mixed kinds."""
    prompts: bool = False
    """The records are prompt records (`--prompts`): questions without answers, with fields for the rewards."""
    first_with_fields: dict[tuple[str, ...], int] = field(default_factory=dict)
    """Prompt records: the ordinal of the first record with each set of field names (one set per data set)."""

    def keep_domains(self) -> Tally:
        """Remember each record's domain too (`data split --stratify`), 4 bytes a record."""
        self.domain_ids = array("I")
        return self

    def empty_like(self) -> Tally:
        """A new tally that counts and keeps what this one does, for a chunk."""
        tally = Tally(self.max_listed, reserved=self.reserved, listed=self.listed, prompts=self.prompts)
        return tally.keep_domains() if self.domain_ids is not None else tally

    def _add_domains(self, domains: Iterable[str]) -> None:
        ids = {name: number for number, name in enumerate(self.domain_names)}
        for domain in domains:
            if domain not in ids:
                ids[domain] = len(self.domain_names)
                self.domain_names.append(domain)
            self.domain_ids.append(ids[domain])

    @property
    def paths(self) -> list[str]:
        return list(self.files)

    def file(self, path: str) -> FileStats:
        if path not in self.files:
            self.files[path] = FileStats(path)
            self.first_ordinal[path] = len(self.prompt_keys)
        return self.files[path]

    def locate(self, ordinal: int, starts: list[int]) -> tuple[str, int]:
        """(path, line) of the record with this ordinal among the keys; `starts`: first ordinals of the files."""
        run = bisect.bisect_right(self.run_starts, ordinal) - 1
        return self.paths[bisect.bisect_right(starts, ordinal) - 1], ordinal + self.run_offsets[run]

    def lines_of(self, ordinals: Any) -> Any:
        """The line numbers of the records with these ordinals (numpy arrays)."""
        import numpy as np

        runs = np.searchsorted(np.frombuffer(self.run_starts, dtype=np.uint64), ordinals, side="right") - 1
        return ordinals.astype(np.int64) + np.frombuffer(self.run_offsets, dtype=np.int64)[runs]

    def _add_line(self, ordinal: int, line: int) -> None:
        if not self.run_offsets or ordinal + self.run_offsets[-1] != line:
            self.run_starts.append(ordinal)
            self.run_offsets.append(line - ordinal)

    def report(self, problem: Problem) -> None:
        """Count a problem; list it while under the cap (--max-errors caps listing, not counting)."""
        self.counts[problem.severity, problem.code] += 1
        stats = self.file(problem.path)
        if problem.severity == ERROR:
            stats.errors += 1
        else:
            stats.warnings += 1
        if len(self.problems) < self.max_listed and problem.severity in self.listed:
            self.problems.append(problem)

    def reject(self, source: SourceRecord, problem: Problem) -> None:
        """Count an invalid record."""
        self.file(source.path).records += 1
        self.report(problem)

    def accept(self, source: SourceRecord, record: ParsedRecord) -> bool:
        """Count a valid record (unless it holds a reserved token) and its warnings; False if refused."""
        stats = self.file(source.path)
        stats.records += 1
        if self.reserved:
            try:
                trained = [answered(record.conversation, answer) for answer in record.answers] or [record.conversation]
                for conversation in trained:
                    conversation.refuse(self.reserved)
            except DataError as error:
                self.report(Problem(source.path, source.line, source.index, ERROR, "special-token", str(error)))
                return False
        stats.valid += 1
        stats.shapes[record.shape] += 1
        stats.kinds[record.kind] += 1
        stats.turns += len(record.turns) + len(record.answers)
        stats.characters += sum(len(turn.text) + len(turn.input) for turn in record.turns) + sum(map(len, record.answers))
        self.domains[record.domain] += 1
        for warning in record.warnings:
            self.report(Problem(source.path, source.line, source.index, WARNING, warning.code, warning.message))
        self.first_of_kind.setdefault(record.kind, (len(self.prompt_keys), record.shape))
        if record.fields is not None:
            self.first_with_fields.setdefault(tuple(name for name, _ in record.fields), len(self.prompt_keys))
        prompt_key, answer_key = content_keys(record)
        self._add_line(len(self.prompt_keys), source.line)
        self.prompt_keys.append(prompt_key)
        self.answer_keys.append(answer_key)
        if self.domain_ids is not None:
            self._add_domains([record.domain])
        return True

    def count_lines(self, chunk: LineChunk) -> None:
        """Check and count a chunk of JSON lines: what the screen passes in bulk, the rest exactly.

        Record indexes start at 0 (chunk tallies merge with an offset)."""
        lines = chunk.data.split(b"\n")
        plain = not (self.reserved or self.prompts)  # the screen passes only plain SFT records
        screened = screen_lines(lines) if plain else ScreenedLines.none(len(lines))
        index, start = 0, 0
        for end in [at for at, record in enumerate(screened.records) if record is None] + [len(lines)]:
            if end > start:  # consecutive screened records: one run of lines
                self._add_line(len(self.prompt_keys), chunk.first_line + start)
                self.first_of_kind.setdefault(SFT, (len(self.prompt_keys), INSTRUCTION))
                records = screened.records[start:end]
                prompt_keys, answer_keys = plain_keys(records)
                self.prompt_keys.extend(prompt_keys)
                self.answer_keys.extend(answer_keys)
                if self.domain_ids is not None:
                    self._add_domains([record.domain for record in records])
                index += end - start
            source = line_record(chunk.path, chunk.first_line + end, index, lines[end]) if end < len(lines) else None
            if source is not None:
                index += 1
                for _ in self.check((source,)):
                    pass
            start = end + 1
        count = screened.domains.total()
        stats = self.file(chunk.path)
        stats.records, stats.valid, stats.turns = stats.records + count, stats.valid + count, stats.turns + 2 * count
        stats.shapes[INSTRUCTION] += count
        stats.kinds[SFT] += count
        stats.characters += screened.characters
        self.domains.update(screened.domains)

    def check(self, sources: Iterable[SourceRecord]) -> Iterator[tuple[SourceRecord, ParsedRecord]]:
        """Check and count every record; yield the valid ones."""
        for source, record in valid_records(sources, self.reject, prompts=self.prompts):
            if self.accept(source, record):
                yield source, record

    def merge(self, other: Tally, index_offset: int, line_offset: int) -> None:
        """Add a later chunk's tally, whose record indexes started at 0 and lines at 1 + `line_offset`."""
        for path, stats in other.files.items():  # before the keys: a new file starts at the end
            self.file(path).merge(stats)
        self.domains.update(other.domains)
        self.counts.update(other.counts)
        room = self.max_listed - len(self.problems)
        self.problems.extend(
            Problem(p.path, p.line + line_offset, p.index + index_offset, p.severity, p.code, p.message)
            for p in other.problems[:room]
        )
        base = len(self.prompt_keys)
        for kind, (ordinal, shape) in other.first_of_kind.items():
            self.first_of_kind.setdefault(kind, (base + ordinal, shape))
        for names, ordinal in other.first_with_fields.items():
            self.first_with_fields.setdefault(names, base + ordinal)
        for start, offset in zip(other.run_starts, other.run_offsets):
            self._add_line(base + start, start + offset + line_offset)
        self.prompt_keys.extend(other.prompt_keys)
        self.answer_keys.extend(other.answer_keys)
        if self.domain_ids is not None:
            self._add_domains(other.domain_names[number] for number in other.domain_ids)

    def mixed_kinds(self) -> list[Problem]:
        """An error at the first record of each kind after the first one: a training set holds
        SFT records, preference pairs or unpaired preference records, not two of them."""
        starts, mixer, problems = list(self.first_ordinal.values()), KindMixer(), []
        for kind, (ordinal, shape) in sorted(self.first_of_kind.items(), key=lambda item: item[1]):
            path, line = self.locate(ordinal, starts)
            message = mixer.problem(kind, shape, f"{path}:{line}")
            if message is not None:
                problems.append(Problem(path, line, None, ERROR, MIXED_KINDS, message))
        return problems

    def mixed_fields(self) -> list[Problem]:
        """Prompt records: an error at the first record of each set of field names after the first one, since
        every reward gets one value of each field per answer."""
        starts = list(self.first_ordinal.values())
        ordered = sorted(self.first_with_fields.items(), key=lambda item: item[1])
        if len(ordered) < 2:
            return []
        (first_names, first), others = ordered[0], ordered[1:]
        where = "{}:{}".format(*self.locate(first, starts))
        problems = []
        for names, ordinal in others:
            path, line = self.locate(ordinal, starts)
            problems.append(Problem(path, line, None, ERROR, MIXED_FIELDS,
                                    f"fields {list(names)} differ from those of the first record ({where}: "
                                    f"{list(first_names)}); every prompt record carries the same fields"))
        return problems

    def report_duplicates(self) -> None:
        """Warn about repeated records and about one prompt given different answers (in
        preference data: the same answers judged the other way; see `checked.content_keys`)."""
        starts = list(self.first_ordinal.values())
        preference = SFT not in self.first_of_kind
        for repeat in find_repeats(self.prompt_keys, self.answer_keys):
            path, line = self.locate(repeat.ordinal, starts)
            where = "{}:{}".format(*self.locate(repeat.earlier, starts))
            code = repeat.kind
            if repeat.kind == DUPLICATE:
                message = f"duplicate of the record at {where}"
            elif self.prompts:
                message = f"same prompt as the record at {where}, with other fields: no answer can earn both rewards"
            elif preference:
                code, message = CONFLICTING_PREFERENCE, f"same prompt and answers as the record at {where}, judged the other way"
            else:
                message = f"same prompt as the record at {where}, with a different answer"
            self.report(Problem(path, line, None, WARNING, code, message))


class Repeat(NamedTuple):
    ordinal: int
    earlier: int
    kind: str


def find_repeats(prompt_keys: array, answer_keys: array) -> list[Repeat]:
    """Records (by ordinal) that repeat an earlier prompt, in input order (keys: 64-bit each).

    A `duplicate` has the prompt and answer of an earlier record (`earlier` is the first such);
    a `conflicting-answer` record is the first with its answer among records sharing the prompt
    of an earlier one (`earlier` is the earliest record with that prompt). Only the two compact
    key arrays are used (one sorted copy of the prompt keys), so this costs a few bytes per
    record, not a Python object each.
    """
    import numpy as np

    prompts = np.frombuffer(prompt_keys, dtype=np.uint64)
    sorted_prompts = np.sort(prompts)
    repeated = np.unique(sorted_prompts[1:][sorted_prompts[1:] == sorted_prompts[:-1]])
    del sorted_prompts
    if not len(repeated):
        return []
    groups: dict[int, list[int]] = {}
    for start in range(0, len(prompts), BLOCK):  # in blocks: temporaries stay small
        block = prompts[start : start + BLOCK]
        found = np.minimum(np.searchsorted(repeated, block), len(repeated) - 1)
        for ordinal in (np.flatnonzero(repeated[found] == block) + start).tolist():
            groups.setdefault(int(prompts[ordinal]), []).append(ordinal)
    repeats = []
    for members in groups.values():  # each in input order: the first is the earliest
        first_with_answer: dict[int, int] = {}
        for ordinal in members:
            answer = answer_keys[ordinal]
            if answer in first_with_answer:
                repeats.append(Repeat(ordinal, first_with_answer[answer], DUPLICATE))
                continue
            first_with_answer[answer] = ordinal
            if ordinal != members[0]:
                repeats.append(Repeat(ordinal, members[0], CONFLICTING_ANSWER))
    return sorted(repeats)

