"""The DeepSpeed ZeRO config of a run, and the checks that keep DeepSpeed from failing mid-launch.

Batch sizes, learning rate, clipping and the optimizer's hyper-parameters are "auto": the Hugging
Face integration fills them from the Trainer's arguments, so the two can never disagree. The
learning-rate schedule is left to the Trainer (no "scheduler" section), which offers more shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from yayi_cli.runtime.errors import UsageError
from yayi_cli.train.options import ZERO_STAGES, TrainOptions


AUTO = "auto"


def _offload(device: str, nvme_path: str | None) -> dict[str, Any]:
    section: dict[str, Any] = {"device": device, "pin_memory": True}
    if device == "nvme":
        section["nvme_path"] = nvme_path
    return section


def zero_section(stage: int, offload: str, nvme_path: str | None) -> dict[str, Any]:
    """`zero_optimization` for a stage; optimizer state offload from stage 1, parameters at stage 3."""
    section: dict[str, Any] = {"stage": stage}
    if stage == 0:
        return section
    section |= {"overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": AUTO}
    if offload != "none":
        section["offload_optimizer"] = _offload(offload, nvme_path)
    if stage == 3:
        section |= {
            "stage3_prefetch_bucket_size": AUTO,
            "stage3_param_persistence_threshold": AUTO,
            "stage3_gather_16bit_weights_on_model_save": True,
            "sub_group_size": 1_000_000_000,
        }
        if offload != "none":
            section["offload_param"] = _offload(offload, nvme_path)
    else:
        section |= {"allgather_partitions": True, "reduce_scatter": True, "allgather_bucket_size": 200_000_000}
    return section


def precision_sections(precision: str) -> dict[str, Any]:
    """"auto" lets the worker pick bf16, fp16 or fp32 from the hardware it runs on."""
    enabled = {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    if precision == "auto":
        enabled = {"bf16": AUTO, "fp16": AUTO}
    fp16 = {"enabled": enabled["fp16"], "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
            "hysteresis": 2, "min_loss_scale": 1}
    return {"bf16": {"enabled": enabled["bf16"]}, "fp16": fp16}


def deepspeed_config(options: TrainOptions) -> dict[str, Any]:
    """The ZeRO config for the chosen stage, offload and precision (TrainOptions refused what cannot run)."""
    return {
        "train_batch_size": AUTO,
        "train_micro_batch_size_per_gpu": AUTO,
        "gradient_accumulation_steps": AUTO,
        "gradient_clipping": AUTO,
        "zero_optimization": zero_section(options.zero, options.offload, options.nvme_path),
        **precision_sections(options.precision),
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW on GPUs avoids JIT-building FusedAdam; offloaded states need DeepSpeed's CPU Adam
            "params": {"lr": AUTO, "betas": AUTO, "eps": AUTO, "weight_decay": AUTO,
                       "torch_adam": options.offload == "none"},
        },
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }


def read_user_config(path: Path) -> dict[str, Any]:
    """A user's own DeepSpeed config (`--deepspeed FILE`), used as it is."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"--deepspeed {path}: cannot read it ({error.strerror or error})") from None
    except ValueError as error:
        raise UsageError(f"--deepspeed {path}: not valid JSON: {error}") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"--deepspeed {path}: expected a JSON object")
    check_user_config(loaded, path)
    return loaded


def check_user_config(config: dict[str, Any], path: Path) -> None:
    """The parts of a user's config that yayi relies on, checked before any rank starts."""
    section = config.get("zero_optimization", {})
    if not isinstance(section, dict) or section.get("stage", 0) not in ZERO_STAGES:
        raise UsageError(f"--deepspeed {path}: zero_optimization.stage must be 0, 1, 2 or 3")
    for name in ("bf16", "fp16"):
        if not isinstance(config.get(name, {}), dict):
            raise UsageError(f'--deepspeed {path}: "{name}" must be an object such as {{"enabled": true}}')
    if section.get("stage") == 3 and section.get("stage3_gather_16bit_weights_on_model_save") is not True:
        raise UsageError(
            f"--deepspeed {path}: at ZeRO-3 set zero_optimization.stage3_gather_16bit_weights_on_model_save "
            "to true, or the final model would be saved as shards instead of a loadable checkpoint"
        )


def stage_of(config: dict[str, Any]) -> int:
    section = config.get("zero_optimization") or {}
    return int(section.get("stage", 0)) if isinstance(section, dict) else 0


def offload_of(config: dict[str, Any]) -> str:
    """Where a config offloads optimizer state: none, cpu or nvme."""
    section = config.get("zero_optimization") or {}
    offload = section.get("offload_optimizer") if isinstance(section, dict) else None
    return str(offload.get("device", "none")) if isinstance(offload, dict) else "none"


def precision_of(config: dict[str, Any]) -> str:
    """What a config asks for: bf16, fp16, fp32, or auto (the worker decides from the hardware)."""
    for name in ("bf16", "fp16"):
        enabled = (config.get(name) or {}).get("enabled", False)
        if enabled == AUTO:
            return AUTO
        if enabled:
            return name
    return "fp32"


def check_batch_sizes(config: dict[str, Any], options: TrainOptions, world_size: int) -> None:
    """DeepSpeed insists train_batch_size == micro batch x accumulation x ranks: check it before launching."""
    expected = {
        "train_micro_batch_size_per_gpu": options.micro_batch_size,
        "gradient_accumulation_steps": options.gradient_accumulation_steps,
        "train_batch_size": options.micro_batch_size * options.gradient_accumulation_steps * world_size,
    }
    for key, value in expected.items():
        given = config.get(key, AUTO)
        if given != AUTO and given != value:
            raise UsageError(
                f"the DeepSpeed config sets {key}={given}, but this run has {value} (micro batch "
                f"{options.micro_batch_size} x accumulation {options.gradient_accumulation_steps} x {world_size} "
                f"rank(s)); set it to \"auto\" or change the batch options"
            )


def resolve_accumulation(options: TrainOptions, world_size: int) -> int:
    """The accumulation steps that make --global-batch-size, or the given ones; refuses remainders."""
    if options.global_batch_size is None:
        return options.gradient_accumulation_steps
    per_step = options.micro_batch_size * world_size
    if options.global_batch_size % per_step:
        raise UsageError(
            f"--global-batch-size {options.global_batch_size} is not a multiple of micro batch "
            f"{options.micro_batch_size} x {world_size} rank(s) = {per_step}; choose a multiple of {per_step}"
        )
    return options.global_batch_size // per_step

