"""What each architecture becomes in GGUF: llama.cpp's hyperparameter keys and tensor layout.

The YaYi models are BLOOM (yayi-7b) and Llama (yayi-7b-llama2, yayi-13b-llama2). Tensor names come
from the gguf package's own maps; the two places where llama.cpp's layout differs from Hugging Face's
are here: Llama's q/k rows are permuted back to the interleaved rotary order llama.cpp computes with,
and BLOOM's fused QKV, stored per head as (q, k, v), is regrouped as all q, then all k, then all v.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yayi_cli.runtime.errors import UsageError


SKIPPED_SUFFIXES = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")
"""Buffers some checkpoints carry that llama.cpp computes itself."""


@dataclass(frozen=True)
class Layout:
    """One architecture: its GGUF name, its hyperparameters, and how a tensor changes on the way."""

    gguf_arch: str
    """The MODEL_ARCH member's name in the gguf package (and llama.cpp)."""
    add_hyperparameters: Callable[[Any, dict[str, Any], int], None]
    """(writer, config, context length) -> None."""
    reorder: Callable[[str, Any, dict[str, Any]], Any]
    """(Hugging Face name, float32 tensor, config) -> the tensor as llama.cpp reads it."""
    prefixes: tuple[str, ...] = ()
    """Name prefixes dropped before the name map is asked (BLOOM's `transformer.`)."""


def _heads(config: dict[str, Any]) -> tuple[int, int]:
    heads = config["num_attention_heads"]
    return heads, config.get("num_key_value_heads") or heads


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    """Rotary settings wherever this transformers version keeps them (rope_parameters, or the older keys)."""
    parameters = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    parameters.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    parameters.setdefault("rope_type", parameters.get("type", "default"))
    return parameters


def _llama_hyperparameters(writer: Any, config: dict[str, Any], context: int) -> None:
    import gguf

    heads, kv_heads = _heads(config)
    rope = _rope(config)
    writer.add_context_length(context)
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_rope_dimension_count(config.get("head_dim") or config["hidden_size"] // heads)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_vocab_size(config["vocab_size"])
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope["rope_type"] != "default":
        raise UsageError(f"this Llama uses {rope['rope_type']!r} rope scaling; yayi export handles the default and "
                         "linear kinds (the YaYi Llama 2 models use the default)")


def permute_for_rotary(weight: Any, heads: int) -> Any:
    """Hugging Face keeps each head's rotary halves apart; llama.cpp rotates interleaved pairs."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _llama_reorder(name: str, tensor: Any, config: dict[str, Any]) -> Any:
    heads, kv_heads = _heads(config)
    if name.endswith("q_proj.weight"):
        return permute_for_rotary(tensor, heads)
    if name.endswith("k_proj.weight"):
        return permute_for_rotary(tensor, kv_heads)
    return tensor


def _bloom_heads(config: dict[str, Any]) -> tuple[int, int]:
    return config.get("n_head") or config["num_attention_heads"], config.get("hidden_size") or config["n_embed"]


def _bloom_hyperparameters(writer: Any, config: dict[str, Any], context: int) -> None:
    heads, width = _bloom_heads(config)
    writer.add_context_length(context)
    writer.add_embedding_length(width)
    writer.add_feed_forward_length(4 * width)  # BLOOM's MLP is always four times the width
    writer.add_block_count(config.get("n_layer") or config["num_hidden_layers"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_eps(config["layer_norm_epsilon"])


def _bloom_reorder(name: str, tensor: Any, config: dict[str, Any]) -> Any:
    if not name.endswith(("query_key_value.weight", "query_key_value.bias")):
        return tensor
    import torch

    heads, width = _bloom_heads(config)
    per_head = tensor.reshape(heads, 3, width // heads, *tensor.shape[1:])
    return torch.cat([per_head[:, part].reshape(width, *tensor.shape[1:]) for part in range(3)], dim=0)


LAYOUTS = {
    "llama": Layout("LLAMA", _llama_hyperparameters, _llama_reorder),
    "bloom": Layout("BLOOM", _bloom_hyperparameters, _bloom_reorder, prefixes=("transformer.",)),
}


def layout_for(config: dict[str, Any], model: str) -> Layout:
    """The layout of the model's architecture; any other is refused naming the ones exported."""
    model_type = str(config.get("model_type"))
    if model_type not in LAYOUTS:
        raise UsageError(f"{model}: its architecture is {model_type!r}; yayi export writes GGUF for the YaYi "
                         f"architectures: {', '.join(LAYOUTS)}")
    return LAYOUTS[model_type]


def gguf_name(name_map: Any, layout: Layout, name: str, model: str) -> str:
    """llama.cpp's name for a checkpoint tensor, from the gguf package's map."""
    short = next((name[len(prefix):] for prefix in layout.prefixes if name.startswith(prefix)), name)
    mapped = name_map.get_name(short, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise UsageError(f"{model}: tensor {name!r} has no place in llama.cpp's {layout.gguf_arch.lower()} "
                         "layout; is this a plain causal LM checkpoint?")
    return mapped
