"""The offline tiny models load through the same from_pretrained paths as real checkpoints."""

from __future__ import annotations

import stat

import pytest

from yayi_cli.core.prompt import END_MARKER, PromptTokenizer, marker_token_ids, resolve_template
from yayi_cli.core.records import parse_record
from yayi_cli.models.tiny import TinySpec, build_tiny, main
from yayi_cli.runtime.errors import UsageError


def test_a_tiny_model_reloads_and_trains_on_a_yayi_example(tiny_model_dirs, arch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = tiny_model_dirs[arch]
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert model.config.model_type == arch
    assert 100_000 < model.num_parameters() < 1_000_000
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert marker_token_ids(tokenizer)[END_MARKER] in model.generation_config.eos_token_id

    template, source = resolve_template(None, str(directory))
    assert source == "saved with the model"
    assert template.name == ("yayi-llama2" if arch == "llama" else "yayi")
    conversation = parse_record({"instruction": "【舆情领域任务】判断情感", "output": "正面"}).conversation
    encoded = PromptTokenizer(template, tokenizer).encode_training(conversation)
    loss = model(input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels])).loss
    loss.backward()
    assert torch.isfinite(loss) and model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_building_is_reproducible_from_the_seed(tmp_path):
    from safetensors.torch import load_file

    texts = ["你好 hello <|End|>"] * 5
    first = build_tiny(tmp_path / "a", texts, TinySpec(seed=3))
    second = build_tiny(tmp_path / "b", texts, TinySpec(seed=3))
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()


def test_the_output_directory_is_never_clobbered_and_has_normal_permissions(tmp_path):
    out = build_tiny(tmp_path / "m", ["some text"], TinySpec(arch="bloom"))
    assert stat.S_IMODE(out.stat().st_mode) & 0o055 == 0o055
    with pytest.raises(UsageError, match="already exists"):
        build_tiny(out, ["some text"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_the_module_entry_point_builds_from_data_files(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
    assert main([str(tmp_path / "m"), "--arch", "bloom", "--data", str(data)]) == 0
    assert (tmp_path / "m" / "config.json").exists()
    assert main([str(tmp_path / "m"), "--data", str(data)]) == 2
    assert "already exists; use --force" in capsys.readouterr().err
    assert main([str(tmp_path / "m"), "--data", str(data), "--force"]) == 0
