"""Batched inference over many conversations: answer-only loss and generated answers.

Shared by `yayi eval`, `yayi quantize`'s quality check and `yayi chat`. Loss uses exactly the
labels training uses (`PromptTokenizer.encode_training_batch`); batches group similar lengths.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from yayi_cli.core.prompt import IGNORE_INDEX, Conversation, Encoded, PromptTokenizer, stop_token_ids
from yayi_cli.core.records import Record


@dataclass
class LossTotals:
    """Summed negative log-likelihood over the answer tokens, and how many there were."""

    nll: float = 0.0
    tokens: int = 0

    def add(self, nll: float, tokens: int) -> None:
        self.nll += nll
        self.tokens += tokens

    @property
    def loss(self) -> float | None:
        """Mean NLL per answer token; None (undefined, never NaN) when there was no answer token."""
        return self.nll / self.tokens if self.tokens else None

    @property
    def perplexity(self) -> float | None:
        return None if self.loss is None else math.exp(self.loss)

    def to_json(self) -> dict[str, Any]:
        return {"loss": self.loss, "perplexity": self.perplexity, "tokens": self.tokens}


def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indexes grouped into batches of similar length (longest first), so little is padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def sequence_nll(model: Any, encoded: Sequence[Encoded], padding: int) -> list[tuple[float, int]]:
    """(summed NLL, token count) of the labelled tokens of each sequence, in one padded forward pass.

    Only the logits that predict an answer token are turned into losses (in float32), so the
    prompt positions, most of a batch, cost nothing beyond the forward pass.
    """
    import torch
    import torch.nn.functional as F

    width = max(len(e.input_ids) for e in encoded)
    ids = torch.tensor([e.input_ids + [padding] * (width - len(e.input_ids)) for e in encoded])
    labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in encoded])
    mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in encoded])
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        targets = labels[:, 1:].to(logits.device)
        rows, positions = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
        losses = F.cross_entropy(logits[rows, positions].float(), targets[rows, positions], reduction="none")
        totals = torch.zeros(len(encoded), dtype=torch.float64, device=logits.device)
        totals.index_add_(0, rows, losses.double())
    counts = torch.bincount(rows.cpu(), minlength=len(encoded)).tolist()
    return list(zip(totals.tolist(), counts))


def truncate(encoded: Encoded, max_length: int | None) -> Encoded:
    if max_length is None or len(encoded.input_ids) <= max_length:
        return encoded
    return Encoded(encoded.input_ids[:max_length], encoded.labels[:max_length])


@dataclass
class LossResult:
    overall: LossTotals = field(default_factory=LossTotals)
    groups: dict[str, LossTotals] = field(default_factory=lambda: defaultdict(LossTotals))
    truncated: int = 0


def response_loss(
    model: Any, prompt_tokenizer: PromptTokenizer, records: Sequence[Record], *,
    batch_size: int = 8, max_length: int | None = None,
) -> LossResult:
    """Answer-only loss over `records`, overall and per domain."""
    result = LossResult()
    encoded = prompt_tokenizer.encode_training_batch([r.conversation for r in records])
    result.truncated = sum(max_length is not None and len(e.input_ids) > max_length for e in encoded)
    encoded = [truncate(e, max_length) for e in encoded]
    for record, (nll, tokens) in zip(records, batched_nll(model, encoded, pad_id(prompt_tokenizer.tokenizer), batch_size)):
        result.overall.add(nll, tokens)
        result.groups[record.domain].add(nll, tokens)
    return result


def batched_nll(model: Any, encoded: Sequence[Encoded], padding: int, batch_size: int) -> list[tuple[float, int]]:
    """`sequence_nll` of every sequence, in their order, computed in batches of similar length."""
    results = [(0.0, 0)] * len(encoded)
    for batch in length_batches([len(e.input_ids) for e in encoded], batch_size):
        for index, pair in zip(batch, sequence_nll(model, [encoded[i] for i in batch], padding)):
            results[index] = pair
    return results


# --- generation ---------------------------------------------------------------------------------


def generate_answers(
    model: Any, prompt_tokenizer: PromptTokenizer, questions: Sequence[Conversation], *,
    batch_size: int = 8, max_new_tokens: int = 256, sample: bool = False, seed: int = 0,
) -> list[str]:
    """The model's answer to each conversation (which ends with a human turn), batched; each answer is cut at its
    first stop token (<|End|>, a new <|Human|> turn, or EOS)."""
    generated = generate_answer_ids(model, prompt_tokenizer, questions, batch_size=batch_size,
                                    max_new_tokens=max_new_tokens, sample=sample, seed=seed)
    return [prompt_tokenizer.decode_answer(ids) for ids in generated]


def generate_answer_ids(
    model: Any, prompt_tokenizer: PromptTokenizer, questions: Sequence[Conversation], *,
    batch_size: int = 8, max_new_tokens: int = 256, sample: bool = False, seed: int = 0,
) -> list[list[int]]:
    """The ids the model generates after each conversation's prompt, batched: up to and with its stop token, then
    padding. Prompts are left-padded so every row's answer starts right after its own prompt."""
    import torch

    tokenizer = prompt_tokenizer.tokenizer
    prompts = [prompt_tokenizer.encode_inference(question) for question in questions]
    stops, padding = stop_token_ids(tokenizer), pad_id(tokenizer)
    device = next(model.parameters()).device
    answers: list[list[int]] = [[] for _ in prompts]
    torch.manual_seed(seed)
    for batch in length_batches([len(p) for p in prompts], batch_size):
        width = max(len(prompts[i]) for i in batch)
        ids = torch.tensor([[padding] * (width - len(prompts[i])) + prompts[i] for i in batch], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch], device=device)
        with torch.inference_mode():
            output = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=sample,
                eos_token_id=stops, pad_token_id=padding,
            )
        for row, index in enumerate(batch):
            answers[index] = output[row, width:].tolist()
    return answers


def split_last_answer(conversation: Conversation) -> tuple[Conversation, str]:
    """The conversation up to its last question, and the reference answer to it."""
    return Conversation(conversation.turns[:-1], conversation.system), conversation.turns[-1].text
