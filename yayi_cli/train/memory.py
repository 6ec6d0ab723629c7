"""How much memory each GPU and each machine's CPU will need, before anything is launched.

The parameter counts come from the model's config alone (the model is built on the "meta" device,
so no weights are read), and the arithmetic is DeepSpeed's own estimators for model states
(parameters, gradients, optimizer states). Activations come on top and grow with batch and length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from yayi_cli.errors import UsageError
from yayi_cli.models import first_line, resolve_model_reference

GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    largest_layer_parameters: int
    gpu_bytes_per_rank: int
    cpu_bytes_per_node: int
    trainable_parameters: int | None = None
    """Set for LoRA/QLoRA runs (None: every parameter trains)."""
    covers: str = "model states (parameters, gradients, optimizer); activations are extra"

    def to_json(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "trainable_parameters": self.parameters if self.trainable_parameters is None else self.trainable_parameters,
            "largest_layer_parameters": self.largest_layer_parameters,
            "gpu_gib_per_rank": round(self.gpu_bytes_per_rank / GIB, 2),
            "cpu_gib_per_node": round(self.cpu_bytes_per_node / GIB, 2),
            "covers": self.covers,
        }


def model_skeleton(model: str, *, trust_remote_code: bool = False) -> Any:
    """The model built on the "meta" device from its config: every module and shape, no weights read."""
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
