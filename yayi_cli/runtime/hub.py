"""A model's own files, read by name from its local directory or the Hugging Face cache.

Kept apart from models/ (which loads tokenizers and models) so that the prompt core can read a
template saved with a model without depending on model loading.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from yayi_cli.runtime.errors import UsageError, first_line


CONFIG_FILE = "config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
"""The files that hold a checkpoint's weights."""


def model_file(reference: str | Path, name: str) -> Path | None:
    """A file of a model: in its local directory, or for a hub id in the Hugging Face cache (downloaded
    when online); None when the model has no such file."""
    path = Path(reference)
    if path.is_dir():
        return path / name if (path / name).is_file() else None
    from transformers.utils import cached_file

    try:
        found = cached_file(str(reference), name, _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):  # not on the hub, offline without a cached copy, a malformed id
        return None
    return Path(found) if found else None


SNAPSHOT_FILES = ("*.json", "*.model", "*.txt", "*.tiktoken")
"""Configs and tokenizer files: what a local copy of a hub model needs beside its weights."""


def download_snapshot(repo: str, *, remote_code: bool = False) -> Path:
    """A hub model's local snapshot, with one format of weights: safetensors, and `.bin` only where the repository
    has no safetensors (loaders read safetensors first; a 13B repository that ships both would cost tens of GB
    more). Files already in the cache are not fetched again; offline, the cache is all there is."""
    from huggingface_hub import snapshot_download

    common = [*SNAPSHOT_FILES, *(["*.py"] if remote_code else [])]
    try:
        path = Path(snapshot_download(repo, allow_patterns=[*common, "*.safetensors"]))
        if not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(repo, allow_patterns=[*common, "*.bin"]))
    except Exception as error:  # noqa: BLE001 - offline, unknown repo, no access: huggingface_hub raises many kinds
        raise UsageError(f"cannot download {repo}: {first_line(error)}") from None
    return path


def read_model_json(reference: str | Path, name: str = CONFIG_FILE) -> dict[str, Any] | None:
    """One of a model's JSON files (config.json by default) as a dict; None when it has none.

    The one reader of a model's JSON configs: a file that is there but broken is a one-line UsageError."""
    path = model_file(reference, name)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: not readable JSON ({first_line(error)})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a model config (a JSON object); is this a model directory?")
    return data


def model_json(reference: str | Path, name: str = CONFIG_FILE) -> dict[str, Any]:
    """`read_model_json` for readers that only look for a setting: a missing or broken file is empty."""
    with contextlib.suppress(UsageError):
        return read_model_json(reference, name) or {}
    return {}
