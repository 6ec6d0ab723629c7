"""Plan a training run, write its config and manifest, and run the `deepspeed` launcher on the worker.

Planning writes nothing and checks everything that can be checked on the machine the user typed
on (which may be a login node without GPUs): options, data, output directory, checkpoint to
resume, ranks and batch arithmetic, memory. Only `launch` writes, and only after planning passed.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from yayi_cli import __version__
from yayi_cli.atomic import refuse_output_over, write_json_atomic, write_text_atomic
from yayi_cli.data.reader import sha256_of
from yayi_cli.errors import DataError, UsageError
from yayi_cli.lifetime import dies_with_parent, stop_group
from yayi_cli.models import require_saved_tokenizer
from yayi_cli.terminal import deepspeed_logs_to_stderr, library_environment
from yayi_cli.train.memory import MemoryEstimate, count_saved_parameters, estimate_memory
from yayi_cli.train.options import TrainOptions
from yayi_cli.train.runs import RUN_FILE, check_continuation, record_launch
from yayi_cli.train.zero import (
    AUTO, check_batch_sizes, deepspeed_config, offload_of, precision_of, read_user_config, resolve_accumulation, stage_of,
)

WORKER_MODULE = "yayi_cli.train.worker"
DS_CONFIG_FILE = "ds_config.json"
SUMMARY_FILE = "train_summary.json"
TRAIN_LOG = "train.log"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "trainer_state.json"
"""The Trainer writes this last into a checkpoint, so a checkpoint without it was cut short."""
DEFAULT_MAX_LENGTH = 2048
"""Where examples are cut when neither --max-length nor the model says how long a context is."""
NODE_ENV_FILE = "deepspeed_env"
"""OUTPUT/deepspeed_env: the variables DeepSpeed's runner exports to every machine (it reads the file
that DS_ENV_FILE names, in place of ~/.deepspeed_env)."""
USERS_NODE_ENV_FILE = ".deepspeed_env"
FORWARDED_VARIABLES = ("PYTHONPATH", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                       "TRANSFORMERS_OFFLINE")
"""Set here, they decide how a rank finds code and models: the ranks on other machines get them too."""
UNSAFE_IN_SHELL = re.compile(r'["$`\\\n]')
"""DeepSpeed's runner puts each value into a remote shell command inside double quotes."""
MACHINE_FAILED = re.compile(r"^pdsh@\S+: (\S+): ssh exited with exit code (\d+)$")
"""What pdsh prints when the launcher on one machine ended with an error (or ssh could not reach it)."""
PACKAGES = ("yayi-cli", "torch", "transformers", "deepspeed", "datasets", "accelerate", "tokenizers", "peft", "bitsandbytes")


def require_deepspeed() -> None:
    """Refuse clearly without DeepSpeed (imported only where planning uses it: its hostfile parser and
    memory estimators; a local run launches without the seconds that importing it takes)."""
    if importlib.util.find_spec("deepspeed") is None:
        raise UsageError("yayi train needs DeepSpeed: pip install 'yayi-cli[train]' (see the README)")


@dataclass(frozen=True)
class Ranks:
    """Where the ranks run (host -> slots), and the launcher flags that select exactly those."""

    slots: dict[str, list[int]]
    selection: tuple[str, ...]

    @property
    def world_size(self) -> int:
        return sum(len(slots) for slots in self.slots.values())

    @property
    def num_nodes(self) -> int:
        return len(self.slots)

    @property
    def gpus_per_node(self) -> int:
        return max(len(slots) for slots in self.slots.values())


def count_local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


HOSTFILE_FORMAT = "lines look like 'worker-1 slots=8'"
INCLUDE_FORMAT = "use HOST:SLOT,SLOT@HOST:SLOT, e.g. localhost:0,1 or worker-1:0,1,2,3@worker-2"


def read_hostfile(path: Path) -> dict[str, int]:
    """Hosts and their slots, read by DeepSpeed's own parser."""
    deepspeed_logs_to_stderr()
    from deepspeed.launcher.runner import fetch_hostfile

    if not path.is_file():
        raise UsageError(f"--hostfile {path}: no such file")
    try:
        pool = fetch_hostfile(str(path))
    except ValueError as error:
        raise UsageError(f"--hostfile {path}: {str(error).rstrip('.')}; {HOSTFILE_FORMAT}") from None
    if not pool:
        raise UsageError(f"--hostfile {path}: no hosts in it; {HOSTFILE_FORMAT}")
    if min(pool.values()) < 1:
        raise UsageError(f"--hostfile {path}: every host needs slots=1 or more")
    return dict(pool)


