"""`yayi eval --task reward`: the model's answers to held-out prompt records, scored by GRPO's reward functions.

The same rewards `yayi train --method grpo` trains on (core/rewards.py), on answers generated greedily (or
sampled with --sample) as `yayi chat` gives them, so one command shows a before and an after.
"""

from __future__ import annotations

import time
from typing import Any

from yayi_cli.core.prompt import stop_token_ids
from yayi_cli.core.record_files import PromptRecord, load_prompt_records
from yayi_cli.core.rewards import Reward, load_rewards
from yayi_cli.core.sampling import seeded_sample
from yayi_cli.eval.options import EvalOptions
from yayi_cli.eval.report import EvalReport
from yayi_cli.models.inference import generate_answer_ids
from yayi_cli.models.loading import LoadedModel


def prompts_and_rewards(options: EvalOptions) -> tuple[list[PromptRecord], list[Reward]]:
    """The prompt records (a seeded sample with --max-samples) and the rewards, checked before the model loads."""
    records = load_prompt_records(options.data)
    rewards = load_rewards(options.reward, set(records[0].fields))
    return seeded_sample(records, options.max_samples, options.seed), rewards


def reward_report(options: EvalOptions, loaded: LoadedModel, inputs: tuple[list[PromptRecord], list[Reward]],
                  timings: dict[str, float]) -> EvalReport:
    """Each reward's mean, and `reward`: their weighted sum's mean (as GRPO combines them)."""
    records, rewards = inputs
    prompt_tokenizer = loaded.prompt_tokenizer
    started = time.perf_counter()
    generated = generate_answer_ids(loaded.model, prompt_tokenizer, [record.conversation for record in records],
                                    batch_size=options.batch_size, max_new_tokens=options.max_new_tokens,
                                    sample=options.sample, seed=options.seed)
    timings["generate_s"] = time.perf_counter() - started
    stops = set(stop_token_ids(prompt_tokenizer.tokenizer))
    answers = [prompt_tokenizer.decode_answer(ids) for ids in generated]
    ended = [any(token in stops for token in ids) for ids in generated]
    columns = {name: [record.fields[name] for record in records] for name in records[0].fields}
    scores = {reward.spec.label: reward.score(answers, ended, columns) for reward in rewards}
    totals = [sum(reward.spec.weight * scores[reward.spec.label][k] for reward in rewards) for k in range(len(records))]
    metrics: dict[str, Any] = {"reward": mean(totals), "ended": mean([float(done) for done in ended])}
    metrics |= {f"reward_{name}": mean(values) for name, values in scores.items()}
    report = EvalReport(options, loaded.template.name, {"records": len(records)}, metrics, {}, timings)
    report.predictions = [{"location": record.location, "prediction": answer, "ended": done,
                           **{name: values[k] for name, values in scores.items()}}
                          for k, (record, answer, done) in enumerate(zip(records, answers, ended))]
    return report


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
