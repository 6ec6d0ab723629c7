"""Trainable parameters and peak memory of `yayi train --lora` against a full fine-tune of the same model.

Both run through the real command (the deepspeed launcher, one CPU rank, ZeRO-2, fp32 because it is the
CPU) on the same Llama-shaped model built offline, the same data and the same steps, one after the other.
Peak memory is the largest resident set of any process of the run (the rank: model, gradients, optimizer
states, activations, and the Python/torch/DeepSpeed runtime every run pays alike), read from the kernel's
accounting of finished child processes; each run is measured from a fresh wrapper process so the two
cannot mix. The plan's own estimate (`memory.gpu_gib_per_rank` of `--dry-run --json`) is printed beside it.

    .venv/bin/python benchmarks/train_lora.py [--hidden-size 512] [--layers 8] [--steps 6]
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

from yayi_cli.core.prompt import TEMPLATES, render_training
from yayi_cli.core.records import parse_record
from yayi_cli.models.tiny import TinySpec, build_tiny


MEASURE = "import resource, subprocess, sys; run = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True); " \
          "print(run.stdout.strip()); print(run.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
"""Runs the command, prints its stdout, then its status and the peak resident set (KiB) of its largest descendant."""


def peak_rss_mib(command: list[str], env: dict[str, str]) -> float:
    """The peak resident set (MiB) of `command`'s largest process, measured from a fresh wrapper
    process so that no earlier run's peak can count; a failed run stops the benchmark."""
    measured = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, env=env)
    status, peak_kib = map(int, measured.stdout.rstrip().rpartition("\n")[2].split())
    if status:
        raise SystemExit(f"{' '.join(command[2:])} failed ({status}):\n{measured.stderr[-3000:]}")
    return peak_kib / 1024


def estimate_mib(command: list[str], env: dict[str, str]) -> float:
    """The plan's own estimate for a `yayi train` command (memory.gpu_gib_per_rank of `--dry-run
    --json`, MiB): a real run shows only the parameter count."""
    plan = subprocess.run([*command, "--dry-run", "--json"], capture_output=True, text=True, env=env, check=True)
    return json.loads(plan.stdout)["memory"]["gpu_gib_per_rank"] * 1024


def measure_run(command: list[str], output: Path) -> dict[str, float]:
    """Peak RSS, the plan's estimate, parameters and losses of one `yayi train` run into `output`."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    estimate = estimate_mib(command, env)
    peak = peak_rss_mib(command, env)
    summary = json.loads((output / "train_summary.json").read_text(encoding="utf-8"))
    losses = [entry["loss"] for entry in summary["loss_history"]]
    return {"trainable": summary["trainable_parameters"], "parameters": summary["parameters"],
            "peak_mib": peak, "estimate_mib": estimate, "first_loss": losses[0], "last_loss": losses[-1],
            "seconds": summary["metrics"]["train_runtime"]}


def train(model: Path, data: Path, output: Path, args: argparse.Namespace, lora: bool) -> dict[str, float]:
    command = [
        sys.executable, "-m", "yayi_cli", "train", "--cpu", "--gpus", "1", "--data", str(data), "--model", str(model),
        "-o", str(output), "--force", "--max-steps", str(args.steps), "--micro-batch-size", str(args.micro_batch_size),
        "--max-length", str(args.max_length), "--save-steps", "100000", "--logging-steps", "1",
        "--master-port", str(args.master_port),
    ] + (["--lora"] if lora else [])
    return measure_run(command, output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--master-port", type=int, default=29731, help="away from other runs' default 29500")
    args = parser.parse_args()
    records = instruction_records(args.records)
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "train.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        texts = [render_training(parse_record(r).conversation, TEMPLATES["yayi"]).text for r in records]
        spec = TinySpec(arch="llama", hidden_size=args.hidden_size, layers=args.layers, heads=8, vocab_size=4096)
        model = build_tiny(Path(work) / "model", texts, spec, TEMPLATES["yayi"])
        results = {name: train(model, data, Path(work) / "out", args, lora=name == "--lora")
                   for name in ("full fine-tune", "--lora")}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, Python {platform.python_version()}")
    print(f"Llama-shaped, hidden {args.hidden_size}, {args.layers} layers; {args.steps} steps of micro batch "
          f"{args.micro_batch_size}, max length {args.max_length}; 1 CPU rank, ZeRO-2, fp32")
    print(f"{'':16} {'trainable':>12} {'of':>12} {'peak RSS MiB':>13} {'estimate MiB':>13} {'loss first->last':>18}")
    for name, result in results.items():
        print(f"{name:16} {result['trainable']:12,} {result['parameters']:12,} {result['peak_mib']:13.0f} "
              f"{result['estimate_mib']:13.0f} {result['first_loss']:8.3f} -> {result['last_loss']:.3f}")
    full, lora = results["full fine-tune"], results["--lora"]
    print(f"--lora / full: trainable {lora['trainable'] / full['trainable']:.3f}x, "
          f"peak RSS {lora['peak_mib'] / full['peak_mib']:.2f}x ({full['peak_mib'] - lora['peak_mib']:.0f} MiB less)")


if __name__ == "__main__":
    main()
