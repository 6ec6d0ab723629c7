"""What a --model names: a local directory (checked) or a hub id (checked once), and an adapter directory
as base + adapter."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from yayi_cli.runtime.errors import UsageError, first_line
from yayi_cli.runtime.hub import CONFIG_FILE, read_model_json


def resolve_model_reference(model: str) -> str:
    """A local directory (with `~` expanded) or a hub id.

    Hub ids are `name` or `owner/name`; a missing path that cannot be a hub id is refused at
    once instead of being looked up on the hub.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / ADAPTER_CONFIG_FILE).is_file() and not (path / CONFIG_FILE).is_file():
            raise UsageError(f"{model}: is a LoRA adapter, not a full model here; make one with `yayi merge {model} -o DIR`")
        if not (path / CONFIG_FILE).is_file():
            raise UsageError(f"{model}: no config.json in this directory; give a saved model's directory or a hub id")
        _check_config(path)
        return str(path)
    if path.exists():
        raise UsageError(f"{model}: is a file; give the model's directory")
    first_part = model.split("/", 1)[0]
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or (first_part != model and Path(first_part).is_dir()):
        raise UsageError(f"{model}: no such model directory")
    check_hub_model(model)
    return model


@functools.lru_cache(maxsize=None)
def check_hub_model(repo: str) -> None:
    """A name that is no local directory must be a hub model: found in the cache, or asked of the hub once (no
    retries), so a mistyped path is one line at once, not a minute of download retries ending in a hub error."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    if isinstance(huggingface_hub.try_to_load_from_cache(repo, CONFIG_FILE), str):
        return
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise UsageError(f"{repo}: no such local directory, and HF_HUB_OFFLINE is set while the Hugging Face cache "
                         "has no model of that name")
    try:
        huggingface_hub.model_info(repo, timeout=15)
    except RepositoryNotFoundError:
        raise UsageError(f"{repo}: no such local directory, and no model of that name on the Hugging Face hub "
                         "(or it is private: log in with `hf auth login`)") from None
    except huggingface_hub.errors.HfHubHTTPError:
        return  # there, but gated or refused to this user: loading says what the hub says
    except Exception as error:  # noqa: BLE001 - no network, DNS, proxy, timeout: the hub cannot be asked
        raise UsageError(f"{repo}: no such local directory, and the Hugging Face hub cannot be reached "
                         f"to look for a model of that name ({first_line(error)})") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt")
"""One of these is in every saved tokenizer (a fast tokenizer's, SentencePiece's, or a vocabulary)."""


def require_saved_tokenizer(model: str) -> None:
    """A local model directory without a tokenizer is refused now, not seconds later in every rank."""
    path = Path(resolve_model_reference(model))
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(f"{model}: no tokenizer in this directory (none of {', '.join(TOKENIZER_FILES)}); "
                         "save the model's tokenizer beside it")


SENTENCEPIECE_MODEL = "tokenizer.model"


def check_sentencepiece_model(path: Path) -> None:
    """A SentencePiece tokenizer.model (Llama 2 checkpoints ship one) must parse before transformers reads it:
    without protobuf, transformers falls back to a tiktoken reader and says so, and a damaged file can load as a
    cut-down vocabulary that tokenizes silently wrong."""
    try:
        import google.protobuf  # noqa: F401 - transformers converts tokenizer.model with it
        import sentencepiece
    except ImportError as error:
        raise UsageError(f"reading {path} needs {error.name.split('.')[0]}: pip install protobuf sentencepiece") from None
    try:
        sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as error:
        raise UsageError(f"{path}: not a SentencePiece model that can be read ({first_line(error)}); the file is "
                         "damaged or cut short: copy or download it again") from None


def _check_config(directory: Path) -> None:
    """config.json must be a JSON object naming its architecture, or transformers fails with a traceback
    (or, without a model_type, guesses)."""
    if not isinstance((read_model_json(directory) or {}).get("model_type"), str):
        raise UsageError(f"{directory / CONFIG_FILE}: not a model config (a JSON object with a model_type); "
                         "is this a model directory?")


ADAPTER_CONFIG_FILE = "adapter_config.json"


@dataclass(frozen=True)
class ModelSource:
    """What a --model names: a full model (directory or hub id), or a PEFT adapter directory on its base."""

    base: str
    adapter: str | None = None

    @property
    def tokenizer(self) -> str:
        """Adapters yayi trains carry their tokenizer (with the markers it added); others use the base's."""
        if self.adapter and (Path(self.adapter) / "tokenizer_config.json").is_file():
            return self.adapter
        return self.base


def resolve_model(model: str, base: str | None = None, *, check_base: bool = True) -> ModelSource:
    """The one place an adapter directory (one with adapter_config.json) becomes base + adapter.

    The base is the one named in adapter_config.json unless `base` (--base DIR|HUB_ID) replaces it.
    `check_base=False` is for reading only the adapter's own files (its tokenizer), which need no base.
    """
    config_file = Path(model).expanduser() / ADAPTER_CONFIG_FILE
    if not config_file.is_file():
        if base is not None:
            raise UsageError(f"--base {base}: only an adapter directory takes a base, and {model} has no {ADAPTER_CONFIG_FILE}")
        return ModelSource(resolve_model_reference(model))
    try:
        named = (read_model_json(config_file.parent, ADAPTER_CONFIG_FILE) or {})["base_model_name_or_path"]
    except KeyError as error:
        raise UsageError(f"{config_file}: not a readable PEFT adapter config ({first_line(error)})") from None
    chosen = base or named
    if not check_base and (config_file.parent / "tokenizer_config.json").is_file():
        return ModelSource(chosen, str(config_file.parent))
    if not chosen:
        raise UsageError(f"{model}: its {ADAPTER_CONFIG_FILE} names no base model; give one with --base DIR|HUB_ID")
    try:
        return ModelSource(resolve_model_reference(chosen), str(config_file.parent))
    except UsageError as error:
        raise UsageError(f"{model} is an adapter whose base cannot be used: {error}; give the base with --base DIR|HUB_ID") from None


def loading_errors() -> tuple[type[BaseException], ...]:
    """What loading a broken local model raises: a bad config (TypeError, KeyError), unreadable weights
    (SafetensorError), missing files (OSError), or anything transformers rejects (ValueError)."""
    from safetensors import SafetensorError

    return OSError, ValueError, TypeError, KeyError, SafetensorError

