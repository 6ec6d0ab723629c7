"""Samples/s of `yayi eval`'s batched loss against a one-record-at-a-time loop, same model, same run.

A tiny Llama-shaped model is built offline, its tokenizer trained on the data (see shapes.py for
the two shapes, `--data short` and `--data yayi`). Three ways, alternating (A B C A B C ...), the
median and the best of the repeats reported for each:
- plain loop: one record at a time, `model(input_ids, labels=labels).loss`, as evaluation
  scripts usually do it (the baseline);
- `yayi_cli.eval.command.response_loss` (what `yayi eval` runs) with batch size 1;
- the same with batch size 16.
What batching gains depends on the token lengths (printed): the longer the records, the more a
forward pass of one record already keeps the cores busy, and the less batching adds.

    .venv/bin/python benchmarks/eval_batching.py [--data yayi] [--records 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from shapes import SHAPES, TEMPLATE, VOCABULARY, alternate, generated, parsed, summary, tiny_model, token_counts

from yayi_cli.core.prompt import IGNORE_INDEX, PromptTokenizer
from yayi_cli.core.records import Record
from yayi_cli.models.inference import response_loss
from yayi_cli.models.tokenizers import load_tokenizer
from yayi_cli.models.weights import load_model


def plain_loop(model, prompt_tokenizer: PromptTokenizer, examples: list[Record]) -> float:
    import torch

    total = tokens = 0.0
    for example in examples:
        encoded = prompt_tokenizer.encode_training(example.conversation)
        count = sum(label != IGNORE_INDEX for label in encoded.labels[1:])
        with torch.inference_mode():
            loss = model(input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels])).loss
        total, tokens = total + loss.item() * count, tokens + count
    return total / tokens


def timed(run: Callable[[], float], losses: dict[str, float], name: str) -> Callable[[], float]:
    """`run` as a function of no arguments that returns its seconds and keeps its loss in `losses`."""

    def once() -> float:
        start = time.perf_counter()
        losses[name] = run()
        return time.perf_counter() - start

    return once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=SHAPES, default="yayi")
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, help="of the tiny model's tokenizer (default: the shape's)")
    args = parser.parse_args()
    records = generated(args.data, args.records)
    examples = [Record(f"generated:{i}", r.domain, r.conversation) for i, r in enumerate(parsed(records))]
    vocab_size = args.vocab_size or VOCABULARY[args.data]
    with tempfile.TemporaryDirectory() as work:
        directory = tiny_model(Path(work) / "tiny", records, vocab_size)
        model = load_model(str(directory), device="cpu")
        prompt_tokenizer = PromptTokenizer(TEMPLATE, load_tokenizer(str(directory)))
        ways = {
            "plain loop, one record at a time": lambda chosen: plain_loop(model, prompt_tokenizer, chosen),
            "response_loss, batch size 1": lambda chosen: response_loss(model, prompt_tokenizer, chosen, batch_size=1).overall.loss,
            f"response_loss, batch size {args.batch_size}": lambda chosen: response_loss(
                model, prompt_tokenizer, chosen, batch_size=args.batch_size
            ).overall.loss,
        }
        for run in ways.values():  # warm-up: first calls of the kernels
            run(examples[: args.batch_size])
        losses: dict[str, float] = {}
        seconds = alternate({name: timed(lambda run=run: run(examples), losses, name) for name, run in ways.items()},
                            args.repeats)
        lengths, answers = token_counts(prompt_tokenizer, examples)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"data {args.data}: {args.records} records, tokenizer of {vocab_size}; tokens per record: {summary(lengths)}; "
          f"answer tokens per record: {summary(answers)}")
    print(f"{args.repeats} alternating repeats; samples/s at the median (best) time")
    median = {name: statistics.median(values) for name, values in seconds.items()}
    for name, values in seconds.items():
        print(f"{name:36} {args.records / median[name]:8.1f} ({args.records / min(values):.1f}) samples/s, "
              f"median {median[name]:.3f} s, loss {losses[name]:.6f}")
    plain, single, batched = median.values()
    print(f"medians: batched / plain loop = {plain / batched:.2f}x; batched / batch size 1 = {single / batched:.2f}x")


if __name__ == "__main__":
    main()