def select_ranks(pool: dict[str, int], options: TrainOptions, include: str) -> dict[str, list[int]]:
    """The ranks the launcher starts, by its own rules: --include, else the first --num-nodes hosts
    with the first --gpus slots each."""
    deepspeed_logs_to_stderr()
    from deepspeed.launcher.runner import apply_num_nodes_and_gpus, parse_inclusion_exclusion

    try:
        active = parse_inclusion_exclusion(pool, include, "")
    except (ValueError, KeyError) as error:
        raise UsageError(f"--include {include!r}: {str(error).strip(chr(39))}; {INCLUDE_FORMAT}") from None
    fewest_slots = min(len(slots) for slots in active.values())  # the check and its message read the same list
    if options.num_nodes and options.num_nodes > len(active):
        raise UsageError(f"--num-nodes {options.num_nodes}, but the hostfile lists {len(active)} host(s)")
    if options.gpus and options.gpus > fewest_slots:
        raise UsageError(f"--gpus {options.gpus}, but a host has only {fewest_slots} slot(s)")
    return dict(apply_num_nodes_and_gpus(active, options.num_nodes or 0, options.gpus or 0))


def local_slots(options: TrainOptions, warnings: list[str], *, dry_run: bool) -> int:
    """This machine's GPUs (or the CPU ranks asked for); too few is an error, or a warning in --dry-run."""
    if options.cpu:
        return options.gpus or 1
    present = count_local_gpus()
    problem = None
    if present == 0:
        problem = "no GPU found on this machine; use --cpu for a CPU test run, or --hostfile to train elsewhere"
    elif options.gpus and options.gpus > present:
        problem = f"--gpus {options.gpus}, but this machine has {present} GPU(s)"
    if problem and not dry_run:
        raise UsageError(problem)
    if problem:
        warnings.append(problem)
        included = [int(n) for n in re.findall(r"\d+", (options.include or "").partition(":")[2])]
        present = max([present, options.gpus or 1] + [n + 1 for n in included])
    return present


def visible_gpus(options: TrainOptions) -> list[str]:
    """CUDA_VISIBLE_DEVICES when it decides the GPUs of a local run (the launcher honours it only
    when given no --num_gpus/--include, so then we pass neither)."""
    if options.cpu or options.hostfile or options.include:
        return []
    return [device for device in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if device.strip()]


def plan_ranks(options: TrainOptions, warnings: list[str], *, dry_run: bool) -> Ranks:
    """The ranks the launcher will start and the flags that select them; refuse more GPUs than there
    are (a warning in --dry-run, which may run on a login node without GPUs)."""
    if options.include and (options.gpus or options.num_nodes):
        raise UsageError("--include cannot be combined with --gpus or --num-nodes (the launcher refuses it); use one")
    if options.hostfile:
        path = Path(options.hostfile)
        selection = ("--hostfile", str(path))
        selection += ("--include", options.include) if options.include else ()
        selection += ("--num_nodes", str(options.num_nodes)) if options.num_nodes else ()
        selection += ("--num_gpus", str(options.gpus)) if options.gpus else ()
        return Ranks(select_ranks(read_hostfile(path), options, options.include or ""), selection)
    if options.num_nodes and options.num_nodes > 1:
        raise UsageError(f"--num-nodes {options.num_nodes} needs --hostfile listing the machines")
    if options.include and not options.include.startswith("localhost:"):
        raise UsageError(f"--include {options.include!r}: without --hostfile only localhost:SLOTS can be named")
    present = local_slots(options, warnings, dry_run=dry_run)
    if options.include:
        return Ranks(select_ranks({"localhost": present}, options, options.include), ("--include", options.include))
    count = options.gpus or present
    slots = {"localhost": list(range(count))}
    if visible_gpus(options):
        return Ranks(slots, ())  # the launcher turns CUDA_VISIBLE_DEVICES into its --include
    return Ranks(slots, ("--num_gpus", str(count)))


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
    from yayi_cli.models import best_precision

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
    from yayi_cli.models import context_length, load_tokenizer, resolve_model_reference, saved_context_length

    reference = Path(resolve_model_reference(options.model))
    if reference.is_dir():
        found = saved_context_length(reference)
    else:
        found = context_length(options.model, load_tokenizer(options.model, trust_remote_code=options.trust_remote_code))
    if found is None:
        warnings.append(f"{options.model} declares no context length; examples are cut at {DEFAULT_MAX_LENGTH} "
                        "tokens (set --max-length to choose)")
    return found or DEFAULT_MAX_LENGTH


