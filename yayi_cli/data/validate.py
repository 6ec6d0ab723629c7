"""`yayi data validate`: every problem in instruction data, by file and line, in one streaming pass.

Each record is read, checked and counted: plain instruction records by the bulk screen of
`data.screen`, everything else (and whatever the screen is unsure of) by `records.parse_record`.
Only compact per-record keys (for duplicates) are kept, so memory stays small whatever the file
size. JSON-lines files are checked in byte ranges, by one process per core when they are large,
and the ranges' tallies merged in file order. `data split` makes the same pass.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import multiprocessing
import os
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from yayi_cli.data.reader import (
    LINES,
    ForeignText,
    LineChunk,
    SourceRecord,
    file_layout,
    line_range,
    line_record,
    read_records,
    refuse_repeated_inputs,
)
from yayi_cli.data.screen import ScreenedLines, plain_keys, screen_lines
from yayi_cli.data.checked import ERROR, WARNING, Problem, content_keys, valid_records
from yayi_cli.errors import DataError, UsageError
from yayi_cli.prompt import IGNORE_INDEX, Conversation
from yayi_cli.records import INSTRUCTION, NO_DOMAIN, SHAPES, ParsedRecord

DUPLICATE, CONFLICTING_ANSWER = "duplicate", "conflicting-answer"
PARALLEL_MIN_BYTES = 32 << 20
RANGE_BYTES = 4 << 20
"""JSON lines are checked in ranges of about this many bytes, each in one piece of work."""
"""JSON-lines input at least this large is checked by one process per core."""


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

    def merge(self, other: FileStats) -> None:
        for name in ("records", "valid", "errors", "warnings", "turns", "characters"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.shapes.update(other.shapes)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "shapes": {shape: self.shapes[shape] for shape in SHAPES}}




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

    def keep_domains(self) -> Tally:
        """Remember each record's domain too (`data split --stratify`), 4 bytes a record."""
        self.domain_ids = array("I")
        return self

    def empty_like(self) -> Tally:
        """A new tally that counts and keeps what this one does, for a chunk."""
        tally = Tally(self.max_listed, reserved=self.reserved, listed=self.listed)
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
                record.conversation.refuse(self.reserved)
            except DataError as error:
                self.report(Problem(source.path, source.line, source.index, ERROR, "special-token", str(error)))
                return False
        stats.valid += 1
        stats.shapes[record.shape] += 1
        stats.turns += len(record.turns)
        for turn in record.turns:
            stats.characters += len(turn.text) + len(turn.input)
        self.domains[record.domain] += 1
        for warning in record.warnings:
            self.report(Problem(source.path, source.line, source.index, WARNING, warning.code, warning.message))
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
        screened = screen_lines(lines) if not self.reserved else ScreenedLines.none(len(lines))
        index, start = 0, 0
        for end in [at for at, record in enumerate(screened.records) if record is None] + [len(lines)]:
            if end > start:  # consecutive screened records: one run of lines
                self._add_line(len(self.prompt_keys), chunk.first_line + start)
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
        stats.characters += screened.characters
        self.domains.update(screened.domains)

    def check(self, sources: Iterable[SourceRecord]) -> Iterator[tuple[SourceRecord, ParsedRecord]]:
        """Check and count every record; yield the valid ones."""
        for source, record in valid_records(sources, self.reject):
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
        for start, offset in zip(other.run_starts, other.run_offsets):
            self._add_line(base + start, start + offset + line_offset)
        self.prompt_keys.extend(other.prompt_keys)
        self.answer_keys.extend(other.answer_keys)
        if self.domain_ids is not None:
            self._add_domains(other.domain_names[number] for number in other.domain_ids)

    def report_duplicates(self) -> None:
        """Warn about repeated records and about one prompt given different answers."""
        starts = list(self.first_ordinal.values())
        for repeat in find_repeats(self.prompt_keys, self.answer_keys):
            path, line = self.locate(repeat.ordinal, starts)
            where = "{}:{}".format(*self.locate(repeat.earlier, starts))
            if repeat.kind == DUPLICATE:
                message = f"duplicate of the record at {where}"
            else:
                message = f"same prompt as the record at {where}, with a different answer"
            self.report(Problem(path, line, None, WARNING, repeat.kind, message))


