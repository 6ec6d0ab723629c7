"""Every command's user errors: the right exit code and one `error:` line, never a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.helpers import SAMPLE_DATA
from yayi_cli.cli import app

MISSING = "no-such-file.jsonl"


def error_cases(model: str, folder: str) -> list[tuple[list[str], str]]:
    """(arguments, what the one error line must say) for every command."""
    data = str(SAMPLE_DATA)
    return [
        (["data", "validate", MISSING], "no such file"),
        (["data", "validate", folder], "is a directory"),
        (["data", "validate", data, "--model", folder], "no config.json"),
        (["data", "split", MISSING, "--test-size", "2", "-o", f"{folder}/out"], "no such file"),
        (["data", "split", data, "--test-size", "lots", "-o", f"{folder}/out"], "--test-size 'lots'"),
        (["data", "split", data, "--test-size", "2", "-o", data], "not a directory"),
        (["data", "preview", folder], "is a directory"),
        (["train", "--data", MISSING, "--model", model, "-o", f"{folder}/run", "--cpu"], "no such file"),
        (["train", "--data", data, "--model", folder, "-o", f"{folder}/run", "--cpu"], "no config.json"),
        (["train", "--data", data, "--model", model, "-o", data, "--cpu"], "is a file"),
        (["train", "--data", data, "--model", model, "-o", f"{data}/run", "--cpu"], "cannot be created"),
        (["train", "--config", MISSING], "cannot read it"),
        (["train", "--data", data, "--model", model, "-o", f"{folder}/run", "--cpu", "--offload", "nvme"], "needs --zero 3"),
        (["eval", "--model", "./no-such-model", "--data", data], "no such model directory"),
        (["eval", "--model", model, "--data", folder], "is a directory"),
        (["eval", "--model", model, "--data", data, "--fail-if", "loss is high"], "loss is high"),
        (["quantize", "--model", folder, "-o", f"{folder}/q"], "no config.json"),
        (["quantize", "--model", model, "-o", data], "already exists"),
        (["quantize", "--model", model, "-o", f"{data}/int8"], "cannot create"),
        (["chat", "--model", folder, "--prompt", "你好"], "no config.json"),
        (["chat", "--model", model, "--prompt", "你好", "--temperature", "-1"], "temperature"),
        (["serve", "--model", f"{folder}/no-such-model"], "no such model directory"),
        (["template", "install", f"{folder}/no-such-model"], "no such model directory"),
    ]


BAD_OPTION_VALUES = [
    ["data", "validate", str(SAMPLE_DATA), "--max-errors", "-1"],
    ["train", "--zero", "5"],
    ["train", "--precision", "fp8"],
    ["quantize", "--model", "m", "-o", "out", "--bits", "3"],
    ["eval", "--model", "m", "--data", str(SAMPLE_DATA), "--task", "essay"],
    ["chat", "--model", "m", "--dtype", "fp64"],
    ["no-such-command"],
]


@pytest.fixture(scope="module")
def cases(tiny_model_dirs, tmp_path_factory):
    return error_cases(str(tiny_model_dirs["llama"]), str(tmp_path_factory.mktemp("errors")))


def test_every_command_reports_user_errors_in_one_line_with_exit_2(cases):
    for arguments, expected in cases:
        result = CliRunner().invoke(app, arguments)
        assert result.exception is None or isinstance(result.exception, SystemExit), (arguments, result.exception)
        assert result.exit_code == 2, (arguments, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("[20")]
        assert lines and lines[-1].startswith("error:") and expected in lines[-1], (arguments, result.stderr)
        assert "Traceback" not in result.output


@pytest.mark.parametrize("arguments", BAD_OPTION_VALUES, ids=lambda a: " ".join(a[:2]))
def test_bad_option_values_are_usage_errors(arguments):
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "Usage:" in result.stderr and "Traceback" not in result.output


def test_invalid_data_is_exit_1_for_the_commands_that_check_it(tmp_path, tiny_model_dirs):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi"}\n', encoding="utf-8")
    for arguments in (["data", "validate", str(bad)],
                      ["train", "--data", str(bad), "--model", str(tiny_model_dirs["llama"]), "-o", str(tmp_path / "r"), "--cpu"],
                      ["eval", "--model", str(tiny_model_dirs["llama"]), "--data", str(bad)]):
        result = CliRunner().invoke(app, arguments)
        assert result.exit_code == 1 and "Traceback" not in result.output, (arguments, result.output)