def checkpoints(directory: Path) -> list[Path]:
    """The Trainer's checkpoint-N directories, oldest first."""
    if not directory.is_dir():
        return []
    found = [path for path in directory.iterdir() if path.is_dir() and CHECKPOINT_PATTERN.match(path.name)]
    return sorted(found, key=lambda path: int(CHECKPOINT_PATTERN.match(path.name).group(1)))


def latest_complete_checkpoint(directory: Path, warnings: list[str]) -> Path | None:
    """The newest checkpoint that was written to the end (an interrupted save is skipped, and said so)."""
    for path in reversed(checkpoints(directory)):
        if (path / COMPLETE_MARKER).is_file():
            return path
        warnings.append(f"{path} was not written to the end (no {COMPLETE_MARKER}); skipping it")
    return None


def checkpoint_world_size(checkpoint: Path) -> int | None:
    """How many ranks wrote a ZeRO checkpoint (one optimizer shard each); None when not sharded."""
    shards = list(checkpoint.glob("global_step*/*optim_states.pt"))
    return len(shards) or None


def resolve_resume(options: TrainOptions, world_size: int, warnings: list[str]) -> Path | None:
    """The checkpoint to resume from: `auto` = the newest complete one in the output (if any)."""
    output = Path(options.output)
    if options.resume is None:
        return None
    if options.resume == "auto":
        checkpoint = latest_complete_checkpoint(output, warnings)
        if checkpoint is None and output.is_dir() and any(output.iterdir()):
            raise UsageError(
                f"--resume auto: {output} holds no complete checkpoint to continue from, and starting over there "
                "would write over what it holds; use --force to start over (its contents are kept beside it)"
            )
        if checkpoint is None:
            warnings.append(f"--resume auto: no checkpoint in {output} yet; starting from the model")
            return None
    else:
        checkpoint = Path(options.resume)
        if not checkpoint.is_dir():
            raise UsageError(f"--resume {checkpoint}: no such checkpoint directory; give checkpoint-N or auto")
        if not (checkpoint / COMPLETE_MARKER).is_file():
            raise UsageError(f"--resume {checkpoint}: not a complete checkpoint (no {COMPLETE_MARKER} in it)")
    return checkpoint.resolve()


UNIVERSAL_STAGES = (1, 2)
"""ZeRO stages whose checkpoints yayi converts for another rank count (the ones its tests resume)."""
UNIVERSAL_LATEST = "latest_universal"
"""Names the universal checkpoint in a checkpoint directory, as DeepSpeed's `latest` names the usual one."""
UNIVERSAL_LOADING = {"checkpoint": {"load_universal": True}}


def universal_conversion(checkpoint: Path | None, world_size: int, config: dict[str, Any], options: TrainOptions,
                         warnings: list[str]) -> int | None:
    """The rank count a checkpoint's ZeRO optimizer state is split over, when this launch has another
    one and the checkpoint must be converted to DeepSpeed's universal format to continue; None when
    it can be loaded as it is. Refuses what the conversion does not cover, with the ways out."""
    written_by = checkpoint_world_size(checkpoint) if checkpoint else None
    if written_by is None or written_by == world_size:
        return None
    ways_out = (f"resume with {written_by} rank(s) (--gpus/--hostfile), or start from its weights with "
                f"--model {checkpoint} and no --resume")
    if stage_of(config) not in UNIVERSAL_STAGES or options.adapter:
        what = f"{options.adapter} adapters" if options.adapter else f"ZeRO-{stage_of(config)}"
        raise UsageError(f"{checkpoint} holds ZeRO optimizer state split over {written_by} rank(s), and this launch "
                         f"has {world_size}; yayi converts it for another rank count only for full fine-tunes at ZeRO-1 or "
                         f"ZeRO-2, not {what}: {ways_out}")
    if options.deepspeed and (config.get("checkpoint") or {}).get("load_universal") is not True:
        raise UsageError(f"{checkpoint} holds ZeRO optimizer state split over {written_by} rank(s), and this launch "
                         f"has {world_size}: to resume it converted to a universal checkpoint, add "
                         f"{json.dumps(UNIVERSAL_LOADING)} to --deepspeed {options.deepspeed}; or {ways_out}")
    warnings.append(f"{checkpoint} was written by {written_by} rank(s) and this launch has {world_size}: it will be "
                    "converted to a DeepSpeed universal checkpoint (beside its own state) and continued from there")
    return written_by


