"""Scoring a planned benchmark with a loaded model, subject by subject, behind a progress bar."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from yayi_cli.core.prompt import PromptFormatError
from yayi_cli.eval.choice.plan import BenchmarkPlan
from yayi_cli.eval.choice.protocols import build_requests
from yayi_cli.eval.choice.report import MEANS, SubjectScore, benchmark_metrics, category_table, prediction_line
from yayi_cli.eval.choice.scoring import ScoringCounts, score_requests
from yayi_cli.models.inference import pad_id
from yayi_cli.models.loading import LoadedModel
from yayi_cli.runtime.terminal import progress_bar


HARNESS_MAX_LENGTH = 2048
"""lm-evaluation-harness's length for a model whose config and tokenizer name none (BLOOM's ALiBi)."""


def harness_max_length(loaded: LoadedModel) -> int:
    """The length contexts are cut to: the model's context length (the one rule, which the harness follows), else
    the harness's default."""
    return loaded.context_length() or HARNESS_MAX_LENGTH


@dataclass
class BenchmarkResult:
    scores: list[SubjectScore] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    counts: ScoringCounts = field(default_factory=ScoringCounts)


def score_benchmark(plan: BenchmarkPlan, loaded: LoadedModel, *, batch_size: int, max_length: int | None) -> BenchmarkResult:
    """Every question's choice log-likelihoods and the subjects' accuracies."""
    length = max_length or harness_max_length(loaded)
    padding = pad_id(loaded.tokenizer)
    result = BenchmarkResult()
    with progress_bar("questions", sum(len(p.questions) for p in plan.subjects)) as advance:
        for subject in plan.subjects:
            advance(0, subject.subject)
            try:
                requests = build_requests(plan.protocol, subject.questions, subject.shots, plan.benchmark, loaded.prompt_tokenizer)
            except PromptFormatError as error:
                raise type(error)(f"{subject.questions[0].location.rsplit(':', 1)[0]}: {error}") from None
            scores, counts = score_requests(loaded.model, requests, batch_size=batch_size, max_length=length, padding=padding)
            result.counts.add(counts)
            lines = [prediction_line(question, values) for question, values in zip(subject.questions, scores)]
            result.predictions += lines
            if not plan.answers_withheld:
                result.scores.append(SubjectScore(subject.subject, subject.categories, sum(line["correct"] for line in lines),
                                                  len(lines)))
            advance(len(lines), subject.subject)
    return result


def benchmark_summary(plan: BenchmarkPlan, result: BenchmarkResult, seconds: float) -> dict[str, Any]:
    """What the report says about the run beyond its metrics: the protocol, the categories, the speed."""
    questions = len(result.predictions)
    return {
        "benchmark": plan.benchmark.name, "title": plan.benchmark.title, "split": plan.split, "protocol": plan.protocol,
        "shots": plan.shots, "subjects": len(plan.subjects), "questions": questions,
        "means": MEANS,
        "categories": category_table(plan.benchmark, result.scores),
        "questions_per_s": questions / seconds if seconds > 0 else None,
        "warnings": plan.warnings,
    }


def timed_score(plan: BenchmarkPlan, loaded: LoadedModel, *, batch_size: int, max_length: int | None
                ) -> tuple[BenchmarkResult, dict[str, Any], dict[str, float | None], float]:
    """Score, then the summary and the metrics (none where the answers are withheld) and the seconds taken."""
    started = time.perf_counter()
    result = score_benchmark(plan, loaded, batch_size=batch_size, max_length=max_length)
    seconds = time.perf_counter() - started
    metrics = {} if plan.answers_withheld else benchmark_metrics(plan.benchmark, result.scores)
    return result, benchmark_summary(plan, result, seconds), metrics, seconds
