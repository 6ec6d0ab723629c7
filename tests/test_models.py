"""Loading models: a broken or mismatched model directory is one error line, never a traceback or random weights."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from tests.helpers import SAMPLE_DATA
from yayi_cli.cli import app


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