def convert_to_universal(checkpoint: Path) -> Path:
    """DeepSpeed's ds_to_universal on the checkpoint's ZeRO state, into CHECKPOINT/<tag>_universal
    (once: an earlier conversion is reused), named by CHECKPOINT/latest_universal. The conversion
    writes into a temporary folder first, so a cut-short one is never taken for a finished one."""
    tag = (checkpoint / "latest").read_text(encoding="utf-8").strip()
    target = checkpoint / f"{tag}_universal"
    if target.is_dir() and (checkpoint / UNIVERSAL_LATEST).is_file():
        return target
    partial = checkpoint / f"{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--inject_missing_state",
               "--input_folder", str(checkpoint / tag), "--output_folder", str(partial)]
    done = subprocess.run(command, env=library_environment(dict(os.environ, DS_ACCELERATOR="cpu")),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise DataError(f"converting {checkpoint} to a universal checkpoint failed: {last}")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    write_text_atomic(checkpoint / UNIVERSAL_LATEST, target.name)
    return target


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


def check_data(paths: list[str], option: str, test_size: int | float | None = None) -> list[dict[str, Any]]:
    """Every data file exists and is valid (the worker must never drop a record), there is data to
    train on (and to hold out with --test-size); their sizes and hashes for run.json."""
    from yayi_cli.data.checked import count_records
    from yayi_cli.sampling import allocate

    files = [Path(path) for path in paths]
    try:
        records = count_records(files)
    except DataError as error:
        raise DataError(f"{option}: {error}") from None
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
    return TrainOptions(**(options.to_json() | {
        "data": [absolute(p) for p in options.data], "eval_data": [absolute(p) for p in options.eval_data],
        "model": model, "output": absolute(options.output), "hostfile": absolute(options.hostfile),
        "deepspeed": absolute(options.deepspeed), "resume": options.resume if options.resume in (None, "auto")
        else absolute(options.resume), "cache_dir": absolute(options.cache_dir), "nvme_path": absolute(options.nvme_path),
    }))


@dataclass
class LaunchPlan:
    options: TrainOptions
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
    warnings: list[str] = field(default_factory=list)

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
            "warnings": self.warnings,
        }


def plan_launch(options: TrainOptions, *, dry_run: bool) -> LaunchPlan:
    """Check everything and resolve the run; writes nothing."""
    warnings: list[str] = []
    options = absolute_paths(options)
    check_output(options)
    refuse_output_over(Path(options.output), options.model, "--model")
    output = Path(options.output)
    if options.force and not options.resume and output.is_dir() and any(output.iterdir()):
        warnings.append(f"--force: the contents of {output} will be moved to {output.name}.replaced-<time> beside it")
    require_deepspeed()
    require_saved_tokenizer(options.model)
    ranks = plan_ranks(options, warnings, dry_run=dry_run)
    warnings += filter(None, [loopback_warning(options, ranks)])
    config = read_user_config(Path(options.deepspeed)) if options.deepspeed else deepspeed_config(options)
    accumulation = resolve_accumulation(options, ranks.world_size)
    options.gradient_accumulation_steps = accumulation
    check_batch_sizes(config, options, ranks.world_size)
    precision = resolve_precision(config, options)
    max_length = resolve_max_length(options, warnings)
    resume_from = resolve_resume(options, ranks.world_size, warnings)
    universal_from = universal_conversion(resume_from, ranks.world_size, config, options, warnings)
    if universal_from and not options.deepspeed:
        config |= UNIVERSAL_LOADING
    data = check_data(options.data, "--data", options.test_size)
    eval_data = check_data(options.eval_data, "--eval-data") if options.eval_data else []
    if options.adapter:
        from yayi_cli.train.adapters import plan_adapter

        adapter = plan_adapter(options, stage=stage_of(config), offload=offload_of(config),
                               gpus_per_node=ranks.gpus_per_node, num_nodes=ranks.num_nodes)
        options.lora_targets, memory = adapter.targets, adapter.memory
    elif dry_run:
        memory = estimate_memory(
            options.model, stage=stage_of(config), offload=offload_of(config), gpus_per_node=ranks.gpus_per_node,
            num_nodes=ranks.num_nodes, trust_remote_code=options.trust_remote_code,
        )
    else:  # the full estimate would import transformers and DeepSpeed here for seconds, before the ranks do
        memory = count_saved_parameters(options.model)
    plan = LaunchPlan(options, ranks, accumulation, config, precision, max_length, resume_from, universal_from, data,
                      eval_data, memory, node_environment(options) if ranks.num_nodes > 1 else None, warnings)
    check_continuation(resume_from, plan.manifest(), options, warnings)
    return plan


