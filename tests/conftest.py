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


@pytest.fixture
def without_markers(tmp_path) -> Path:
    """A Llama-shaped model whose tokenizer has never heard of the YaYi markers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["hello world 你好 雅意"] * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id)
    directory = tmp_path / "plain"
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
