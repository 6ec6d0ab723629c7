"""Loading models: a broken or mismatched model directory is one error line, never a traceback or random weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import SAMPLE_DATA
from yayi_cli.cli.app import app
from yayi_cli.runtime.errors import UsageError


def broken_copy(tiny_model_dirs, tmp_path, damage: str):
    model = tmp_path / damage
    shutil.copytree(tiny_model_dirs["llama"], model)
    if damage == "garbage-weights":
        (model / "model.safetensors").write_bytes(b"not a safetensors file")
    elif damage == "config-is-a-list":
        (model / "config.json").write_text("[1, 2]", encoding="utf-8")
    elif damage == "config-of-another-model":
        shutil.copy(tiny_model_dirs["bloom"] / "config.json", model / "config.json")
    return model


@pytest.mark.parametrize(("damage", "expected"), [
    ("garbage-weights", "cannot load a model from"),
    ("config-is-a-list", "not a model config"),
    ("config-of-another-model", "the config.json and the weights are from different models"),
])
@pytest.mark.parametrize("command", ["chat", "eval", "quantize"])
def test_a_broken_model_directory_is_one_error_line(tiny_model_dirs, tmp_path, damage, expected, command):
    model = str(broken_copy(tiny_model_dirs, tmp_path, damage))
    arguments = {
        "chat": ["chat", "--model", model, "--prompt", "你好"],
        "eval": ["eval", "--model", model, "--data", str(SAMPLE_DATA)],
        "quantize": ["quantize", "--model", model, "-o", str(tmp_path / "int8")],
    }[command]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and expected in result.stderr
    assert not (tmp_path / "int8").exists()


def test_a_model_json_file_is_read_once_the_same_way(tmp_path):
    from yayi_cli.runtime.errors import UsageError
    from yayi_cli.runtime.hub import model_json, read_model_json

    (tmp_path / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    (tmp_path / "list.json").write_text("[1]", encoding="utf-8")
    assert read_model_json(tmp_path) == {"model_type": "llama"} and read_model_json(tmp_path, "absent.json") is None
    with pytest.raises(UsageError, match=r"broken.json: not readable JSON"):
        read_model_json(tmp_path, "broken.json")
    with pytest.raises(UsageError, match=r"list.json: not a model config"):
        read_model_json(tmp_path, "list.json")
    assert model_json(tmp_path, "broken.json") == model_json(tmp_path, "absent.json") == {}  # readers of one setting


def test_a_missing_optional_package_is_one_line_naming_what_to_install(monkeypatch):
    import importlib.util

    from yayi_cli.runtime.errors import UsageError
    from yayi_cli.runtime.packages import require_package

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(UsageError, match=r"^--load-in-8bit needs bitsandbytes: pip install 'yayi-cli\[quant\]'$"):
        require_package("bitsandbytes", "--load-in-8bit", extra="quant")
    require_package("json", "reading", extra="none")  # installed: nothing to say


def test_one_nf4_builder_with_double_quantization_as_a_choice():
    import torch

    from yayi_cli.models.weights import nf4_config

    qlora, checkpoint = nf4_config(torch.bfloat16, double_quant=True), nf4_config(torch.float16, double_quant=False, skip_modules=[])
    assert (qlora.bnb_4bit_use_double_quant, checkpoint.bnb_4bit_use_double_quant) == (True, False)
    assert (qlora.llm_int8_skip_modules, checkpoint.llm_int8_skip_modules) == (None, [])
    assert qlora.bnb_4bit_quant_type == checkpoint.bnb_4bit_quant_type == "nf4"


def _hub_repository(monkeypatch, files: list[str], cache: Path) -> list[str]:
    """A stand-in for the hub's snapshot_download over a repository holding `files`: each call copies the files its
    allow_patterns match into one snapshot folder, as the real one fills the cache. Returns the names fetched."""
    import fnmatch

    import huggingface_hub

    fetched: list[str] = []

    def snapshot_download(repo_id, allow_patterns=None, **_):
        for name in files:
            if allow_patterns is None or any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                if not (cache / name).exists():
                    (cache / name).write_text(name)
                    fetched.append(name)
        return str(cache)

    cache.mkdir()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return fetched


COMMON = ["config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
          "added_tokens.json", "README.md", "modeling_custom.py"]


def test_a_hub_model_is_downloaded_with_safetensors_alone_where_it_ships_both(monkeypatch, tmp_path):
    from yayi_cli.runtime.hub import download_snapshot

    weights = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
               "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json"]
    fetched = _hub_repository(monkeypatch, COMMON + weights, tmp_path / "snapshot")
    assert download_snapshot("wenge-research/yayi-13b-llama2") == tmp_path / "snapshot"
    assert not any(name.endswith(".bin") for name in fetched)
    assert {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "tokenizer.model"} <= set(fetched)
    assert "modeling_custom.py" not in fetched and "README.md" not in fetched  # code only with --trust-remote-code


def test_a_hub_model_without_safetensors_is_downloaded_with_its_bin_files(monkeypatch, tmp_path):
    from yayi_cli.runtime.hub import download_snapshot

    fetched = _hub_repository(monkeypatch, COMMON + ["pytorch_model.bin"], tmp_path / "snapshot")
    download_snapshot("wenge-research/yayi-7b", remote_code=True)
    assert {"pytorch_model.bin", "config.json", "modeling_custom.py"} <= set(fetched)


def test_a_hub_model_that_cannot_be_downloaded_is_one_error_line(monkeypatch):
    import huggingface_hub

    from yayi_cli.runtime.hub import download_snapshot

    def offline(repo_id, **_):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files\nand more")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UsageError, match=r"^cannot download org/name: We couldn't connect .* the files$"):
        download_snapshot("org/name")