def set_aside(output: Path) -> Path:
    """Move a previous run's output beside it (never deleted: it may hold the only copy of a checkpoint)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    kept = output.with_name(f"{output.name}.replaced-{stamp}")
    output.rename(kept)
    return kept


def write_run_files(plan: LaunchPlan) -> Path | None:
    """OUTPUT/ds_config.json (the user's file copied as it is) and this launch's record (OUTPUT/run.json and
    OUTPUT/runs/run-N.json); returns what was set aside."""
    output, kept = plan.output, None
    if plan.options.force and not plan.options.resume and output.is_dir() and any(output.iterdir()):
        kept = set_aside(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--output {output}: cannot create it ({error.strerror or error})") from None
    if plan.options.deepspeed:  # copied as it is, byte for byte: it is the user's file
        write_text_atomic(output / DS_CONFIG_FILE, Path(plan.options.deepspeed).read_text(encoding="utf-8"))
    else:
        write_json_atomic(output / DS_CONFIG_FILE, plan.deepspeed_config)
    record_launch(output, plan.manifest())
    if plan.node_environment is not None:
        lines = [f"{name}={value}\n" for name, value in plan.node_environment.items()]
        write_text_atomic(output / NODE_ENV_FILE, "".join(lines))
    return kept


@dataclass
class TrainingResult:
    """How a launched run ended, and where its outputs are."""

    plan: LaunchPlan
    status: int
    kept: Path | None
    """Where a previous run's contents were moved by --force."""

    def to_json(self) -> dict[str, Any]:
        summary = self.plan.output / SUMMARY_FILE
        return {
            "status": self.status,
            "output": str(self.plan.output),
            "summary": json.loads(summary.read_text(encoding="utf-8")) if self.status == 0 and summary.is_file() else None,
            "log": str(self.plan.output / TRAIN_LOG),
            "metrics": str(self.plan.output / METRICS_FILE),
            "moved_previous_to": str(self.kept) if self.kept else None,
            "plan": self.plan.to_json(),
        }


def run_training(plan: LaunchPlan, *, verbose: bool = False) -> TrainingResult:
    """Write the run files, run the launcher with the console reading its output, report the end."""
    from yayi_cli.train.console import RunConsole

    kept = write_run_files(plan)
    if plan.universal_from:
        convert_to_universal(plan.resume_from)
    console = RunConsole(plan.output, verbose=verbose)
    node_env_file = plan.output / NODE_ENV_FILE if plan.node_environment is not None else None
    try:
        status = run_launcher(plan.command, child_environment(plan.options, node_env_file), console.line)
    except BaseException:
        console.close()  # the error says what happened; the ranks' last lines would not
        raise
    console.finish(status)
    return TrainingResult(plan, status, kept)


RANK_SETTINGS = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def chosen_environment(options: TrainOptions) -> dict[str, str]:
    """The variables that yayi's own flags set for every rank."""
    env = {"DS_ACCELERATOR": "cpu"} if options.cpu else {}
    if options.network_interface:
        env |= {"GLOO_SOCKET_IFNAME": options.network_interface, "NCCL_SOCKET_IFNAME": options.network_interface}
    return env


def users_node_environment() -> dict[str, str]:
    """What the user's own .deepspeed_env files set (DeepSpeed reads the one in the home directory,
    then the one in the working directory; yayi's file replaces that lookup, so it carries them over)."""
    name = os.environ.get("DS_ENV_FILE", USERS_NODE_ENV_FILE)
    found: dict[str, str] = {}
    for path in (Path.home() / name, Path.cwd() / name):
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                key, equals, value = line.partition("=")
                if equals and key.strip():
                    found[key.strip()] = value.strip()
    return found


def node_environment(options: TrainOptions) -> dict[str, str]:
    """What every rank on every machine gets, so a remote rank runs as a local one would: this Python
    environment first on PATH, the variables that decide where code and models come from, the
    user's .deepspeed_env, and what yayi's flags set (those last, so the flags win)."""
    python_bin = str(Path(sys.executable).parent)
    path = [python_bin] + [part for part in os.environ.get("PATH", "").split(os.pathsep) if part and part != python_bin]
    env = {"PATH": os.pathsep.join(path), **RANK_SETTINGS}
    env |= {name: os.environ[name] for name in FORWARDED_VARIABLES if os.environ.get(name)}
    env |= users_node_environment() | chosen_environment(options)
    for name, value in env.items():
        if UNSAFE_IN_SHELL.search(value):
            raise UsageError(f"{name}={value!r}: DeepSpeed's runner cannot pass a value holding \" $ ` or \\ "
                             "to the other machines; change it")
    return env


def loopback_warning(options: TrainOptions, ranks: Ranks) -> str | None:
    """Gloo and NCCL announce the address this machine's name resolves to, unless told an interface:
    a loopback one leaves the machines unable to reach each other (the run waits, then times out)."""
    if ranks.num_nodes < 2 or options.network_interface:
        return None
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        address = None
    if address and not address.startswith("127."):
        return None
    try:
        interfaces = [interface for _, interface in socket.if_nameindex() if interface != "lo"]
    except OSError:
        interfaces = []
    resolves = f"resolves to {address}, a loopback address" if address else "does not resolve to an address"
    return (f"this machine's name {name!r} {resolves}: each rank would announce it and the machines would not "
            f"connect; give --network-interface IFACE, the interface they reach each other on"
            + (f" (here: {', '.join(interfaces)})" if interfaces else ""))


def child_environment(options: TrainOptions, node_env_file: Path | None = None) -> dict[str, str]:
    """The launcher's environment: ours, less what yayi quieted for itself, plus what every rank needs
    (and, for several machines, the file of what the runner exports to them)."""
    env = library_environment(dict(os.environ, **RANK_SETTINGS)) | chosen_environment(options)
    if node_env_file is not None:
        env["DS_ENV_FILE"] = str(node_env_file)
    visible = visible_gpus(options)
    if visible and options.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[: options.gpus])  # --gpus N: the first N of them
    return env


