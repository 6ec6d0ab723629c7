"""Every launch's record, and the rule that a resumed run continues the run it resumes.

OUTPUT/run.json is the latest launch's record (the one its ranks read); OUTPUT/runs/run-N.json keeps
each launch's, numbered from 1; CHECKPOINT/run.json is the record of the launch that saved that
checkpoint. Each record names the checkpoint its launch resumed from, so a model's history reads back
from checkpoint to checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from yayi_cli.models.run_files import RUN_FILE, RUN_RECORD, RUNS_DIR, checkpoint_name
from yayi_cli.runtime.atomic import write_json_atomic
from yayi_cli.runtime.errors import UsageError
from yayi_cli.train.options import METHOD_OPTIONS, SFT, TrainOptions


SHOWN_HASH = 12
"""Hex digits of a data hash shown in a message."""


def record_launch(output: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Keep this launch's record as OUTPUT/runs/run-N.json (N: the next launch number) and OUTPUT/run.json."""
    runs = output / RUNS_DIR
    runs.mkdir(exist_ok=True)
    numbers = [int(found.group(1)) for path in runs.iterdir() if (found := RUN_RECORD.match(path.name))]
    record = manifest | {"launch": max(numbers, default=0) + 1}
    write_json_atomic(runs / f"run-{record['launch']}.json", record)
    write_json_atomic(output / RUN_FILE, record)
    return record


def checkpoint_record(checkpoint: Path) -> dict[str, Any] | None:
    """The record of the launch that saved `checkpoint`: its own copy, else its run directory's run.json
    (a checkpoint saved before copies were kept, or one cut off between its last file and the copy)."""
    for path in (checkpoint / RUN_FILE, checkpoint.parent / RUN_FILE):
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


HOW_NOT_WHAT = ("precompute_ref", "use_vllm", "vllm_memory")
"""Method options that change how the run computes (the reference held or not, the generator), not what it learns:
a resumed run may change them."""


def stream_settings(record: dict[str, Any]) -> dict[str, Any]:
    """What decides which examples a run sees, in which order, the model they train and what it is trained
    towards (the method and its objective's settings): what a resumed run must keep. Steps, epochs, logging,
    saving, batch layout and the number of ranks may change."""
    options = record["options"]
    adapter = TrainOptions(**options).adapter
    settings = {
        "data sha256": [item["sha256"] for item in record["data"]],
        "eval-data sha256": [item["sha256"] for item in record["eval_data"]],
        "model": options["model"], "template": options["template"], "seed": options["seed"],
        "test-size": options["test_size"], "max-length": record["max_length"], "overlong": options["overlong"],
        "packing": options["packing"], "adapter": adapter,
    }
    if adapter:
        settings |= {name.replace("_", "-"): options[name] for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_targets")}
    method = options.get("method", SFT)  # records from before --method trained with SFT
    settings["method"] = method
    settings |= {name.replace("_", "-"): options.get(name) for name, methods in METHOD_OPTIONS.items()
                 if method in methods and name not in HOW_NOT_WHAT}  # the objective
    return settings


def _shown(name: str, value: Any) -> str:
    if name.endswith("sha256"):
        return ",".join(digest[:SHOWN_HASH] for digest in value) or "none"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`setting old -> new` for each stream setting the record `now` changes (an adapter turned on or off
    is that one change, not one per adapter setting)."""
    old, new = stream_settings(before), stream_settings(now)
    return [f"{name} {_shown(name, old[name])} -> {_shown(name, new[name])}"
            for name in new if name in old and old[name] != new[name]]


def check_continuation(checkpoint: Path | None, manifest: dict[str, Any], options: TrainOptions, warnings: list[str]) -> None:
    """Refuse to resume a checkpoint with another data stream or model than the run that saved it (it
    would train on silently, on something else); --force continues anyway, and says what changed."""
    if checkpoint is None:
        return
    before = checkpoint_record(checkpoint)
    if before is None:
        warnings.append(f"{checkpoint} has no {RUN_FILE} beside it or in it: nothing to check this run against")
        return
    changed = ", ".join(differences(before, manifest))
    if not changed:
        return
    if options.force:
        warnings.append(f"--force: continuing {checkpoint} although this run differs from the one it continues: {changed}")
        return
    ways_out = ("a new --output to start a new run" if options.resume == "auto" else
                f"--model {checkpoint} without --resume to start a new run from its weights")
    raise UsageError(f"--resume {options.resume}: this run differs from the one it continues ({checkpoint.name}): "
                     f"{changed}; use --force to continue anyway, or {ways_out}")


def checkpoint_recorder(run: dict[str, Any], *, main_rank: bool) -> Any:
    """A `TrainerCallback` that puts this launch's record into every checkpoint it saves, and holds a resumed run to
    this launch's logging, eval and save steps (built here so that transformers is imported only inside the
    worker)."""
    from transformers import TrainerCallback

    class CheckpointRecorder(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """A resumed run logs, evaluates and saves at the steps this launch asks for: the Trainer would keep the
            ones in the checkpoint's state and only warn in train.log."""
            state.compute_steps(args, state.max_steps)

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if main_rank:
                write_json_atomic(Path(args.output_dir) / checkpoint_name(state.global_step) / RUN_FILE, run)

    return CheckpointRecorder()
