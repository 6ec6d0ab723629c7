"""LoRA and QLoRA runs: which modules get adapters, the PEFT config each rank applies, and what they cost.

PEFT does the adapter work. When the base tokenizer lacks the YaYi markers, the worker adds them and
trains their rows of the input embedding and the output layer with PEFT's trainable tokens
(`trainable_token_indices`): only those rows train and are saved with the adapter, so the base model's
weights stay untouched, the adapter stays small, and the model still learns to produce `<|End|>`.
Everything is checked here, on the machine `yayi train` runs on, before anything is launched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yayi_cli.runtime.errors import UsageError
from yayi_cli.runtime.packages import require_package
from yayi_cli.train.options import TrainOptions


if TYPE_CHECKING:
    from yayi_cli.train.memory import MemoryEstimate

ALL_LINEAR = "all-linear"
DEFAULT_TARGETS = {
    "bloom": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
"""Every linear projection of the attention and MLP blocks; other architectures get all-linear."""
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)
"""Bits per NF4 weight with double quantization: 4, plus an 8-bit scale per 64 weights and an fp32
scale per 256 of those."""


def require_adapter_packages(options: TrainOptions) -> None:
    """A missing package is refused before launch, not met by every rank."""
    require_package("peft", f"--{options.adapter}", extra="train")
    if options.qlora:
        require_package("bitsandbytes", "--qlora", extra="quant")


def check_adapter_stage(options: TrainOptions, stage: int) -> None:
    """ZeRO-3 is refused for adapter runs, with the reason (the stage may come from a --deepspeed file)."""
    if stage != 3:
        return
    if options.qlora:
        raise UsageError(
            "--qlora cannot run at ZeRO-3: sharding a 4-bit base needs bnb_4bit_quant_storage and ZeRO-3's "
            "partitioned loading, which yayi does not set up; use --zero 2 (a 4-bit 13B base fits one 24 GB GPU)"
        )
    raise UsageError(
        "--lora cannot run at ZeRO-3 in yayi (not verified: PEFT's trainable marker rows read the whole embedding "
        "outside its forward, which ZeRO-3 does not gather); ZeRO-2 already shards all that trains (the adapter's "
        "gradients and optimizer states): use --zero 2, or --qlora to shrink the frozen base"
    )


def _split(targets: list[str]) -> list[str]:
    return [name.strip() for item in targets for name in item.split(",") if name.strip()]


def linear_modules(model: Any) -> dict[str, Any]:
    """Every nn.Linear of the model (bitsandbytes' 4-bit layers are nn.Linear too) by full name."""
    import torch

    return {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def output_layer_name(model: Any) -> str | None:
    output = model.get_output_embeddings()
    return next((name for name, module in model.named_modules() if module is output), None)


def _matches(name: str, target: str) -> bool:
    """PEFT's rule for a list of target names: the whole module name or its last dotted parts."""
    return name == target or name.endswith("." + target)


def resolve_targets(requested: list[str], model: Any) -> list[str]:
    """The module names LoRA goes on: the given ones (checked to exist), all-linear resolved to names,
    or the architecture's default. Names are passed to PEFT as they are."""
    names = _split(requested) or list(DEFAULT_TARGETS.get(model.config.model_type, (ALL_LINEAR,)))
    linear = linear_modules(model)
    if ALL_LINEAR in names:
        if len(names) > 1:
            raise UsageError(f"--lora-targets {ALL_LINEAR} already names every linear module; give it alone")
        output = output_layer_name(model)
        return sorted({name.rsplit(".", 1)[-1] for name in linear if name != output})
    unknown = [target for target in names if not any(_matches(name, target) for name in linear)]
    if unknown:
        existing = ", ".join(sorted({name.rsplit(".", 1)[-1] for name in linear}))
        raise UsageError(
            f"--lora-targets {', '.join(unknown)}: no linear module of this {model.config.model_type} model is "
            f"called that; its linear modules are {existing} (or give {ALL_LINEAR})"
        )
    return names


def embeddings_tied(model: Any) -> bool:
    output = model.get_output_embeddings()
    return output is not None and output.weight is model.get_input_embeddings().weight


def token_layers(model: Any) -> list[str]:
    """Where new tokens' rows train: the input embedding, and the output layer unless tied to it (PEFT
    then ties the two itself)."""
    names = {module: name for name, module in model.named_modules()}
    output = output_layer_name(model)
    return [names[model.get_input_embeddings()]] + ([output] if output and not embeddings_tied(model) else [])


def check_new_token_layers(model: Any, targets: list[str], new_tokens: int) -> None:
    """PEFT cannot put LoRA and trainable token rows on the same layer, and the output layer's new rows
    must train (or the model could not learn to say <|End|>)."""
    output = output_layer_name(model)
    if new_tokens and output and any(_matches(output, target) for target in targets):
        raise UsageError(
            f"--lora-targets {output}: the {new_tokens} marker token(s) added to this tokenizer train their own rows "
            f"of the output layer {output}; leave it out of the targets"
        )


def check_preference_output_layer(options: TrainOptions, adapter: str | None, new_tokens: int, model: Any) -> None:
    """TRL's preference trainers score answers with the output layer's own weights, so nothing an adapter
    adds to that layer (the markers' new rows) would train: such runs are refused, with the way out."""
    from yayi_cli.models.reference import ADAPTER_CONFIG_FILE
    from yayi_cli.runtime.hub import read_model_json

    rows = (read_model_json(Path(adapter), ADAPTER_CONFIG_FILE) or {}).get("trainable_token_indices") if adapter else None
    output = output_layer_name(model)
    if new_tokens or (rows and not embeddings_tied(model) and any(_matches(output or "", name) for name in rows)):
        raise UsageError(
            f"--method {options.method} with --{options.adapter}: the YaYi markers are new to {options.model}'s model, and "
            "their rows of the output layer would have to train through the adapter, which TRL's preference trainers "
            "cannot do; merge the SFT adapter first (`yayi merge`), then train the preference adapter on the merged model")


def count_trainable(model: Any, targets: list[str], r: int, new_tokens: int) -> int:
    """LoRA's A (r x in) and B (out x r) for each targeted linear module, plus the new tokens' rows."""
    lora = sum(r * (module.in_features + module.out_features) for name, module in linear_modules(model).items()
               if any(_matches(name, target) for target in targets))
    return lora + new_tokens * model.get_input_embeddings().embedding_dim * len(token_layers(model))


@dataclass(frozen=True)
class AdapterPlan:
    targets: list[str]
    new_tokens: int
    memory: MemoryEstimate


def base_bits(options: TrainOptions) -> int:
    """Bits per weight of the frozen base as the ranks hold it: 32 when training in fp32 (the CPU), else 16."""
    return 32 if options.precision == "fp32" or (options.cpu and options.precision == "auto") else 16


def plan_adapter(options: TrainOptions, *, stage: int, offload: str, gpus_per_node: int, num_nodes: int) -> AdapterPlan:
    """Targets checked on the model built on the meta device, the markers to add, and the memory estimate.

    Memory per rank = the frozen base (every weight at 16 bits, or 32 on the CPU; with --qlora the linear
    weights of the blocks at NF4's 4.13 bits and the rest, embeddings and output layer included, at 16 or 32)
    + DeepSpeed's ZeRO estimate for the trainable parameters alone (16-bit weights and gradients, 4 bytes
    per parameter, + fp32 weights, gradients and Adam moments, 16 bytes, split among the ranks as the stage
    does). Activations come on top.
    """
    from yayi_cli.core.prompt import add_markers
    from yayi_cli.models.reference import resolve_model
    from yayi_cli.models.tokenizers import load_tokenizer
    from yayi_cli.train.memory import MemoryEstimate, model_skeleton, model_states_bytes  # planning side only

    require_adapter_packages(options)
    check_adapter_stage(options, stage)
    source = resolve_model(options.model)
    model = model_skeleton(source.base, trust_remote_code=options.trust_remote_code)
    targets = resolve_targets(options.lora_targets, model)
    new_tokens = add_markers(load_tokenizer(options.model, trust_remote_code=options.trust_remote_code))
    check_new_token_layers(model, targets, new_tokens)
    if options.method != "sft":
        check_preference_output_layer(options, source.adapter, new_tokens, model)
    total = sum(parameter.numel() for parameter in model.parameters())
    trainable = count_trainable(model, targets, options.lora_r, new_tokens)
    bits = base_bits(options)
    base = total * bits / 8
    if options.qlora:
        output = output_layer_name(model)
        quantized = sum(module.weight.numel() for name, module in linear_modules(model).items() if name != output)
        base = quantized * NF4_BITS / 8 + (total - quantized) * bits / 8
    gpu, cpu = model_states_bytes(trainable, trainable, stage=stage, offload=offload,
                                  gpus_per_node=gpus_per_node, num_nodes=num_nodes)
    frozen = f"NF4 linear weights at 4.13 bits, the rest at {bits}" if options.qlora else f"{bits}-bit"
    covers = (f"frozen base ({frozen}) + adapter weights, gradients and Adam states by DeepSpeed's ZeRO-{max(stage, 2)} "
              "estimate for the trainable parameters; activations are extra")
    if options.method != "sft":
        covers += "; the reference is the base with the adapter disabled (no copy)"
    largest = max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())
    memory = MemoryEstimate(total, largest, int(base) + gpu, cpu, trainable_parameters=trainable, covers=covers)
    return AdapterPlan(targets, new_tokens, memory)


def quantization_config(compute_dtype: Any) -> Any:
    """QLoRA's base: NF4 with double quantization, computing in the run's precision (bf16 where the GPU has it)."""
    from yayi_cli.models.weights import nf4_config

    return nf4_config(compute_dtype, double_quant=True)


def prepare_base(model: Any, options: TrainOptions) -> Any:
    """The frozen base made ready for adapters: with gradient checkpointing its inputs must require grad,
    or no gradient reaches the adapters through the recomputed blocks (PEFT's hook; for QLoRA,
    prepare_model_for_kbit_training sets it)."""
    from peft import prepare_model_for_kbit_training

    if options.qlora:
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=options.gradient_checkpointing)
    if options.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def lora_config(model: Any, options: TrainOptions, new_token_ids: list[int]) -> Any:
    """The adapter the options ask for, with the new tokens' rows trainable where the markers were added."""
    from peft import LoraConfig

    tokens = {name: list(new_token_ids) for name in token_layers(model)} if new_token_ids else None
    return LoraConfig(
        r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
        target_modules=list(options.lora_targets), trainable_token_indices=tokens, task_type="CAUSAL_LM",
    )


