"""The `yayi` entry point: start-up cost, version, help defaults, and `yayi data preview` end to end."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.helpers import LIBRARY_LINE, NOT_AT_STARTUP, SAMPLE_DATA, one_error_line, yayi
from yayi_cli import __version__
from yayi_cli.chat.options import ChatOptions
from yayi_cli.cli.app import app
from yayi_cli.convert.options import MergeOptions, QuantizeOptions
from yayi_cli.data.options import PreviewOptions, SplitOptions, ValidateOptions
from yayi_cli.eval.options import EvalOptions
from yayi_cli.serve.options import ServeOptions, TemplateInstallOptions


runner = CliRunner()


def test_importing_the_cli_imports_no_heavy_library():
    """`--help` and TAB completion run exactly this import."""
    code = "import sys, yayi_cli.cli.app; print(','.join(sorted(m for m in %r if m in sys.modules)))" % (NOT_AT_STARTUP,)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["data", "preview", "--help"], ["serve", "--help"],
                                  ["template", "install", "--help"]])
def test_help_runs_without_heavy_imports(argv):
    code = (
        "import sys; from yayi_cli.cli.app import main; sys.argv = ['yayi'] + %r\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('HEAVY:' + ','.join(m for m in %r if m in sys.modules))" % (argv, NOT_AT_STARTUP)
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage: yayi" in result.stdout
    assert result.stdout.strip().endswith("HEAVY:")


def test_the_module_runs_as_python_dash_m_and_prints_its_version():
    result = subprocess.run([sys.executable, "-m", "yayi_cli", "--version"], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, f"yayi {__version__}\n")


def test_help_documents_the_exit_codes():
    result = yayi("--help")
    assert result.exit_code == 0
    assert "Exit codes: 0 success; 1" in " ".join(result.stdout.split())


def test_preview_marks_the_trained_text_in_plain_output():
    result = yayi("data", "preview", str(SAMPLE_DATA), "-n", "1")
    assert result.exit_code == 0, result.output
    assert "⟦本市首批十座社区图书驿站启用 居民可全天免费借阅\n\n<|End|>⟧" in result.stdout
    assert "<|Human|>:\n【媒宣领域任务】请为以下新闻稿拟一个简洁的标题。\n本市今日启用" in result.stdout


def test_preview_json_gives_text_and_spans_for_each_record():
    result = yayi("data", "preview", str(SAMPLE_DATA), "-n", "20", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert (report["template"], report["template_source"], report["errors"]) == ("yayi", "default", 0)
    records = report["records"]
    assert len(records) == 20
    assert {r["shape"] for r in records} == {"instruction", "conversations", "messages"}
    assert len({r["domain"] for r in records} - {None}) == 5
    multi_turn = next(r for r in records if r["shape"] == "conversations")
    assert [multi_turn["text"][s:e].endswith("\n\n<|End|>") for s, e in multi_turn["spans"]] == [True, True]


def test_preview_with_a_model_counts_tokens_and_shows_the_loss_tokens(tiny_model_dirs, arch):
    result = yayi("data", "preview", str(SAMPLE_DATA), "-n", "14", "--model", str(tiny_model_dirs[arch]), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["template_source"] == "saved with the model"
    for record in report["records"]:
        trained_text = "".join(record["text"][s:e] for s, e in record["spans"])
        assert "".join(record["loss_pieces"]) == trained_text
        assert 0 < record["num_loss_tokens"] < record["num_tokens"]


def test_preview_reports_invalid_records_with_file_and_line_and_exits_1(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n\n{"instruction": "q"}\nnot json\n', encoding="utf-8")
    result = yayi("data", "preview", str(data), "--json")
    assert result.exit_code == 1
    errors = [r for r in json.loads(result.stdout)["records"] if "error" in r]
    assert [(r["line"], r["error"]) for r in errors] == [
        (3, "field 'output' is missing"),
        (4, "invalid JSON: Expecting value (column 1)"),
    ]
    text = yayi("data", "preview", str(data))
    assert text.exit_code == 1 and "error: field 'output' is missing" in text.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.jsonl"], "error: missing.jsonl: no such file"),
        ([str(SAMPLE_DATA), "--model", "./no-such-model"], "error: ./no-such-model: no such model directory"),
        ([str(SAMPLE_DATA), "--model", str(SAMPLE_DATA)], "is a file; give the model's directory"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, message):
    result = yayi("data", "preview", *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_a_bad_option_value_is_a_usage_error():
    result = yayi("data", "preview", str(SAMPLE_DATA), "--template", "chatml")
    assert result.exit_code == 2 and "'chatml' is not one of 'yayi', 'yayi-llama2'" in result.stderr


def test_quiet_leaves_out_the_report_but_keeps_json_and_the_exit_code(tmp_path):
    assert yayi("-q", "data", "validate", str(SAMPLE_DATA)).stdout == ""
    assert json.loads(yayi("-q", "data", "validate", str(SAMPLE_DATA), "--json").stdout)["ok"] is True
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n", encoding="utf-8")
    quiet_failure = yayi("-q", "data", "validate", str(bad))
    assert quiet_failure.exit_code == 1 and quiet_failure.stdout == ""


def test_output_to_a_pipe_has_no_colour_or_progress_bars():
    result = subprocess.run([sys.executable, "-m", "yayi_cli", "data", "validate", str(SAMPLE_DATA)],
                            capture_output=True, text=True, env={**os.environ, "TERM": "xterm-256color"})
    assert result.returncode == 0 and "records" in result.stdout
    assert "\x1b[" not in result.stdout + result.stderr


class Called(Exception):
    """Stops a command at the library call it makes, once the options it built are recorded."""


BARE_COMMANDS = {  # each command with only what it requires -> the library call, and what it must be asked
    "eval": (["eval", "-m", "m", "-d", "d.jsonl"], "yayi_cli.eval.command", "evaluate",
             EvalOptions(model="m", data=[Path("d.jsonl")])),
    "chat": (["chat", "-m", "m", "--prompt", "hi"], "yayi_cli.chat.command", "chat", ChatOptions(model="m", prompt="hi")),
    "quantize": (["quantize", "-m", "m", "-o", "q"], "yayi_cli.convert.quantize", "quantize",
                 QuantizeOptions(model="m", output=Path("q"))),
    "merge": (["merge", "a", "-o", "merged"], "yayi_cli.convert.merge", "merge", MergeOptions(adapter="a", output=Path("merged"))),
    "serve": (["serve", "-m", "m"], "yayi_cli.serve.command", "serve", ServeOptions(model="m")),
    "data preview": (["data", "preview", "d.jsonl"], "yayi_cli.data.preview", "preview", PreviewOptions(Path("d.jsonl"))),
    "data validate": (["data", "validate", "d.jsonl"], "yayi_cli.data.validate", "validate", ValidateOptions([Path("d.jsonl")])),
    "data split": (["data", "split", "d.jsonl", "--test-size", "4", "-o", "o"], "yayi_cli.data.split", "split",
                   SplitOptions([Path("d.jsonl")], test_size=4, output=Path("o"))),
    "template install": (["template", "install", "m"], "yayi_cli.serve.template_install", "template_install",
                         TemplateInstallOptions("m")),
}


@pytest.mark.parametrize("command_name", sorted(BARE_COMMANDS))
def test_a_command_given_no_options_asks_for_exactly_the_option_dataclasses_defaults(command_name, monkeypatch):
    """Every option left out means the dataclass's default: no flag's default can differ from it, be a
    list where a tuple is meant, or go missing on its way to the library."""
    argv, module, function, expected = BARE_COMMANDS[command_name]
    asked = []

    def record(options, *args, **kwargs):
        asked.append(options)
        raise Called

    monkeypatch.setattr(importlib.import_module(module), function, record)
    result = yayi(*argv)
    assert isinstance(result.exception, Called), result.output
    assert asked == [expected]


DOCUMENTED_TRAIN_DEFAULTS = {
    "--method": "sft", "--epochs": "2.0", "--micro-batch-size": "8", "--lr": "5e-06; 0.0001 with --lora/--qlora",
    "--seed": "515", "--zero": "2", "--offload": "none", "--precision": "auto", "--logging-steps": "10",
    "--save-steps": "500", "--eval-steps": "--save-steps", "--save-total-limit": "3", "--lora-r": "16",
    "--lora-alpha": "2 x --lora-r", "--lora-dropout": "0.05", "--beta": "0.1 with dpo|kto; 0 with grpo",
    "--num-generations": "8", "--max-completion-length": "256", "--grpo-loss": "dapo", "--temperature": "1.0",
}
"""The defaults docs/train.md promises (upstream's lr 5e-6 and seed 515 among them), as `yayi train --help` shows them."""


def test_train_help_shows_the_documented_defaults_and_a_run_uses_them(tiny_model_dirs, tmp_path):
    command = typer.main.get_command(app).commands["train"]
    shown = {param.opts[0]: re.search(r"\[default: ([^\]]+)\]", param.help or "") for param in command.params}
    shown = {flag: match.group(1) for flag, match in shown.items() if match}
    assert {flag: shown.get(flag) for flag in DOCUMENTED_TRAIN_DEFAULTS} == DOCUMENTED_TRAIN_DEFAULTS

    def planned(*extra: str) -> dict:
        """The options the run record of a dry run holds: what the launch would use."""
        result = yayi("train", "--dry-run", "--json", "--cpu", "--data", str(SAMPLE_DATA), "--model",
                      str(tiny_model_dirs["llama"]), "-o", str(tmp_path / "run"), *extra)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["run"]["options"]

    full, lora = planned(), planned("--lora")
    assert (full["method"], full["epochs"], full["micro_batch_size"], full["lr"], full["seed"]) == ("sft", 2.0, 8, 5e-6, 515)
    assert (full["zero"], full["offload"], full["precision"], full["logging_steps"], full["save_steps"]) == (2, "none", "auto", 10, 500)
    assert (lora["lr"], lora["lora_r"], lora["lora_alpha"], lora["lora_dropout"]) == (1e-4, 16, 32, 0.05)


@pytest.mark.launch
@pytest.mark.parametrize("command", ["eval", "quantize", "train --dry-run", "tiny"])
def test_no_library_noise_on_the_console(command, tiny_model_dirs, tmp_path):
    model, data = str(tiny_model_dirs["llama"]), str(SAMPLE_DATA)
    arguments = {
        "eval": ["-m", "yayi_cli", "eval", "--model", model, "--data", data],
        "quantize": ["-m", "yayi_cli", "quantize", "--model", model, "-o", str(tmp_path / "q")],
        "train --dry-run": ["-m", "yayi_cli", "train", "--dry-run", "--data", data, "--model", model, "-o", str(tmp_path / "r"), "--cpu"],
        "tiny": ["-m", "yayi_cli.models.tiny", str(tmp_path / "t"), "--data", data],
    }[command]
    result = subprocess.run([sys.executable, *arguments], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    assert [line for line in lines if LIBRARY_LINE.search(line) or "accelerator" in line] == []


def test_eval_help_names_the_predictions_file_as_jsonl():
    result = runner.invoke(app, ["eval", "--help"], prog_name="yayi", env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0 and re.search(r"--predictions\s+FILE\.jsonl\s", result.stdout), result.stdout


def test_no_metavar_has_a_python_name_in_it():
    """A camel-case run (`FILEvalOptions`) is a name pasted in by an edit, never a placeholder."""
    commands = [(f"{group.name} {name}", command) for group in typer.main.get_command(app).commands.values()
                for name, command in getattr(group, "commands", {"": group}).items()]
    metavars = {f"{name} {param.opts[0] if param.opts else param.name}": param.metavar
                for name, command in commands for param in command.params if param.metavar}
    assert len(metavars) > 30 and [f"{where}: {metavar}" for where, metavar in metavars.items() if re.search("[a-z][A-Z]", metavar)] == []


def test_a_record_count_too_large_shows_every_record_and_one_below_1_is_refused():
    """`-n` is clamped above (a huge number means every record) and refused below 1 (0 or -5 means nothing sensible)."""
    result = yayi("data", "preview", "-n", str(10**30), str(SAMPLE_DATA), "--json")
    assert result.exit_code == 0, result.output
    expected = sum(1 for line in SAMPLE_DATA.read_text(encoding="utf-8").splitlines() if line.strip())
    assert len(json.loads(result.stdout)["records"]) == expected
    for typed in ("0", "-5"):
        one_error_line(yayi("data", "preview", "-n", typed, str(SAMPLE_DATA)), 2, f"--num-records must be at least 1, got {typed}")
