"""Preference records -> token ids, through the prompt core: what DPO and KTO train on and what
`yayi eval --task preference` scores.

Each answer is rendered with its prompt exactly as supervised training renders that conversation
(`PromptTokenizer.encode_training_batch`), so SFT and preference training see the same bytes and
the same ids. The prompt's ids are the longest prefix that every answer's rendering shares and that
ends before the answer's first loss token; each answer's ids are the rest of its rendering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from yayi_cli.core.prompt import IGNORE_INDEX, PromptTokenizer
from yayi_cli.core.records import Record, answered


DEFAULT_BETA = 0.1
"""How far DPO and KTO let the policy move from the reference, when the run does not say: train and eval agree."""


@dataclass(frozen=True)
class EncodedPreference:
    """A record's prompt ids and its answers' ids: (chosen, rejected) or (completion,)."""

    prompt_ids: list[int]
    answer_ids: tuple[list[int], ...]


def _answer_start(labels: list[int]) -> int:
    """Where the last answer's tokens begin: its loss tokens run to the end (it ends with <|End|>)."""
    start = len(labels)
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start


def _shared_prefix(rows: Sequence[list[int]]) -> int:
    length = min(len(row) for row in rows)
    return next((k for k in range(length) if len({row[k] for row in rows}) > 1), length)


def encode_preferences(records: Sequence[Record], prompt_tokenizer: PromptTokenizer) -> list[EncodedPreference]:
    """Every preference record's ids, in order (one tokenizer call for all their answers)."""
    conversations = [answered(record.conversation, answer) for record in records for answer in record.answers]
    encoded = iter(prompt_tokenizer.encode_training_batch(conversations))
    result = []
    for record in records:
        answers = [next(encoded) for _ in record.answers]
        prompt_length = min([_shared_prefix([item.input_ids for item in answers])]
                            + [_answer_start(item.labels) for item in answers])
        result.append(EncodedPreference(answers[0].input_ids[:prompt_length],
                                        tuple(item.input_ids[prompt_length:] for item in answers)))
    return result
