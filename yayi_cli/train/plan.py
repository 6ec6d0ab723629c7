"""Options -> a resolved, immutable launch plan: ranks, batch arithmetic, precision, max length, resume,
the training method, the launcher's command and the run's manifest.

Planning writes nothing and checks everything that can be checked on the machine the user typed on
(which may be a login node without GPUs): options, data, output directory, checkpoint to resume,
ranks and batch arithmetic, memory. It never changes the options it is given: what it resolves
goes into a new options object held by the plan.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from yayi_cli import __version__
from yayi_cli.core.reader import sha256_of
from yayi_cli.core.records import KIND_NAMES, PAIRED, SFT, UNPAIRED
from yayi_cli.models.reference import require_saved_tokenizer
from yayi_cli.models.run_files import DS_CONFIG_FILE, RUN_FILE, WORKER_MODULE
from yayi_cli.runtime.atomic import refuse_output_over
from yayi_cli.runtime.errors import DataError, UsageError
from yayi_cli.runtime.packages import require_package, require_packages
from yayi_cli.train.checkpoints import UNIVERSAL_LOADING, resolve_resume, universal_conversion
from yayi_cli.train.environment import loopback_warning, node_environment
from yayi_cli.train.memory import MemoryEstimate, count_saved_parameters, estimate_memory
from yayi_cli.train.options import DPO, GRPO, KTO, REPORTERS, TrainOptions
from yayi_cli.train.ranks import Ranks, count_local_gpus, plan_ranks
from yayi_cli.train.runs import check_continuation
from yayi_cli.train.zero import (
    AUTO,
    check_batch_sizes,
    deepspeed_config,
    offload_of,
    precision_of,
    read_user_config,
    resolve_accumulation,
    stage_of,
)


DEFAULT_MAX_LENGTH = 2048
"""Where examples are cut when neither --max-length nor the model says how long a context is."""
FULL = "full"
"""The weights of a run that trains every one; the others are named by TrainOptions.adapter."""
PACKAGES = ("yayi-cli", "torch", "transformers", "deepspeed", "datasets", "accelerate", "tokenizers", "peft", "bitsandbytes",
            "trl")


def launcher_command(options: TrainOptions, ranks: Ranks, run_file: Path) -> list[str]:
    """`deepspeed ... --module yayi_cli.train.worker --run-config RUN` as an argument list (no shell)."""
    executable = Path(sys.executable).with_name("deepspeed")
    command = [str(executable)] if executable.exists() else [sys.executable, "-m", "deepspeed.launcher.runner"]
    command += ranks.selection
    if options.master_addr:
        command += ["--master_addr", options.master_addr]
    if options.master_port:
        command += ["--master_port", str(options.master_port)]
    return command + ["--module", WORKER_MODULE, "--run-config", str(run_file)]


def resolve_precision(config: dict[str, Any], options: TrainOptions) -> str:
    """What the ranks will train in. `auto` stays only when this machine has no GPU to decide by
    (a login node launching onto --hostfile machines): each rank then decides the same way."""
    from yayi_cli.models.weights import best_precision

    asked = precision_of(config)
    if asked != AUTO:
        return asked
    if options.cpu:
        return best_precision(on_gpu=False)
    return best_precision(on_gpu=True) if count_local_gpus() else AUTO


def resolve_max_length(options: TrainOptions, warnings: list[str]) -> int:
    """The longest example: --max-length, else the model's context, else DEFAULT_MAX_LENGTH (said so).
    A local model's is read from its files: loading its tokenizer would import transformers for it."""
    if options.max_length:
        return options.max_length
    from yayi_cli.models.reference import resolve_model
    from yayi_cli.models.tokenizers import context_length, load_tokenizer, saved_context_length

    reference = Path(resolve_model(options.model).base)
    if reference.is_dir():
        found = saved_context_length(reference)
    else:
        found = context_length(options.model, load_tokenizer(options.model, trust_remote_code=options.trust_remote_code))
    if found is None:
        warnings.append(f"{options.model} declares no context length; examples are cut at {DEFAULT_MAX_LENGTH} "
                        "tokens (set --max-length to choose)")
    return found or DEFAULT_MAX_LENGTH


