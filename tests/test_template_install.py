"""`yayi template install`: the YaYi format added to models yayi did not write, all at once, with a backup."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from yayi_cli.cli import app
from yayi_cli.errors import UsageError
from yayi_cli.prompt import MARKERS, TEMPLATES, chat_template, prompt_prefix, reserved_tokens, stop_token_ids


def files(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def backups(directory: Path) -> list[Path]:
    return sorted(directory.parent.glob(f"{directory.name}.yayi-backup-*"))


def yayi(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def strip_format(directory: Path) -> Path:
    """What a downloaded model looks like: no chat template, EOS as the only stop id, no template file."""
    (directory / "chat_template.jinja").unlink()
    (directory / "yayi_template.json").unlink()
    config = json.loads((directory / "generation_config.json").read_text(encoding="utf-8"))
    config["eos_token_id"] = 2
    (directory / "generation_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


@pytest.fixture
def tiny_copy(tiny_model_dirs, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model_dirs["llama"], tmp_path / "llama"))


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


def test_a_model_without_markers_gets_them_with_room_in_the_embeddings_and_a_backup(without_markers):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    before = files(without_markers)
    vocab = len(AutoTokenizer.from_pretrained(without_markers))
    checked = yayi("template", "install", str(without_markers), "--check")
    assert checked.exit_code == 1 and "lacks the markers" in checked.stdout

    result = yayi("template", "install", str(without_markers))
    assert result.exit_code == 0, result.output
    assert "untrained" in result.stderr and f"resized to {vocab + len(MARKERS)} rows" in result.stderr
    tokenizer = AutoTokenizer.from_pretrained(without_markers)
    model = AutoModelForCausalLM.from_pretrained(without_markers)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == vocab + len(MARKERS)
    assert GenerationConfig.from_pretrained(without_markers).eos_token_id[:3] == stop_token_ids(tokenizer)
    assert tokenizer.chat_template == chat_template(TEMPLATES["yayi-llama2"], prompt_prefix(tokenizer), reserved_tokens(tokenizer))
    assert yayi("template", "install", str(without_markers), "--check").exit_code == 0

    (backup,) = backups(without_markers)
    listing = json.loads((backup / "yayi-backup.json").read_text(encoding="utf-8"))
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(listing["replaced"])
    assert {"yayi_template.json", "chat_template.jinja"} <= set(listing["added"])
    assert all(files(backup)[name] == before[name] for name in listing["replaced"])


def test_a_model_with_markers_gets_template_and_stop_ids_and_keeps_its_weights(tiny_copy):
    strip_format(tiny_copy)
    weights = files(tiny_copy)["model.safetensors"]
    problems = yayi("template", "install", str(tiny_copy), "--check", "--json")
    assert problems.exit_code == 1
    assert json.loads(problems.stdout)["problems"] == [
        "the tokenizer has no chat template", "generation_config.json does not stop at <|End|>, <|Human|> and EOS",
        "yayi_template.json is missing or names another template",
    ]
    result = yayi("template", "install", str(tiny_copy), "--json")
    assert result.exit_code == 0 and "untrained" not in result.stderr
    report = json.loads(result.stdout)
    assert report["added_markers"] == 0 and "model.safetensors" not in report["changed"]
    assert files(tiny_copy)["model.safetensors"] == weights
    assert yayi("template", "install", str(tiny_copy), "--check").exit_code == 0


def test_a_different_template_already_set_is_reported_and_replaced(tiny_copy):
    differs = yayi("template", "install", str(tiny_copy), "--check", "--template", "yayi")
    assert differs.exit_code == 1 and "differs from the yayi core's (template yayi) at character" in differs.stdout
    assert yayi("template", "install", str(tiny_copy), "--template", "yayi").exit_code == 0
    assert yayi("template", "install", str(tiny_copy), "--check").exit_code == 0  # yayi_template.json now says yayi

    (tiny_copy / "chat_template.jinja").write_text("{{ messages[0]['content'] }}", encoding="utf-8")
    foreign = yayi("template", "install", str(tiny_copy), "--check")
    assert foreign.exit_code == 1 and "differs" in foreign.stdout


def test_a_model_that_agrees_is_left_alone(tiny_copy):
    before = files(tiny_copy)
    result = yayi("template", "install", str(tiny_copy))
    assert result.exit_code == 0 and "nothing to do" in result.stdout
    assert files(tiny_copy) == before and backups(tiny_copy) == []


def test_a_failure_half_way_leaves_the_model_as_it_was(tiny_copy, monkeypatch):
    import errno
    import os

    from yayi_cli import template_install

    strip_format(tiny_copy)
    before = files(tiny_copy)
    replace, moved_in = os.replace, []

    def full_disk_on_the_second_file(source, target):  # staged files moving into the model directory
        if Path(target).parent == tiny_copy:
            moved_in.append(source)
            if len(moved_in) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        replace(source, target)

    monkeypatch.setattr(template_install.os, "replace", full_disk_on_the_second_file)
    with pytest.raises(UsageError, match="No space left on device; nothing was changed"):
        template_install.install(str(tiny_copy))
    assert len(moved_in) == 2
    assert files(tiny_copy) == before and backups(tiny_copy) == []
    assert not any(p.name.startswith(".yayi-template-") for p in tiny_copy.iterdir())


def test_a_missing_directory_or_a_hub_id_is_one_error_line(tmp_path):
    for model in (str(tmp_path / "nope"), "wenge-research/yayi-7b"):
        result = yayi("template", "install", model)
        assert result.exit_code == 2 and result.stderr.startswith("error:") and "no such model directory" in result.stderr
