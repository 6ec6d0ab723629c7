"""One training rank, started by the `deepspeed` launcher: `--module yayi_cli.train.worker --run-config RUN`.

Everything it does is decided in run.json, written by `yayi train`. It trains with the Hugging
Face Trainer (DeepSpeed inside), checkpoints into OUTPUT/checkpoint-N, and saves the final model,
tokenizer and template into OUTPUT itself, so `yayi chat --model OUTPUT` works directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from yayi_cli.errors import YayiError
from yayi_cli.train.launch import DS_CONFIG_FILE
from yayi_cli.train.options import TrainOptions

FINAL_STAGING = ".final-model"
SUMMARY_FILE = "train_summary.json"


def resolve_precision(config: dict[str, Any], cpu: bool) -> str:
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on the CPU, unless the config says."""
    import torch

    from yayi_cli.train.zero import AUTO, precision_of

    precision = precision_of(config)
    if precision != AUTO:
        return precision
    if cpu or not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def training_arguments(run: dict[str, Any], options: TrainOptions, precision: str, has_eval: bool) -> Any:
    from transformers import TrainingArguments

    # transformers 5.2x renamed gradient_checkpointing; the GPU machines still run 5.17
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ \
        else "gradient_checkpointing"
    return TrainingArguments(
        output_dir=options.output,
        deepspeed=str(Path(options.output) / DS_CONFIG_FILE),
        use_cpu=options.cpu,
        per_device_train_batch_size=options.micro_batch_size,
        per_device_eval_batch_size=options.eval_batch_size,
        gradient_accumulation_steps=run["gradient_accumulation_steps"],
        num_train_epochs=options.epochs,
        max_steps=options.max_steps,
        learning_rate=options.lr,
        lr_scheduler_type=options.lr_scheduler,
        warmup_steps=options.warmup_steps,
        weight_decay=options.weight_decay,
        max_grad_norm=options.max_grad_norm,
        seed=options.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        **{checkpointing: options.gradient_checkpointing},
        logging_steps=options.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=options.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=options.eval_steps or options.save_steps,
        report_to=options.report_to,
        disable_tqdm=not sys.stderr.isatty(),
    )


def join_ranks(cpu: bool) -> None:
    """Start DeepSpeed's communication now (gloo between CPU ranks), not lazily inside the Trainer."""
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo" if cpu else None)


def group_by_length(args: Any) -> None:
    """Batches of similar lengths (the `length` column), under this or an older transformers' name."""
    if hasattr(args, "train_sampling_strategy"):
        args.train_sampling_strategy = "group_by_length"
    else:
        args.group_by_length = True


def split_off_test(examples: list[Any], test_size: int | float, seed: int) -> tuple[list[Any], list[Any]]:
    """--test-size: the same deterministic selection as `yayi data split` (no stratification)."""
    from yayi_cli.data.split import allocate, test_positions

    count = allocate(test_size, {"": len(examples)})[""]
    chosen = test_positions(seed, "", count, len(examples))
    train = [example for i, example in enumerate(examples) if i not in chosen]
    return train, [examples[i] for i in sorted(chosen)]


def build_datasets(run: dict[str, Any], options: TrainOptions, prompt_tokenizer: Any, max_length: int,
                   log: Any) -> tuple[Any, Any, dict[str, Any]]:
    from yayi_cli.evaluate import load_examples
    from yayi_cli.train.examples import cache_key, count_examples, default_cache_dir, tokenize_examples, usable

    examples = load_examples([Path(p) for p in options.data])
    held_out = load_examples([Path(p) for p in options.eval_data]) if options.eval_data else []
    if options.test_size is not None:
        examples, held_out = split_off_test(examples, options.test_size, options.seed)
    cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    inputs = {"data": [item["sha256"] for item in run["data"]], "eval_data": [item["sha256"] for item in run["eval_data"]],
              "test_size": options.test_size, "seed": options.seed}
    key = cache_key(prompt_tokenizer, inputs, max_length, options.overlong)
    counts = {}
    datasets = []
    for name, part in (("train", examples), ("eval", held_out)):
        if not part:
            datasets.append(None)
            continue
        tokenized = tokenize_examples(part, prompt_tokenizer, max_length=max_length, overlong=options.overlong,
                                      cache_file=cache_dir / f"{key}-{name}.arrow")
        counts[name] = count_examples(tokenized)
        log(f"{name}: {counts[name].summary()}")
        datasets.append(usable(tokenized))
    return datasets[0], datasets[1], {name: value.to_json() for name, value in counts.items()}


