"""Where the ranks run: the hostfile, the launcher's own selection rules, this machine's GPUs.

Checked on the machine `yayi train` runs on (which may be a login node without GPUs), with DeepSpeed's
own parsers, so the ranks counted here are the ones the launcher starts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from yayi_cli.runtime.errors import UsageError
from yayi_cli.runtime.terminal import deepspeed_logs_to_stderr
from yayi_cli.train.options import TrainOptions


HOSTFILE_FORMAT = "lines look like 'worker-1 slots=8'"
INCLUDE_FORMAT = "use HOST:SLOT,SLOT@HOST:SLOT, e.g. localhost:0,1 or worker-1:0,1,2,3@worker-2"


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
    if options.hostfile:
        path = Path(options.hostfile)
        selection = ("--hostfile", str(path))
        selection += ("--include", options.include) if options.include else ()
        selection += ("--num_nodes", str(options.num_nodes)) if options.num_nodes else ()
        selection += ("--num_gpus", str(options.gpus)) if options.gpus else ()
        return Ranks(select_ranks(read_hostfile(path), options, options.include or ""), selection)
    present = local_slots(options, warnings, dry_run=dry_run)
    if options.include:
        return Ranks(select_ranks({"localhost": present}, options, options.include), ("--include", options.include))
    count = options.gpus or present
    slots = {"localhost": list(range(count))}
    if visible_gpus(options):
        return Ranks(slots, ())  # the launcher turns CUDA_VISIBLE_DEVICES into its --include
    return Ranks(slots, ("--num_gpus", str(count)))
