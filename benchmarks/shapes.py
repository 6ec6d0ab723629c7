"""What the timing benchmarks share: the two data shapes, the tiny model for each, and alternation.

- `short`: `synthetic.instruction_records`, short mixed Chinese/English answers (about 20 words,
  log-normal), with the tiny model's usual 1,024-entry tokenizer;
- `yayi`: `synthetic.yayi_like_records` (about 730 bytes a record, Chinese, five domain prefixes,
  log-normal answers, 1% duplicates), with a 380-entry tokenizer trained on the data: about 0.7
  characters a token, close to what Llama-2's own tokenizer gives on Chinese text, so that answers
  average about 200 tokens. A larger vocabulary gives fewer, shorter tokens (`--vocab-size`).

Both tokenizers are trained on the benchmark's own records rendered with the `yayi` template.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from pathlib import Path

from synthetic import instruction_records, yayi_like_records

from yayi_cli.core.prompt import IGNORE_INDEX, TEMPLATES, PromptTokenizer, render_training
from yayi_cli.core.records import ParsedRecord, parse_record
from yayi_cli.models.tiny import TinySpec, build_tiny


SHAPES = ("short", "yayi")
VOCABULARY = {"short": 1024, "yayi": 380}
TEMPLATE = TEMPLATES["yayi"]


def generated(shape: str, count: int, spread: float = 0.8) -> list[dict[str, str]]:
    """`count` records of the shape; `spread` (sigma of the answer lengths) applies to `short` only."""
    return instruction_records(count, spread=spread) if shape == "short" else yayi_like_records(count)


def parsed(records: Iterable[dict[str, str]]) -> list[ParsedRecord]:
    return [parse_record(record) for record in records]


def tiny_model(directory: Path, records: list[dict[str, str]], vocab_size: int, **spec: int) -> Path:
    """A tiny Llama-shaped model whose tokenizer is trained on `records` rendered with the template."""
    texts = [render_training(record.conversation, TEMPLATE).text for record in parsed(records)]
    shape = TinySpec(arch="llama", vocab_size=vocab_size, max_positions=2048, **spec)
    return build_tiny(directory, texts, shape, TEMPLATE)


def token_counts(prompt_tokenizer: PromptTokenizer, records: list[ParsedRecord]) -> tuple[list[int], list[int]]:
    """(tokens per record, answer tokens per record: those that carry loss)."""
    encoded = prompt_tokenizer.encode_training_batch([record.conversation for record in records])
    return [len(e.input_ids) for e in encoded], [sum(label != IGNORE_INDEX for label in e.labels) for e in encoded]


def summary(values: list[int]) -> str:
    return f"median {statistics.median(values):g}, mean {statistics.mean(values):.0f}, max {max(values)}"


def alternate(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Every result of every variant, run in turn (A B C A B C ...) so that load hits all of them alike."""
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            results[name].append(run())
    return results
