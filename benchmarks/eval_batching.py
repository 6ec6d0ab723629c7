"""Samples/s of `yayi eval`'s batched loss against a one-record-at-a-time loop, same model, same run.

A tiny Llama-shaped model is built offline; the data are instruction records whose lengths are
spread like real instruction data (many short, a few long). Three ways, alternating, best of the
repeats kept for each:
- plain loop: one record at a time, `model(input_ids, labels=labels).loss`, as evaluation
  scripts usually do it (the baseline);
- `yayi_cli.evaluate.response_loss` (what `yayi eval` runs) with batch size 1;
- the same with batch size 16.

    .venv/bin/python benchmarks/eval_batching.py [--records 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from synthetic import instruction_records
from yayi_cli.data.checked import Record
from yayi_cli.records import NO_DOMAIN
from yayi_cli.inference import response_loss
from yayi_cli.models import load_model, load_tokenizer
from yayi_cli.prompt import ASSISTANT, HUMAN, TEMPLATES, Conversation, PromptTokenizer, Turn, render_training
from yayi_cli.tiny import TinySpec, build_tiny

def records(count: int) -> list[Record]:
    return [
        Record(f"generated:{i}", NO_DOMAIN, Conversation((Turn(HUMAN, r["instruction"]), Turn(ASSISTANT, r["output"]))))
        for i, r in enumerate(instruction_records(count))
    ]


def plain_loop(model, prompt_tokenizer: PromptTokenizer, examples: list[Record]) -> float:
    import torch

    total = tokens = 0.0
    for example in examples:
        encoded = prompt_tokenizer.encode_training(example.conversation)
        count = sum(label != -100 for label in encoded.labels[1:])
        with torch.inference_mode():
            loss = model(input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels])).loss
        total, tokens = total + loss.item() * count, tokens + count
    return total / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    examples = records(args.records)
    with tempfile.TemporaryDirectory() as work:
        texts = [render_training(e.conversation, TEMPLATES["yayi"]).text for e in examples]
        directory = build_tiny(Path(work) / "tiny", texts, TinySpec(arch="llama"))
        model = load_model(str(directory), device="cpu")
        prompt_tokenizer = PromptTokenizer(TEMPLATES["yayi"], load_tokenizer(str(directory)))
        runs = {
            "plain loop, one record at a time": lambda: plain_loop(model, prompt_tokenizer, examples),
            "response_loss, batch size 1": lambda: response_loss(model, prompt_tokenizer, examples, batch_size=1).overall.loss,
            f"response_loss, batch size {args.batch_size}": lambda: response_loss(
                model, prompt_tokenizer, examples, batch_size=args.batch_size
            ).overall.loss,
        }
        best, losses = dict.fromkeys(runs, float("inf")), {}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                losses[name] = run()
                best[name] = min(best[name], time.perf_counter() - start)
        lengths = sorted(len(prompt_tokenizer.encode_training(e.conversation).input_ids) for e in examples)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{args.records} records, tokens per record: median {lengths[len(lengths) // 2]}, max {lengths[-1]}")
    for name, seconds in best.items():
        print(f"{name:36} {args.records / seconds:8.1f} samples/s ({seconds:.3f} s, loss {losses[name]:.6f})")
    names = list(runs)
    print(f"batched / plain loop = {best[names[0]] / best[names[2]]:.2f}x; batched / batch size 1 = {best[names[1]] / best[names[2]]:.2f}x")


if __name__ == "__main__":
    main()
