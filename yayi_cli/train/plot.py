"""`yayi plot`: the training curves of one or more runs, overlaid and labelled by run (train/curves.py draws)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli.runtime.atomic import refuse_existing, write_figure_atomic
from yayi_cli.runtime.packages import require_package
from yayi_cli.train.curves import RunSeries, draw_curves, read_runs
from yayi_cli.train.options import PlotOptions


@dataclass
class PlotReport:
    output: Path
    runs: list[RunSeries]

    def to_json(self) -> dict[str, Any]:
        return {"output": str(self.output), "runs": [run.to_json() for run in self.runs]}


def plot(options: PlotOptions) -> PlotReport:
    """Read every run first (a missing or damaged metrics.jsonl is one error line), then draw and write."""
    options.check()
    require_package("matplotlib", "yayi plot", extra="plot")
    refuse_existing(options.output, options.force)
    runs = read_runs([Path(run) for run in options.runs])
    write_figure_atomic(draw_curves(runs), Path(options.output), replace=options.force)
    return PlotReport(Path(options.output), runs)


def print_report(report: PlotReport, console: Any) -> None:
    from rich.markup import escape

    for run in report.runs:
        last = run.points.get("loss", [])[-1:]
        latest = f"step {last[0][0]}, loss {last[0][1]:.4f}" if last else "nothing logged yet"
        console.print(f"{escape(run.label)}: {latest}", highlight=False)
    console.print(f"wrote {escape(str(report.output))}", highlight=False)