def load_model_for_training(options: TrainOptions, tokenizer: Any, precision: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from yayi_cli.models import resolve_model_reference

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_reference(options.model), dtype=dtype, trust_remote_code=options.trust_remote_code
    )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # markers added: room for them
        model.resize_token_embeddings(len(tokenizer))
    # No KV cache in training; without one, packed rows' position ids also confine attention to each example.
    model.config.use_cache = False
    return model


def save_final_model(trainer: Any, tokenizer: Any, template: Any, output: Path) -> None:
    """Save into a staging folder, then move each file into OUTPUT (each one appears whole).

    Every rank calls this: under ZeRO-3 the 16-bit weights are gathered from all of them.
    """
    from yayi_cli.prompt import save_model_format

    staging = output / FINAL_STAGING
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        save_model_format(staging, tokenizer, template)
        for path in staging.iterdir():
            os.replace(path, output / path.name)
        staging.rmdir()
    trainer.accelerator.wait_for_everyone()


def train(run: dict[str, Any]) -> dict[str, Any]:
    from transformers import Trainer

    from yayi_cli.models import context_length, load_tokenizer, quiet_progress_unless_terminal
    from yayi_cli.prompt import PromptTokenizer, add_markers, resolve_template
    from yayi_cli.train.examples import PackedExamples, PaddingCollator, supports_packing

    options = TrainOptions(**run["options"])
    output = Path(options.output)
    quiet_progress_unless_terminal()
    config = json.loads((output / DS_CONFIG_FILE).read_text(encoding="utf-8"))
    precision = resolve_precision(config, options.cpu)
    tokenizer = load_tokenizer(options.model, trust_remote_code=options.trust_remote_code)
    add_markers(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    template, _ = resolve_template(options.template, options.model)
    max_length = options.max_length or context_length(options.model, tokenizer) or 2048
    # Before the model: ZeRO-3 partitions while loading, which needs the ranks joined and the config set.
    join_ranks(options.cpu)
    args = training_arguments(run, options, precision, has_eval=bool(options.eval_data or options.test_size))
    main_rank = args.process_index == 0

    def log(message: str) -> None:
        if main_rank:
            print(f"[yayi] {message}", flush=True)

    with args.main_process_first(local=True, desc="tokenizing"):
        train_set, eval_set, counts = build_datasets(run, options, PromptTokenizer(template, tokenizer), max_length, log)
    model = load_model_for_training(options, tokenizer, precision)
    if options.packing and supports_packing(model):
        train_set = PackedExamples(train_set, max_length)
        log(f"packing: {len(train_set)} rows of at most {max_length} tokens")
    elif options.packing:
        group_by_length(args)
        log(f"packing: {type(model).__name__} takes no position ids, so batches are grouped by length instead")
    log(f"precision {precision}, {args.world_size} rank(s), global batch {run['global_batch_size']}")
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      data_collator=PaddingCollator(tokenizer.pad_token_id), processing_class=tokenizer)
    result = trainer.train(resume_from_checkpoint=run["resume_from"])
    metrics = dict(result.metrics)
    if eval_set is not None:
        metrics |= trainer.evaluate()
    save_final_model(trainer, tokenizer, template, output)
    summary = {"examples": counts, "metrics": metrics, "precision": precision, "max_length": max_length,
               "loss_history": [entry for entry in trainer.state.log_history if "loss" in entry]}
    if main_rank:
        from yayi_cli.atomic import write_text_atomic

        write_text_atomic(output / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        log(f"saved the model to {output}; try: yayi chat --model {output}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yayi_cli.train.worker")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    parser.add_argument("--run-config", type=Path, required=True)
    arguments = parser.parse_args(argv)
    run = json.loads(arguments.run_config.read_text(encoding="utf-8"))
    try:
        train(run)
    except YayiError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted; the last complete checkpoint is usable with --resume auto", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
