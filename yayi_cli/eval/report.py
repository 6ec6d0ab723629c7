"""What `yayi eval` found, as the --json document and as the tables it prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from yayi_cli.core.reader import sha256_of
from yayi_cli.eval.comparison import GroupComparison, print_comparison
from yayi_cli.eval.options import EvalOptions


@dataclass
class EvalReport:
    options: EvalOptions
    template: str
    counts: dict[str, int]
    metrics: dict[str, float]
    groups: dict[str, dict[str, Any]]
    timings: dict[str, float]
    predictions: list[dict[str, Any]] = field(default_factory=list)
    compared_with: dict[str, Any] = field(default_factory=dict)
    """--task preference: the reference and beta, and where each came from."""
    benchmark: dict[str, Any] = field(default_factory=dict)
    """--benchmark: the split, protocol, shots, categories and speed (eval/choice/run.py)."""
    data: list[dict[str, Any]] = field(default_factory=list)
    """What was read, with its hash (by default each --data file's)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.options.model,
            "template": self.template,
            "task": f"benchmark {self.options.benchmark}" if self.benchmark else self.options.task,
            **self.compared_with,
            **({"benchmark": self.benchmark} if self.benchmark else {}),
            "data": self.data or [{"path": str(p), "sha256": sha256_of(p)} for p in self.options.data],
            "counts": self.counts,
            "metrics": self.metrics,
            "groups": self.groups,
            "timings": self.timings,
            "options": {k: v for k, v in asdict(self.options).items() if k in RUN_OPTIONS},
        }


RUN_OPTIONS = ("task", "benchmark", "protocol", "split", "subjects", "shots", "generate", "sample", "max_new_tokens", "batch_size", "max_samples", "max_length", "seed",
               "device", "dtype", "load_in_8bit", "template", "trust_remote_code")
"""The options that decide the numbers, recorded in the report (not where it was written)."""


@dataclass
class EvalOutcome:
    """A finished `yayi eval`: the report, the baseline it was compared with, and the gates that failed."""

    report: EvalReport
    baseline: dict[str, float | None] | None
    failures: list[str]
    comparison: GroupComparison | None = None
    """With --baseline: each group both reports have, on one metric."""

    def to_json(self) -> dict[str, Any]:
        compared = {"comparison": self.comparison.to_json()} if self.comparison else {}
        return self.report.to_json() | compared | {"gate": {"passed": not self.failures, "failures": self.failures}}


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def print_report(outcome: EvalOutcome, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    report, baseline = outcome.report, outcome.baseline
    table = Table(title=f"{escape(report.options.model)} (template {report.template})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if baseline is not None:
        table.add_column("baseline", justify="right")
        table.add_column("change", justify="right")
    for name, value in report.metrics.items():
        row = [name, _number(value)]
        if baseline is not None:
            before = baseline.get(name)
            change = "" if before is None or value is None else f"{value - before:+.4f}"
            row += ["" if before is None else _number(before), change]
        table.add_row(*row)
    if not report.benchmark or baseline is not None:  # a benchmark's numbers are in its category table
        console.print(table)
    if report.compared_with:
        compared = report.compared_with
        console.print(f"reference {escape(compared['reference'])} ({escape(compared['reference_from'])}), "
                      f"beta {compared['beta']:g} ({escape(compared['beta_from'])})", highlight=False)
    if report.groups:
        kind = "subject" if report.options.task == "choice" or report.benchmark else "domain"
        groups = Table(title=f"Per {kind}", title_justify="left")
        columns = list(next(iter(report.groups.values())))
        groups.add_column(kind)
        for column in columns:
            groups.add_column(column, justify="right")
        for name, values in report.groups.items():
            groups.add_row(escape(name), *(_number(values[c]) if values[c] is None or isinstance(values[c], float)
                                           else str(values[c]) for c in columns))
        console.print(groups)
    if outcome.comparison is not None:
        print_comparison(outcome.comparison, console)
    if report.benchmark:
        from yayi_cli.eval.choice.report import print_benchmark

        print_benchmark(report, console)
    counts = ", ".join(f"{value} {name.replace('_', ' ')}" for name, value in report.counts.items())
    console.print(f"[dim]{counts}; " + ", ".join(f"{k} {v:.1f}" for k, v in report.timings.items()) + "[/]", highlight=False)
