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
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from yayi_cli import __version__
from yayi_cli.atomic import write_text_atomic
from yayi_cli.data.reader import sha256_of
from yayi_cli.errors import DataError, UsageError
from yayi_cli.terminal import deepspeed_logs_to_stderr
from yayi_cli.train.memory import MemoryEstimate, estimate_memory
from yayi_cli.train.options import TrainOptions
from yayi_cli.train.zero import (
    check_batch_sizes, deepspeed_config, offload_of, read_user_config, resolve_accumulation, stage_of,
)

WORKER_MODULE = "yayi_cli.train.worker"
RUN_FILE = "run.json"
DS_CONFIG_FILE = "ds_config.json"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "trainer_state.json"
"""The Trainer writes this last into a checkpoint, so a checkpoint without it was cut short."""
PACKAGES = ("yayi-cli", "torch", "transformers", "deepspeed", "datasets", "accelerate", "tokenizers")


@contextlib.contextmanager
def deepspeed_logs_on_stderr() -> Iterator[None]:
    """Planning uses DeepSpeed's own hostfile parser and memory estimators; refuse clearly without it."""
    if importlib.util.find_spec("deepspeed") is None:
        raise UsageError("yayi train needs DeepSpeed: pip install 'yayi-cli[train]' (see the README)")
    deepspeed_logs_to_stderr()
    yield


@dataclass(frozen=True)
class Ranks:
    """Where the ranks run: hosts (None for this machine alone) and how many on each."""

    slots: dict[str, list[int]]
    hostfile: str | None

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


def _select(pool: dict[str, int], options: TrainOptions) -> dict[str, list[int]]:
    """The launcher's own selection: --include filters, then --num-nodes and --gpus cut."""
    from deepspeed.launcher.runner import parse_inclusion_exclusion

    try:
        active = parse_inclusion_exclusion(pool, options.include or "", "")
    except (ValueError, KeyError) as error:
        raise UsageError(f"--include {options.include!r}: {error}") from None
    hosts = list(active.items())[: options.num_nodes or None]
    return {host: list(slots)[: options.gpus or None] for host, slots in hosts}


def plan_ranks(options: TrainOptions, warnings: list[str], *, dry_run: bool) -> Ranks:
    """Count the ranks the launcher will start; refuse more GPUs than there are (a warning in --dry-run)."""
    if options.include and options.gpus:
        raise UsageError("--include and --gpus cannot be combined (the launcher refuses it); use one")
    if options.hostfile:
        from deepspeed.launcher.runner import fetch_hostfile

        path = Path(options.hostfile)
        if not path.is_file():
            raise UsageError(f"--hostfile {path}: no such file")
        try:
            pool = fetch_hostfile(str(path))
        except ValueError as error:
            raise UsageError(f"--hostfile {path}: {str(error).rstrip('.')}; lines look like 'worker-1 slots=8'") from None
        if not pool:
            raise UsageError(f"--hostfile {path}: no hosts in it; lines look like 'worker-1 slots=8'")
        return Ranks(_select(dict(pool), options), str(path))
    if options.num_nodes and options.num_nodes > 1:
        raise UsageError(f"--num-nodes {options.num_nodes} needs --hostfile listing the machines")
    present = options.gpus or 1 if options.cpu else count_local_gpus()
    if not options.cpu:
        problem = None
        if present == 0:
            problem = "no GPU found on this machine; use --cpu for a CPU test run, or --hostfile to train elsewhere"
        elif options.gpus and options.gpus > present:
            problem = f"--gpus {options.gpus}, but this machine has {present} GPU(s)"
        if problem and not dry_run:
            raise UsageError(problem)
        if problem:
            warnings.append(problem)
            present = max(present, options.gpus or 1)
    return Ranks(_select({"localhost": present}, options), None)


def launcher_command(options: TrainOptions, ranks: Ranks, run_file: Path) -> list[str]:
    """`deepspeed ... --module yayi_cli.train.worker --run-config RUN` as an argument list (no shell)."""
    executable = Path(sys.executable).with_name("deepspeed")
    command = [str(executable)] if executable.exists() else [sys.executable, "-m", "deepspeed.launcher.runner"]
    if ranks.hostfile:
        command += ["--hostfile", ranks.hostfile]
    if options.include:
        command += ["--include", options.include]
    if options.num_nodes:
        command += ["--num_nodes", str(options.num_nodes)]
    if not options.include:
        command += ["--num_gpus", str(options.gpus or ranks.gpus_per_node)]
    if options.master_addr:
        command += ["--master_addr", options.master_addr]
    if options.master_port:
        command += ["--master_port", str(options.master_port)]
    return command + ["--module", WORKER_MODULE, "--run-config", str(run_file)]


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
        if checkpoint is None:
            warnings.append(f"--resume auto: no complete checkpoint in {output}; starting from the model")
            return None
    else:
        checkpoint = Path(options.resume)
        if not (checkpoint / COMPLETE_MARKER).is_file():
            raise UsageError(f"--resume {checkpoint}: not a complete checkpoint (no {COMPLETE_MARKER} in it)")
    written_by = checkpoint_world_size(checkpoint)
    if written_by is not None and written_by != world_size:
        raise UsageError(
            f"{checkpoint} holds ZeRO optimizer state split over {written_by} rank(s), and this launch has "
            f"{world_size}; resume with {written_by} rank(s) (--gpus/--hostfile), or start from its weights "
            f"with --model {checkpoint} and no --resume"
        )
    return checkpoint.resolve()


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


