"""Options are declared once, on each command's dataclass: the flags, `--help`, `--config FILE` and the
checks a library call runs all come from that declaration."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from tests.helpers import SAMPLE_DATA
from yayi_cli.chat.options import ChatOptions
from yayi_cli.cli.app import app
from yayi_cli.cli.parameters import command
from yayi_cli.convert.options import MergeOptions, QuantizeOptions
from yayi_cli.data.options import PreviewOptions, SplitOptions, ValidateOptions
from yayi_cli.eval.options import EvalOptions
from yayi_cli.options.fields import CommandOptions, option, table
from yayi_cli.runtime.errors import UsageError
from yayi_cli.serve.options import ServeOptions, TemplateInstallOptions
from yayi_cli.train.options import TrainOptions


COMMANDS = {
    ("data", "preview"): PreviewOptions, ("data", "validate"): ValidateOptions, ("data", "split"): SplitOptions,
    ("train",): TrainOptions, ("eval",): EvalOptions, ("chat",): ChatOptions, ("quantize",): QuantizeOptions,
    ("merge",): MergeOptions, ("serve",): ServeOptions, ("template", "install"): TemplateInstallOptions,
}
COMMAND_FLAGS = {"--config", "--json", "--dry-run", "--help", "-h"}
"""Flags of the command itself, not options of the work it does."""


def help_text(application: typer.Typer, *words: str) -> str:
    result = CliRunner().invoke(application, [*words, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.stdout


@dataclass
class Greeting(CommandOptions):
    COMMAND = "greet"

    name: str = option("--name", "--who", default="world", metavar="NAME", help="Whom to greet.")


@dataclass
class LoudGreeting(Greeting):
    volume: int = option("--volume", default=3, at_least=1, help="How loud.")


def throwaway_app(kind: type) -> tuple[typer.Typer, list]:
    greeted: list = []
    application = typer.Typer(rich_markup_mode=None)

    @command(application, "greet", kind)
    def greet(options: Greeting) -> None:
        """Greet someone."""
        greeted.append(options)

    @application.command("other")
    def other() -> None:
        """A second command, so that `greet` stays a sub-command."""

    return application, greeted


def test_a_flag_declared_on_an_options_dataclass_appears_in_help_with_its_default():
    shown = " ".join(help_text(throwaway_app(LoudGreeting)[0], "greet").split())
    assert "--name, --who NAME Whom to greet. [default: world]" in shown
    assert "--volume <int> How loud. [default: 3]" in shown


def test_a_flag_declared_on_an_options_dataclass_reaches_the_options_and_is_checked():
    application, greeted = throwaway_app(LoudGreeting)
    assert CliRunner().invoke(application, ["greet", "--who", "you", "--volume", "5"]).exit_code == 0
    assert greeted == [LoudGreeting(name="you", volume=5)]
    refused = CliRunner().invoke(application, ["greet", "--volume", "0"])
    assert refused.exit_code == 2 and refused.stderr.strip() == "error: --volume must be at least 1, got 0"


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=" ".join)
def test_every_field_is_a_flag_in_its_commands_help_and_every_flag_is_a_field(words):
    kind = COMMANDS[words]
    click_command = typer.main.get_command(app)
    for word in words:
        click_command = click_command.commands[word]
    params = {param.name: param for param in click_command.params}
    assert set(params) - {"ctx", "config", "json_output", "dry_run"} == {entry.name for entry in table(kind)}
    shown = help_text(app, *words)
    for entry in table(kind):
        assert all(name in shown for name in params[entry.name].opts if name.startswith("--")), entry.name
    flags = {name for param in click_command.params for name in param.opts + param.secondary_opts if name.startswith("-")}
    declared = {name for entry in table(kind) for spelled in entry.flag.names for name in spelled.split("/")}
    assert {name for name in flags - declared - COMMAND_FLAGS if not name.startswith("--no-")} == set()


CONFIG_COMMANDS = {  # argv without options, the library function it calls, a value to set: (key, file value, flag)
    "chat": (["chat", "--prompt", "hi"], "yayi_cli.chat.command", "chat", ("max_new_tokens", 64, "32")),
    "eval": (["eval"], "yayi_cli.eval.command", "evaluate", ("batch_size", 2, "4")),
    "quantize": (["quantize", "-o", "q"], "yayi_cli.convert.quantize", "quantize", ("max_check_samples", 8, "16")),
    "serve": (["serve"], "yayi_cli.serve.command", "serve", ("port", 9000, "9001")),
}


def asked_options(monkeypatch, name: str, *more: str) -> tuple[object, object]:
    """The options a command hands its library function, and the CLI result."""
    argv, module, function, _ = CONFIG_COMMANDS[name]
    asked = []

    def record(options, *args, **kwargs):
        asked.append(options)
        return 0

    monkeypatch.setattr(importlib.import_module(module), function, record)
    result = CliRunner().invoke(app, [*argv, *more])
    return (asked[0] if asked else None), result


def setting(options, key: str):
    return getattr(options.settings if isinstance(options, ChatOptions) else options, key)


@pytest.mark.parametrize("name", sorted(CONFIG_COMMANDS))
def test_config_file_values_reach_the_options_and_flags_override_them(name, monkeypatch, tmp_path):
    key, file_value, flag_value = CONFIG_COMMANDS[name][3]
    config = tmp_path / "options.yaml"
    config.write_text(f"model: from-file\ndata: [{SAMPLE_DATA}]\n{key}: {file_value}\n", encoding="utf-8")
    if name in ("chat", "quantize", "serve"):
        config.write_text(f"model: from-file\n{key.replace('_', '-')}: {file_value}\n", encoding="utf-8")
    from_file, _ = asked_options(monkeypatch, name, "--config", str(config))
    assert from_file.model == "from-file" and setting(from_file, key) == file_value
    flag = "--" + key.replace("_", "-")
    overridden, _ = asked_options(monkeypatch, name, "--config", str(config), flag, flag_value, "-m", "typed")
    assert overridden.model == "typed" and setting(overridden, key) == type(file_value)(flag_value)


@pytest.mark.parametrize("name", sorted(CONFIG_COMMANDS))
def test_an_unknown_config_key_is_refused_naming_it_and_the_help(name, monkeypatch, tmp_path):
    config = tmp_path / "options.json"
    config.write_text(json.dumps({"model": "m", "temprature": 0.5}), encoding="utf-8")
    asked, result = asked_options(monkeypatch, name, "--config", str(config))
    assert asked is None and result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --config {config}: unknown option 'temprature'; see `yayi {name} --help` for the names"]


def test_a_config_file_can_turn_on_what_a_no_flag_turns_off(monkeypatch, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(f"model: m\ndata: {SAMPLE_DATA}\ngenerate: true\n", encoding="utf-8")
    assert asked_options(monkeypatch, "eval", "--config", str(config))[0].generate is True
    assert asked_options(monkeypatch, "eval", "--config", str(config), "--no-generate")[0].generate is False


@pytest.mark.parametrize(("make", "argv", "message"), [
    (lambda: EvalOptions("m", [SAMPLE_DATA], batch_size=0), ["eval", "-m", "m", "-d", str(SAMPLE_DATA), "--batch-size", "0"],
     "--batch-size must be at least 1, got 0"),
    (lambda: TrainOptions(data=[str(SAMPLE_DATA)], model="m", output="o", lora_r=0),
     ["train", "-d", str(SAMPLE_DATA), "-m", "m", "-o", "o", "--lora-r", "0"], "--lora-r must be at least 1, got 0"),
    (lambda: ServeOptions("m", engine="tgi"), None, "--engine 'tgi': choose one of transformers, vllm"),
    (lambda: QuantizeOptions("m", Path("q"), threshold=float("nan")), None, "--threshold nan: give a finite number"),
    (lambda: EvalOptions("m", [SAMPLE_DATA], max_regression=5.0), ["eval", "-m", "m", "-d", str(SAMPLE_DATA), "--max-regression", "5"],
     "--max-regression needs --baseline REPORT.json"),
    (lambda: ChatOptions("m", prompt="hi", jsonl=True), ["chat", "-m", "m", "-p", "hi", "--jsonl"],
     "--jsonl reads its prompts from stdin; leave out --prompt"),
])
def test_a_library_call_with_bad_options_gets_the_clis_message(make, argv, message):
    with pytest.raises(UsageError) as caught:
        make()
    assert str(caught.value) == message
    if argv:
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2 and result.stderr.strip() == f"error: {message}"


def test_a_run_without_its_required_options_is_refused_by_check():
    with pytest.raises(UsageError, match=r"missing --data FILE \(give it as a flag or in --config\)"):
        TrainOptions(model="m", output="o").check()
    TrainOptions(data=["d.jsonl"], model="m", output="o").check()


def test_upstream_flag_names_are_config_keys_too(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("data_path: [d.jsonl]\ninput_model: m\nlocal-output-dir: o\nnum_gpus: 2\n", encoding="utf-8")
    options = TrainOptions.resolve(config, {})
    assert (options.data, options.model, options.output, options.gpus) == (["d.jsonl"], "m", "o", 2)
