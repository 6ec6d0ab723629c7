"""Loading models and tokenizers by local directory or hub id, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yayi_cli.errors import UsageError


def resolve_model_reference(model: str) -> str:
    """A local directory (with `~` expanded) or a hub id.

    Hub ids are `name` or `owner/name`; a missing path that cannot be a hub id is refused at
    once instead of being looked up on the hub.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise UsageError(f"{model}: is a file; give the model's directory")
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:
        raise UsageError(f"{model}: no such model directory")
    return model


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_tokenizer(model: str, *, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer via `AutoTokenizer`; remote code only when the user asks."""
    reference = resolve_model_reference(model)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(reference, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load a tokenizer from {model!r}: {_first_line(error)}") from None


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length")
UNSET_MAX_LENGTH = 10**7
"""Tokenizers without a known limit report a huge `model_max_length`; anything above this is unset."""


def context_length(model: str, tokenizer: Any) -> int | None:
    """The model's context length: the tokenizer's limit, else the config's, else None."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < UNSET_MAX_LENGTH:
        return limit
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(resolve_model_reference(model))
    except (OSError, ValueError):
        return None
    return next((config[key] for key in CONTEXT_KEYS if isinstance(config.get(key), int)), None)