def failed_machine(line: str) -> str | None:
    """The machine a launcher line says has failed, if it says so."""
    failed = MACHINE_FAILED.match(line.rstrip("\n"))
    return failed.group(1) if failed else None


def run_launcher(command: list[str], env: dict[str, str], on_line: Callable[[str], None]) -> int:
    """Run the launcher, hand each line it and its ranks print to `on_line`, return its exit status
    (130 when interrupted; 1 when training failed).

    The launcher and its ranks get a process group of their own, so that Ctrl-C reaches only us;
    we then stop the whole group with SIGTERM (the launcher's own shutdown path, no tracebacks),
    as we do when we receive SIGTERM, and keep reading until they have all exited; a second
    Ctrl-C kills the group outright. A checkpoint cut short lacks its last file and is skipped by
    --resume auto, so the newest complete one stays usable.

    When one machine fails, the ranks elsewhere would wait for it until --dist-timeout: the whole
    run is stopped the same way at once. When anything else ends the reading (an error of ours),
    the group is stopped on the way out; when yayi is killed outright, the launcher gets SIGTERM
    from the kernel (with several machines, its handler stops the remote ones) and the ranks end
    themselves, their output pipe having no reader left (lifetime.end_when_unread).
    """
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
                               preexec_fn=dies_with_parent(signal.SIGTERM))  # noqa: PLW1509 - fork-safe

    def signal_group(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    machine_failed = False

    def read_all() -> None:
        nonlocal machine_failed
        for line in process.stdout:
            on_line(line)
            if not machine_failed and failed_machine(line):
                machine_failed = True
                signal_group(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, lambda *_: signal_group(signal.SIGTERM))
    interrupted = False
    try:
        while True:
            try:
                read_all()
                break
            except KeyboardInterrupt:
                signal_group(signal.SIGKILL if interrupted else signal.SIGTERM)
                interrupted = True
        status = process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        process.stdout.close()  # what is still running has no reader now: ranks end at once, nothing blocks
        stop_group(process)
    if interrupted:
        return 130
    if status < 0:
        return 128 - status  # killed by a signal: the shell's convention
    return 1 if machine_failed or status > 2 else status  # pdsh passes on ssh's 255 when a machine is unreachable


def interrupted_note(output: Path) -> str:
    checkpoint = latest_complete_checkpoint(output, [])
    if checkpoint is None:
        return "all ranks stopped before the first complete checkpoint"
    return f"all ranks stopped; {checkpoint} is complete: continue from it with --resume auto"