_BLOCK = 1 << 16


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
    for start in range(0, len(prompts), _BLOCK):  # in blocks: temporaries stay small
        block = prompts[start : start + _BLOCK]
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


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cycle collector: parsed records hold no cycles, and its passes over millions of
    short-lived dicts cost a fifth of the checking time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class TokenStats:
    """Token lengths through the prompt core, and the records longer than `max_length`."""

    model: str
    template: str
    max_length: int | None
    lengths: array = field(default_factory=lambda: array("I"))
    truncated: int = 0

    def to_json(self) -> dict[str, Any]:
        import numpy as np

        lengths = np.frombuffer(self.lengths, dtype=np.uint32)
        percentiles = {
            name: int(np.percentile(lengths, q, method="higher")) if len(lengths) else None
            for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        }
        return {
            "model": self.model, "template": self.template, "max_length": self.max_length,
            "records": len(lengths), **percentiles, "truncated": self.truncated,
        }


class TokenCounter:
    """Encodes valid records in batches and reports those that `max_length` would cut."""

    BATCH = 256

    def __init__(self, prompt_tokenizer: Any, stats: TokenStats, tally: Tally) -> None:
        self.prompt_tokenizer = prompt_tokenizer
        self.stats = stats
        self.tally = tally
        self.pending: list[tuple[SourceRecord, Conversation]] = []

    def add(self, source: SourceRecord, conversation: Conversation) -> None:
        self.pending.append((source, conversation))
        if len(self.pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        encoded = self.prompt_tokenizer.encode_training_batch([c for _, c in self.pending])
        limit = self.stats.max_length
        for (source, _), example in zip(self.pending, encoded):
            self.stats.lengths.append(len(example.input_ids))
            if limit is not None and len(example.input_ids) > limit:
                lost = sum(label != IGNORE_INDEX for label in example.labels[limit:])
                self.stats.truncated += 1
                self.tally.report(Problem(
                    source.path, source.line, source.index, WARNING, "truncated",
                    f"{len(example.input_ids)} tokens, more than --max-length {limit}: "
                    f"{lost} of {example.num_loss_tokens} answer tokens would be lost",
                ))
        self.pending = []


@dataclass
class ValidationReport:
    tally: Tally
    strict: bool
    tokens: TokenStats | None = None

    @property
    def errors(self) -> int:
        return sum(n for (severity, _), n in self.tally.counts.items() if severity == ERROR)

    @property
    def warnings(self) -> int:
        return sum(n for (severity, _), n in self.tally.counts.items() if severity == WARNING)

    @property
    def records(self) -> int:
        return sum(stats.records for stats in self.tally.files.values())

    @property
    def ok(self) -> bool:
        return self.errors == 0 and not (self.strict and self.warnings)

    def to_json(self) -> dict[str, Any]:
        files = [self.tally.files[path].to_json() for path in self.tally.paths]
        totals = {name: sum(f[name] for f in files) for name in ("records", "valid", "errors", "warnings", "turns", "characters")}
        totals["shapes"] = {shape: sum(f["shapes"][shape] for f in files) for shape in SHAPES}
        return {
            "ok": self.ok,
            "strict": self.strict,
            "files": files,
            "totals": totals,
            "domains": {d: n for d, n in self.tally.domains.most_common() if d != NO_DOMAIN},
            "no_domain": self.tally.domains[NO_DOMAIN],
            "problem_counts": {f"{severity}:{code}": n for (severity, code), n in sorted(self.tally.counts.items())},
            "problems": [asdict(problem) for problem in self.tally.problems],
            "problems_listed": len(self.tally.problems),
            "tokens": self.tokens.to_json() if self.tokens else None,
        }


def _check_lines(path: Path, tally: Tally, progress: Callable[[int], None], pool: ProcessPoolExecutor | None, workers: int) -> None:
    """Check a JSON-lines file range by range, in the pool's processes if there is a pool (each
    reads its own range, so no data passes between processes), merging in file order. At most two
    ranges per worker are in flight.
    """
    pending: deque[tuple[Callable[[], tuple[Tally, int]], int]] = deque()
    records_before = lines_before = 0

    def merge_oldest() -> None:
        nonlocal records_before, lines_before
        result, size = pending.popleft()
        range_tally, lines = result()
        tally.merge(range_tally, records_before, lines_before)
        records_before += sum(stats.records for stats in range_tally.files.values())
        lines_before += lines
        progress(size)

    size = Path(path).stat().st_size
    for start in range(0, size, RANGE_BYTES):
        stop = min(start + RANGE_BYTES, size)
        if pool is None:
            result = functools.partial(_check_range, path, start, stop, tally.empty_like())
        else:
            result = pool.submit(_check_range, path, start, stop, tally.empty_like()).result
        pending.append((result, stop - start))
        if len(pending) >= 2 * workers:
            merge_oldest()
    while pending:
        merge_oldest()


def _check_range(path: Path, start: int, stop: int, tally: Tally) -> tuple[Tally, int]:
    """Check the lines that begin in bytes [start, stop) of a file into an empty tally (in a
    worker process, or in this one); with the number of lines, so later lines can be numbered."""
    chunk = line_range(path, start, stop)
    with _no_cyclic_gc():
        tally.count_lines(chunk)
    return tally, chunk.data.count(b"\n") + (not chunk.data.endswith(b"\n") and bool(chunk.data))


def _sizes(paths: Sequence[Path]) -> list[int]:
    sizes = []
    for path in paths:
        try:
            sizes.append(Path(path).stat().st_size)
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file") from None
    return sizes


def validate(
    paths: Sequence[Path],
    *,
    model: str | None = None,
    template_name: str | None = None,
    max_length: int | None = None,
    strict: bool = False,
    max_listed: int = 100,
    workers: int | None = None,
    trust_remote_code: bool = False,
    progress: Callable[[int], None] = lambda size: None,
) -> ValidationReport:
    """Check every record of `paths`; with `model`, also token lengths and truncation.

    `progress` is called with the number of bytes finished, for a progress bar.
    `workers=None` uses one process per core for large JSON-lines input (without a model).
    """
    if model is None and (max_length is not None or template_name is not None):
        raise UsageError("--max-length and --template only matter with --model (the tokenizer to count with)")
    tally = Tally(max_listed)
    counter = _token_counter(model, template_name, max_length, trust_remote_code, tally) if model else None
    tally_files(paths, tally, workers=workers, progress=progress, counter=counter)
    if counter is not None and counter.pending:
        counter.flush()
    for stats in tally.files.values():
        if stats.records == 0:  # a truncated download or the wrong file, most likely
            tally.report(Problem(stats.path, 1, None, WARNING, "empty-file", "the file holds no records"))
    tally.report_duplicates()
    return ValidationReport(tally, strict, counter.stats if counter else None)


def tally_files(
    paths: Sequence[Path],
    tally: Tally,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] = lambda size: None,
    counter: TokenCounter | None = None,
) -> None:
    """Check and count every record of `paths` into `tally`, in one pass over each file.

    `workers=None` uses one process per core for large JSON-lines input (not with a `counter`,
    which needs every record here).
    """
    refuse_repeated_inputs(paths)
    sizes = _sizes(paths)
    cores = os.cpu_count() or 1
    if workers is None:
        workers = cores if sum(sizes) >= PARALLEL_MIN_BYTES else 1
    workers = min(workers, cores)  # more processes than cores only cost memory (and a huge number exhausts it)
    with contextlib.ExitStack() as stack:
        pool = None
        if workers > 1 and counter is None and "fork" in multiprocessing.get_all_start_methods():
            # fork: the workers share this process's string-hash secret (see checked.conversation_keys)
            context = multiprocessing.get_context("fork")
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers, mp_context=context))
        for path, size in zip(paths, sizes):
            tally.file(str(path))  # listed even when it holds no record
            try:
                layout = file_layout(path)
            except ForeignText as error:  # one invalid "record" that says what the file is
                tally.reject(SourceRecord(error.path, 1, 0, ""), Problem(error.path, 1, 0, ERROR, "not-utf8", error.reason))
                continue
            if counter is None and layout == LINES:
                _check_lines(path, tally, progress, pool, workers if pool else 1)
                continue
            with _no_cyclic_gc():
                for source, record in tally.check(read_records(path)):
                    if counter is not None:
                        counter.add(source, record.conversation)
            progress(size)


