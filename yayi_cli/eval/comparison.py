"""A run's groups (domains, subjects) against a baseline report's: the rows, a bar chart on the terminal (Rich),
and the same as a picture (`--plot`, matplotlib)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


COMPARED_METRICS = ("accuracy", "loss")
"""What a group is compared on: the first of these that both reports have for their groups."""


@dataclass(frozen=True)
class GroupComparison:
    metric: str
    rows: list[tuple[str, float, float]]
    """(group, baseline value, this run's value), for the groups both reports have."""

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "groups": [{"group": name, "baseline": before, "value": now}
                                                  for name, before, now in self.rows]}


def baseline_groups(path: Path) -> dict[str, dict[str, Any]]:
    """The groups of a report `yayi eval --output` wrote ({} when it has none; its metrics were checked already)."""
    groups = json.loads(path.read_text(encoding="utf-8")).get("groups")
    return groups if isinstance(groups, dict) else {}


def _number(values: dict[str, Any], metric: str) -> float | None:
    value = values.get(metric) if isinstance(values, dict) else None
    return float(value) if type(value) in (int, float) and math.isfinite(value) else None


def compare_groups(groups: dict[str, dict[str, Any]], baseline: dict[str, dict[str, Any]]) -> GroupComparison | None:
    """The groups both reports have, on the first metric of COMPARED_METRICS both give; None when there is none."""
    shared = [name for name in groups if name in baseline]
    for metric in COMPARED_METRICS:
        rows = [(name, _number(baseline[name], metric), _number(groups[name], metric)) for name in shared]
        rows = [(name, before, now) for name, before, now in rows if before is not None and now is not None]
        if rows:
            return GroupComparison(metric, rows)
    return None


def print_comparison(comparison: GroupComparison, console: Any, *, width: int = 24) -> None:
    from rich.bar import Bar
    from rich.markup import escape
    from rich.table import Table

    largest = max(max(before, now) for _, before, now in comparison.rows) or 1.0
    table = Table(title=f"{comparison.metric} per group, against the baseline", title_justify="left")
    for column in ("group", "baseline", "", "this run", "", "change"):
        table.add_column(column, justify="left" if column in ("group", "") else "right")
    for name, before, now in comparison.rows:
        table.add_row(escape(name), f"{before:.4f}", Bar(largest, 0, before, width=width, color="grey50"),
                      f"{now:.4f}", Bar(largest, 0, now, width=width, color="cyan"), f"{now - before:+.4f}")
    console.print(table)


def draw_comparison(comparison: GroupComparison) -> Any:
    """A matplotlib Figure of the same bars: each group's baseline and this run side by side."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    names = [name for name, _, _ in comparison.rows]
    figure = Figure(figsize=(8, 1.2 + 0.45 * len(names)), layout="constrained")
    axis = figure.subplots()
    places = range(len(names))
    axis.barh([place + 0.2 for place in places], [before for _, before, _ in comparison.rows], height=0.4,
              color="0.6", label="baseline")
    axis.barh([place - 0.2 for place in places], [now for _, _, now in comparison.rows], height=0.4,
              color="tab:blue", label="this run")
    axis.set_yticks(list(places), names)
    axis.invert_yaxis()
    axis.set_xlabel(comparison.metric)
    axis.set_title(f"{comparison.metric} per group, against the baseline")
    axis.legend()
    return figure