def start_adapter(model: Any, options: TrainOptions, new_token_ids: list[int]) -> tuple[Any, Any]:
    """(model, config): the base made ready for adapters and, when --model is an adapter, that adapter
    loaded to train on (config None: training goes on from its weights, in a copy); else the base and
    the new adapter's LoraConfig."""
    from yayi_cli.models.reference import resolve_model
    from yayi_cli.models.weights import attach_saved_adapter

    model = prepare_base(model, options)
    source = resolve_model(options.model)
    if source.adapter:
        return attach_saved_adapter(model, source, trust_remote_code=options.trust_remote_code, trainable=True), None
    return model, lora_config(model, options, new_token_ids)


def attach_adapter(model: Any, options: TrainOptions, new_token_ids: list[int]) -> Any:
    """The loaded base with the adapter that trains: only it (and the new tokens' rows) train."""
    from peft import get_peft_model

    from yayi_cli.models.weights import peft_quietly

    model, config = start_adapter(model, options, new_token_ids)
    if config is None:
        return model
    with peft_quietly():
        return get_peft_model(model, config)


def continued_settings(adapter: str) -> dict[str, Any]:
    """The options an adapter --model was trained with (rank, scale, dropout, targets): training goes on with them."""
    from yayi_cli.models.reference import ADAPTER_CONFIG_FILE
    from yayi_cli.runtime.hub import read_model_json

    config = read_model_json(Path(adapter), ADAPTER_CONFIG_FILE) or {}
    targets = config.get("target_modules") or []
    return {"lora_r": config.get("r", 8), "lora_alpha": config.get("lora_alpha", 8), "lora_dropout": config.get("lora_dropout", 0.0),
            "lora_targets": [targets] if isinstance(targets, str) else sorted(targets)}
