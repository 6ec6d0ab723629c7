"""`yayi train` options: defaults < config file < flags, upstream names accepted, bad values refused."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.helpers import SAMPLE_DATA
from yayi_cli.cli.app import app
from yayi_cli.options.fields import table
from yayi_cli.runtime.errors import UsageError
from yayi_cli.train.options import ADAPTER_LR, FULL_FINE_TUNE_LR, TrainOptions


REQUIRED = {"data": ["d.jsonl"], "model": "m", "output": "out"}


def test_defaults_apply_when_nothing_else_is_given():
    options = TrainOptions.resolve(None, REQUIRED)
    assert (options.zero, options.precision, options.micro_batch_size, options.seed) == (2, "auto", 8, 515)


def test_a_config_file_overrides_defaults_and_flags_override_the_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("zero: 3\nlr: 1.0e-4\nepochs: 1\nmicro_batch_size: 2\n", encoding="utf-8")
    options = TrainOptions.resolve(config, REQUIRED | {"lr": 3e-4, "epochs": None})
    assert options.zero == 3 and options.micro_batch_size == 2  # from the file
    assert options.lr == 3e-4  # the flag wins
    assert options.epochs == 1.0  # a flag not typed (None) leaves the file's value


def test_config_files_accept_upstream_and_dashed_names_in_json(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({
        "data-path": "train.json", "input_model": "yayi-7b", "local_output_dir": "ckpt",
        "per_device_train_batch_size": 4, "learning_rate": 5e-6, "test_size": 400,
    }), encoding="utf-8")
    options = TrainOptions.resolve(config, {})
    assert (options.data, options.model, options.output) == (["train.json"], "yayi-7b", "ckpt")
    assert (options.micro_batch_size, options.lr, options.test_size) == (4, 5e-6, 400)


@pytest.mark.parametrize(("text", "message"), [
    ("zero: [3]\n", "expected a whole number"),
    ("packing: yes please\n", "expected true or false"),
    ("learning_rat: 1\n", "unknown option 'learning_rat'"),
    ("- a list\n", "expected a mapping"),
    ("zero: 2\n  bad: indent\n", "not valid YAML"),
])
def test_config_file_mistakes_name_the_file_and_the_key(tmp_path, text, message):
    config = tmp_path / "run.yaml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=message) as caught:
        TrainOptions.read_config(config)
    assert str(config) in str(caught.value)


@pytest.mark.parametrize(("flags", "message"), [
    ({"data": []}, "missing --data"),
    ({"zero": 4}, "zero 4"),
    ({"micro_batch_size": 0}, "--micro-batch-size must be at least 1"),
    ({"eval_data": ["e.jsonl"], "test_size": 10}, "--eval-data or --test-size"),
    ({"deepspeed": "ds.json", "zero": 3}, "--zero: these come from --deepspeed FILE"),
])
def test_impossible_options_are_refused(flags, message):
    with pytest.raises(UsageError, match=message):
        TrainOptions.resolve(None, REQUIRED | flags)


def test_every_upstream_flag_name_is_accepted_on_the_command_line():
    command = next(c for c in app.registered_commands if c.name == "train")
    import typer.main

    click_command = typer.main.get_command_from_info(command, pretty_exceptions_short=True, rich_markup_mode=None)
    declared = {opt for param in click_command.params for opt in param.opts}
    upstream = {"--data-path", "--input-model", "--local-output-dir", "--per-device-train-batch-size",
                "--per-device-eval-batch-size", "--epochs", "--lr", "--seed", "--warmup-steps", "--logging-steps",
                "--save-steps", "--save-total-limit", "--eval-steps", "--test-size", "--deepspeed"}
    assert upstream <= declared
    upstream_keys = {"data_path": "data", "input_model": "model", "local_output_dir": "output",
                     "per_device_train_batch_size": "micro_batch_size", "per_device_eval_batch_size": "eval_batch_size",
                     "num_train_epochs": "epochs", "learning_rate": "lr", "num_gpus": "gpus"}
    assert {key: TrainOptions.config_keys().get(key) for key in upstream_keys} == upstream_keys
    option_names = {param.name for param in click_command.params}
    assert option_names - {"config", "dry_run", "json_output"} == set(TrainOptions.__dataclass_fields__)


def test_yaml_numbers_written_as_text_are_numbers(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("lr: 1e-5\nwarmup_steps: '100'\n", encoding="utf-8")  # PyYAML reads 1e-5 as a string
    options = TrainOptions.resolve(config, REQUIRED)
    assert (options.lr, options.warmup_steps) == (1e-5, 100)


@pytest.mark.parametrize(("flags", "message"), [
    ({"global_batch_size": 64, "gradient_accumulation_steps": 4}, "not both"),
    ({"master_port": 99999}, "at most 65535"),
    ({"warmup_steps": -5}, "--warmup-steps must be at least 0"),
    ({"epochs": 0}, "--epochs must be above 0"),
])
def test_more_impossible_options_are_refused(flags, message):
    with pytest.raises(UsageError, match=message):
        TrainOptions.resolve(None, REQUIRED | flags)


def test_max_steps_makes_epochs_irrelevant():
    assert TrainOptions.resolve(None, REQUIRED | {"epochs": 0, "max_steps": 10}).max_steps == 10


def test_the_network_interface_and_dist_timeout_come_from_a_config_file_too(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("network-interface: eth1\ndist_timeout: 60\n", encoding="utf-8")
    options = TrainOptions.resolve(config, REQUIRED)
    assert (options.network_interface, options.dist_timeout) == ("eth1", 60)
    assert TrainOptions.resolve(None, REQUIRED).dist_timeout == 300
    config.write_text("network_interface: 'eth1 eth2'\n", encoding="utf-8")
    with pytest.raises(UsageError, match="--network-interface 'eth1 eth2': give an interface name"):
        TrainOptions.resolve(config, REQUIRED)


BOOLEAN_OPTIONS = sorted(entry.name for entry in table(TrainOptions) if entry.hint is bool)


def planned_options(config, model, output, *flags: str) -> dict:
    """The options `yayi train --dry-run --json` resolved from a config file and flags."""
    result = CliRunner().invoke(app, ["train", "--dry-run", "--json", "--config", str(config), "--data", str(SAMPLE_DATA),
                                      "--model", str(model), "-o", str(output), *flags])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["run"]["options"]


def test_a_config_files_lora_holds_unless_no_lora_is_typed(tmp_path, tiny_model_dirs):
    config = tmp_path / "run.yaml"
    config.write_text("lora: true\n", encoding="utf-8")
    model, output = tiny_model_dirs["llama"], tmp_path / "out"
    from_file = planned_options(config, model, output)
    assert from_file["lora"] is True and from_file["lr"] == ADAPTER_LR and from_file["lora_targets"]
    turned_off = planned_options(config, model, output, "--no-lora")
    assert turned_off["lora"] is False and turned_off["lr"] == FULL_FINE_TUNE_LR


@pytest.mark.parametrize("name", BOOLEAN_OPTIONS)
def test_every_true_in_a_config_file_is_turned_off_by_its_no_flag(name, tmp_path, tiny_model_dirs):
    assert {"cpu", "lora", "qlora", "force", "gradient_checkpointing", "trust_remote_code"} <= set(BOOLEAN_OPTIONS)
    config = tmp_path / "run.yaml"
    config.write_text(f"{name}: true\n", encoding="utf-8")
    flag = "--no-" + name.replace("_", "-")
    assert planned_options(config, tiny_model_dirs["llama"], tmp_path / "out", flag)[name] is False


def test_a_null_in_a_config_file_sets_an_option_that_can_be_none(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("save_total_limit: null\nmax_length: ~\n", encoding="utf-8")  # keep every checkpoint
    options = TrainOptions.resolve(config, REQUIRED)
    assert (options.save_total_limit, options.max_length) == (None, None)
    config.write_text("save_steps: null\n", encoding="utf-8")
    with pytest.raises(UsageError, match="save_steps: a value is required"):
        TrainOptions.resolve(config, REQUIRED)
