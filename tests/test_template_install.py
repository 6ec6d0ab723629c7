"""`yayi template install`: the YaYi format added to models yayi did not write, all at once, with a backup."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import files, strip_format, yayi
from yayi_cli.core.prompt import MARKERS, TEMPLATES, chat_template, prompt_prefix, reserved_tokens, stop_token_ids
from yayi_cli.runtime.errors import UsageError
from yayi_cli.serve.options import TemplateInstallOptions


def backups(directory: Path) -> list[Path]:
    return sorted(directory.parent.glob(f"{directory.name}.yayi-backup-*"))


@pytest.fixture
def tiny_copy(tiny_model_dirs, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model_dirs["llama"], tmp_path / "llama"))


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

    from yayi_cli.serve import template_install

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
        template_install.template_install(TemplateInstallOptions(str(tiny_copy)))
    assert len(moved_in) == 2
    assert files(tiny_copy) == before and backups(tiny_copy) == []
    assert not any(p.name.startswith(".yayi-template-") for p in tiny_copy.iterdir())


def test_a_missing_directory_or_a_hub_id_is_one_error_line(tmp_path):
    for model in (str(tmp_path / "nope"), "wenge-research/yayi-7b"):
        result = yayi("template", "install", model)
        assert result.exit_code == 2 and result.stderr.startswith("error:") and "no such model directory" in result.stderr
