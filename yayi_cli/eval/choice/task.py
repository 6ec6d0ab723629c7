"""`yayi eval --task choice`: loose multiple-choice files (C-Eval / CMMLU CSV layout, or JSON lines),\neach question put by a protocol and scored by the benchmarks' scorer."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from yayi_cli.eval.choice.files import Question
from yayi_cli.eval.options import EvalOptions
from yayi_cli.eval.report import EvalReport
from yayi_cli.models.inference import pad_id
from yayi_cli.models.loading import LoadedModel


DEFAULT_CHOICE_PROTOCOL = "answer"
"""--task choice's protocol unless --protocol names another: the letter as the whole trained answer."""


def choice_scores(loaded: LoadedModel, questions: Sequence[Question], protocol: str, *, batch_size: int,
                  max_length: int | None) -> list[dict[str, Any]]:
    """Each question's prediction line (its letters' log-likelihoods, the letter chosen), asked each on its own by
    `protocol` and scored by the benchmarks' scorer."""
    from yayi_cli.eval.choice.protocols import build_requests
    from yayi_cli.eval.choice.report import prediction_line
    from yayi_cli.eval.choice.run import harness_max_length
    from yayi_cli.eval.choice.scoring import score_requests
    from yayi_cli.eval.choice.subjects import LOOSE_FILES

    requests = build_requests(protocol, questions, [], LOOSE_FILES, loaded.prompt_tokenizer)
    scores, _ = score_requests(loaded.model, requests, batch_size=batch_size, max_length=max_length or harness_max_length(loaded),
                               padding=pad_id(loaded.tokenizer))
    return [prediction_line(question, values) for question, values in zip(questions, scores)]


def choice_report(options: EvalOptions, loaded: LoadedModel, questions: list[Question], timings: dict[str, float]) -> EvalReport:
    started = time.perf_counter()
    lines = choice_scores(loaded, questions, options.protocol, batch_size=options.batch_size,
                          max_length=options.max_length)
    timings["choice_s"] = time.perf_counter() - started
    by_subject: dict[str, list[bool]] = defaultdict(list)
    for line in lines:
        by_subject[line["subject"]].append(line["correct"])
    groups = {subject: {"accuracy": sum(marks) / len(marks), "items": len(marks)} for subject, marks in sorted(by_subject.items())}
    accuracy = sum(line["correct"] for line in lines) / len(lines)
    report = EvalReport(options, loaded.template.name, {"items": len(lines)}, {"accuracy": accuracy}, groups, timings)
    report.predictions = lines
    return report
