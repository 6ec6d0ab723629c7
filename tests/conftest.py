"""Shared fixtures: tiny BLOOM- and Llama-shaped models built offline once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SAMPLE_DATA
from yayi_cli.prompt import TEMPLATES
from yayi_cli.tiny import ARCHITECTURES, TinySpec, build_tiny, training_texts


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny model per architecture, its tokenizer trained on the sample data."""
    root = tmp_path_factory.mktemp("tiny-models")
    texts = list(training_texts([SAMPLE_DATA], TEMPLATES["yayi"]))
    return {arch: build_tiny(root / arch, texts, TinySpec(arch=arch)) for arch in ARCHITECTURES}


@pytest.fixture(scope="session", params=ARCHITECTURES)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_tokenizers(tiny_model_dirs: dict[str, Path]) -> dict[str, object]:
    from transformers import AutoTokenizer

    return {arch: AutoTokenizer.from_pretrained(path) for arch, path in tiny_model_dirs.items()}


@pytest.fixture(scope="session")
def tokenizer(tiny_tokenizers: dict[str, object], arch: str) -> object:
    """The tiny tokenizer of each architecture in turn (Llama-style prepends BOS, BLOOM does not)."""
    return tiny_tokenizers[arch]
