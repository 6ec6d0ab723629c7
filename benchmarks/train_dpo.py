"""`yayi train --method dpo`: seconds per DPO step against a bare TRL script, and peak memory by reference kind.

Time: `yayi train --method dpo --cpu --gpus 2` (a full fine-tune: the policy and a frozen reference
copy) against bare_dpo.py (plain transformers + TRL's `DPOTrainer`, also with a reference copy) started
by the same `deepspeed --num_gpus 2` launcher with the environment yayi gives its ranks, with the
ds_config.json the first yayi run wrote, on the same Llama-shaped model built offline, the same
generated pairs, micro batch, steps, learning rate, beta, seed and max length. The bare script gets
the pairs as prompt/chosen/rejected TEXT rendered by yayi's prompt core and tokenizes them itself
(TRL adds an EOS to each answer), so both read about the same tokens; both counts are printed.
Runs alternate (yayi, bare, yayi, ...) so that load on a shared machine hits both alike; seconds per
optimizer step are each run's train_runtime / steps (launcher and model start-up not counted).

Memory: one CPU rank, one run after another on a larger model, each from a fresh wrapper process
(train_lora.py's measurement): LoRA-DPO (the reference is the base with the adapter disabled), full
DPO (a frozen reference copy) and full DPO with --precompute-ref (no reference held while training);
the peak resident set of the rank beside yayi's own `--dry-run` estimate (activations excluded).

    .venv/bin/python benchmarks/train_dpo.py [--rounds 3] [--steps 8] [--measure time memory]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from shapes import TEMPLATE, alternate
from synthetic import preference_records, write_jsonl
from train_lora import measure_run

from yayi_cli.core.preference_tokens import encode_preferences
from yayi_cli.core.prompt import PromptTokenizer, Template, render_inference, render_training
from yayi_cli.core.records import answered, parse_record
from yayi_cli.core.sampling import DEFAULT_SEED
from yayi_cli.models.tiny import TinySpec, build_tiny
from yayi_cli.models.tokenizers import load_tokenizer
from yayi_cli.train.options import DPO
from yayi_cli.train.preference import ANSWER_COLUMNS, count_tokens


BENCHMARKS = Path(__file__).resolve().parent
YAYI, BARE = "yayi train --method dpo", "bare TRL DPOTrainer"
REFERENCES = {"LoRA-DPO (adapter disabled)": ["--lora"], "full DPO (reference copy)": [],
              "full DPO --precompute-ref": ["--precompute-ref"]}


def pair_texts(records: list[dict[str, str]], template: Template = TEMPLATE) -> list[dict[str, str]]:
    """Each pair as prompt/chosen/rejected text rendered by yayi's prompt core: the prompt up to
    `<|YaYi|>:\\n`, each answer as the SFT format ends it (`\\n\\n<|End|>`)."""
    texts = []
    for parsed in map(parse_record, records):
        prompt = render_inference(parsed.conversation, template)
        chosen, rejected = (render_training(answered(parsed.conversation, answer), template).text[len(prompt):]
                            for answer in parsed.answers)
        texts.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return texts


def model_for(directory: Path, texts: list[dict[str, str]], hidden_size: int, layers: int, vocab_size: int) -> Path:
    """A Llama-shaped model whose tokenizer is trained on the rendered pairs."""
    corpus = [text["prompt"] + text[answer] for text in texts for answer in ("chosen", "rejected")]
    spec = TinySpec(arch="llama", hidden_size=hidden_size, layers=layers, heads=8, vocab_size=vocab_size)
    return build_tiny(directory, corpus, spec, TEMPLATE)


def yayi_tokens(model: Path, records: list[dict[str, str]]) -> int:
    """Tokens of the pairs as yayi encodes them (prompt twice, plus both answers), before any cut."""
    prompt_tokenizer = PromptTokenizer(TEMPLATE, load_tokenizer(str(model)))
    encoded = encode_preferences([parse_record(record) for record in records], prompt_tokenizer)
    return sum(count_tokens({"prompt_ids": pair.prompt_ids, **dict(zip(ANSWER_COLUMNS[DPO], pair.answer_ids))})[0]
               for pair in encoded)


def run_logged(command: list[str], env: dict[str, str], log: Path) -> str:
    """Run `command` with its output kept in `log`; its stdout, or stop the benchmark on failure."""
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    log.write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode:
        raise SystemExit(f"{command[0]} failed ({done.returncode}); see {log}:\n{done.stderr[-3000:]}")
    return done.stdout


def reported(output: Path, seconds_per_step: float) -> float:
    """`seconds_per_step`, after a progress line on stderr with the load the run met."""
    print(f"{output.name}: {seconds_per_step:.2f} s/step, load average {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    return seconds_per_step


def timed_runs(work: Path, model: Path, data: Path, pairs: Path, args: argparse.Namespace,
               bare_tokens: list[int]) -> dict[str, Callable[[], float]]:
    """One callable per side: each trains once into a new folder and returns its seconds per step
    (the bare runs also append the tokens TRL made of the pairs to `bare_tokens`)."""
    bin_dir = Path(sys.executable).parent
    # yayi's rank environment for both; one thread a rank, so that two ranks do not oversubscribe two cores
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(args.threads))
    shared = {"--micro-batch-size": args.micro_batch_size, "--lr": args.lr, "--max-length": args.max_length,
              "--beta": args.beta, "--seed": DEFAULT_SEED}
    flags = [str(item) for pair in shared.items() for item in pair]
    numbers = {YAYI: itertools.count(), BARE: itertools.count()}
    first_config = work / "yayi-0" / "ds_config.json"

    def yayi() -> float:
        output = work / f"yayi-{next(numbers[YAYI])}"
        run_logged([str(bin_dir / "yayi"), "train", "--method", "dpo", "--cpu", "--gpus", "2", "--model", str(model),
                    "--data", str(data), "-o", str(output), "--max-steps", str(args.steps), *flags,
                    "--logging-steps", "1", "--save-steps", "100000", "--master-port", str(args.master_port),
                    "--cache-dir", str(work / "cache")], env, output.with_suffix(".log"))
        summary = json.loads((output / "train_summary.json").read_text(encoding="utf-8"))
        return reported(output, summary["metrics"]["train_runtime"] / args.steps)

    def bare() -> float:
        output = work / f"bare-{next(numbers[BARE])}"
        stdout = run_logged([str(bin_dir / "deepspeed"), "--num_gpus", "2", "--master_port", str(args.master_port),
                             str(BENCHMARKS / "bare_dpo.py"), "--model", str(model), "--pairs", str(pairs),
                             "--deepspeed", str(first_config), "--output", str(output), "--steps", str(args.steps),
                             *flags], env, output.with_suffix(".log"))
        result = json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith("{")))
        bare_tokens.append(result["tokens"])
        return reported(output, result["metrics"]["train_runtime"] / result["steps"])

    return {YAYI: yayi, BARE: bare}


def measure_time(work: Path, records: list[dict[str, str]], args: argparse.Namespace) -> None:
    texts = pair_texts(records)
    model = model_for(work / "time-model", texts, args.hidden_size, args.layers, args.vocab_size)
    data, pairs = write_jsonl(work / "pairs.jsonl", records), write_jsonl(work / "pair-texts.jsonl", texts)
    bare_tokens: list[int] = []
    seconds = alternate(timed_runs(work, model, data, pairs, args, bare_tokens), args.rounds)
    print(f"Time: Llama-shaped, hidden {args.hidden_size}, {args.layers} layers, vocabulary {args.vocab_size}; "
          f"{len(records)} pairs, {args.steps} steps of micro batch {args.micro_batch_size} x 2 CPU ranks, max length "
          f"{args.max_length}, lr {args.lr:g}, beta {args.beta:g}; ZeRO-2, fp32, {args.threads} thread(s) a rank; "
          f"{args.rounds} alternating rounds")
    print(f"tokens of the data set (prompt twice + both answers): yayi {yayi_tokens(model, records)}, "
          f"bare {bare_tokens[-1]}")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, values in seconds.items():
        print(f"{name:24} {medians[name]:7.2f} s/step (median)   per run: " + ", ".join(f"{v:.2f}" for v in values))
    print(f"yayi / bare, seconds per step: {medians[YAYI] / medians[BARE]:.2f}x (medians)")


def measure_memory(work: Path, records: list[dict[str, str]], args: argparse.Namespace) -> None:
    model = model_for(work / "memory-model", pair_texts(records), args.memory_hidden_size, args.memory_layers,
                      args.memory_vocab_size)
    data = write_jsonl(work / "memory-pairs.jsonl", records)
    results = {}
    for name, flags in REFERENCES.items():
        output = work / f"memory-{len(results)}"
        command = [sys.executable, "-m", "yayi_cli", "train", "--method", "dpo", "--cpu", "--gpus", "1", "--data",
                   str(data), "--model", str(model), "-o", str(output), "--max-steps", str(args.memory_steps),
                   "--micro-batch-size", str(args.micro_batch_size), "--max-length", str(args.max_length),
                   "--save-steps", "100000", "--logging-steps", "1", "--master-port", str(args.master_port), *flags]
        results[name] = measure_run(command, output)
    print(f"Memory: Llama-shaped, hidden {args.memory_hidden_size}, {args.memory_layers} layers, vocabulary "
          f"{args.memory_vocab_size}; {args.memory_steps} steps of micro batch {args.micro_batch_size}, max length "
          f"{args.max_length}; 1 CPU rank, ZeRO-2, fp32")
    print(f"{'':30} {'trainable':>12} {'of':>12} {'peak RSS MiB':>13} {'estimate MiB':>13} {'loss first->last':>18}")
    for name, result in results.items():
        print(f"{name:30} {result['trainable']:12,} {result['parameters']:12,} {result['peak_mib']:13.0f} "
              f"{result['estimate_mib']:13.0f} {result['first_loss']:8.3f} -> {result['last_loss']:.3f}")
    full = results["full DPO (reference copy)"]["peak_mib"]
    print("peak RSS against full DPO: " + ", ".join(f"{name} {result['peak_mib'] / full:.2f}x"
                                                   for name, result in results.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", nargs="+", choices=("time", "memory"), default=["time", "memory"])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each rank of the timed runs")
    parser.add_argument("--hidden-size", type=int, default=256, help="of the timed runs' model")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--memory-hidden-size", type=int, default=512, help="of the memory runs' model")
    parser.add_argument("--memory-layers", type=int, default=8)
    parser.add_argument("--memory-vocab-size", type=int, default=4096)
    parser.add_argument("--memory-steps", type=int, default=4)
    parser.add_argument("--master-port", type=int, default=29737, help="away from other runs' default 29500")
    args = parser.parse_args()
    records = preference_records(args.records)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory() as folder:
        if "time" in args.measure:
            measure_time(Path(folder), records, args)
        if "memory" in args.measure:
            measure_memory(Path(folder), records, args)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
