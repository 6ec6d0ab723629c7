"""One training rank, started by the `deepspeed` launcher: `--module yayi_cli.train.worker --run-config RUN`.

Everything it does is decided in run.json, written by `yayi train`. It trains with the Hugging
Face Trainer (DeepSpeed inside), checkpoints into OUTPUT/checkpoint-N, and saves the final model,
tokenizer and template into OUTPUT itself, so `yayi chat --model OUTPUT` works directly.
"""

from __future__ import annotations

import argparse
import atexit
import faulthandler
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from yayi_cli.models.run_files import DS_CONFIG_FILE, SUMMARY_FILE
from yayi_cli.runtime.errors import YayiError
from yayi_cli.runtime.processes import end_when_unread
from yayi_cli.train.options import PREFERENCE_METHODS, TrainOptions
from yayi_cli.train.progress import tag_output
from yayi_cli.train.zero import AUTO


FINAL_STAGING = ".final-model"


def training_arguments(run: dict[str, Any], options: TrainOptions, precision: str, has_eval: bool) -> Any:
    """The Trainer's arguments (TRL's DPOConfig or KTOConfig, with their settings, for preference methods)."""
    from transformers import TrainingArguments

    arguments_class, method_settings = TrainingArguments, {}
    if options.method in PREFERENCE_METHODS:
        from yayi_cli.train.preference import config_class, method_arguments

        arguments_class, method_settings = config_class(options.method), method_arguments(options, run["max_length"])
    # transformers 5.2x renamed gradient_checkpointing; older 5.x releases know only the old name
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ \
        else "gradient_checkpointing"
    return arguments_class(
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
        ddp_timeout=options.dist_timeout,
        log_on_each_node=False,  # the libraries' info logs from the first rank only, not from each machine's first
        disable_tqdm=True,  # `yayi train` draws progress itself, from the events of train/progress.py
        **method_settings,
    )


def join_ranks(cpu: bool, timeout_seconds: int) -> None:
    """Start DeepSpeed's communication now (gloo between CPU ranks), not lazily inside the Trainer;
    a rank that waits `timeout_seconds` for the others (to join, or in any collective later) fails."""
    import datetime

    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo" if cpu else None, timeout=datetime.timedelta(seconds=timeout_seconds))


def share_cores(torch: Any) -> int:
    """Split this machine's cores between its CPU ranks, as torchrun does, unless OMP_NUM_THREADS says otherwise:
    each rank's PyTorch would take every core, and ranks whose threads outnumber the cores spin against each
    other (a 2-rank run here spent a fifth more CPU time)."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_SIZE", "1"))))
    return torch.get_num_threads()


def group_by_length(args: Any) -> None:
    """Batches of similar lengths (the `length` column), under this or an older transformers' name."""
    if hasattr(args, "train_sampling_strategy"):
        args.train_sampling_strategy = "group_by_length"
    else:
        args.group_by_length = True


def training_records(options: TrainOptions) -> tuple[list[Any], list[Any]]:
    """(records to train on, records to evaluate on): --eval-data, or --test-size held out of --data
    exactly as `yayi data split --test-size N --seed S` would hold them out."""
    from yayi_cli.core.record_files import load_records
    from yayi_cli.core.sampling import hold_out

    records = load_records([Path(p) for p in options.data])
    if options.test_size is not None:
        return hold_out(records, options.test_size, options.seed)
    return records, load_records([Path(p) for p in options.eval_data]) if options.eval_data else []


def evaluates(options: TrainOptions) -> bool:
    """Whether the run evaluates: on --eval-data, or on the --test-size records held out of --data."""
    return bool(options.eval_data or options.test_size)