def starting_adapter(options: TrainOptions) -> str | None:
    """The adapter --model names, which a run with --lora/--qlora trains on from (in a copy), else None."""
    from yayi_cli.models.reference import resolve_model

    source = resolve_model(options.model)
    if source.adapter and not options.adapter:
        raise UsageError(f"--model {options.model} is a LoRA adapter: add --lora (or --qlora) to train on from it (it "
                         f"stays as it is), or make a full model first with `yayi merge {options.model} -o DIR`")
    if source.adapter is None:
        require_saved_tokenizer(source.base)
    return source.adapter


def check_output(options: TrainOptions) -> None:
    """An output that holds anything needs --resume (continue) or --force (start over)."""
    output = Path(options.output)
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file; give a directory")
    existing = next(parent for parent in output.parents if parent.exists())
    if not output.exists() and not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        raise UsageError(f"--output {output} cannot be created: {existing} is not a writable directory")
    if output.is_dir() and any(output.iterdir()) and not (options.resume or options.force):
        raise UsageError(
            f"--output {output} is not empty; add --resume auto to continue its run, or --force to start over "
            "(the old contents are kept beside it)"
        )


METHOD_RECORDS = {SFT: (SFT,), DPO: (PAIRED,), KTO: (UNPAIRED, PAIRED)}
"""The kinds of records each method trains on (KTO takes each pair as a good and a bad answer)."""
RECORD_FIX = {
    (SFT, PAIRED): "train them with --method dpo (or kto)",
    (SFT, UNPAIRED): "train them with --method kto",
    (DPO, SFT): "--method dpo needs pairs: add 'chosen' and 'rejected' answers (see docs/train.md), or use --method sft",
    (DPO, UNPAIRED): "--method dpo needs pairs of answers to one prompt; unpaired records train with --method kto",
    (KTO, SFT): "--method kto needs answers labelled good or bad ('completion' and 'label'), or pairs; or use --method sft",
}


def check_kind(kind: str, method: str, option: str, warnings: list[str]) -> None:
    if kind not in METHOD_RECORDS[method]:
        raise UsageError(f"{option} holds {KIND_NAMES[kind]}: {RECORD_FIX[method, kind]}")
    if method == KTO and kind == PAIRED:
        warnings.append(f"--method kto: each pair of {option} trains as its chosen answer (good) and its rejected one (bad)")


def check_prompts(options: TrainOptions, world_size: int) -> None:
    """GRPO's prompt records are valid and every --reward loads and takes what they hold; its batch holds whole
    groups of --num-generations answers."""
    from yayi_cli.core.record_files import load_prompt_records
    from yayi_cli.core.rewards import load_rewards

    try:
        records = load_prompt_records([Path(path) for path in options.data])
    except DataError as error:
        raise DataError(f"--data: {error}") from None
    load_rewards(options.reward, set(records[0].fields))
    batch = options.micro_batch_size * options.gradient_accumulation_steps * world_size
    if batch % options.num_generations:
        raise UsageError(f"--method grpo compares the --num-generations {options.num_generations} answers to each prompt "
                         f"within a batch, and the global batch is {batch} answers (micro batch x accumulation x ranks): "
                         "make it a multiple of --num-generations")


