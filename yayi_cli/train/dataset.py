"""Records -> training examples: tokenized through the prompt core, cached, and optionally packed.

Every record is accounted for: kept whole, truncated, or skipped (too long under `--overlong
skip`, or truncated to nothing that carries loss), and the counts are logged. Packing puts several
examples into one row with position ids restarting at each example; models whose attention masks
follow those position ids (Llama and most recent ones in transformers) then attend within each
example only. Models without position ids (BLOOM's ALiBi) are batched by similar length instead.
"""

from __future__ import annotations

import bisect
import hashlib
import inspect
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli import __version__
from yayi_cli.core.prompt import IGNORE_INDEX, PromptTokenizer
from yayi_cli.core.records import Record


KEPT, TRUNCATED, TOO_LONG, NO_ANSWER = range(4)
"""Each record's fate, stored with its tokens so that cached runs report the same counts."""
TOKENIZE_BATCH = 1000
PAD_TO_MULTIPLE_OF = 8


@dataclass(frozen=True)
class ExampleCounts:
    records: int
    kept: int
    truncated: int
    skipped_too_long: int
    skipped_no_answer: int
    tokens: int
    loss_tokens: int

    def to_json(self) -> dict[str, int]:
        return dict(vars(self))

    def summary(self) -> str:
        return (
            f"{self.records} records: {self.kept} used ({self.truncated} truncated), "
            f"{self.skipped_too_long} skipped as too long, {self.skipped_no_answer} skipped with no answer "
            f"left after truncation; {self.tokens} tokens, {self.loss_tokens} carrying loss"
        )


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "yayi" / "tokenized"