def tokenized_parts(run: dict[str, Any], options: TrainOptions, prompt_tokenizer: Any, max_length: int) -> dict[str, Any]:
    """The tokenized "train" (and "eval") examples. The cache is looked up first, keyed on the data hashes
    the launcher recorded in run.json: a rank that finds every part there reads no data file at all
    (parsing and checking all the data is the slow part on a large set, and every rank would repeat it)."""
    from yayi_cli.train.dataset import cache_key, default_cache_dir, read_cached, tokenize_examples

    cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    inputs = {"data": [item["sha256"] for item in run["data"]], "eval_data": [item["sha256"] for item in run["eval_data"]],
              "test_size": options.test_size, "seed": options.seed, "method": options.method}
    key = cache_key(prompt_tokenizer, inputs, max_length, options.overlong)
    cache_files = {name: cache_dir / f"{key}-{name}.arrow" for name in (("train", "eval") if evaluates(options) else ("train",))}
    if all(path.is_file() for path in cache_files.values()):
        return {name: read_cached(path) for name, path in cache_files.items()}
    records = dict(zip(("train", "eval"), training_records(options)))
    tokenize = tokenize_examples
    if options.method in PREFERENCE_METHODS:
        from yayi_cli.train.preference import tokenize_preferences

        tokenize = functools.partial(tokenize_preferences, method=options.method)
    return {name: tokenize(records[name], prompt_tokenizer, max_length=max_length, overlong=options.overlong,
                           cache_file=path) for name, path in cache_files.items()}


