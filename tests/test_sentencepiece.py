"""Llama 2 checkpoints as they ship: a SentencePiece tokenizer.model with byte fallback, `<pad>` and the markers in
added_tokens.json, no tokenizer.json; and as a fine-tune leaves them once transformers 5 has saved them again
(tokenizer.json beside tokenizer.model, the markers in tokenizer_config.json, no added_tokens.json, or one that
lists only `<pad>`). Each loads, renders and exports through the real paths; a damaged one is one error line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import SAMPLE_DATA, one_error_line, yayi
from yayi_cli.prompt import MARKERS, TEMPLATES
from yayi_cli.tiny import TinySpec, build_tiny, training_texts

LAYOUTS = ("as shipped", "saved again", "pad only in added_tokens.json")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """The same tiny Llama in each tokenizer layout."""
    root = tmp_path_factory.mktemp("sentencepiece")
    texts = list(training_texts([SAMPLE_DATA], TEMPLATES["yayi"]))
    shipped = build_tiny(root / "shipped", texts, TinySpec(tokenizer="sentencepiece"))
    saved_again = _saved_again(shipped, root / "saved-again")
    pad_only = Path(shutil.copytree(shipped, root / "pad-only"))
    (pad_only / "added_tokens.json").write_text(json.dumps({"<pad>": _base_size(shipped)}), encoding="utf-8")
    return dict(zip(LAYOUTS, (shipped, saved_again, pad_only)))


def _base_size(directory: Path) -> int:
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model")).get_piece_size()


def _saved_again(shipped: Path, directory: Path) -> Path:
    """What a fine-tune leaves: transformers' save_pretrained of the loaded tokenizer and model, with the
    tokenizer.model it was read from (transformers 5 keeps the markers in tokenizer_config.json)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(shipped).save_pretrained(directory)
    AutoTokenizer.from_pretrained(shipped).save_pretrained(directory)
    for name in ("tokenizer.model", "yayi_template.json"):
        shutil.copy(shipped / name, directory / name)
    (directory / "added_tokens.json").unlink(missing_ok=True)
    return directory


def test_the_shipped_layout_is_what_the_checkpoints_hold(layouts):
    shipped = layouts["as shipped"]
    assert not (shipped / "tokenizer.json").exists()
    added = json.loads((shipped / "added_tokens.json").read_text(encoding="utf-8"))
    assert added == {token: _base_size(shipped) + index for index, token in enumerate(("<pad>", *MARKERS))}
    assert json.loads((shipped / "tokenizer_config.json").read_text(encoding="utf-8"))["tokenizer_class"] == "LlamaTokenizer"
    assert "<|End|>" in json.loads((layouts["saved again"] / "tokenizer_config.json").read_text(encoding="utf-8")).__repr__()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_loads_with_its_markers_and_bos(layouts, layout):
    from yayi_cli.models import load_tokenizer
    from yayi_cli.prompt import marker_token_ids

    tokenizer = load_tokenizer(str(layouts[layout]))
    markers = marker_token_ids(tokenizer)
    assert sorted(markers.values()) == list(range(_base_size(layouts["as shipped"]) + 1, _base_size(layouts["as shipped"]) + 5))
    result = yayi("data", "preview", str(SAMPLE_DATA), "--model", str(layouts[layout]), "-n", "1", "--json")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_exports_to_gguf_with_the_markers_as_control_tokens(layouts, layout, tmp_path):
    import gguf

    output = tmp_path / "model.gguf"
    result = yayi("export", "gguf", "--model", str(layouts[layout]), "-o", str(output))
    assert result.exit_code == 0, result.output
    reader = gguf.GGUFReader(output)
    tokens = [bytes(reader.fields["tokenizer.ggml.tokens"].parts[index]).decode() for index in reader.fields["tokenizer.ggml.tokens"].data]
    types = [int(reader.fields["tokenizer.ggml.token_type"].parts[index][0]) for index in reader.fields["tokenizer.ggml.token_type"].data]
    base = _base_size(layouts["as shipped"])
    assert tokens[base:base + 5] == ["<pad>", *MARKERS]
    assert all(types[base + 1 + index] == gguf.TokenType.CONTROL for index in range(len(MARKERS)))


@pytest.fixture
def damaged(layouts, tmp_path) -> Path:
    """The shipped layout with its tokenizer.model cut short, as an interrupted download leaves it."""
    copy = Path(shutil.copytree(layouts["as shipped"], tmp_path / "damaged"))
    (copy / "tokenizer.model").write_bytes((layouts["as shipped"] / "tokenizer.model").read_bytes()[:300])
    return copy


@pytest.mark.parametrize("command", [["data", "preview", str(SAMPLE_DATA)], ["chat", "--prompt", "你好"],
                                     ["eval", "--data", str(SAMPLE_DATA)], ["export", "gguf"]])
def test_a_damaged_tokenizer_model_is_one_error_line(damaged, tmp_path, command):
    extra = ["-o", str(tmp_path / "out.gguf")] if command[0] == "export" else []
    result = yayi(*command, "--model", str(damaged), *extra)
    one_error_line(result, 2, f"{damaged / 'tokenizer.model'}: not a SentencePiece model", "damaged or cut short")
    assert not (tmp_path / "out.gguf").exists()


def test_a_tokenizer_without_the_markers_is_one_error_line(tmp_path):
    texts = list(training_texts([SAMPLE_DATA], TEMPLATES["yayi"]))
    plain = build_tiny(tmp_path / "plain", texts, TinySpec(tokenizer="sentencepiece", markers=False))
    one_error_line(yayi("chat", "--model", str(plain), "--prompt", "你好"), 2, "no single token for '<|System|>'")
    one_error_line(yayi("export", "gguf", "--model", str(plain), "-o", str(tmp_path / "plain.gguf")), 2, "no single token for '<|System|>'")


def test_without_protobuf_the_error_names_what_to_install(layouts, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "google.protobuf", None)
    one_error_line(yayi("data", "preview", str(SAMPLE_DATA), "--model", str(layouts["as shipped"])), 2, "needs google",
                   "pip install protobuf")
