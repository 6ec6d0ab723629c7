"""`yayi eval`: honest numbers for a fine-tuned model, fit for a CI gate.

- loss and perplexity on answer tokens only, with exactly the labels training uses
  (`PromptTokenizer.encode_training_batch`), batched by length, per domain;
- with `generate`, greedy (or sampled) answers to each record's last question, scored against
  the reference by exact match and character-level ROUGE-L and BLEU-4;
- `task="choice"`: multiple-choice accuracy (C-Eval / CMMLU CSV layout, or JSON lines) by
  comparing the log-likelihood of each option letter as the answer;
- `task="preference"`: preference accuracy and reward margin on held-out pairs (preference_eval.py).
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from yayi_cli import metrics
from yayi_cli.atomic import write_json_atomic, write_json_lines_atomic
from yayi_cli.data.checked import Record, load_records
from yayi_cli.data.reader import open_data_file, read_records, sha256_of
from yayi_cli.errors import DataError, UsageError
from yayi_cli.options import EvalOptions
from yayi_cli.inference import choice_scores, generate_answers, response_loss, split_last_answer
from yayi_cli.loading import LoadedModel
from yayi_cli.preference_eval import Comparison, check_task_fits, choose_comparison, score_preferences
from yayi_cli.prompt import ASSISTANT, HUMAN, Conversation, PromptTokenizer, Turn
from yayi_cli.records import NO_DOMAIN_LABEL, PAIRED_KEYS
from yayi_cli.sampling import seeded_sample

LOWER_IS_BETTER = frozenset({"loss", "perplexity"})
METRIC_ALIASES = {"ppl": "perplexity", "em": "exact_match", "acc": "accuracy", "rouge": "rouge_l", "bleu": "bleu4"}
MEASURED_WITH = {"loss": "--task lm", "perplexity": "--task lm", "exact_match": "--generate", "rouge_l": "--generate",
                 "bleu4": "--generate", "accuracy": "--task choice", "pref_acc": "--task preference",
                 "margin": "--task preference", "policy_pref_acc": "--task preference"}
"""Every metric `yayi eval` reports, with the option it needs (the order reports use)."""
CHOICE_LETTERS = ("A", "B", "C", "D")


@dataclass
class GenerationResult:
    predictions: list[str]
    references: list[str]

    def to_json(self) -> dict[str, Any]:
        count = max(len(self.predictions), 1)
        pairs = list(zip(self.predictions, self.references))
        return {
            "exact_match": sum(metrics.exact_match(p, r) for p, r in pairs) / count,
            "rouge_l": sum(metrics.rouge_l(p, r) for p, r in pairs) / count,
            "bleu4": metrics.corpus_bleu4(self.predictions, self.references),
        }


# --- multiple choice ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChoiceItem:
    location: str
    subject: str
    question: str
    options: tuple[str, ...]
    answer: str

    def conversation(self, letter: str) -> Conversation:
        lines = [self.question] + [f"{key}. {text}" for key, text in zip(CHOICE_LETTERS, self.options)]
        return Conversation((Turn(HUMAN, "\n".join(lines) + "\n答案："), Turn(ASSISTANT, letter)))


def _subject_of(path: Path) -> str:
    """C-Eval names files `<subject>_val.csv`; CMMLU `<subject>.csv`."""
    return re.sub(r"_(val|dev|test)$", "", path.stem)


def _choice_item(row: dict[str, Any], location: str, subject: str) -> ChoiceItem:
    fields = {str(key).strip().lower(): value for key, value in row.items() if key is not None}
    missing = [name for name in ("question", "a", "b", "c", "d", "answer") if not str(fields.get(name) or "").strip()]
    if missing and set(PAIRED_KEYS) <= fields.keys():
        raise UsageError(f"{location}: a preference pair (chosen/rejected), not a choice item; score pairs with --task preference")
    if missing:
        raise DataError(f"{location}: missing {', '.join(missing)}; a choice item needs question, A, B, C, D and answer")
    answer = str(fields["answer"]).strip().upper()
    if answer not in CHOICE_LETTERS:
        raise DataError(f"{location}: answer {fields['answer']!r} is not one of A, B, C, D")
    options = tuple(str(fields[letter.lower()]) for letter in CHOICE_LETTERS)
    return ChoiceItem(location, str(fields.get("subject") or subject), str(fields["question"]), options, answer)


def read_choice_items(paths: Sequence[Path]) -> list[ChoiceItem]:
    """Items from C-Eval/CMMLU-style CSV files (question, A, B, C, D, answer) or JSON lines."""
    items = []
    for path in paths:
        subject = _subject_of(Path(path))
        if Path(path).suffix.lower() == ".csv":
            open_data_file(path).close()  # one clear error for a missing file or a directory
            try:
                with open(path, encoding="utf-8-sig", newline="") as handle:
                    reader = csv.DictReader(handle)
                    items.extend(_choice_item(row, f"{path}:{reader.line_num}", subject) for row in reader)
            except UnicodeDecodeError:
                raise DataError(f"{path}: not UTF-8 text; save the CSV as UTF-8") from None
            continue
        for source in read_records(path):
            if source.error is not None or not isinstance(source.value, dict):
                raise DataError(f"{source.location}: {source.error or 'expected a JSON object'}")
            items.append(_choice_item(source.value, source.location, subject))
    if not items:
        raise DataError("no choice items in " + ", ".join(str(p) for p in paths))
    return items


@dataclass
class ChoiceResult:
    correct: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    chosen: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": sum(self.correct.values()) / max(sum(self.total.values()), 1),
            "per_subject": {s: {"accuracy": self.correct[s] / self.total[s], "items": self.total[s]} for s in sorted(self.total)},
        }


def choice_accuracy(model: Any, prompt_tokenizer: PromptTokenizer, items: Sequence[ChoiceItem], *, batch_size: int = 8) -> ChoiceResult:
    """Pick, for each item, the letter whose answer the model finds most likely."""
    conversations = [item.conversation(letter) for item in items for letter in CHOICE_LETTERS]
    scores = choice_scores(model, prompt_tokenizer, conversations, batch_size=batch_size)
    result = ChoiceResult()
    for number, item in enumerate(items):
        options = scores[number * 4 : number * 4 + 4]
        letter = CHOICE_LETTERS[options.index(min(options))]
        result.chosen.append(letter)
        result.total[item.subject] += 1
        result.correct[item.subject] += letter == item.answer
    return result


# --- gates --------------------------------------------------------------------------------------


_GATE = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


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
        if metric not in MEASURED_WITH:
            raise UsageError(f"--fail-if {text!r}: unknown metric {name!r}; known: {_known_metrics()}")
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


def _known_metrics() -> str:
    """The names --fail-if takes, with their short aliases, for the line that refuses an unknown one."""
    aliases = {metric: alias for alias, metric in METRIC_ALIASES.items()}
    return ", ".join(f"{name} ({aliases[name]})" if name in aliases else name for name in MEASURED_WITH)


def planned_metrics(options: EvalOptions) -> tuple[str, ...]:
    """The metrics a run with `options` will report, known before anything is loaded."""
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
                             f"{MEASURED_WITH[gate.metric]}); it measures {', '.join(planned)}")
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


# --- the whole run ------------------------------------------------------------------------------


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

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.options.model,
            "template": self.template,
            "task": self.options.task,
            **self.compared_with,
            "data": [{"path": str(p), "sha256": sha256_of(p)} for p in self.options.data],
            "counts": self.counts,
            "metrics": self.metrics,
            "groups": self.groups,
            "timings": self.timings,
            "options": {k: v for k, v in asdict(self.options).items() if k in RUN_OPTIONS},
        }


def run_eval(options: EvalOptions) -> EvalReport:
    """Read the data (refusing invalid records first), load the model once, compute every metric asked for."""
    from yayi_cli.loading import load_for_task

    started = time.perf_counter()
    if options.task == "choice":
        inputs = seeded_sample(read_choice_items(options.data), options.max_samples, options.seed)
    else:
        inputs = seeded_sample(load_records(options.data), options.max_samples, options.seed)
        check_task_fits(options.task, inputs)
    comparison = choose_comparison(options) if options.task == "preference" else None
    loaded = load_for_task(
        options.model, base=options.base, template=options.template, trust_remote_code=options.trust_remote_code,
        device=options.device, dtype=options.dtype, load_in_8bit=options.load_in_8bit,
    )
    timings = {"load_s": time.perf_counter() - started}
    name, model, prompt_tokenizer = loaded.template.name, loaded.model, loaded.prompt_tokenizer
    if options.task == "choice":
        return _choice_report(options, name, model, prompt_tokenizer, inputs, timings)
    max_length = options.max_length or loaded.context_length()
    if comparison is not None:
        return _preference_report(options, loaded, inputs, comparison, timings, max_length)
    return _lm_report(options, name, model, prompt_tokenizer, inputs, timings, max_length)


def _lm_report(
    options: EvalOptions, template: str, model: Any, prompt_tokenizer: PromptTokenizer, records: list[Record],
    timings: dict[str, float], max_length: int | None,
) -> EvalReport:
    started = time.perf_counter()
    loss = response_loss(model, prompt_tokenizer, records, batch_size=options.batch_size, max_length=max_length)
    timings["loss_s"] = time.perf_counter() - started
    if not loss.overall.tokens:
        raise DataError(
            f"no answer token to score: the prompts of all {len(records)} record(s) fill the {max_length}-token "
            f"context ({loss.truncated} cut); raise --max-length if the model allows it, or shorten the prompts"
        )
    found = {key: value for key, value in loss.overall.to_json().items() if key != "tokens"}
    counts = {"records": len(records), "answer_tokens": loss.overall.tokens, "truncated": loss.truncated}
    per_domain = Counter(r.domain for r in records)
    groups = {name or NO_DOMAIN_LABEL: totals.to_json() | {"records": per_domain[name]}
              for name, totals in sorted(loss.groups.items())}
    report = EvalReport(options, template, counts, found, groups, timings)
    if not options.generate:
        return report
    started = time.perf_counter()
    questions, references = zip(*(split_last_answer(r.conversation) for r in records))
    predicted = generate_answers(
        model, prompt_tokenizer, questions, batch_size=options.batch_size,
        max_new_tokens=options.max_new_tokens, sample=options.sample, seed=options.seed,
    )
    report.metrics.update(GenerationResult(predicted, list(references)).to_json())
    report.timings["generate_s"] = time.perf_counter() - started
    report.predictions = [
        {"location": e.location, "reference": r, "prediction": p, "exact_match": metrics.exact_match(p, r), "rouge_l": metrics.rouge_l(p, r)}
        for e, p, r in zip(records, predicted, references)
    ]
    return report


def _choice_report(options: EvalOptions, template: str, model: Any, prompt_tokenizer: PromptTokenizer, items: list[ChoiceItem], timings: dict[str, float]) -> EvalReport:
    started = time.perf_counter()
    result = choice_accuracy(model, prompt_tokenizer, items, batch_size=options.batch_size)
    timings["choice_s"] = time.perf_counter() - started
    summary = result.to_json()
    report = EvalReport(options, template, {"items": len(items)}, {"accuracy": summary["accuracy"]}, summary["per_subject"], timings)
    report.predictions = [{"location": i.location, "answer": i.answer, "chosen": c} for i, c in zip(items, result.chosen)]
    return report


def _preference_report(options: EvalOptions, loaded: LoadedModel, records: list[Record], comparison: Comparison,
                       timings: dict[str, float], max_length: int | None) -> EvalReport:
    started = time.perf_counter()
    result = score_preferences(loaded, records, comparison, options, max_length)
    timings["preference_s"] = time.perf_counter() - started
    return EvalReport(options, loaded.template.name, result.counts(), result.metrics(), result.groups(), timings,
                      result.predictions(), comparison.to_json())


RUN_OPTIONS = ("task", "generate", "sample", "max_new_tokens", "batch_size", "max_samples", "max_length", "seed",
               "device", "dtype", "load_in_8bit", "template", "trust_remote_code")
"""The options that decide the numbers, recorded in the report (not where it was written)."""


@dataclass
class EvalOutcome:
    """A finished `yayi eval`: the report, the baseline it was compared with, and the gates that failed."""

    report: EvalReport
    baseline: dict[str, float | None] | None
    failures: list[str]

    def to_json(self) -> dict[str, Any]:
        return self.report.to_json() | {"gate": {"passed": not self.failures, "failures": self.failures}}


def evaluate(options: EvalOptions) -> EvalOutcome:
    """`yayi eval`: check the options and outputs first, run, apply the gates, write the report files."""
    options.check()
    gates = check_gates(options)
    for path in (options.output, options.predictions):
        if path is not None and path.exists() and not options.force:
            raise UsageError(f"{path} already exists; use --force to replace it")
    baseline = baseline_metrics(options.baseline) if options.baseline is not None else None
    report = run_eval(options)
    failures = [failure for gate in gates if (failure := gate.fails(report.metrics))]
    if baseline is not None and options.max_regression is not None:
        failures += regressions(report.metrics, baseline, options.max_regression)
    outcome = EvalOutcome(report, baseline, failures)
    if options.output is not None:
        write_json_atomic(options.output, outcome.to_json())
    if options.predictions is not None:
        write_json_lines_atomic(options.predictions, report.predictions)
    return outcome


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
    console.print(table)
    if report.compared_with:
        compared = report.compared_with
        console.print(f"reference {escape(compared['reference'])} ({escape(compared['reference_from'])}), "
                      f"beta {compared['beta']:g} ({escape(compared['beta_from'])})", highlight=False)
    if report.groups:
        kind = "subject" if report.options.task == "choice" else "domain"
        groups = Table(title=f"Per {kind}", title_justify="left")
        columns = list(next(iter(report.groups.values())))
        groups.add_column(kind)
        for column in columns:
            groups.add_column(column, justify="right")
        for name, values in report.groups.items():
            groups.add_row(escape(name), *(_number(values[c]) if values[c] is None or isinstance(values[c], float)
                                           else str(values[c]) for c in columns))
        console.print(groups)
    counts = ", ".join(f"{value} {name.replace('_', ' ')}" for name, value in report.counts.items())
    console.print(f"[dim]{counts}; " + ", ".join(f"{k} {v:.1f}" for k, v in report.timings.items()) + "[/]", highlight=False)
