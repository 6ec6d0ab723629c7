"""Trained (non-padding) tokens per second of `yayi train --packing` against upstream-style batching.

Upstream-style batching pads each batch to its longest example (to a multiple of 8), which is what
`yayi train` without --packing does. Both run through the real command (the deepspeed launcher,
CPU ranks) on the same tiny Llama-shaped model built offline, its tokenizer trained on the data (see
shapes.py for the two shapes, `--data short` and `--data yayi`); the two alternate, and the median
and the best of the repeats are reported for each. Time is the Trainer's own train_runtime, so
launcher start-up is not counted; tokens are every non-padding token of every epoch.

Packing can only remove padding, so the script also prints what the gain depends on: the token
lengths against the row length, and the share of padding in padded and in packed batches (from the
same batching rules, over shuffled orders); padded slots / packed slots is the gain to expect
where cost follows slots.

    .venv/bin/python benchmarks/train_packing.py [--data yayi] [--records 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from shapes import SHAPES, TEMPLATE, VOCABULARY, alternate, generated, parsed, summary, tiny_model, token_counts
from synthetic import write_jsonl

from yayi_cli.core.prompt import PromptTokenizer
from yayi_cli.models.tokenizers import load_tokenizer
from yayi_cli.train.dataset import PAD_TO_MULTIPLE_OF, pack


ROW_LENGTH = {"short": 512, "yayi": 1024}
"""Default --max-length: rows that hold several examples; on a tiny model the cost of attention grows
with the row (each row is one L x L block), so rows no longer than the data needs."""
PADDED, PACKED = "padded batches (upstream style)", "--packing"


def train(model: Path, data: Path, output: Path, args: argparse.Namespace, packing: bool) -> float:
    """Trained tokens per second of one `yayi train` run."""
    command = [
        sys.executable, "-m", "yayi_cli", "train", "--cpu", "--gpus", "1", "--data", str(data), "--model", str(model),
        "-o", str(output), "--force", "--epochs", str(args.epochs), "--micro-batch-size", str(args.micro_batch_size),
        "--max-length", str(args.max_length), "--lr", "1e-3", "--save-steps", "100000", "--logging-steps", "100000",
        "--packing" if packing else "--no-packing",
    ]
    subprocess.run(command, check=True, capture_output=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    summary = json.loads((output / "train_summary.json").read_text(encoding="utf-8"))
    return summary["examples"]["train"]["tokens"] * args.epochs / summary["metrics"]["train_runtime"]


def slots(rows: list[int], batch_size: int, orders: int = 20) -> int:
    """Token slots (padding included) of batches of `rows`, each padded to its longest row (a multiple
    of 8), summed over `orders` seeded shuffles, as the Trainer's random sampler draws them."""
    rng, total = random.Random(0), 0
    for _ in range(orders):
        shuffled = rng.sample(rows, len(rows))
        for start in range(0, len(shuffled), batch_size):
            batch = shuffled[start : start + batch_size]
            total += len(batch) * -(-max(batch) // PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF
    return total


def padding_report(lengths: list[int], max_length: int, batch_size: int) -> str:
    """What packing can gain on these lengths: padding shares and the slot ratio."""
    kept = [min(length, max_length) for length in lengths]
    rows = [sum(kept[i] for i in row) for row in pack(kept, max_length)]
    padded, packed = slots(kept, batch_size), slots(rows, batch_size)
    tokens = 20 * sum(kept)
    return (f"{sum(length > max_length for length in lengths)} of {len(lengths)} records truncated; "
            f"{len(rows)} packed rows of mean {statistics.mean(rows):.0f} tokens; padding share: padded batches "
            f"{1 - tokens / padded:.0%}, packed batches {1 - tokens / packed:.0%}; padded / packed slots = "
            f"{padded / packed:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=SHAPES, default="yayi")
    parser.add_argument("--records", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, help="row length (default: 512 for short, 1024 for yayi)")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--spread", type=float, default=1.2, help="sigma of the log-normal answer lengths (short)")
    parser.add_argument("--vocab-size", type=int, help="of the tiny model's tokenizer (default: the shape's)")
    args = parser.parse_args()
    args.max_length = args.max_length or ROW_LENGTH[args.data]
    vocab_size = args.vocab_size or VOCABULARY[args.data]
    records = generated(args.data, args.records, spread=args.spread)
    with tempfile.TemporaryDirectory() as work:
        data = write_jsonl(Path(work) / "train.jsonl", records)
        model = tiny_model(Path(work) / "tiny", records, vocab_size, hidden_size=args.hidden_size, layers=4)
        lengths, answers = token_counts(PromptTokenizer(TEMPLATE, load_tokenizer(str(model))), parsed(records))
        runs = {name: lambda packing=name == PACKED: train(model, data, Path(work) / "out", args, packing)
                for name in (PADDED, PACKED)}
        rates = alternate(runs, args.repeats)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"Llama-shaped, hidden {args.hidden_size}, 4 layers; data {args.data}, tokenizer of {vocab_size}")
    print(f"{args.records} records, micro batch {args.micro_batch_size}, max length {args.max_length}, "
          f"{args.epochs} epoch(s), 1 CPU rank; {args.repeats} alternating repeats")
    print(f"tokens per record: {summary(lengths)}; answer tokens per record: {summary(answers)}")
    print(padding_report(lengths, args.max_length, args.micro_batch_size))
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        print(f"{name:34} {median[name]:10.0f} trained tokens/s (median; best {max(values):.0f})")
    print(f"--packing / padded = {median[PACKED] / median[PADDED]:.2f}x (medians; "
          f"{max(rates[PACKED]) / max(rates[PADDED]):.2f}x best against best)")


if __name__ == "__main__":
    main()
