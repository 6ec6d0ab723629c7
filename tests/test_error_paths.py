"""Every command's user errors: the right exit code and one `error:` line, never a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.helpers import SAMPLE_DATA
from yayi_cli.cli.app import app


MISSING = "no-such-file.jsonl"


MODEL, FOLDER, DATA = "{model}", "{folder}", str(SAMPLE_DATA)
"""Placeholders for a tiny model and an empty directory, filled in when each case runs."""

ERROR_CASES = [  # (arguments, what the one error line must say)
    (["data", "validate", MISSING], "no such file"),
    (["data", "validate", FOLDER], "is a directory"),
    (["data", "validate", DATA, "--model", FOLDER], "no config.json"),
    (["data", "split", MISSING, "--test-size", "2", "-o", f"{FOLDER}/out"], "no such file"),
    (["data", "split", DATA, "--test-size", "lots", "-o", f"{FOLDER}/out"], "--test-size 'lots'"),
    (["data", "split", DATA, "--test-size", "2", "-o", DATA], "not a directory"),
    (["data", "preview", FOLDER], "is a directory"),
    (["train", "--data", MISSING, "--model", MODEL, "-o", f"{FOLDER}/run", "--cpu"], "no such file"),
    (["train", "--data", DATA, "--model", FOLDER, "-o", f"{FOLDER}/run", "--cpu"], "no config.json"),
    (["train", "--data", DATA, "--model", MODEL, "-o", DATA, "--cpu"], "is a file"),
    (["train", "--data", DATA, "--model", MODEL, "-o", f"{DATA}/run", "--cpu"], "cannot be created"),
    (["train", "--config", MISSING], "cannot read it"),
    (["train", "--data", DATA, "--model", MODEL, "-o", f"{FOLDER}/run", "--cpu", "--offload", "nvme"], "needs --zero 3"),
    (["eval", "--model", "./no-such-model", "--data", DATA], "no such model directory"),
    (["eval", "--model", MODEL, "--data", FOLDER], "is a directory"),
    (["eval", "--model", MODEL, "--data", DATA, "--fail-if", "loss is high"], "loss is high"),
    (["quantize", "--model", FOLDER, "-o", f"{FOLDER}/q"], "no config.json"),
    (["quantize", "--model", MODEL, "-o", DATA], "already exists"),
    (["quantize", "--model", MODEL, "-o", f"{DATA}/int8"], "cannot create"),
    (["chat", "--model", FOLDER, "--prompt", "你好"], "no config.json"),
    (["chat", "--model", MODEL, "--prompt", "你好", "--temperature", "-1"], "temperature"),
    (["serve", "--model", f"{FOLDER}/no-such-model"], "no such model directory"),
    (["template", "install", f"{FOLDER}/no-such-model"], "no such model directory"),
    (["data", "validate", DATA, "--max-errors", "-1"], "--max-errors must be at least 0, got -1"),
    (["eval", "--model", MODEL, "--data", DATA, "--max-regression", "-1"], "--max-regression must be at least 0, got -1.0"),
    (["eval", "--model", MODEL, "--data", DATA, "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["serve", "--model", MODEL, "--port", "70000"], "--port must be at most 65535, got 70000"),
    (["eval", "--data", DATA], "missing --model DIR|HUB_ID (give it as a flag or in --config)"),
]


BAD_OPTION_VALUES = [
    ["train", "--zero", "5"],
    ["train", "--precision", "fp8"],
    ["quantize", "--model", "m", "-o", "out", "--bits", "3"],
    ["eval", "--model", "m", "--data", str(SAMPLE_DATA), "--task", "essay"],
    ["chat", "--model", "m", "--dtype", "fp64"],
    ["chat", "--model", "m", "--temperature", "inf"],
    ["train", "--lr", "nan"],
    ["quantize", "--model", "m", "-o", "out", "--threshold", "nan"],
    ["no-such-command"],
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("errors"))


@pytest.mark.parametrize(("arguments", "expected"), ERROR_CASES, ids=lambda case: " ".join(case) if isinstance(case, list) else "")
def test_a_user_error_is_one_line_with_exit_2(arguments, expected, tiny_model_dirs, folder):
    arguments = [a.format(model=tiny_model_dirs["llama"], folder=folder) for a in arguments]
    result = CliRunner().invoke(app, arguments)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("[20")]
    assert lines and lines[-1].startswith("error:") and expected in lines[-1], result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("arguments", BAD_OPTION_VALUES, ids=lambda a: " ".join(a[:2] + a[-2:]))
def test_bad_option_values_are_usage_errors(arguments):
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--help" in lines[0], result.stderr  # Click's errors too
    assert "Traceback" not in result.output
    if any(value in arguments for value in ("nan", "inf")):
        assert "is not a finite number" in result.stderr


def test_a_config_file_cannot_smuggle_in_nan(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"data: [{SAMPLE_DATA}]\nmodel: m\noutput: {tmp_path / 'out'}\nlr: .nan\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--dry-run"])
    assert result.exit_code == 2 and "--lr nan: give a finite number" in result.stderr


def test_a_huge_preview_count_shows_every_record():
    result = CliRunner().invoke(app, ["data", "preview", str(SAMPLE_DATA), "-n", "99999999999999999999"])
    assert result.exit_code == 0 and "Traceback" not in result.output


def test_invalid_data_is_exit_1_for_the_commands_that_check_it(tmp_path, tiny_model_dirs):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi"}\n', encoding="utf-8")
    for arguments in (["data", "validate", str(bad)],
                      ["train", "--data", str(bad), "--model", str(tiny_model_dirs["llama"]), "-o", str(tmp_path / "r"), "--cpu"],
                      ["eval", "--model", str(tiny_model_dirs["llama"]), "--data", str(bad)]):
        result = CliRunner().invoke(app, arguments)
        assert result.exit_code == 1 and "Traceback" not in result.output, (arguments, result.output)