def cache_key(prompt_tokenizer: PromptTokenizer, inputs: dict[str, Any], max_length: int, overlong: str) -> str:
    """Everything the tokens depend on: which data is trained and held out, the exact tokenizer,
    template, limits, and this code."""
    parts = {
        "inputs": inputs,
        "tokenizer": hashlib.sha256(prompt_tokenizer.tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
        "template": prompt_tokenizer.template.to_dict(),
        "max_length": max_length,
        "overlong": overlong,
        "yayi": __version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _fit(input_ids: list[int], labels: list[int], max_length: int, overlong: str) -> tuple[list[int], list[int], int]:
    if len(input_ids) <= max_length:
        return input_ids, labels, KEPT
    if overlong == "skip":
        return [], [], TOO_LONG
    labels = labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return [], [], NO_ANSWER
    return input_ids[:max_length], labels, TRUNCATED


def tokenize_examples(examples: Sequence[Record], prompt_tokenizer: PromptTokenizer, *, max_length: int,
                      overlong: str, cache_file: Path | None) -> Any:
    """A `datasets.Dataset` with input_ids, labels, length and status for every record, in order.

    With `cache_file`, a second run with the same key reads the tokens back instead of tokenizing.
    """

    def encode(batch: dict[str, list[int]]) -> dict[str, list[Any]]:
        encoded = prompt_tokenizer.encode_training_batch([examples[i].conversation for i in batch["index"]])
        columns: dict[str, list[Any]] = {"input_ids": [], "labels": [], "length": [], "status": []}
        for item in encoded:
            input_ids, labels, status = _fit(item.input_ids, item.labels, max_length, overlong)
            for name, value in zip(columns, (input_ids, labels, len(input_ids), status)):
                columns[name].append(value)
        return columns

    return map_cached(len(examples), encode, cache_file)


def map_cached(count: int, encode: Any, cache_file: Path | None) -> Any:
    """`encode` (a batch of {"index": [...]} -> columns) over record indexes 0..count-1, as a
    `datasets.Dataset`; with `cache_file`, a second run with the same key reads the result back."""
    import datasets

    indexes = datasets.Dataset.from_dict({"index": list(range(count))})
    options: dict[str, Any] = {"batched": True, "batch_size": TOKENIZE_BATCH, "remove_columns": ["index"]}
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        options |= {"cache_file_name": str(cache_file), "load_from_cache_file": True,
                    "new_fingerprint": cache_file.stem}
    with _quiet_datasets_progress():
        return indexes.map(encode, **options)


def read_cached(cache_file: Path) -> Any:
    """The examples `tokenize_examples` cached in `cache_file` (written whole, then renamed into place)."""
    import datasets

    return datasets.Dataset.from_file(str(cache_file))


class _quiet_datasets_progress:
    """datasets draws a progress bar per map; keep it only on a terminal."""

    def __enter__(self) -> None:
        import datasets

        self.was_enabled = datasets.utils.logging.is_progress_bar_enabled()
        if not os.isatty(2):
            datasets.utils.logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        import datasets

        if self.was_enabled:
            datasets.utils.logging.enable_progress_bar()


def count_examples(tokenized: Any) -> ExampleCounts:
    statuses = tokenized["status"]
    lengths = tokenized["length"]
    if "answer_tokens" in tokenized.column_names:  # preference examples count their answers as they are made
        loss_tokens = sum(tokenized["answer_tokens"])
    else:
        loss_tokens = sum(sum(label != IGNORE_INDEX for label in labels) for labels in tokenized["labels"])
    return ExampleCounts(
        records=len(statuses),
        kept=sum(status in (KEPT, TRUNCATED) for status in statuses),
        truncated=statuses.count(TRUNCATED),
        skipped_too_long=statuses.count(TOO_LONG),
        skipped_no_answer=statuses.count(NO_ANSWER),
        tokens=sum(lengths),
        loss_tokens=loss_tokens,
    )


def usable(tokenized: Any) -> Any:
    """The examples that train: everything not skipped (the counts say what was)."""
    keep = [i for i, status in enumerate(tokenized["status"]) if status in (KEPT, TRUNCATED)]
    return tokenized.select(keep).remove_columns(["status"])


def pack(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Group example indexes into rows of at most `max_length` tokens (best fit, longest first).

    Best-fit decreasing leaves little room unused on instruction data (many short, few long).
    """
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row number), sorted
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        length = lengths[index]
        spot = bisect.bisect_left(room, (length, -1))
        if spot == len(room):
            rows.append([index])
            free, row = max_length - length, len(rows) - 1
        else:
            free, row = room.pop(spot)
            rows[row].append(index)
            free -= length
        bisect.insort(room, (free, row))
    return rows


class PackedExamples:
    """A map-style dataset whose items are packed rows: ids, labels and restarting position ids."""

    def __init__(self, tokenized: Any, max_length: int) -> None:
        self.tokenized = tokenized
        self.rows = pack(tokenized["length"], max_length)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, row: int) -> dict[str, list[int]]:
        examples = self.tokenized[self.rows[row]]
        item: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for input_ids, labels in zip(examples["input_ids"], examples["labels"]):
            item["input_ids"] += input_ids
            item["labels"] += labels
            item["position_ids"] += range(len(input_ids))
        return item


def supports_packing(model: Any) -> bool:
    """Packed rows need a model that takes position ids (and builds its mask from them)."""
    return "position_ids" in inspect.signature(model.forward).parameters


@dataclass
class PaddingCollator:
    """Pads a batch to its longest row (a multiple of 8): pad ids, no loss, and for packed rows
    position ids that start a new segment instead of an attention mask."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(feature["input_ids"]) for feature in features)
        width = -(-longest // PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
        packed = "position_ids" in features[0]
        batch["position_ids" if packed else "attention_mask"] = []
        for feature in features:
            missing = width - len(feature["input_ids"])
            batch["input_ids"].append(list(feature["input_ids"]) + [self.pad_token_id] * missing)
            batch["labels"].append(list(feature["labels"]) + [IGNORE_INDEX] * missing)
            if packed:
                batch["position_ids"].append(list(feature["position_ids"]) + list(range(missing)))
            else:
                batch["attention_mask"].append([1] * len(feature["input_ids"]) + [0] * missing)
        return {name: torch.tensor(rows, dtype=torch.long) for name, rows in batch.items()}
