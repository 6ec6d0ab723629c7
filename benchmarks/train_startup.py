"""Start-up of `yayi train` against the `deepspeed` launcher started by hand on a plain Trainer script.

Both train the same tiny Llama-shaped model (built offline) on the same data with the same DeepSpeed
ZeRO config (the one yayi writes: ZeRO-2, fp32 on the CPU), one CPU rank, the same micro batch and
steps, with the environment yayi gives its ranks (DS_ACCELERATOR=cpu, unbuffered output). The
baseline script loads model and tokenizer with transformers, tokenizes the rendered training texts,
and runs `Trainer(args=TrainingArguments(use_cpu=True, deepspeed=CONFIG))` then `save_model`. Runs
alternate (baseline, yayi, baseline, ...) so that load on a shared machine hits both alike. Measured
from starting the process: the first optimizer step (the line each prints when step 1 ends: yayi's
console `step=1/...`, the baseline's callback) and the exit.

    .venv/bin/python benchmarks/train_startup.py [--runs 3] [--steps 3] [--code DIR]

`--code DIR` measures another version's yayi_cli (e.g. `git archive main yayi_cli | tar -x -C DIR`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from yayi_cli.core.prompt import TEMPLATES, render_training
from yayi_cli.core.records import parse_record
from yayi_cli.models.tiny import TinySpec, build_tiny
from yayi_cli.train.options import TrainOptions
from yayi_cli.train.zero import deepspeed_config


REPOSITORY = Path(__file__).resolve().parents[1]
FIRST_STEP = "first-step"
BASELINE = """
import json, sys
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                          TrainerCallback, TrainingArguments)

model_dir, texts_file, config_file, output, steps, batch = sys.argv[-6:]

class FirstStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1 and args.process_index == 0:
            print("%s", flush=True)

tokenizer = AutoTokenizer.from_pretrained(model_dir)
tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
model = AutoModelForCausalLM.from_pretrained(model_dir)
texts = json.load(open(texts_file, encoding="utf-8"))
examples = [tokenizer(text, truncation=True, max_length=1024) for text in texts]
args = TrainingArguments(output_dir=output, use_cpu=True, deepspeed=config_file, max_steps=int(steps),
                         per_device_train_batch_size=int(batch), logging_steps=1, report_to="none",
                         disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=examples, callbacks=[FirstStep()],
                  data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
trainer.train()
trainer.save_model(output)
""" % FIRST_STEP


def timed(command: list[str], env: dict[str, str], marker: str, log: Path) -> tuple[float, float]:
    """(seconds from start to the line that starts with `marker`, seconds to the exit) of one run."""
    started = time.monotonic()
    first_step = None
    with open(log, "w", encoding="utf-8") as kept:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            kept.write(line)
            if first_step is None and line.split("| ")[-1].startswith(marker):
                first_step = time.monotonic() - started
    if process.wait() != 0 or first_step is None:
        raise SystemExit(f"{command[0]} failed ({process.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return first_step, time.monotonic() - started


def write_inputs(work: Path, data: Path) -> tuple[Path, Path, Path]:
    """The tiny model, the baseline's rendered texts and the ZeRO config yayi writes for this run."""
    records = [parse_record(json.loads(line)) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [render_training(record.conversation, TEMPLATES["yayi"]).text for record in records]
    model = build_tiny(work / "model", texts, TinySpec(arch="llama"), TEMPLATES["yayi"])
    (work / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    options = TrainOptions(model=str(model), data=[str(data)], output="unused", cpu=True, gpus=1)
    (work / "ds_config.json").write_text(json.dumps(deepspeed_config(options)), encoding="utf-8")
    return model, work / "texts.json", work / "ds_config.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--data", type=Path, default=REPOSITORY / "examples" / "sample.jsonl")
    parser.add_argument("--master-port", type=int, default=29733, help="away from other runs' default 29500")
    parser.add_argument("--code", type=Path, default=REPOSITORY, help="the folder holding the yayi_cli to measure")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PYTHONPATH=str(args.code.resolve()), DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    times: dict[str, list[tuple[float, float]]] = {"deepspeed by hand": [], "yayi train": []}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model, texts, config = write_inputs(work, args.data.resolve())
        (work / "baseline.py").write_text(BASELINE, encoding="utf-8")
        common = ["--master_port", str(args.master_port)]
        commands = {
            "deepspeed by hand": ([str(bin_dir / "deepspeed"), "--num_gpus", "1", *common, str(work / "baseline.py"),
                                   str(model), str(texts), str(config), str(work / "out"), str(args.steps),
                                   str(args.micro_batch_size)], FIRST_STEP),
            "yayi train": ([str(bin_dir / "yayi"), "train", "--cpu", "--gpus", "1", "--model", str(model), "--data",
                            str(args.data.resolve()), "-o", str(work / "out"), "--max-steps", str(args.steps),
                            "--micro-batch-size", str(args.micro_batch_size), "--logging-steps", "1",
                            "--save-steps", "100000", "--master-port", str(args.master_port),
                            "--cache-dir", str(work / "cache")], "step=1/"),
        }
        for run in range(args.runs):
            for name, (command, marker) in commands.items():
                shutil.rmtree(work / "out", ignore_errors=True)
                times[name].append(timed(command, env, marker, work / f"{name.split()[0]}-{run}.log"))
                print(f"run {run + 1} {name}: first step {times[name][-1][0]:.1f} s, exit {times[name][-1][1]:.1f} s",
                      file=sys.stderr, flush=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"tiny Llama (about 200k parameters), {args.data.name}, {args.steps} steps of micro batch "
          f"{args.micro_batch_size}; 1 CPU rank, ZeRO-2, fp32; {args.runs} runs each, alternating")
    print(f"{'':18} {'first step s':>13} {'first step to exit s':>21} {'exit s':>7}  (medians)  per run: first step")
    medians = {}
    for name, runs in times.items():
        medians[name] = statistics.median(first for first, _ in runs)
        print(f"{name:18} {medians[name]:13.1f} {statistics.median(end - first for first, end in runs):21.1f} "
              f"{statistics.median(end for _, end in runs):7.1f}  " + ", ".join(f"{first:.1f}" for first, _ in runs))
    print(f"yayi train / deepspeed by hand, time to first step: {medians['yayi train'] / medians['deepspeed by hand']:.2f}x")


if __name__ == "__main__":
    main()