def check_data(paths: list[str], option: str, method: str, warnings: list[str],
               test_size: int | float | None = None) -> list[dict[str, Any]]:
    """Every data file exists and is valid (the worker must never drop a record), holds the records the
    method trains on, and there is data to train on (and to hold out with --test-size); their sizes and
    hashes for run.json."""
    from yayi_cli.core.record_files import count_records
    from yayi_cli.core.sampling import allocate

    files = [Path(path) for path in paths]
    if method == GRPO:  # prompt records, checked with the rewards by check_prompts
        return [{"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_of(path)} for path in files]
    try:
        records, kind = count_records(files)
    except DataError as error:
        raise DataError(f"{option}: {error}") from None
    check_kind(kind, method, option, warnings)
    if test_size is not None:
        allocate(test_size, {"": records})  # refuses a test size that leaves nothing to train on
    return [{"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_of(path)} for path in files]


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def absolute_paths(options: TrainOptions) -> TrainOptions:
    """The options with local paths made absolute, so every rank (and a later resume) finds them."""

    def absolute(path: str | None) -> str | None:
        return os.path.abspath(os.path.expanduser(path)) if path else path

    model = absolute(options.model) if Path(options.model).expanduser().exists() else options.model
    return dataclasses.replace(
        options, data=[absolute(p) for p in options.data], eval_data=[absolute(p) for p in options.eval_data],
        model=model, output=absolute(options.output), hostfile=absolute(options.hostfile),
        deepspeed=absolute(options.deepspeed), cache_dir=absolute(options.cache_dir), nvme_path=absolute(options.nvme_path),
        resume=options.resume if options.resume in (None, "auto") else absolute(options.resume),
    )


@dataclass(frozen=True)
class LaunchPlan:
    """A run resolved from its options; `options` holds what planning resolved (accumulation, targets)."""

    options: TrainOptions
    method: str
    """What the run learns from: sft, dpo or kto (TrainOptions.method)."""
    weights: str
    """What trains: FULL, or the adapter ("lora", "qlora")."""
    ranks: Ranks
    gradient_accumulation_steps: int
    deepspeed_config: dict[str, Any]
    precision: str
    max_length: int
    resume_from: Path | None
    universal_from: int | None
    """The rank count the checkpoint was written by, when it is converted to a universal one first."""
    data: list[dict[str, Any]]
    eval_data: list[dict[str, Any]]
    memory: MemoryEstimate | None
    """None: a real run of a model whose parameters cannot be counted without importing transformers."""
    node_environment: dict[str, str] | None
    """What DeepSpeed's runner exports to every machine (None: one machine, no runner over ssh)."""
    warnings: tuple[str, ...] = ()

    @property
    def output(self) -> Path:
        return Path(self.options.output)

    @property
    def command(self) -> list[str]:
        return launcher_command(self.options, self.ranks, self.output / RUN_FILE)

    @property
    def global_batch_size(self) -> int:
        return self.options.micro_batch_size * self.gradient_accumulation_steps * self.ranks.world_size

    def manifest(self) -> dict[str, Any]:
        """run.json: everything the worker needs, and everything needed to tell later how the model was made."""
        return {
            "yayi_version": __version__,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "options": self.options.to_json(),
            "world_size": self.ranks.world_size,
            "num_nodes": self.ranks.num_nodes,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "global_batch_size": self.global_batch_size,
            "precision": self.precision,
            "max_length": self.max_length,
            "deepspeed_config": DS_CONFIG_FILE,
            "resume_from": str(self.resume_from) if self.resume_from else None,
            "resume_converted_from_world_size": self.universal_from,
            "data": self.data,
            "eval_data": self.eval_data,
            "versions": package_versions(),
            "command": self.command,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "world_size": self.ranks.world_size,
            "global_batch_size": self.global_batch_size,
            "deepspeed_config": self.deepspeed_config,
            "run": self.manifest(),
            "memory": self.memory.to_json() if self.memory else None,
            "node_environment": self.node_environment,
            "warnings": list(self.warnings),
        }


def plan_method(options: TrainOptions, config: dict[str, Any], ranks: Ranks, *,
                dry_run: bool) -> tuple[TrainOptions, MemoryEstimate | None]:
    """What the training method resolves (an adapter's targets, into the options) and its memory estimate."""
    layout = {"stage": stage_of(config), "offload": offload_of(config), "gpus_per_node": ranks.gpus_per_node,
              "num_nodes": ranks.num_nodes}
    if options.adapter:
        from yayi_cli.train.adapters import continued_settings, plan_adapter

        if starting_adapter(options):
            options = dataclasses.replace(options, **continued_settings(options.model))
        adapter = plan_adapter(options, **layout)
        return dataclasses.replace(options, lora_targets=adapter.targets), adapter.memory
    if dry_run:
        memory = estimate_memory(options.model, trust_remote_code=options.trust_remote_code, **layout)
        return options, with_reference(memory, options, layout["stage"], ranks.world_size)
    # the full estimate would import transformers and DeepSpeed here for seconds, before the ranks do
    return options, count_saved_parameters(options.model)


def with_reference(memory: MemoryEstimate, options: TrainOptions, stage: int, world_size: int) -> MemoryEstimate:
    """A full-weight preference run also holds a frozen reference copy (16-bit, 32 on the CPU; split among
    the ranks at ZeRO-3), unless --precompute-ref scores the reference once before training."""
    if options.method == SFT or options.precompute_ref or memory.gpu_bytes_per_rank is None:
        return memory
    from yayi_cli.train.adapters import base_bits

    reference = memory.parameters * base_bits(options) // 8 // (world_size if stage == 3 else 1)
    return dataclasses.replace(memory, gpu_bytes_per_rank=memory.gpu_bytes_per_rank + reference,
                               covers=memory.covers + f"; plus the frozen reference copy ({base_bits(options)}-bit"
                               + (", split among the ranks)" if stage == 3 else ")"))


def plan_launch(options: TrainOptions, *, dry_run: bool) -> LaunchPlan:
    """Check everything and resolve the run; writes nothing, and leaves `options` as they were."""
    warnings: list[str] = []
    options = absolute_paths(options)
    refuse_output_over(Path(options.output), options.model, "--model")  # first: neither flag below could help
    check_output(options)
    output = Path(options.output)
    if options.force and not options.resume and output.is_dir() and any(output.iterdir()):
        warnings.append(f"--force: the contents of {output} will be moved to {output.name}.replaced-<time> beside it")
    require_package("deepspeed", "yayi train", extra="train")  # found, not imported: a local launch never needs it here
    if options.method != SFT:
        require_package("trl", f"--method {options.method}", extra="train")
    if tracker := REPORTERS[options.report_to]:
        require_packages((tracker,), f"--report-to {options.report_to}", f"pip install {tracker}")
    if starting_adapter(options):
        warnings.append(f"--model {options.model} is an adapter: training goes on from its weights, with its own rank "
                        "and targets, into --output (the adapter itself stays as it is)")
    ranks = plan_ranks(options, warnings, dry_run=dry_run)
    warnings += filter(None, [loopback_warning(options, ranks)])
    config = read_user_config(Path(options.deepspeed)) if options.deepspeed else deepspeed_config(options)
    accumulation = resolve_accumulation(options, ranks.world_size)
    options = dataclasses.replace(options, gradient_accumulation_steps=accumulation)
    check_batch_sizes(config, options, ranks.world_size)
    precision = resolve_precision(config, options)
    max_length = resolve_max_length(options, warnings)
    resume_from = resolve_resume(options, warnings)
    universal_from = universal_conversion(resume_from, ranks.world_size, config, options, warnings)
    if universal_from and not options.deepspeed:
        config |= UNIVERSAL_LOADING
    if options.method == GRPO:
        check_prompts(options, ranks.world_size)
    data = check_data(options.data, "--data", options.method, warnings, options.test_size)
    eval_data = check_data(options.eval_data, "--eval-data", options.method, warnings) if options.eval_data else []
    options, memory = plan_method(options, config, ranks, dry_run=dry_run)
    plan = LaunchPlan(options=options, method=options.method, weights=options.adapter or FULL, ranks=ranks, gradient_accumulation_steps=accumulation,
                      deepspeed_config=config, precision=precision, max_length=max_length, resume_from=resume_from,
                      universal_from=universal_from, data=data, eval_data=eval_data, memory=memory,
                      node_environment=node_environment(options) if ranks.num_nodes > 1 else None)
    check_continuation(resume_from, plan.manifest(), options, warnings)
    return dataclasses.replace(plan, warnings=tuple(warnings))
