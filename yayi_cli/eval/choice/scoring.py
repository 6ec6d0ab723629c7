"""Log-likelihood of each choice, computed as lm-evaluation-harness computes it, in fewer passes.

The harness scores a choice by the summed log-softmax (in the model's dtype) of its tokens after the
context, the input cut on the left to the model's length. The numbers here are the same; the work is less:

- where every choice is one token (the letters), one pass over the context scores all of them;
- the tokens every question of a subject starts with (the description and the examples) run once,
  and each batch continues from their KV cache;
- rows are batched longest first, padded on the right, and only the logits read are computed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from yayi_cli.eval.choice.protocols import ChoiceRequest
from yayi_cli.models.inference import length_batches


@dataclass(frozen=True)
class _Row:
    """One forward pass's input: the model reads `targets` at the positions ending with the last id."""

    request: int
    choice: int | None
    """None: one pass for all the choices, each one token read at the last position."""
    ids: list[int]
    targets: list[int]
    truncated: bool

    @property
    def reads(self) -> int:
        """How many of the last positions this row's scores are read at."""
        return 1 if self.choice is None else len(self.targets)

    def scored(self, logprobs: Any) -> list[float]:
        """This row's log-likelihoods from the log-softmax at its `reads` last positions, summed as the
        harness sums them (in the model's dtype)."""
        if self.choice is None:
            return logprobs[-1, self.targets].tolist()
        return [logprobs[range(len(self.targets)), self.targets].sum().item()]


def _rows(requests: Sequence[ChoiceRequest], max_length: int) -> list[_Row]:
    rows = []
    for number, request in enumerate(requests):
        if request.single_token:
            ids = request.context[-max_length:]
            rows.append(_Row(number, None, ids, [choice[0] for choice in request.choices], len(request.context) > max_length))
            continue
        for choice, continuation in enumerate(request.choices):
            whole = request.context + continuation
            rows.append(_Row(number, choice, whole[-(max_length + 1):][:-1], continuation, len(whole) > max_length + 1))
    return rows


def shared_prefix(sequences: Sequence[list[int]]) -> int:
    """How many leading ids all the sequences share, leaving each at least one id of its own."""
    if len(sequences) < 2:
        return 0
    shortest = min(len(ids) for ids in sequences) - 1
    first = sequences[0]
    length = 0
    while length < shortest and all(ids[length] == first[length] for ids in sequences):
        length += 1
    return length


@dataclass
class ScoringCounts:
    """What the speed-ups applied to, for the report."""

    one_pass: int = 0
    per_choice: int = 0
    truncated: int = 0
    prefix_tokens: int = 0
    """Tokens run once per subject instead of once per question."""

    def add(self, other: ScoringCounts) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def score_requests(model: Any, requests: Sequence[ChoiceRequest], *, batch_size: int, max_length: int,
                   padding: int) -> tuple[list[list[float]], ScoringCounts]:
    """The log-likelihood of every choice of every request (requests of one subject share a prefix)."""
    rows = _rows(requests, max_length)
    cached = [row for row in rows if not row.truncated]
    prefix = shared_prefix([row.ids for row in cached])
    cache = _prefix_cache(model, cached[0].ids[:prefix]) if prefix else None
    scores: list[list[float]] = [[0.0] * len(request.choices) for request in requests]
    for group, start in ((cached, prefix), ([row for row in rows if row.truncated], 0)):
        for batch in length_batches([len(row.ids) for row in group], batch_size):
            batch_rows = [group[i] for i in batch]
            for row, values in zip(batch_rows, _forward(model, batch_rows, start, cache if start else None, padding)):
                if row.choice is None:
                    scores[row.request] = values
                else:
                    scores[row.request][row.choice] = values[0]
    counts = ScoringCounts(sum(r.single_token for r in requests), sum(not r.single_token for r in requests),
                           len({row.request for row in rows if row.truncated}), prefix)
    return scores, counts


def _prefix_cache(model: Any, ids: list[int]) -> Any:
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=1).cache


def _forward(model: Any, rows: Sequence[_Row], start: int, cache: Any, padding: int) -> list[list[Any]]:
    """One right-padded pass over `rows` (each from `start`, after the cached prefix when there is one)."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    lengths = [len(row.ids) - start for row in rows]
    width = max(lengths)
    ids = torch.tensor([row.ids[start:] + [padding] * (width - n) for row, n in zip(rows, lengths)], device=device)
    mask = torch.tensor([[1] * (start + n) + [0] * (width - n) for n in lengths], device=device)
    read = sorted({position for row, n in zip(rows, lengths) for position in range(n - row.reads, n)})
    kwargs = {}
    with torch.inference_mode():
        if cache is not None:  # a copy for this batch: the pass appends to the cache it is given
            kwargs["cache"] = copy.deepcopy(cache)
            kwargs["cache"].batch_repeat_interleave(len(rows))
        logits = model(input_ids=ids, attention_mask=mask, use_cache=cache is not None,
                       logits_to_keep=torch.tensor(read, device=device), **kwargs).logits
        logprobs = F.log_softmax(logits, dim=-1)
    column = {position: k for k, position in enumerate(read)}
    return [row.scored(logprobs[number, [column[p] for p in range(n - row.reads, n)]])
            for number, (row, n) in enumerate(zip(rows, lengths))]
