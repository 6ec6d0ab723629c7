"""A benchmark's numbers: accuracy per subject, per category and overall, each as two means.

- `avg`: the mean of the subjects' accuracies (every subject weighs the same; the benchmarks' papers);
- `acc`: the share of all questions answered right (every question weighs the same; the harness's groups).

Metric names are `{benchmark}.avg`, `{benchmark}.acc`, `{benchmark}.{category}.avg|acc`, e.g. ceval.hard.acc.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from yayi_cli.eval.choice.files import Question
from yayi_cli.eval.choice.subjects import Benchmark, category_key


MEANS = {"avg": "mean of subject accuracies", "acc": "mean over questions"}


@dataclass(frozen=True)
class SubjectScore:
    subject: str
    categories: tuple[str, ...]
    correct: int
    questions: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.questions


def _means(scores: Sequence[SubjectScore]) -> dict[str, float | None]:
    if not scores:
        return {"avg": None, "acc": None}
    return {"avg": sum(s.accuracy for s in scores) / len(scores),
            "acc": sum(s.correct for s in scores) / sum(s.questions for s in scores)}


def planned_metric_names(benchmark: Benchmark) -> list[str]:
    """Every metric a run of `benchmark` reports (a category with no subject in the run is null)."""
    names = [f"{benchmark.name}.{mean}" for mean in MEANS]
    return names + [f"{benchmark.name}.{category_key(c)}.{mean}" for c in benchmark.category_names() for mean in MEANS]


def benchmark_metrics(benchmark: Benchmark, scores: Sequence[SubjectScore]) -> dict[str, float | None]:
    found = {f"{benchmark.name}.{mean}": value for mean, value in _means(scores).items()}
    for category in benchmark.category_names():
        members = [score for score in scores if category in score.categories]
        found.update({f"{benchmark.name}.{category_key(category)}.{mean}": value for mean, value in _means(members).items()})
    return found


def category_table(benchmark: Benchmark, scores: Sequence[SubjectScore]) -> dict[str, dict[str, Any]]:
    """Per category (those with a subject in the run): both means, subjects and questions."""
    table = {}
    for category in benchmark.category_names():
        members = [score for score in scores if category in score.categories]
        if members:
            table[category] = _means(members) | {"subjects": len(members), "questions": sum(s.questions for s in members)}
    return table


def chosen_letter(loglikelihoods: Sequence[float]) -> str:
    """The most likely choice; a tie goes to the first, as numpy's argmax (the harness's) gives it."""
    return "ABCD"[max(range(len(loglikelihoods)), key=lambda k: (loglikelihoods[k], -k))]


def prediction_line(question: Question, loglikelihoods: Sequence[float]) -> dict[str, Any]:
    chosen = chosen_letter(loglikelihoods)
    return {"subject": question.subject, "id": question.id, "location": question.location, "answer": question.answer,
            "prediction": chosen, "correct": None if question.answer is None else chosen == question.answer,
            "loglikelihoods": list(loglikelihoods)}


def submission(predictions: Sequence[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """C-Eval's submission file: {subject: {id: letter}}."""
    found: dict[str, dict[str, str]] = {}
    for line in predictions:
        found.setdefault(line["subject"], {})[line["id"]] = line["prediction"]
    return found


def print_benchmark(report: Any, console: Any) -> None:
    """The category table and what the run was (the per-subject table is the report's groups)."""
    from rich.markup import escape
    from rich.table import Table

    details = report.benchmark
    console.print(f"{details['title']} {details['split']}, protocol {details['protocol']}, {details['shots']}-shot; "
                  f"avg = {MEANS['avg']}, acc = {MEANS['acc']}", highlight=False)
    if not details["categories"]:
        console.print(f"no accuracy: the answers are withheld; predictions for {details['subjects']} subjects are in "
                      f"{escape(str(report.options.submission))}", highlight=False)
        return
    table = Table(title=f"{escape(report.options.model)}: {details['title']} per category", title_justify="left")
    for column, justify in (("category", "left"), ("avg", "right"), ("acc", "right"), ("subjects", "right"), ("questions", "right")):
        table.add_column(column, justify=justify)
    for name, values in details["categories"].items():
        table.add_row(escape(name), f"{values['avg']:.4f}", f"{values['acc']:.4f}", str(values["subjects"]), str(values["questions"]))
    name = details["benchmark"]
    table.add_row("[bold]overall[/]", f"{report.metrics[name + '.avg']:.4f}", f"{report.metrics[name + '.acc']:.4f}",
                  str(details["subjects"]), str(details["questions"]))
    console.print(table)
