"""`--fail-if` gates and `--baseline` regressions: what makes `yayi eval` fit for a CI step.

Every metric a run can report is known before the model loads (`planned_metrics`), so a gate on a metric
the run cannot measure is refused at once instead of failing after the run.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from yayi_cli.eval.options import EvalOptions
from yayi_cli.runtime.errors import UsageError


LOWER_IS_BETTER = frozenset({"loss", "perplexity"})
METRIC_ALIASES = {"ppl": "perplexity", "em": "exact_match", "acc": "accuracy", "rouge": "rouge_l", "bleu": "bleu4"}
MEASURED_WITH = {"loss": "--task lm", "perplexity": "--task lm", "exact_match": "--generate", "rouge_l": "--generate",
                 "bleu4": "--generate", "accuracy": "--task choice", "pref_acc": "--task preference",
                 "margin": "--task preference", "policy_pref_acc": "--task preference", "reward": "--task reward",
                 "ended": "--task reward"}
"""Every metric `yayi eval` reports outside --benchmark, with the option it needs (the order reports use)."""


def benchmark_metrics() -> dict[str, str]:
    """Every metric of --benchmark runs (ceval.avg, cmmlu.stem.acc, ...), with the option it needs."""
    from yayi_cli.eval.choice.report import planned_metric_names
    from yayi_cli.eval.choice.subjects import BENCHMARKS

    return {name: f"--benchmark {key}" for key, benchmark in BENCHMARKS.items() for name in planned_metric_names(benchmark)}


def known_metrics() -> dict[str, str]:
    return MEASURED_WITH | benchmark_metrics()


_GATE = re.compile(r"^\s*([a-z_0-9.]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Gate:
    """`metric op value`: the run fails when the comparison holds, as in `--fail-if "ppl>12.5"`."""

    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Gate:
        match = _GATE.match(text.lower())
        if match is None:
            raise UsageError(f"--fail-if {text!r}: write METRIC OP NUMBER, for example \"ppl>12.5\" or \"rouge_l<0.3\"")
        name, op, value = match.groups()
        metric = METRIC_ALIASES.get(name, name)
        if metric not in known_metrics():
            raise UsageError(f"--fail-if {text!r}: unknown metric {name!r}; known: {_known_metrics_text()}")
        try:
            return cls(metric, op, float(value))
        except ValueError:
            raise UsageError(f"--fail-if {text!r}: {value!r} is not a number") from None

    def fails(self, metrics_found: dict[str, float | None]) -> str | None:
        """Why the gate fails, or None; an undefined (null) or missing metric fails every gate on it."""
        actual = metrics_found.get(self.metric)
        if actual is None:
            return f"{self.metric} is undefined in this run, so the gate cannot pass"
        holds = {"<": actual < self.value, ">": actual > self.value, "<=": actual <= self.value, ">=": actual >= self.value}[self.op]
        return f"{self.metric} = {actual:.6g}, which is {self.op} {self.value:g}" if holds else None


def _known_metrics_text() -> str:
    """The names --fail-if takes, with their short aliases, for the line that refuses an unknown one."""
    aliases = {metric: alias for alias, metric in METRIC_ALIASES.items()}
    listed = ", ".join(f"{name} ({aliases[name]})" if name in aliases else name for name in MEASURED_WITH)
    return listed + "; with --benchmark B: B.avg, B.acc and B.CATEGORY.avg|acc (e.g. ceval.hard.acc)"


def planned_metrics(options: EvalOptions) -> tuple[str, ...]:
    """The metrics a run with `options` will report, known before anything is loaded."""
    if options.benchmark is not None:
        return tuple(name for name, needs in benchmark_metrics().items() if needs == f"--benchmark {options.benchmark}")
    if options.task != "lm":
        wanted = {f"--task {options.task}"}
    else:
        wanted = {"--task lm", "--generate"} if options.generate else {"--task lm"}
    return tuple(name for name, needs in MEASURED_WITH.items() if needs in wanted)


def check_gates(options: EvalOptions) -> list[Gate]:
    """The --fail-if gates, refused before the model loads when the run cannot measure their metric."""
    gates = [Gate.parse(text) for text in options.fail_if]
    planned = planned_metrics(options)
    for text, gate in zip(options.fail_if, gates):
        if gate.metric not in planned:
            raise UsageError(f"--fail-if {text!r}: this run does not measure {gate.metric} (it needs "
                             f"{known_metrics()[gate.metric]}); it measures {', '.join(planned)}")
    return gates


def baseline_metrics(path: Path) -> dict[str, float | None]:
    """The metrics of a report that `yayi eval --output` wrote (null where undefined there)."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))["metrics"]
        values = metrics.items()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UsageError(f"{path}: not a yayi eval report ({error})") from None
    for name, value in values:
        if value is not None and (type(value) not in (int, float) or not math.isfinite(value)):
            raise UsageError(f"{path}: metric {name!r} is {value!r}, not a finite number or null; not a yayi eval report")
    return {name: None if value is None else float(value) for name, value in values}


def regressions(current: dict[str, float | None], baseline: dict[str, float | None], max_percent: float) -> list[str]:
    """Metrics more than `max_percent` worse than the baseline, in each metric's own direction;
    a metric the baseline had and this run cannot compute, or did not measure, counts as a regression."""
    failures = [f"{name} is in the baseline but not measured by this run (run with the options that made the baseline)"
                for name in baseline if name not in current]
    for name, value in current.items():
        before = baseline.get(name)
        if before is not None and value is None:
            failures.append(f"{name} is undefined in this run (the baseline has {before:.6g})")
            continue
        if before is None:
            continue
        if before == 0:  # no percentage of zero: any rise of a lower-is-better metric is worse without bound
            worse = math.inf if name in LOWER_IS_BETTER and value > 0 else 0.0
        else:
            change = (value - before) / abs(before) * 100
            worse = change if name in LOWER_IS_BETTER else -change
        if worse > max_percent:
            failures.append(f"{name} = {value:.6g} is {worse:.2f}% worse than the baseline {before:.6g} (allowed {max_percent:g}%)")
    return failures


