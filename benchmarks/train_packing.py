"""Trained (non-padding) tokens per second of `yayi train --packing` against upstream-style batching.

Upstream-style batching pads each batch to its longest example (to a multiple of 8), which is what
`yayi train` without --packing does. Both run through the real command (the deepspeed launcher,
CPU ranks) on the same tiny Llama-shaped model built offline and the same data, whose answer
lengths are spread like real instruction data (many short, a few long); they alternate, and the
best of the repeats is kept for each. Time is the Trainer's own train_runtime, so launcher start-up
is not counted; tokens are every non-padding token of every epoch.

    .venv/bin/python benchmarks/train_packing.py [--records 512] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from synthetic import instruction_records
from yayi_cli.prompt import TEMPLATES, render_training
from yayi_cli.records import parse_record
from yayi_cli.tiny import TinySpec, build_tiny


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--spread", type=float, default=1.2, help="sigma of the log-normal answer lengths")
    args = parser.parse_args()
    records = instruction_records(args.records, spread=args.spread)
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "train.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        texts = [render_training(parse_record(r).conversation, TEMPLATES["yayi"]).text for r in records]
        model = build_tiny(Path(work) / "tiny", texts, TinySpec(arch="llama", hidden_size=args.hidden_size, layers=4), TEMPLATES["yayi"])
        best = {"padded batches (upstream style)": 0.0, "--packing": 0.0}
        for _ in range(args.repeats):
            for name in best:
                rate = train(model, data, Path(work) / "out", args, packing=name == "--packing")
                best[name] = max(best[name], rate)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"Llama-shaped, hidden {args.hidden_size}, 4 layers; answer-length spread {args.spread}")
    print(f"{args.records} records, micro batch {args.micro_batch_size}, max length {args.max_length}, "
          f"{args.epochs} epoch(s), 1 CPU rank")
    for name, rate in best.items():
        print(f"{name:34} {rate:10.0f} trained tokens/s")
    print(f"--packing / padded = {best['--packing'] / best['padded batches (upstream style)']:.2f}x")


if __name__ == "__main__":
    main()
