"""A training method's life on one rank, as a recipe: setup, train, save, cleanup.

The shared steps are here: the tokenizer with the markers, the ranks joined, the Trainer's arguments, the
tokenized data (cached), the model at its precision, the final save and the summary. A method is a subclass
that says the rest (train/sft.py, train/preference.py): how its records become examples, which Trainer trains
them, and what its summary adds. The worker picks the class by the run's method and calls the four steps.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from yayi_cli.models.run_files import DS_CONFIG_FILE, SUMMARY_FILE
from yayi_cli.train.options import TrainOptions
from yayi_cli.train.zero import AUTO


FINAL_STAGING = ".final-model"
SHARED_MEMORY = Path("/dev/shm")


class Recipe:
    """The steps every method shares; a subclass gives `tokenize` and `make_trainer` (and may add to the rest).

    `run` is the launcher's run.json (the options, the data's hashes, max_length, precision and the batch
    arithmetic); a test may give only the keys the steps it calls read.
    """

    def __init__(self, options: TrainOptions, run: dict[str, Any]) -> None:
        self.options = options
        self.run = run
        self.output = Path(options.output)
        self.main_rank = True
        self.new_token_ids: list[int] = []
        self.precision = "fp32"
        self.trainer: Any = None
        self.counter: Any = None

    # --- what a method says ---------------------------------------------------------------------------------

    def arguments_class(self) -> Any:
        """The Trainer's arguments class (TRL's config classes for its trainers)."""
        from transformers import TrainingArguments

        return TrainingArguments

    def method_settings(self, max_length: int) -> dict[str, Any]:
        """The method's settings beyond the Trainer's own."""
        return {}

    def training_records(self) -> tuple[list[Any], list[Any]]:
        """(records to train on, records to evaluate on)."""
        return training_records(self.options)

    def tokenize(self, records: list[Any], prompt_tokenizer: Any, *, max_length: int, cache_file: Path | None) -> Any:
        """The records as the method's examples (a `datasets.Dataset`), each with its length, tokens and status."""
        raise NotImplementedError

    def make_trainer(self, model: Any, args: Any, data: tuple[Any, Any], tokenizer: Any, *,
                     callbacks: list[Any]) -> tuple[Any, Any]:
        """The method's Trainer on (train set, eval set or None), and its token-counting collator."""
        raise NotImplementedError

    def summary_extra(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """What the method adds to train_summary.json, from the logged history."""
        return {}

    # --- the four steps ---------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Tokenizer and markers, the ranks joined, the data tokenized (the first rank of each machine first, the
        others read its cache), the model and the Trainer."""
        import torch
        from transformers import PrinterCallback, set_seed

        from yayi_cli.models.loading import load_for_task
        from yayi_cli.models.weights import best_precision
        from yayi_cli.train.progress import make_reporter
        from yayi_cli.train.runs import checkpoint_recorder

        options = self.options
        threads = f" of {share_cores(torch)} thread(s)" if options.cpu else ""
        precision = self.run["precision"]
        if precision == AUTO:  # launched from a machine without GPUs: decided here, on the training machine
            precision = best_precision(torch.cuda.is_available() and not options.cpu)
        loaded = load_for_task(options.model, template=options.template, trust_remote_code=options.trust_remote_code,
                               add_markers=True, model_weights=False)
        self.tokenizer, self.template = loaded.tokenizer, loaded.template
        self.new_token_ids = list(range(len(self.tokenizer) - loaded.added_markers, len(self.tokenizer)))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Before the model: ZeRO-3 partitions while loading, which needs the ranks joined and the config set.
        join_ranks(options.cpu, options.dist_timeout)
        args = self.training_arguments(precision, has_eval=evaluates(options))
        self.main_rank = args.process_index == 0
        with args.main_process_first(local=True, desc="tokenizing"):
            train_set, eval_set, self.counts = self.build_datasets(loaded.prompt_tokenizer)
        set_seed(options.seed)  # new marker rows and adapter weights start from random values: the same ones every run
        model = self.load_model(self.tokenizer)
        callbacks = [checkpoint_recorder(self.run, main_rank=self.main_rank)]
        self.trainer, self.counter = self.make_trainer(model, args, (train_set, eval_set), self.tokenizer,
                                                       callbacks=callbacks)
        self.trainer.add_callback(make_reporter(self.counter, self.output, world_size=args.world_size,
                                                main_rank=self.main_rank))
        self.trainable, self.total = (self.trainer.model.get_nb_trainable_parameters() if options.adapter
                                      else (parameter_count(self.trainer.model),) * 2)
        self.log(f"{self.trainable} of {self.total} parameters train" + (
            f" ({options.adapter} on {', '.join(options.lora_targets)})" if options.adapter else ""))
        self.log(f"precision {precision}, {args.world_size} rank(s){threads}, global batch {self.run['global_batch_size']}")
        if not self.main_rank:
            self.trainer.remove_callback(PrinterCallback)  # each machine's first rank would print the same logs

    def train(self) -> dict[str, Any]:
        """Train (from the checkpoint run.json names, if any), then the last evaluation: the run's metrics."""
        result = self.trainer.train(resume_from_checkpoint=self.run["resume_from"])
        metrics = dict(result.metrics)
        if self.trainer.eval_dataset is not None:
            metrics |= evaluation_at_last_step(self.trainer) or self.trainer.evaluate()
        return metrics

    def save(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The final model (or adapter), tokenizer and template into OUTPUT, and train_summary.json."""
        import torch

        from yayi_cli.train.progress import draw_curves_now, throughput

        options = self.options
        save_final_model(self.trainer, self.tokenizer, self.template, self.output, adapter=bool(options.adapter))
        on_gpu = torch.cuda.is_available() and not options.cpu
        speed = throughput(self.counter, metrics.get("train_runtime", 0.0), world_size=self.trainer.args.world_size,
                           parameters=self.total, checkpointing=options.gradient_checkpointing,
                           device_name=torch.cuda.get_device_name() if on_gpu else None,
                           peak_memory_bytes=torch.cuda.max_memory_allocated() if on_gpu else None)
        history = [entry for entry in self.trainer.state.log_history if "loss" in entry]
        summary = {"examples": self.counts, "metrics": metrics, "precision": self.precision,
                   "max_length": self.run["max_length"], "method": options.method, "adapter": options.adapter,
                   "trainable_parameters": self.trainable, "parameters": self.total, "throughput": speed,
                   "loss_history": history, **self.summary_extra(history)}
        if self.main_rank:
            from yayi_cli.runtime.atomic import write_json_atomic

            write_json_atomic(self.output / SUMMARY_FILE, summary)
            draw_curves_now(self.output)
            self.log(f"saved the {'adapter' if options.adapter else 'model'} to {self.output}; "
                     f"try: yayi chat --model {self.output}")
        return summary

    def cleanup(self) -> None:
        """What a rank would leave behind: DeepSpeed's CPU communication maps a 66 MB buffer per rank from /dev/shm
        and never removes it. Each rank removes its own as it ends; the others opened it when they joined, and their
        mappings stay valid."""
        name = "_".join(["deepspeed_allreduce_buffer", str(os.getuid()),
                         *(os.environ.get(key, "") for key in ("MASTER_ADDR", "MASTER_PORT", "RANK"))])
        (SHARED_MEMORY / name).unlink(missing_ok=True)

    # --- shared pieces, each callable alone ----------------------------------------------------------------------

    def log(self, message: str) -> None:
        if self.main_rank:
            print(f"[yayi] {message}", flush=True)

    def training_arguments(self, precision: str, *, has_eval: bool, deepspeed: bool = True) -> Any:
        """The Trainer's arguments from the options; `deepspeed=False` trains in this process alone (no launcher)."""
        from transformers import TrainingArguments

        options = self.options
        self.precision = precision  # what the models load at (`load_model`)
        # transformers 5.2x renamed gradient_checkpointing; older 5.x releases know only the old name
        checkpointing = "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ \
            else "gradient_checkpointing"
        return self.arguments_class()(
            output_dir=options.output,
            deepspeed=str(self.output / DS_CONFIG_FILE) if deepspeed else None,
            use_cpu=options.cpu,
            per_device_train_batch_size=options.micro_batch_size,
            per_device_eval_batch_size=options.eval_batch_size,
            gradient_accumulation_steps=self.run["gradient_accumulation_steps"],
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
            **self.method_settings(self.run["max_length"]),
        )

    def build_datasets(self, prompt_tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
        """(train set, eval set or None, the record counts of each): what was kept, cut and skipped is logged."""
        from yayi_cli.train.dataset import count_examples, usable

        parts = self.tokenized_parts(prompt_tokenizer)
        counts = {name: count_examples(part) for name, part in parts.items()}
        for name, count in counts.items():
            self.log(f"{name}: {count.summary()}")
        eval_set = usable(parts["eval"]) if "eval" in parts else None
        return usable(parts["train"]), eval_set, {name: count.to_json() for name, count in counts.items()}

    def tokenized_parts(self, prompt_tokenizer: Any) -> dict[str, Any]:
        """The tokenized "train" (and "eval") examples. The cache is looked up first, keyed on the data hashes
        the launcher recorded in run.json: a rank that finds every part there reads no data file at all
        (parsing and checking all the data is the slow part on a large set, and every rank would repeat it)."""
        from yayi_cli.train.dataset import cache_key, default_cache_dir, read_cached

        options, run, max_length = self.options, self.run, self.run["max_length"]
        cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
        inputs = {"data": [item["sha256"] for item in run["data"]], "eval_data": [item["sha256"] for item in run["eval_data"]],
                  "test_size": options.test_size, "seed": options.seed, "method": options.method}
        key = cache_key(prompt_tokenizer, inputs, max_length, options.overlong)
        cache_files = {name: cache_dir / f"{key}-{name}.arrow" for name in (("train", "eval") if evaluates(options) else ("train",))}
        if all(path.is_file() for path in cache_files.values()):
            return {name: read_cached(path) for name, path in cache_files.items()}
        records = dict(zip(("train", "eval"), self.training_records()))
        return {name: self.tokenize(records[name], prompt_tokenizer, max_length=max_length, cache_file=path)
                for name, path in cache_files.items()}

    def load_model(self, tokenizer: Any) -> Any:
        """The model to train, at the precision of the Trainer's arguments, with room for `tokenizer`'s markers; a
        4-bit base with --qlora. (A preference method without an adapter loads its frozen reference here too.)"""
        from transformers import AutoModelForCausalLM

        from yayi_cli.models.reference import resolve_model
        from yayi_cli.models.weights import fit_embeddings, torch_dtype

        options = self.options
        dtype = torch_dtype(self.precision)
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


def share_cores(torch: Any) -> int:
    """Split this machine's cores between its CPU ranks, as torchrun does, unless OMP_NUM_THREADS says otherwise:
    each rank's PyTorch would take every core, and ranks whose threads outnumber the cores spin against each
    other (a 2-rank run here spent a fifth more CPU time)."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_SIZE", "1"))))
    return torch.get_num_threads()


def join_ranks(cpu: bool, timeout_seconds: int) -> None:
    """Start DeepSpeed's communication now (gloo between CPU ranks), not lazily inside the Trainer;
    a rank that waits `timeout_seconds` for the others (to join, or in any collective later) fails."""
    import datetime

    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo" if cpu else None, timeout=datetime.timedelta(seconds=timeout_seconds))


def evaluates(options: TrainOptions) -> bool:
    """Whether the run evaluates: on --eval-data, or on the --test-size records held out of --data."""
    return bool(options.eval_data or options.test_size)


def training_records(options: TrainOptions) -> tuple[list[Any], list[Any]]:
    """(records to train on, records to evaluate on): --eval-data, or --test-size held out of --data
    exactly as `yayi data split --test-size N --seed S` would hold them out."""
    from yayi_cli.core.record_files import load_records
    from yayi_cli.core.sampling import hold_out

    records = load_records([Path(p) for p in options.data])
    if options.test_size is not None:
        return hold_out(records, options.test_size, options.seed)
    return records, load_records([Path(p) for p in options.eval_data]) if options.eval_data else []


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


def evaluation_at_last_step(trainer: Any) -> dict[str, float]:
    """The eval metrics of the evaluation the Trainer ran at the last step, if it ran one there: evaluating again
    would cost a pass over the eval data and print the same line twice."""
    found = [entry for entry in trainer.state.log_history if "eval_loss" in entry and entry.get("step") == trainer.state.global_step]
    return {key: value for key, value in found[-1].items() if key.startswith("eval_")} if found else {}


def parameter_count(model: Any) -> int:
    """The model's size; ZeRO-3 leaves each parameter an empty placeholder on every rank and keeps its size
    as `ds_numel`."""
    return sum(getattr(parameter, "ds_numel", parameter.numel()) for parameter in model.parameters())
