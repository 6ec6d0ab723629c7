"""`yayi data validate`: every problem in instruction data, by file and line, in one streaming pass.

The pass itself is `data.scan` (into a `data.tally.Tally`); this module adds the token lengths
with --model, the report and its printing. A preference record's length is its prompt and its
longest answer, as the preference trainers see it (`preference.encode_preferences`); a prompt
record's is its question as the model is asked it.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from yayi_cli.core.preference_tokens import EncodedPreference, encode_preferences
from yayi_cli.core.prompt import IGNORE_INDEX, Encoded
from yayi_cli.core.reader import SourceRecord
from yayi_cli.core.record_files import ERROR, WARNING, Problem
from yayi_cli.core.records import KIND_NAMES, NO_DOMAIN, SHAPES, ParsedRecord, Record
from yayi_cli.data.options import ValidateOptions
from yayi_cli.data.scan import tally_files
from yayi_cli.data.tally import Tally


TOKEN_COLUMNS = ("p50", "p90", "p99", "max", "max_length", "truncated", "no_answer_tokens")


@dataclass
class TokenStats:
    """Token lengths through the prompt core, the records longer than `max_length`, and among
    them those that keep no answer token (their prompt alone fills `max_length`)."""

    model: str
    template: str
    max_length: int | None
    lengths: array = field(default_factory=lambda: array("I"))
    truncated: int = 0
    no_answer_tokens: int = 0

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
            "no_answer_tokens": self.no_answer_tokens,
        }


class Measured(NamedTuple):
    """A record's length in tokens, its answer tokens, and how many of those `max_length` cuts off."""

    length: int
    answer_tokens: int
    lost: int

    @property
    def keeps_no_answer(self) -> bool:
        """Every answer token is cut off: the prompt alone fills `max_length`, the record trains nothing."""
        return self.lost == self.answer_tokens


def measure_sft(example: Encoded, limit: int | None) -> Measured:
    """One sequence: the answers are its tokens with labels, the limit cuts its end."""
    lost = sum(label != IGNORE_INDEX for label in example.labels[limit:]) if limit is not None else 0
    return Measured(len(example.input_ids), example.num_loss_tokens, lost)


def measure_preference(example: EncodedPreference, limit: int | None) -> Measured:
    """Each answer follows the prompt in a sequence of its own, cut at `limit` on its own."""
    prompt, answers = len(example.prompt_ids), [len(ids) for ids in example.answer_ids]
    lost = sum(min(answer, max(prompt + answer - limit, 0)) for answer in answers) if limit is not None else 0
    return Measured(prompt + max(answers), sum(answers), lost)


class TokenCounter:
    """Encodes valid records in batches and reports those that `max_length` would cut."""

    BATCH = 256

    def __init__(self, prompt_tokenizer: Any, stats: TokenStats, tally: Tally) -> None:
        self.prompt_tokenizer = prompt_tokenizer
        self.stats = stats
        self.tally = tally
        self.pending: list[tuple[SourceRecord, ParsedRecord]] = []

    def add(self, source: SourceRecord, record: ParsedRecord) -> None:
        self.pending.append((source, record))
        if len(self.pending) >= self.BATCH:
            self.flush()

    def measured(self) -> list[Measured]:
        """The pending records measured, in order (one data set holds one kind; a mixed one is
        measured too, each record the way its kind trains)."""
        limit = self.stats.max_length
        if self.tally.prompts:  # the question as the model is asked it, with no answer to lose
            return [Measured(len(self.prompt_tokenizer.encode_inference(record.conversation)), 0, 0)
                    for _, record in self.pending]
        sft = [record.conversation for _, record in self.pending if not record.answers]
        preference = [Record.of(source, record) for source, record in self.pending if record.answers]
        encoded_sft = iter(self.prompt_tokenizer.encode_training_batch(sft) if sft else [])
        encoded_preference = iter(encode_preferences(preference, self.prompt_tokenizer) if preference else [])
        return [measure_preference(next(encoded_preference), limit) if record.answers
                else measure_sft(next(encoded_sft), limit) for _, record in self.pending]

    def flush(self) -> None:
        limit = self.stats.max_length
        for (source, _), measured in zip(self.pending, self.measured()):
            self.stats.lengths.append(measured.length)
            if limit is not None and measured.length > limit:
                self.stats.truncated += 1
                self.stats.no_answer_tokens += measured.keeps_no_answer
                self.tally.report(truncation(source, measured, limit))
        self.pending = []


