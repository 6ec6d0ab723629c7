"""`yayi eval --task preference`: does a model prefer the chosen answers of held-out pairs?

Each answer is scored by the summed log-probability of its tokens, exactly the ids preference training
scores (`encode_preferences`), under the policy and under a reference model. As in DPO, an answer's
implicit reward is beta x (policy log-prob - reference log-prob):

- `pref_acc`: the share of pairs whose chosen answer earns the higher reward (a tie is not a win);
- `margin`: the mean of chosen's reward minus rejected's (TRL's `rewards/margins`);
- `policy_pref_acc`: the share where the policy alone gives chosen the higher mean log-prob per token.

The reference defaults to the model the policy was trained from (its run.json), else an adapter's base;
a policy that is an adapter on the reference scores it with the adapter disabled, on the same weights.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli.core.preference_tokens import DEFAULT_BETA, EncodedPreference, encode_preferences
from yayi_cli.core.prompt import IGNORE_INDEX, Encoded
from yayi_cli.core.records import KIND_NAMES, NO_DOMAIN_LABEL, PAIRED, SFT, Record
from yayi_cli.eval.options import EvalOptions
from yayi_cli.models.inference import batched_nll, pad_id, truncate
from yayi_cli.models.loading import LoadedModel, load_for_task
from yayi_cli.models.reference import resolve_model
from yayi_cli.models.run_files import RUN_FILE
from yayi_cli.runtime.errors import DataError, UsageError
from yayi_cli.runtime.hub import read_model_json


TASK_KINDS = {"lm": SFT, "preference": PAIRED}
"""The kind of record each record-reading task scores."""


def check_task_fits(task: str, records: Sequence[Record]) -> None:
    """Refuse records the task cannot score (one data set holds one kind), naming the task that fits."""
    kind, wanted = records[0].kind, TASK_KINDS[task]
    if kind == wanted:
        return
    fitting = next((f"use --task {name}" for name, fits in TASK_KINDS.items() if fits == kind),
                   "no eval task scores them: --task preference needs pairs (chosen/rejected) of one prompt")
    raise UsageError(f"--task {task} scores {KIND_NAMES[wanted]}, and {records[0].location} holds {KIND_NAMES[kind]}; {fitting}")


# --- the reference and beta ---------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """What the policy is measured against: the reference model and beta, each with where it came from."""

    reference: str
    reference_from: str
    beta: float
    beta_from: str

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "reference_from": self.reference_from, "beta": self.beta, "beta_from": self.beta_from}


def _trained_run(model: str) -> tuple[dict[str, Any], str]:
    """The options in the run.json of the run that wrote `model` ({} without one), and that file's name."""
    run = read_model_json(model, RUN_FILE) or {}
    options = run.get("options")
    return (options if isinstance(options, dict) else {}), str(Path(model) / RUN_FILE)


def choose_comparison(options: EvalOptions) -> Comparison:
    """--reference, else the model the run trained from, else the adapter's base; beta from the run, else 0.1.

    Decided before any model loads, so a run that cannot have a reference stops at once (exit 2)."""
    trained, run_file = _trained_run(options.model)
    beta = trained.get("beta")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        beta, beta_from = DEFAULT_BETA, "default"
    else:
        beta_from = f"{run_file} options.beta"
    if options.reference is not None:
        return Comparison(options.reference, "--reference", float(beta), beta_from)
    if isinstance(trained.get("model"), str) and trained["model"]:
        return Comparison(trained["model"], f"{run_file} options.model", float(beta), beta_from)
    source = resolve_model(options.model, options.base, check_base=False)
    if source.adapter:
        return Comparison(source.base, "the adapter's base", float(beta), beta_from)
    raise UsageError(f"--task preference needs a reference model: {options.model} has no {RUN_FILE} naming the model "
                     "it was trained from and is not an adapter; give --reference MODEL")


def _same_model(first: str, second: str) -> bool:
    """Whether two references name one model: the same directory however spelled, or the same hub id."""
    paths = [Path(name).expanduser() for name in (first, second)]
    if all(path.is_dir() for path in paths):
        return paths[0].resolve() == paths[1].resolve()
    return first == second


@contextlib.contextmanager
def reference_model(policy: LoadedModel, comparison: Comparison, options: EvalOptions) -> Iterator[Any]:
    """The reference to score with: the policy's own base with its adapter disabled when that is the
    reference (no second copy in memory), else the reference loaded as the policy was."""
    if policy.source.adapter and _same_model(comparison.reference, policy.source.base):
        with policy.model.disable_adapter():
            yield policy.model
        return
    try:
        loaded = load_for_task(
            comparison.reference, template=policy.template.name, trust_remote_code=options.trust_remote_code,
            device=options.device, dtype=options.dtype, load_in_8bit=options.load_in_8bit,
        )
    except UsageError as error:
        raise UsageError(f"the reference model ({comparison.reference_from}): {error}") from None
    if loaded.tokenizer.get_vocab() != policy.tokenizer.get_vocab():
        raise UsageError(f"the reference {comparison.reference} has another tokenizer than {options.model}: rewards "
                         "compare the same token ids under both models, so give a --reference with the policy's tokenizer")
    yield loaded.model