def check_data(paths: list[str], option: str) -> list[dict[str, Any]]:
    """Every data file exists and is valid (the worker must never drop a record); their hashes."""
    from yayi_cli.data.validate import validate

    files = [Path(path) for path in paths]
    report = validate(files, max_listed=1)
    if not report.ok:
        first = report.tally.problems[0] if report.tally.problems else None
        raise DataError(
            f"{option}: {report.errors} invalid record(s), first {first}; "
            f"run `yayi data validate {' '.join(map(str, files))}` for all of them"
        )
    return [{"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_of(path)} for path in files]


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
        return str(Path(path).resolve()) if path else path

    model = absolute(options.model) if Path(options.model).exists() else options.model
    return TrainOptions(**(options.to_json() | {
        "data": [absolute(p) for p in options.data], "eval_data": [absolute(p) for p in options.eval_data],
        "model": model, "output": absolute(options.output), "hostfile": absolute(options.hostfile),
        "deepspeed": absolute(options.deepspeed), "resume": options.resume if options.resume in (None, "auto")
        else absolute(options.resume), "cache_dir": absolute(options.cache_dir),
    }))


@dataclass
class LaunchPlan:
    options: TrainOptions
    ranks: Ranks
    gradient_accumulation_steps: int
    deepspeed_config: dict[str, Any]
    resume_from: Path | None
    data: list[dict[str, Any]]
    eval_data: list[dict[str, Any]]
    memory: MemoryEstimate
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
            "deepspeed_config": DS_CONFIG_FILE,
            "resume_from": str(self.resume_from) if self.resume_from else None,
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
            "memory": self.memory.to_json(),
            "warnings": self.warnings,
        }


def plan_launch(options: TrainOptions, *, dry_run: bool) -> LaunchPlan:
    """Check everything and resolve the run; writes nothing."""
    warnings: list[str] = []
    options = absolute_paths(options)
    check_output(options)
    with deepspeed_logs_on_stderr():
        ranks = plan_ranks(options, warnings, dry_run=dry_run)
        config = read_user_config(Path(options.deepspeed)) if options.deepspeed else deepspeed_config(options)
        accumulation = resolve_accumulation(options, ranks.world_size)
        options.gradient_accumulation_steps = accumulation
        check_batch_sizes(config, options, ranks.world_size)
        resume_from = resolve_resume(options, ranks.world_size, warnings)
        data = check_data(options.data, "--data")
        eval_data = check_data(options.eval_data, "--eval-data") if options.eval_data else []
        memory = estimate_memory(
            options.model, stage=stage_of(config), offload=offload_of(config), gpus_per_node=ranks.gpus_per_node,
            num_nodes=ranks.num_nodes, trust_remote_code=options.trust_remote_code,
        )
    return LaunchPlan(options, ranks, accumulation, config, resume_from, data, eval_data, memory, warnings)


def set_aside(output: Path) -> Path:
    """Move a previous run's output beside it (never deleted: it may hold the only copy of a checkpoint)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    kept = output.with_name(f"{output.name}.replaced-{stamp}")
    output.rename(kept)
    return kept


def write_run_files(plan: LaunchPlan) -> Path | None:
    """OUTPUT/ds_config.json (the user's file copied as it is) and OUTPUT/run.json; returns what was set aside."""
    output, kept = plan.output, None
    if plan.options.force and not plan.options.resume and output.is_dir() and any(output.iterdir()):
        kept = set_aside(output)
    output.mkdir(parents=True, exist_ok=True)
    if plan.options.deepspeed:
        shutil.copyfile(plan.options.deepspeed, output / DS_CONFIG_FILE)
    else:
        write_text_atomic(output / DS_CONFIG_FILE, json.dumps(plan.deepspeed_config, indent=2) + "\n")
    write_text_atomic(output / RUN_FILE, json.dumps(plan.manifest(), ensure_ascii=False, indent=2) + "\n")
    return kept


def child_environment(options: TrainOptions) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    if options.cpu:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def run_launcher(command: list[str], env: dict[str, str]) -> int:
    """Run the launcher with our stdout/stderr and return its exit status (130 when interrupted).

    The launcher and its ranks get a process group of their own, so that Ctrl-C reaches only us;
    we then stop the whole group with SIGTERM (the launcher's own shutdown path, no tracebacks),
    as we do when we receive SIGTERM. A checkpoint cut short lacks its last file and is skipped
    by --resume auto, so the newest complete one stays usable.
    """
    process = subprocess.Popen(command, env=env, start_new_session=True)

    def stop(*_: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop()
        while True:
            try:
                process.wait()
                return 130
            except KeyboardInterrupt:
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_note(output: Path) -> str:
    checkpoint = latest_complete_checkpoint(output, [])
    if checkpoint is None:
        return "all ranks stopped before the first complete checkpoint"
    return f"all ranks stopped; {checkpoint} is complete: continue from it with --resume auto"
