"""`yayi train --method grpo`: seconds per GRPO step against a bare TRL `GRPOTrainer` script (target: at most 1.1x).

`yayi train --method grpo --cpu --gpus 2 --reward label` against bare_grpo.py (plain transformers + TRL, its own
label reward) started by the same `deepspeed --num_gpus 2` launcher with the environment yayi gives its ranks and
the ds_config.json the first yayi run wrote; the same Llama-shaped random-weight model built offline, the same
prompts (the bare script gets them as the chat text yayi's prompt core renders), micro batch, generations,
completion length, steps, learning rate and seed; answers stop at `<|End|>` in both. Runs alternate (yayi, bare,
yayi, ...) so that load on a shared machine hits both alike. Seconds per step are the median of TRL's own
`step_time` over each run's steps after the first (both print TRL's log dicts): launcher and model start-up, the
first step's warm-up and yayi's checkpoint at the last step (kept for --resume) are left out; each run's
train_runtime / steps, which counts them, is printed too. A GRPO step is mostly generation, so each side's mean
answer length is printed beside its time.

    .venv/bin/python benchmarks/train_grpo.py [--rounds 3] [--steps 6]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from shapes import TEMPLATE, alternate
from synthetic import write_jsonl
from train_dpo import reported, run_logged

from yayi_cli.core.prompt import HUMAN, Conversation, Turn, render_inference
from yayi_cli.core.sampling import DEFAULT_SEED
from yayi_cli.models.tiny import TinySpec, build_tiny


BENCHMARKS = Path(__file__).resolve().parent
YAYI, BARE = "yayi train --method grpo", "bare TRL GRPOTrainer"
THINGS = ["质量", "物流", "包装", "客服", "价格", "颜色", "味道", "做工", "服务", "速度", "外观", "手感", "尺码", "售后",
          "做法", "口感"]


def prompt_records() -> list[dict[str, str]]:
    return [{"prompt": f"判断这条评论的情感，只答正面或负面。\n{thing}{'很好' if good else '很差'}", "label": "正面" if good else "负面"}
            for thing in THINGS for good in (True, False)]


def as_chat_text(records: list[dict[str, str]]) -> list[dict[str, str]]:
    """The records as the bare script gets them: the prompt core's inference text, the label beside it."""
    return [{"prompt": render_inference(Conversation((Turn(HUMAN, record["prompt"]),), None), TEMPLATE),
             "label": record["label"]} for record in records]


STEP_TIME = re.compile(r"'step_time': '([0-9.]+)'")


def steady_step_seconds(log: str) -> float:
    """The median of TRL's `step_time` over the steps after the first."""
    return statistics.median(float(value) for value in STEP_TIME.findall(log)[1:])


def timed_runs(work: Path, model: Path, data: Path, texts: Path, args: argparse.Namespace,
               lengths: dict[str, list[float]], runtimes: dict[str, list[float]]) -> dict[str, Callable[[], float]]:
    """One callable per side: each trains once into a new folder and returns its seconds per step (and notes its mean
    answer lengths in `lengths`, its train_runtime / steps in `runtimes`)."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(args.threads))
    shared = {"--micro-batch-size": args.micro_batch_size, "--num-generations": args.num_generations,
              "--max-completion-length": args.max_completion_length, "--lr": args.lr}
    flags = [str(item) for pair in shared.items() for item in pair]
    numbers = {YAYI: itertools.count(), BARE: itertools.count()}
    first_config = work / "yayi-0" / "ds_config.json"

    def yayi() -> float:
        output = work / f"yayi-{next(numbers[YAYI])}"
        run_logged([str(bin_dir / "yayi"), "train", "--method", "grpo", "--reward", "label", "--cpu", "--gpus", "2",
                    "--model", str(model), "--data", str(data), "-o", str(output), "--max-steps", str(args.steps),
                    *flags, "--seed", str(DEFAULT_SEED), "--logging-steps", "1", "--save-steps", "100000",
                    "--master-port", str(args.master_port)], env, output.with_suffix(".log"))
        events = [json.loads(line) for line in (output / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        lengths[YAYI] += [event["completions/mean_length"] for event in events if event.get("event") == "log"]
        summary = json.loads((output / "train_summary.json").read_text(encoding="utf-8"))
        runtimes[YAYI].append(summary["metrics"]["train_runtime"] / args.steps)
        return reported(output, steady_step_seconds((output / "train.log").read_text(encoding="utf-8")))

    def bare() -> float:
        output = work / f"bare-{next(numbers[BARE])}"
        stdout = run_logged([str(bin_dir / "deepspeed"), "--num_gpus", "2", "--master_port", str(args.master_port),
                             str(BENCHMARKS / "bare_grpo.py"), "--model", str(model), "--prompts", str(texts),
                             "--deepspeed", str(first_config), "--output", str(output), "--steps", str(args.steps),
                             "--seed", str(DEFAULT_SEED), *flags], env, output.with_suffix(".log"))
        result = json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith("{")))
        state = json.loads(next(output.glob("checkpoint-*/trainer_state.json")).read_text(encoding="utf-8"))
        lengths[BARE] += [entry["completions/mean_length"] for entry in state["log_history"]
                          if "completions/mean_length" in entry]
        runtimes[BARE].append(result["metrics"]["train_runtime"] / result["steps"])
        return reported(output, steady_step_seconds(output.with_suffix(".log").read_text(encoding="utf-8")))

    return {YAYI: yayi, BARE: bare}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each rank")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--master-port", type=int, default=29739, help="away from other runs' default 29500")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep the runs' outputs and logs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="yayi-bench-grpo-") as scratch:
        work = args.keep or Path(scratch)
        records = prompt_records()
        texts = as_chat_text(records)
        spec = TinySpec(arch="llama", hidden_size=args.hidden_size, layers=args.layers, heads=8, vocab_size=args.vocab_size)
        model = build_tiny(work / "model", [text["prompt"] + text["label"] for text in texts], spec, TEMPLATE)
        data, chat_texts = write_jsonl(work / "prompts.jsonl", records), write_jsonl(work / "texts.jsonl", texts)
        lengths: dict[str, list[float]] = {YAYI: [], BARE: []}
        runtimes: dict[str, list[float]] = {YAYI: [], BARE: []}
        seconds = alternate(timed_runs(work, model, data, chat_texts, args, lengths, runtimes), args.rounds)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"Llama-shaped, hidden {args.hidden_size}, {args.layers} layers, vocabulary {args.vocab_size}, random weights; "
          f"{len(records)} prompts, {args.steps} steps of micro batch {args.micro_batch_size} x 2 CPU ranks, "
          f"{args.num_generations} generations of at most {args.max_completion_length} tokens, lr {args.lr:g}, beta 0; "
          f"ZeRO-2, fp32, {args.threads} thread(s) a rank; {args.rounds} alternating rounds")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, values in seconds.items():
        length = statistics.mean(lengths[name]) if lengths[name] else float("nan")
        print(f"{name:26} {medians[name]:7.3f} s/step (median), mean answer {length:.1f} tokens   per run: "
              + ", ".join(f"{v:.3f}" for v in values) + "   train_runtime / steps: "
              + ", ".join(f"{v:.2f}" for v in runtimes[name]))
    print(f"yayi / bare, seconds per step: {medians[YAYI] / medians[BARE]:.2f}x (medians)")


if __name__ == "__main__":
    main()
