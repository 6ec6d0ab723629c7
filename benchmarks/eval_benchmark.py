"""Questions/s of `yayi eval --benchmark cmmlu` against lm-evaluation-harness on the same local files.

A CMMLU-layout folder (dev + test, --subjects x --questions, generated text) and a Llama-shaped random
model (--hidden, --layers) are built offline. yayi (the library call behind `yayi eval --benchmark`)
and the harness (`lm_eval.simple_evaluate` with its `hf` model, on task files that include the
harness's own CMMLU tasks, as tests/harness_tasks.py writes them) score the same questions 5-shot,
each at --batch-size; runs alternate, the best of --repeats is kept, and the predictions are compared.
Both timings cover reading the files, building the prompts and scoring; loading the model is outside.

    .venv/bin/python benchmarks/eval_benchmark.py [--subjects 6] [--questions 40] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.benchmark_files import write_benchmark  # noqa: E402
from tests.harness_tasks import write_tasks  # noqa: E402
from yayi_cli.eval.choice.plan import plan_benchmark  # noqa: E402
from yayi_cli.eval.choice.protocols import harness_text  # noqa: E402
from yayi_cli.eval.choice.report import chosen_letter  # noqa: E402
from yayi_cli.eval.choice.run import score_benchmark  # noqa: E402
from yayi_cli.eval.choice.subjects import CMMLU  # noqa: E402
from yayi_cli.eval.options import EvalOptions  # noqa: E402
from yayi_cli.models.loading import load_for_task  # noqa: E402
from yayi_cli.models.tiny import TinySpec, build_tiny  # noqa: E402


def build(root: Path, args) -> tuple[Path, Path, list[str]]:
    subjects = sorted(CMMLU.names)[: args.subjects]
    data = root / "cmmlu"
    write_benchmark(data, "cmmlu", {subject: args.questions for subject in subjects})
    plan = plan_benchmark(EvalOptions(model="-", data=[data], benchmark="cmmlu"))
    texts = [harness_text(q, s.shots, CMMLU) + f" {q.answer}" for s in plan.subjects for q in s.questions]
    spec = TinySpec(arch="llama", hidden_size=args.hidden, layers=args.layers, heads=8, vocab_size=4096, max_positions=4096)
    return data, build_tiny(root / "model", texts, spec), subjects


def yayi_run(loaded, data: Path, args) -> tuple[float, list[str]]:
    started = time.perf_counter()
    plan = plan_benchmark(EvalOptions(model="-", data=[data], benchmark="cmmlu"))
    result = score_benchmark(plan, loaded, batch_size=args.batch_size, max_length=None)
    return time.perf_counter() - started, [line["prediction"] for line in result.predictions]


def harness_run(lm, names: list[str], tasks: Path, args) -> tuple[float, list[str]]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    results = simple_evaluate(model=lm, tasks=names, num_fewshot=5, batch_size=args.batch_size, log_samples=True,
                              task_manager=TaskManager(include_path=str(tasks)), verbosity="ERROR")
    seconds = time.perf_counter() - started
    predictions = []
    for name in names:
        for sample in sorted(results["samples"][name], key=lambda s: s["doc_id"]):
            predictions.append(chosen_letter([float(r[0]) for r in sample["filtered_resps"]]))
    return seconds, predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (both sides)")
    args = parser.parse_args()
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import torch
    from lm_eval.models.huggingface import HFLM

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, model_dir, subjects = build(root, args)
        names = write_tasks(root / "tasks", "cmmlu", data, subjects)
        dtype = {"float32": "fp32", "bfloat16": "bf16"}[args.dtype]
        loaded = load_for_task(str(model_dir), device=args.device, dtype=dtype)
        lm = HFLM(pretrained=str(model_dir), device=args.device, dtype=args.dtype, batch_size=args.batch_size)
        questions = args.subjects * args.questions
        yayi_best = harness_best = float("inf")
        for _ in range(args.repeats):
            seconds, ours = yayi_run(loaded, data, args)
            yayi_best = min(yayi_best, seconds)
            seconds, theirs = harness_run(lm, names, root / "tasks", args)
            harness_best = min(harness_best, seconds)
        same = sum(a == b for a, b in zip(ours, theirs))
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
              f"threads {torch.get_num_threads()}, device {args.device}, {args.dtype}")
        print(f"{questions} CMMLU questions ({args.subjects} subjects), 5-shot, batch {args.batch_size}, "
              f"Llama hidden {args.hidden} x {args.layers} layers; best of {args.repeats}")
        print("| run | seconds | questions/s |\n|---|---|---|")
        print(f"| yayi eval --benchmark | {yayi_best:.2f} | {questions / yayi_best:.1f} |")
        print(f"| lm_eval (hf) | {harness_best:.2f} | {questions / harness_best:.1f} |")
        print(f"yayi/harness: {harness_best / yayi_best:.2f}x; identical predictions: {same}/{questions}")


if __name__ == "__main__":
    main()