def build_datasets(run: dict[str, Any], options: TrainOptions, prompt_tokenizer: Any, max_length: int,
                   log: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(train set, eval set or None, the record counts of each): what was kept, cut and skipped is logged."""
    from yayi_cli.train.dataset import count_examples, usable

    parts = tokenized_parts(run, options, prompt_tokenizer, max_length)
    counts = {name: count_examples(part) for name, part in parts.items()}
    for name, count in counts.items():
        log(f"{name}: {count.summary()}")
    eval_set = usable(parts["eval"]) if "eval" in parts else None
    return usable(parts["train"]), eval_set, {name: count.to_json() for name, count in counts.items()}


def load_model_for_training(options: TrainOptions, tokenizer: Any, precision: str) -> Any:
    from transformers import AutoModelForCausalLM

    from yayi_cli.models.reference import resolve_model
    from yayi_cli.models.weights import fit_embeddings, torch_dtype

    dtype = torch_dtype(precision)
    quantized: dict[str, Any] = {}
    if options.qlora:  # the 4-bit base is quantized while loading, onto this rank's device
        from yayi_cli.train.adapters import quantization_config

        device = "cpu" if options.cpu else {"": int(os.environ.get("LOCAL_RANK", "0"))}
        quantized = {"quantization_config": quantization_config(dtype), "device_map": device}
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(options.model).base, dtype=dtype, trust_remote_code=options.trust_remote_code, **quantized
    )
    fit_embeddings(model, len(tokenizer))  # markers added: room for them
    # No KV cache in training; without one, packed rows' position ids also confine attention to each example.
    model.config.use_cache = False
    return model


def save_final_model(trainer: Any, tokenizer: Any, template: Any, output: Path, *, adapter: bool = False) -> None:
    """Save into a staging folder, then move each file into OUTPUT (each one appears whole).

    Every rank calls this: under ZeRO-3 the 16-bit weights are gathered from all of them.
    """
    from yayi_cli.core.prompt import save_model_format

    staging = output / FINAL_STAGING
    if adapter:
        # The adapter alone (ZeRO-3 is refused for adapters, so rank 0 holds all of it): LoRA weights and the
        # new tokens' rows, not the resized embedding matrices PEFT would add; the base stays as it was.
        if trainer.is_world_process_zero():  # the adapter that trained, not a preference run's frozen "ref" copy
            trainer.model.save_pretrained(str(staging), save_embedding_layers=False, selected_adapters=["default"])
    else:
        trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        save_model_format(staging, tokenizer, template)
        for path in staging.iterdir():
            os.replace(path, output / path.name)
        staging.rmdir()
    trainer.accelerator.wait_for_everyone()


def sft_trainer(options: TrainOptions, model: Any, args: Any, data: tuple[Any, Any], tokenizer: Any, *,
                new_token_ids: list[int], max_length: int, callbacks: list[Any], log: Any) -> tuple[Any, Any]:
    """The HF Trainer on the prompt core's examples (packed where the model takes packed rows), and its
    token-counting collator."""
    from transformers import Trainer

    from yayi_cli.train.dataset import PackedExamples, PaddingCollator, supports_packing
    from yayi_cli.train.progress import CountingCollator

    train_set, eval_set = data
    if options.adapter:
        from yayi_cli.train.adapters import attach_adapter

        model = attach_adapter(model, options, new_token_ids)
    if options.packing and supports_packing(model.get_base_model() if options.adapter else model):
        train_set = PackedExamples(train_set, max_length)
        log(f"packing: {len(train_set)} rows of at most {max_length} tokens")
    elif options.packing:
        group_by_length(args)
        log(f"packing: {model.config.model_type} models take no position ids, so batches are grouped by length instead")
    counter = CountingCollator(PaddingCollator(tokenizer.pad_token_id))
    return Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, data_collator=counter,
                   processing_class=tokenizer, callbacks=callbacks), counter


def train(run: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import PrinterCallback, set_seed

    from yayi_cli.models.loading import load_for_task
    from yayi_cli.models.weights import best_precision
    from yayi_cli.train.progress import make_reporter, throughput
    from yayi_cli.train.runs import checkpoint_recorder

    options = TrainOptions(**run["options"])
    output = Path(options.output)
    threads = f" of {share_cores(torch)} thread(s)" if options.cpu else ""
    precision, max_length = run["precision"], run["max_length"]
    if precision == AUTO:  # launched from a machine without GPUs: decided here, on the training machine
        precision = best_precision(torch.cuda.is_available() and not options.cpu)
    loaded = load_for_task(options.model, template=options.template, trust_remote_code=options.trust_remote_code,
                           add_markers=True, model_weights=False)
    tokenizer, template = loaded.tokenizer, loaded.template
    new_token_ids = list(range(len(tokenizer) - loaded.added_markers, len(tokenizer)))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Before the model: ZeRO-3 partitions while loading, which needs the ranks joined and the config set.
    join_ranks(options.cpu, options.dist_timeout)
    args = training_arguments(run, options, precision, has_eval=evaluates(options))
    main_rank = args.process_index == 0

    def log(message: str) -> None:
        if main_rank:
            print(f"[yayi] {message}", flush=True)

    with args.main_process_first(local=True, desc="tokenizing"):
        train_set, eval_set, counts = build_datasets(run, options, loaded.prompt_tokenizer, max_length, log)
    set_seed(options.seed)  # new marker rows and adapter weights start from random values: the same ones every run
    model = load_model_for_training(options, tokenizer, precision)
    callbacks = [checkpoint_recorder(run, main_rank=main_rank)]
    if options.method in PREFERENCE_METHODS:
        from yayi_cli.train.preference import preference_trainer, reference_in_use

        trainer, counter = preference_trainer(options, model, args, (train_set, eval_set), tokenizer, callbacks=callbacks,
                                              load_reference=lambda: load_model_for_training(options, tokenizer, precision))
        log(f"{options.method}: the reference is {reference_in_use(trainer)}")
    else:
        trainer, counter = sft_trainer(options, model, args, (train_set, eval_set), tokenizer, new_token_ids=new_token_ids,
                                       max_length=max_length, callbacks=callbacks, log=log)
    trainer.add_callback(make_reporter(counter, output, world_size=args.world_size, main_rank=main_rank))
    trainable, total = trainer.model.get_nb_trainable_parameters() if options.adapter else (parameter_count(trainer.model),) * 2
    log(f"{trainable} of {total} parameters train" + (f" ({options.adapter} on {', '.join(options.lora_targets)})"
                                                      if options.adapter else ""))
    log(f"precision {precision}, {args.world_size} rank(s){threads}, global batch {run['global_batch_size']}")
    if not main_rank:
        trainer.remove_callback(PrinterCallback)  # each machine's first rank would print the same logs and summary
    result = trainer.train(resume_from_checkpoint=run["resume_from"])
    metrics = dict(result.metrics)
    if eval_set is not None:
        metrics |= evaluation_at_last_step(trainer) or trainer.evaluate()
    save_final_model(trainer, tokenizer, template, output, adapter=bool(options.adapter))
    on_gpu = torch.cuda.is_available() and not options.cpu
    speed = throughput(counter, metrics.get("train_runtime", 0.0), world_size=args.world_size,
                       parameters=total, checkpointing=options.gradient_checkpointing,
                       device_name=torch.cuda.get_device_name() if on_gpu else None,
                       peak_memory_bytes=torch.cuda.max_memory_allocated() if on_gpu else None)
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    summary = {"examples": counts, "metrics": metrics, "precision": precision, "max_length": max_length,
               "method": options.method, "adapter": options.adapter, "trainable_parameters": trainable, "parameters": total,
               "throughput": speed, "loss_history": history}
    if options.method in PREFERENCE_METHODS and history:
        from yayi_cli.train.progress import preference_metrics

        summary["preference"] = {"first": preference_metrics(history[0]), "last": preference_metrics(history[-1])}
    if main_rank:
        from yayi_cli.runtime.atomic import write_json_atomic

        write_json_atomic(output / SUMMARY_FILE, summary)
        log(f"saved the {'adapter' if options.adapter else 'model'} to {output}; try: yayi chat --model {output}")
    return summary


def evaluation_at_last_step(trainer: Any) -> dict[str, float]:
    """The eval metrics of the evaluation the Trainer ran at the last step, if it ran one there: evaluating again
    would cost a pass over the eval data and print the same line twice."""
    found = [entry for entry in trainer.state.log_history if "eval_loss" in entry and entry.get("step") == trainer.state.global_step]
    return {key: value for key, value in found[-1].items() if key.startswith("eval_")} if found else {}


def parameter_count(model: Any) -> int:
    """The model's size; ZeRO-3 leaves each parameter an empty placeholder on every rank and keeps its size
    as `ds_numel`."""
    return sum(getattr(parameter, "ds_numel", parameter.numel()) for parameter in model.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yayi_cli.train.worker")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    parser.add_argument("--run-config", type=Path, required=True)
    arguments = parser.parse_args(argv)
    end_when_unread()  # yayi reads this pipe: killed outright, it leaves no rank behind
    faulthandler.enable()  # a crash in native code (torch, gloo, DeepSpeed's ops) says where, as a traceback would
    tag_output(int(os.environ.get("RANK", arguments.local_rank or 0)))
    run = json.loads(arguments.run_config.read_text(encoding="utf-8"))
    try:
        train(run)
    except YayiError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted; the last complete checkpoint is usable with --resume auto", file=sys.stderr)
        return 130
    finally:
        remove_shared_buffer()
    return 0


def exit_without_teardown(status: int) -> NoReturn:
    """End a rank whose work is saved without the interpreter's teardown of torch, gloo and DeepSpeed:
    it takes seconds per rank, and in CI it once ended a rank that had finished with a failing status
    and no message, failing a run whose model was saved. atexit handlers run and output is flushed."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


SHARED_MEMORY = Path("/dev/shm")


def remove_shared_buffer() -> None:
    """DeepSpeed's CPU communication (ranks of one machine) maps a 66 MB buffer per rank from /dev/shm and never
    removes it: every CPU run would leave its buffers in memory. Each rank removes its own as it ends; the
    others opened it when they joined, and their mappings stay valid."""
    name = "_".join(["deepspeed_allreduce_buffer", str(os.getuid()), *(os.environ.get(key, "") for key in
                                                                        ("MASTER_ADDR", "MASTER_PORT", "RANK"))])
    (SHARED_MEMORY / name).unlink(missing_ok=True)


if __name__ == "__main__":
    exit_without_teardown(main())
