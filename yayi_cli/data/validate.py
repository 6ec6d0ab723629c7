"""`yayi data validate`: every problem in instruction data, by file and line, in one streaming pass.

The pass itself is `data.scan` (into a `data.tally.Tally`); this module adds the token lengths
with --model, the report and its printing.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from yayi_cli.data.checked import ERROR, WARNING, Problem
from yayi_cli.data.options import ValidateOptions
from yayi_cli.data.reader import SourceRecord
from yayi_cli.data.scan import tally_files
from yayi_cli.data.tally import Tally
from yayi_cli.prompt import IGNORE_INDEX, Conversation
from yayi_cli.records import NO_DOMAIN, SHAPES, ParsedRecord


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

    def add(self, source: SourceRecord, record: ParsedRecord) -> None:
        self.pending.append((source, record.conversation))
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


def validate(options: ValidateOptions, *, progress: Callable[[int], None] = lambda size: None) -> ValidationReport:
    """Check every record of `options.files`; with a model, also token lengths and truncation.

    `progress` is called with the number of bytes finished, for a progress bar.
    """
    options.check()
    tally = Tally(options.max_errors)
    counter = _token_counter(options, tally) if options.model else None
    tally_files(options.files, tally, workers=options.workers, progress=progress, each_valid=counter.add if counter else None)
    if counter is not None and counter.pending:
        counter.flush()
    for stats in tally.files.values():
        if stats.records == 0:  # a truncated download or the wrong file, most likely
            tally.report(Problem(stats.path, 1, None, WARNING, "empty-file", "the file holds no records"))
    tally.report_duplicates()
    return ValidationReport(tally, options.strict, counter.stats if counter else None)


def _token_counter(options: ValidateOptions, tally: Tally) -> TokenCounter:
    from yayi_cli.loading import load_for_task

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
