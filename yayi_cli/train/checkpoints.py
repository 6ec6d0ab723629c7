"""The Trainer's checkpoints: which ones are complete, which one to resume, and converting one whose
ZeRO optimizer state was split over another number of ranks (DeepSpeed's universal checkpoint).

A checkpoint cut short (Ctrl-C, a killed machine) lacks the file the Trainer writes last, so it is
skipped, and the newest complete one stays usable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from yayi_cli.models.run_files import CHECKPOINT_PATTERN, COMPLETE_MARKER, UNIVERSAL_LATEST
from yayi_cli.runtime.atomic import write_text_atomic
from yayi_cli.runtime.errors import DataError, UsageError
from yayi_cli.runtime.terminal import library_environment
from yayi_cli.train.options import TrainOptions
from yayi_cli.train.zero import stage_of


UNIVERSAL_STAGES = (1, 2)
"""ZeRO stages whose checkpoints yayi converts for another rank count (the ones its tests resume)."""
UNIVERSAL_LOADING = {"checkpoint": {"load_universal": True}}


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


def resolve_resume(options: TrainOptions, warnings: list[str]) -> Path | None:
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


def interrupted_note(output: Path) -> str:
    """What an interrupted run leaves to continue from."""
    checkpoint = latest_complete_checkpoint(output, [])
    if checkpoint is None:
        return "all ranks stopped before the first complete checkpoint"
    return f"all ranks stopped; {checkpoint} is complete: continue from it with --resume auto"