def truncation(source: SourceRecord, measured: Measured, limit: int) -> Problem:
    """The warning for a record longer than `limit`: the answer tokens it loses, or that it keeps none (a prompt
    record has none: it leaves the model no room to answer)."""
    if not measured.answer_tokens:
        return Problem(source.path, source.line, source.index, WARNING, "prompt-too-long",
                       f"the prompt alone is {measured.length} tokens, more than --max-length {limit}: "
                       "no room is left for the answer")
    if measured.keeps_no_answer:
        return Problem(source.path, source.line, source.index, WARNING, "no-answer-tokens",
                       f"{measured.length} tokens, and the prompt alone fills --max-length {limit}: none of the "
                       f"{measured.answer_tokens} answer tokens is left, so the record trains nothing")
    return Problem(source.path, source.line, source.index, WARNING, "truncated",
                   f"{measured.length} tokens, more than --max-length {limit}: "
                   f"{measured.lost} of {measured.answer_tokens} answer tokens would be lost")


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
        totals["kinds"] = {kind: sum(f["kinds"][kind] for f in files) for kind in KIND_NAMES}
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


def counted(number: int, noun: str) -> str:
    """`1 error`, `2 errors`."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def validate(options: ValidateOptions, *, progress: Callable[[int], None] = lambda size: None) -> ValidationReport:
    """Check every record of `options.files`; with a model, also token lengths and truncation.

    `progress` is called with the number of bytes finished, for a progress bar.
    """
    options.check()
    tally = Tally(options.max_errors, prompts=options.prompts)
    counter = _token_counter(options, tally) if options.model else None
    tally_files(options.files, tally, workers=options.workers, progress=progress, each_valid=counter.add if counter else None)
    if counter is not None and counter.pending:
        counter.flush()
    none_at_all = not any(stats.records for stats in tally.files.values())  # train and eval refuse that
    for stats in tally.files.values():
        if stats.records == 0:  # a truncated download or the wrong file, most likely
            tally.report(Problem(stats.path, 1, None, ERROR if none_at_all else WARNING, "empty-file",
                                 "the file holds no records" + ("; train and eval need at least one" if none_at_all else "")))
    for problem in tally.mixed_kinds() + tally.mixed_fields():
        tally.report(problem)
    tally.report_duplicates()
    return ValidationReport(tally, options.strict, counter.stats if counter else None)


def _token_counter(options: ValidateOptions, tally: Tally) -> TokenCounter:
    from yayi_cli.models.loading import load_for_task

    loaded = load_for_task(options.model, template=options.template, trust_remote_code=options.trust_remote_code,
                           add_markers=True, model_weights=False)
    limit = options.max_length if options.max_length is not None else loaded.context_length()
    tally.reserved = loaded.prompt_tokenizer.reserved
    return TokenCounter(loaded.prompt_tokenizer, TokenStats(options.model, loaded.template.name, limit), tally)


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
    for row in ("records", "valid", "errors", "warnings", *SHAPES, *KIND_NAMES, "turns", "characters"):
        files.add_row(row, *(str(column.count(row)) for column in stats))
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
        for column in TOKEN_COLUMNS:
            table.add_column(column, justify="right")
        table.add_row(*(str(tokens[column]) for column in TOKEN_COLUMNS))
        console.print(table)
        if tokens["max_length"] is None:
            console.print("[yellow]the model's context length is unknown: pass --max-length to check truncation[/]")

    verdict = "[green]valid[/]" if report.ok else "[red]invalid[/]"
    under = " (--strict: warnings count as errors)" if report.strict and report.warnings else ""
    console.print(
        f"{counted(report.records, 'record')} in {counted(len(report.tally.files), 'file')}: "
        f"{counted(report.errors, 'error')}, {counted(report.warnings, 'warning')}{under}: {verdict}", highlight=False,
    )
