"""How much memory each GPU and each machine's CPU will need, before anything is launched.

The full estimate (`--dry-run`) counts parameters from the model's config alone (the model is built
on the "meta" device, so no weights are read), and the arithmetic is DeepSpeed's own estimators for
model states (parameters, gradients, optimizer states). Activations come on top and grow with batch
and length. Importing transformers and DeepSpeed for it costs seconds, so a real run only counts the
parameters from the safetensors headers, which needs neither.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli.models.reference import resolve_model_reference
from yayi_cli.models.weights import is_quantized
from yayi_cli.runtime.errors import UsageError, first_line
from yayi_cli.runtime.hub import read_model_json
from yayi_cli.runtime.terminal import deepspeed_logs_to_stderr


GIB = 1024**3
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
HEADER_LIMIT = 100_000_000
"""The largest header safetensors itself reads."""
COUNTED_ONLY = "parameters only; yayi train --dry-run estimates the memory"


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    largest_layer_parameters: int
    gpu_bytes_per_rank: int | None
    """None: not estimated (a real run counts the parameters only)."""
    cpu_bytes_per_node: int | None
    trainable_parameters: int | None = None
    """Set for LoRA/QLoRA runs (None: every parameter trains)."""
    covers: str = "model states (parameters, gradients, optimizer); activations are extra"

    def to_json(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "trainable_parameters": self.parameters if self.trainable_parameters is None else self.trainable_parameters,
            "largest_layer_parameters": self.largest_layer_parameters,
            "gpu_gib_per_rank": _gib(self.gpu_bytes_per_rank),
            "cpu_gib_per_node": _gib(self.cpu_bytes_per_node),
            "covers": self.covers,
        }


def _gib(size: int | None) -> float | None:
    return None if size is None else round(size / GIB, 2)


def model_skeleton(model: str, *, trust_remote_code: bool = False) -> Any:
    """The model built on the "meta" device from its config: every module and shape, no weights read."""
    deepspeed_logs_to_stderr()  # transformers imports DeepSpeed when it is installed
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(resolve_model_reference(model), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the config of {model!r}: {first_line(error)}") from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def count_parameters(model: str, *, trust_remote_code: bool = False) -> tuple[int, int]:
    """(all parameters, the most held by one module) of a model, from its config only."""
    skeleton = model_skeleton(model, trust_remote_code=trust_remote_code)
    total = sum(parameter.numel() for parameter in skeleton.parameters())
    largest = max(sum(p.numel() for p in module.parameters(recurse=False)) for module in skeleton.modules())
    return total, largest


def model_states_bytes(parameters: int, largest_layer: int, *, stage: int, offload: str,
                       gpus_per_node: int, num_nodes: int) -> tuple[int, int]:
    """(GPU bytes per rank, CPU bytes per node) by DeepSpeed's estimators.

    DeepSpeed has estimators for ZeRO-2 and ZeRO-3; ZeRO-1 needs about what ZeRO-2 does by its
    formula, and stage 0 (no partitioning) is ZeRO-2 on one rank.
    """
    deepspeed_logs_to_stderr()
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    offloaded = offload != "none"
    if stage == 3:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            parameters, largest_layer, gpus_per_node, num_nodes, cpu_offload=offloaded,
            cpu_offload_params=offloaded, zero_init=True,
        )
    elif stage == 0:
        cpu, gpu = estimate_zero2_model_states_mem_needs(parameters, 1, 1, cpu_offload=False)
    else:
        cpu, gpu = estimate_zero2_model_states_mem_needs(parameters, gpus_per_node, num_nodes, cpu_offload=offloaded)
    return int(gpu), int(cpu)


def estimate_memory(model: str, *, stage: int, offload: str, gpus_per_node: int, num_nodes: int,
                    trust_remote_code: bool = False) -> MemoryEstimate:
    parameters, largest = count_parameters(model, trust_remote_code=trust_remote_code)
    gpu, cpu = model_states_bytes(parameters, largest, stage=stage, offload=offload,
                                  gpus_per_node=gpus_per_node, num_nodes=num_nodes)
    return MemoryEstimate(parameters, largest, gpu, cpu)


def _tensor_shapes(file: Path) -> dict[str, list[int]]:
    """A safetensors file starts with the 8-byte length of a JSON header naming every tensor's shape."""
    with open(file, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if size > HEADER_LIMIT:
            raise ValueError(f"{file}: not a safetensors file")
        header = json.loads(handle.read(size))
    return {name: entry["shape"] for name, entry in header.items() if name != "__metadata__"}


def _safetensors_files(directory: Path) -> list[Path]:
    index = read_model_json(directory, SAFETENSORS_INDEX)
    if index is not None:
        return [directory / name for name in sorted(set(index["weight_map"].values()))]
    return [directory / SAFETENSORS_FILE] if (directory / SAFETENSORS_FILE).is_file() else []


def saved_parameter_counts(directory: Path) -> tuple[int, int] | None:
    """(all parameters, the most held by one module) from the safetensors headers of a saved model,
    without reading weights or importing torch; None when they cannot tell (no safetensors files, or
    quantized weights, whose stored shapes are not the parameters')."""
    try:
        if is_quantized(directory):
            return None
        shapes = {name: shape for file in _safetensors_files(directory) for name, shape in _tensor_shapes(file).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UsageError):
        return None  # the ranks report an unreadable checkpoint when they load it
    per_module: Counter[str] = Counter()
    for name, shape in shapes.items():
        per_module[name.rpartition(".")[0]] += math.prod(shape)
    return (sum(per_module.values()), max(per_module.values())) if per_module else None


def count_saved_parameters(model: str) -> MemoryEstimate | None:
    """What a real run tells without the full estimate: the parameters of a local safetensors model."""
    reference = Path(resolve_model_reference(model))
    counts = saved_parameter_counts(reference) if reference.is_dir() else None
    return MemoryEstimate(*counts, None, None, covers=COUNTED_ONLY) if counts else None