# --- scoring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairScore:
    """One pair's summed answer log-probs (chosen, rejected) under the policy and the reference."""

    record: Record
    policy: tuple[float, float]
    reference: tuple[float, float]
    tokens: tuple[int, int]

    @property
    def reward_gap(self) -> float:
        """Chosen's implicit reward minus rejected's, before beta: above 0 when the policy moved towards chosen."""
        return (self.policy[0] - self.reference[0]) - (self.policy[1] - self.reference[1])

    @property
    def policy_prefers_chosen(self) -> bool:
        """Length-normalised, so a short rejected answer does not win by having fewer tokens to pay for."""
        return self.policy[0] / self.tokens[0] > self.policy[1] / self.tokens[1]


def answer_sequences(encoded: Sequence[EncodedPreference], max_length: int | None) -> list[Encoded]:
    """Every answer after its prompt, labelled on the answer's own ids only (what DPO sums log-probs over)."""
    return [truncate(Encoded(pair.prompt_ids + answer, [IGNORE_INDEX] * len(pair.prompt_ids) + answer), max_length)
            for pair in encoded for answer in pair.answer_ids]


def answer_logprobs(model: Any, sequences: Sequence[Encoded], padding: int, batch_size: int) -> list[tuple[float, int]]:
    """(summed log-prob, token count) of each sequence's labelled tokens, batched by length."""
    return [(-nll, tokens) for nll, tokens in batched_nll(model, sequences, padding, batch_size)]


def summarize(scores: Sequence[PairScore], beta: float) -> dict[str, float]:
    """The three metrics over some pairs (all, or one domain's), in the order reports show them."""
    count = len(scores)
    return {
        "pref_acc": sum(score.reward_gap > 0 for score in scores) / count,
        "margin": beta * sum(score.reward_gap for score in scores) / count,
        "policy_pref_acc": sum(score.policy_prefers_chosen for score in scores) / count,
    }


@dataclass
class PreferenceResult:
    """Every scored pair, with what they were compared against and how many pairs there were."""

    comparison: Comparison
    scores: list[PairScore]
    pairs: int
    truncated: int

    def counts(self) -> dict[str, int]:
        return {"pairs": self.pairs, "scored": len(self.scores), "answer_tokens": sum(sum(s.tokens) for s in self.scores),
                "truncated": self.truncated}

    def metrics(self) -> dict[str, float]:
        return summarize(self.scores, self.comparison.beta)

    def groups(self) -> dict[str, dict[str, Any]]:
        by_domain: dict[str, list[PairScore]] = defaultdict(list)
        for score in self.scores:
            by_domain[score.record.domain or NO_DOMAIN_LABEL].append(score)
        return {name: summarize(group, self.comparison.beta) | {"pairs": len(group)} for name, group in sorted(by_domain.items())}

    def predictions(self) -> list[dict[str, Any]]:
        """Each pair's log-probs, for --predictions: what the metrics are computed from."""
        beta = self.comparison.beta
        return [{"location": s.record.location, "chosen_logp": s.policy[0], "rejected_logp": s.policy[1],
                 "reference_chosen_logp": s.reference[0], "reference_rejected_logp": s.reference[1],
                 "chosen_tokens": s.tokens[0], "rejected_tokens": s.tokens[1], "margin": beta * s.reward_gap,
                 "prefers_chosen": s.reward_gap > 0, "policy_prefers_chosen": s.policy_prefers_chosen}
                for s in self.scores]


def score_preferences(
    policy: LoadedModel, records: Sequence[Record], comparison: Comparison, options: EvalOptions, max_length: int | None,
) -> PreferenceResult:
    """Score every pair's answers under the policy, then under the reference; a pair cut by --max-length
    down to no token of an answer is left out (counted), and a run left with none stops."""
    encoded = encode_preferences(records, policy.prompt_tokenizer)
    truncated = sum(max_length is not None and len(pair.prompt_ids) + max(map(len, pair.answer_ids)) > max_length
                    for pair in encoded)
    sequences = answer_sequences(encoded, max_length)
    padding = pad_id(policy.tokenizer)
    policy_scores = answer_logprobs(policy.model, sequences, padding, options.batch_size)
    with reference_model(policy, comparison, options) as reference:
        reference_scores = answer_logprobs(reference, sequences, padding, options.batch_size)
    scores = []
    for number, record in enumerate(records):
        (chosen, chosen_tokens), (rejected, rejected_tokens) = policy_scores[2 * number : 2 * number + 2]
        if chosen_tokens and rejected_tokens:
            references = (reference_scores[2 * number][0], reference_scores[2 * number + 1][0])
            scores.append(PairScore(record, (chosen, rejected), references, (chosen_tokens, rejected_tokens)))
    if not scores:
        raise DataError(f"no pair to score: the prompts of all {len(records)} pair(s) fill the {max_length}-token context; "
                        "raise --max-length if the model allows it, or shorten the prompts")
    return PreferenceResult(comparison, scores, len(records), truncated)
