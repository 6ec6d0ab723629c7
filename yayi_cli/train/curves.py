"""Training curves from a run's metrics.jsonl: the series, and the picture (OUTPUT/curves.png, `yayi plot`).

The series are read from the events train/progress.py writes, so a run that is still going (its last line cut
mid-write) and a resumed run (whose steps after the checkpoint it resumed from were done again) read as they
are now. matplotlib is imported only to draw, with the headless Agg backend.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yayi_cli.models.run_files import METRICS_FILE
from yayi_cli.runtime.atomic import write_figure_atomic
from yayi_cli.runtime.errors import DataError, UsageError


CURVES_FILE = "curves.png"
SMOOTHING = 0.6
"""The weight of the past in the smoothed train loss (an exponential moving average, debiased at the start)."""
MAX_EPOCH_LINES = 20
"""Above this many epochs, their lines would hide the curves: none are drawn."""
PANELS = {
    "loss": ("Loss", "loss"),
    "learning_rate": ("Learning rate", "learning rate"),
    "grad_norm": ("Gradient norm", "L2 norm"),
    "tokens_per_second": ("Throughput", "tokens/s (all ranks)"),
    "rewards/accuracies": ("Reward accuracy", "chosen preferred (fraction)"),
    "rewards/margins": ("Reward margin", "chosen - rejected reward"),
    "reward": ("Reward", "mean reward of the sampled answers"),
}
"""Each panel's series key, title and y-axis label; the reward panels appear only for runs that log them (DPO and
KTO: accuracy and margin; GRPO: the reward)."""


@dataclass
class RunSeries:
    """One run's curves: for each key, (step, value) points in step order; the steps where an epoch began."""

    label: str
    points: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    eval_points: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    epoch_starts: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"run": self.label, "train": self.points, "eval": self.eval_points, "epoch_starts": self.epoch_starts}


def read_events(run: Path) -> list[dict[str, Any]]:
    """The events of RUN/metrics.jsonl; a last line cut mid-write (a run still going) is left out."""
    path = run / METRICS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"{run}: no {METRICS_FILE} here; give the output folder of a `yayi train` run") from None
    events = []
    for number, line in enumerate(lines, 1):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise DataError(f"{path}:{number}: not a JSON event; the file was edited or damaged") from None
    return events


def run_series(label: str, events: list[dict[str, Any]]) -> RunSeries:
    """The curves the events draw. A `begin` at step S (a resumed launch) drops the points after S: they were
    trained again from the checkpoint."""
    series = RunSeries(label)
    last_epoch = None
    for event in events:
        kind, step = event.get("event"), event.get("step")
        if kind == "begin":
            for points in (*series.points.values(), *series.eval_points.values()):
                points[:] = [(s, v) for s, v in points if s <= step]
            series.epoch_starts = [s for s in series.epoch_starts if s <= step]
            last_epoch = None
        elif kind in ("log", "eval"):
            target = series.points if kind == "log" else series.eval_points
            for key in PANELS:
                value = event.get("eval_loss" if kind == "eval" and key == "loss" else key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    target.setdefault(key, []).append((step, float(value)))
            epoch = event.get("epoch")
            if kind == "log" and isinstance(epoch, (int, float)):
                if last_epoch is not None and math.floor(epoch) > math.floor(last_epoch):
                    series.epoch_starts.append(step)
                last_epoch = epoch
    return series


def read_runs(runs: list[Path]) -> list[RunSeries]:
    """Each run's series, labelled by its folder's name (its path where two names are the same)."""
    names = [run.resolve().name for run in runs]
    return [run_series(str(run) if names.count(name) > 1 else name, read_events(run)) for run, name in zip(runs, names)]


def smoothed(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """An exponential moving average, debiased so that the first points are not pulled toward zero."""
    average, out = 0.0, []
    for count, value in enumerate(values, 1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** count))
    return out


def draw_curves(runs: list[RunSeries]) -> Any:
    """A matplotlib Figure: a panel per series that any run has, each run in its own colour, steps on x, each
    epoch's start a dotted line. Returned unsaved, so that callers (and tests) can look at its axes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    keys = [key for key in PANELS if any(run.points.get(key) or run.eval_points.get(key) for run in runs)]
    columns = 2
    rows = max(1, math.ceil(len(keys) / columns))
    figure = Figure(figsize=(6.4 * columns, 3.6 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    colours = matplotlib.colormaps["tab10"]
    for axis, key in zip(axes, keys):
        title, unit = PANELS[key]
        for number, run in enumerate(runs):
            colour = colours(number % 10)
            label = run.label if len(runs) > 1 else "train"
            if points := run.points.get(key):
                steps, values = zip(*points)
                if key == "loss":
                    axis.plot(steps, values, color=colour, alpha=0.25, linewidth=1)
                    values = smoothed(list(values))
                axis.plot(steps, values, color=colour, linewidth=1.6, label=label + (" (smoothed)" if key == "loss" else ""))
            if eval_points := run.eval_points.get(key):
                steps, values = zip(*eval_points)
                axis.plot(steps, values, color=colour, linestyle="--", marker="o", markersize=4,
                          label=(run.label + " eval" if len(runs) > 1 else "eval"))
            for step in run.epoch_starts if len(run.epoch_starts) <= MAX_EPOCH_LINES else ():
                axis.axvline(step, color=colour, linestyle=":", linewidth=0.8, alpha=0.5)
        axis.set_title(title)
        marked = any(0 < len(run.epoch_starts) <= MAX_EPOCH_LINES for run in runs)
        axis.set_xlabel("step (dotted: an epoch begins)" if marked else "step")
        axis.set_ylabel(unit)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    for axis in axes[len(keys):]:
        axis.set_visible(False)
    return figure


def write_run_curves(output: Path) -> Path | None:
    """OUTPUT/curves.png from OUTPUT/metrics.jsonl (on the first rank, at each checkpoint and at the end); None when
    nothing is logged yet."""
    runs = [run_series("train", read_events(output))]
    if not runs[0].points:
        return None
    return write_figure_atomic(draw_curves(runs), output / CURVES_FILE)
