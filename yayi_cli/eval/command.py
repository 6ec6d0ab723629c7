"""`yayi eval`: honest numbers for a fine-tuned model, fit for a CI gate.

- loss and perplexity on answer tokens only, with exactly the labels training uses
  (`PromptTokenizer.encode_training_batch`), batched by length, per domain;
- with `generate`, greedy (or sampled) answers to each record's last question, scored against
  the reference by exact match and character-level ROUGE-L and BLEU-4;
- `task="choice"`: multiple-choice accuracy (C-Eval / CMMLU CSV layout, or JSON lines) by
  comparing the log-likelihood of each option letter as the answer;
- `task="preference"`: preference accuracy and reward margin on held-out pairs (eval/preference.py);
- `benchmark="ceval"|"cmmlu"|"mmlu"`: the standard benchmarks from their files, as the harness asks (eval/choice/).
"""


from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from yayi_cli.core.prompt import PromptTokenizer
from yayi_cli.core.record_files import load_records
from yayi_cli.core.records import NO_DOMAIN_LABEL, Record
from yayi_cli.core.sampling import seeded_sample
from yayi_cli.eval import metrics
from yayi_cli.eval.choice.files import read_choice_files
from yayi_cli.eval.choice.task import DEFAULT_CHOICE_PROTOCOL, choice_report
from yayi_cli.eval.comparison import baseline_groups, compare_groups, draw_comparison
from yayi_cli.eval.gates import baseline_metrics, check_gates, regressions
from yayi_cli.eval.options import EvalOptions
from yayi_cli.eval.preference import Comparison, check_task_fits, choose_comparison, score_preferences
from yayi_cli.eval.report import EvalOutcome, EvalReport
from yayi_cli.models.inference import generate_answers, response_loss, split_last_answer
from yayi_cli.models.loading import LoadedModel
from yayi_cli.runtime.atomic import refuse_existing, write_figure_atomic, write_json_atomic, write_json_lines_atomic
from yayi_cli.runtime.errors import DataError
from yayi_cli.runtime.packages import require_package


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


def run_eval(options: EvalOptions) -> EvalReport:
    """Read the data (refusing invalid records first), load the model once, compute every metric asked for."""
    from yayi_cli.models.loading import load_for_task

    started = time.perf_counter()
    if options.benchmark is not None:
        from yayi_cli.eval.choice.plan import plan_benchmark

        inputs = plan_benchmark(options)
    elif options.task == "choice":
        options = replace(options, protocol=options.protocol or DEFAULT_CHOICE_PROTOCOL)
        inputs = seeded_sample(read_choice_files(options.data), options.max_samples, options.seed)
    elif options.task == "reward":
        from yayi_cli.eval.reward import prompts_and_rewards

        inputs = prompts_and_rewards(options)
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
    if options.benchmark is not None:
        return _benchmark_report(options, loaded, inputs, timings)
    if options.task == "choice":
        return choice_report(options, loaded, inputs, timings)
    if options.task == "reward":
        from yayi_cli.eval.reward import reward_report

        return reward_report(options, loaded, inputs, timings)
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


def _benchmark_report(options: EvalOptions, loaded: LoadedModel, plan: Any, timings: dict[str, float]) -> EvalReport:
    from yayi_cli.eval.choice.run import timed_score

    result, summary, found, timings["benchmark_s"] = timed_score(plan, loaded, batch_size=options.batch_size,
                                                                 max_length=options.max_length)
    counts = {"subjects": len(plan.subjects), "questions": len(result.predictions), "one_pass": result.counts.one_pass,
              "per_choice": result.counts.per_choice, "truncated": result.counts.truncated}
    groups = {s.subject: {"accuracy": s.accuracy, "questions": s.questions, "categories": ", ".join(s.categories)}
              for s in result.scores}
    return EvalReport(options, loaded.template.name, counts, found, groups, timings, result.predictions,
                      benchmark=summary, data=[plan.data_entry()])


def _preference_report(options: EvalOptions, loaded: LoadedModel, records: list[Record], comparison: Comparison,
                       timings: dict[str, float], max_length: int | None) -> EvalReport:
    started = time.perf_counter()
    result = score_preferences(loaded, records, comparison, options, max_length)
    timings["preference_s"] = time.perf_counter() - started
    return EvalReport(options, loaded.template.name, result.counts(), result.metrics(), result.groups(), timings,
                      result.predictions(), comparison.to_json())


def evaluate(options: EvalOptions) -> EvalOutcome:
    """`yayi eval`: check the options and outputs first, run, apply the gates, write the report files."""
    options.check()
    gates = check_gates(options)
    for path in (options.output, options.predictions, options.submission, options.plot):
        if path is not None:
            refuse_existing(path, options.force)
    if options.plot is not None:
        require_package("matplotlib", "--plot", extra="plot")
    baseline = baseline_metrics(options.baseline) if options.baseline is not None else None
    report = run_eval(options)
    failures = [failure for gate in gates if (failure := gate.fails(report.metrics))]
    if baseline is not None and options.max_regression is not None:
        failures += regressions(report.metrics, baseline, options.max_regression)
    comparison = compare_groups(report.groups, baseline_groups(options.baseline)) if baseline is not None else None
    outcome = EvalOutcome(report, baseline, failures, comparison)
    if options.plot is not None and comparison is not None:
        write_figure_atomic(draw_comparison(comparison), options.plot, replace=options.force)
    if options.output is not None:
        write_json_atomic(options.output, outcome.to_json())
    if options.predictions is not None:
        write_json_lines_atomic(options.predictions, report.predictions)
    if options.submission is not None:
        from yayi_cli.eval.choice.report import submission

        write_json_atomic(options.submission, submission(report.predictions))
    return outcome
