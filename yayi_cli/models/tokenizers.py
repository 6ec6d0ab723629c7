"""Tokenizers as their models were trained with (Llama 2's SentencePiece read the legacy way), and how long a
context a model takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yayi_cli.models.reference import SENTENCEPIECE_MODEL, check_sentencepiece_model, loading_errors, resolve_model
from yayi_cli.runtime.errors import UsageError, first_line
from yayi_cli.runtime.hub import model_json


LEGACY_SENTENCEPIECE_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")


def sentencepiece_options(reference: str) -> dict[str, Any]:
    """`legacy=True` for a Llama SentencePiece tokenizer whose config predates the option (transformers < 4.31, as
    the published Llama 2 YaYi checkpoints): those releases put the `▁` dummy prefix on the text after every special
    token, and transformers 5 would read such a config as `legacy=False` and leave it out. A config that sets
    `legacy` is followed as it is."""
    config = model_json(reference, "tokenizer_config.json")
    if "legacy" in config or config.get("tokenizer_class") not in LEGACY_SENTENCEPIECE_CLASSES:
        return {}
    return {"legacy": True}


def load_tokenizer(model: str, *, trust_remote_code: bool = False, base: str | None = None) -> Any:
    """The model's tokenizer via `AutoTokenizer`; remote code only when the user asks."""
    return tokenizer_files(resolve_model(model, base, check_base=False).tokenizer, model, trust_remote_code=trust_remote_code)


def tokenizer_files(reference: str, model: str, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved at `reference` (a directory or hub id; `model` names it in errors), with nothing else of a
    model needed beside it."""
    if (Path(reference) / SENTENCEPIECE_MODEL).is_file():
        check_sentencepiece_model(Path(reference) / SENTENCEPIECE_MODEL)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(reference, trust_remote_code=trust_remote_code, **sentencepiece_options(reference))
    except loading_errors() as error:
        raise UsageError(f"cannot load a tokenizer from {model!r}: {first_line(error)}") from None


CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length", "max_sequence_length")
"""The config keys that state a model's context length, the first three in lm-evaluation-harness's order."""
UNSET_MAX_LENGTH = 10**7
"""Tokenizers without a known limit report a huge `model_max_length`; anything above this is unset."""


def context_from(config: dict[str, Any], tokenizer_limit: Any) -> int | None:
    """THE context-length rule, for every command: the config's (the first of CONTEXT_KEYS it sets), else the
    tokenizer's `model_max_length` where one is set, else None (the caller's default). lm-evaluation-harness reads
    them in this order, so `yayi eval --benchmark` cuts contexts where it does."""
    from_config = next((config[key] for key in CONTEXT_KEYS if isinstance(config.get(key), int) and config[key] > 0), None)
    if from_config:
        return from_config
    return tokenizer_limit if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < UNSET_MAX_LENGTH else None


def context_length(model: str, tokenizer: Any, base: str | None = None) -> int | None:
    """`context_from` a model's config (an adapter's base's) and its loaded tokenizer."""
    try:
        config = model_json(resolve_model(model, base).base)
    except UsageError:  # no config to read (an adapter's base that is not here)
        config = {}
    return context_from(config, getattr(tokenizer, "model_max_length", None))


def saved_context_length(directory: Path) -> int | None:
    """`context_length` of a saved model directory read from its JSON files, without importing transformers."""
    return context_from(model_json(directory), model_json(directory, "tokenizer_config.json").get("model_max_length"))