def _token_counter(model: str, template_name: str | None, max_length: int | None, trust_remote_code: bool, tally: Tally) -> TokenCounter:
    from yayi_cli.models import context_length, load_tokenizer
    from yayi_cli.prompt import PromptTokenizer, add_markers, resolve_template

    template, _ = resolve_template(template_name, model)
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    add_markers(tokenizer)
    limit = max_length if max_length is not None else context_length(model, tokenizer)
    stats = TokenStats(model, template.name, limit)
    prompt_tokenizer = PromptTokenizer(template, tokenizer)
    tally.reserved = prompt_tokenizer.reserved
    return TokenCounter(prompt_tokenizer, stats, tally)


def print_report(report: ValidationReport, console: Any) -> None:
    """Problems first, one `file:line: severity: reason` line each, then the statistics tables."""
    from rich.markup import escape
    from rich.table import Table

    for problem in report.tally.problems:
        colour = "red" if problem.severity == ERROR else "yellow"
        console.print(
            f"{escape(problem.path)}:{problem.line}: [{colour}]{problem.severity}[/]: {escape(problem.message)}",
            highlight=False, soft_wrap=True,
        )
    unlisted = report.errors + report.warnings - len(report.tally.problems)
    if unlisted:
        console.print(f"[dim]... and {unlisted} more not listed (raise --max-errors to list them)[/]")

    stats = list(report.tally.files.values())
    files = Table(title="Records", title_justify="left")
    files.add_column("")
    for column in stats:
        files.add_column(escape(column.path), justify="right", overflow="fold")
    for row in ("records", "valid", "errors", "warnings", *SHAPES, "turns", "characters"):
        values = [column.shapes[row] if row in SHAPES else getattr(column, row) for column in stats]
        files.add_row(row, *(str(value) for value in values))
    console.print(files)

    domains = report.tally.domains
    if set(domains) - {NO_DOMAIN}:
        table = Table(title="Domains (【…】 prefix of the first message)", title_justify="left")
        table.add_column("domain")
        table.add_column("records", justify="right")
        for domain, count in domains.most_common():
            if domain != NO_DOMAIN:
                table.add_row(escape(domain), str(count))
        if domains[NO_DOMAIN]:
            table.add_row("[dim](none)[/]", str(domains[NO_DOMAIN]))
        console.print(table)

    if report.tokens is not None:
        tokens = report.tokens.to_json()
        table = Table(title=f"Tokens ({escape(tokens['model'])}, template {tokens['template']})", title_justify="left")
        for column in ("p50", "p90", "p99", "max", "max_length", "truncated"):
            table.add_column(column, justify="right")
        table.add_row(*(str(tokens[column]) for column in ("p50", "p90", "p99", "max", "max_length", "truncated")))
        console.print(table)
        if tokens["max_length"] is None:
            console.print("[yellow]the model's context length is unknown: pass --max-length to check truncation[/]")

    verdict = "[green]valid[/]" if report.ok else "[red]invalid[/]"
    under = " (--strict: warnings count as errors)" if report.strict and report.warnings else ""
    console.print(
        f"{report.records} records in {len(report.tally.files)} file(s): {report.errors} errors, "
        f"{report.warnings} warnings{under}: {verdict}", highlight=False,
    )
