"""The parameter count a real run takes from the safetensors headers is the meta-device count of the full estimate."""

from __future__ import annotations

import json
import shutil

from transformers import AutoModelForCausalLM

from yayi_cli.train.memory import COUNTED_ONLY, count_parameters, count_saved_parameters, saved_parameter_counts


def test_the_headers_give_the_meta_device_counts(tiny_model_dirs, arch):
    assert saved_parameter_counts(tiny_model_dirs[arch]) == count_parameters(str(tiny_model_dirs[arch]))


def test_a_sharded_checkpoint_is_counted_over_all_its_files(tiny_model_dirs, tmp_path):
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]).save_pretrained(sharded, max_shard_size="200KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert saved_parameter_counts(sharded) == count_parameters(str(tiny_model_dirs["llama"]))


def test_a_real_run_gets_the_count_and_no_byte_estimate(tiny_model_dirs):
    memory = count_saved_parameters(str(tiny_model_dirs["bloom"]))
    assert memory.parameters == AutoModelForCausalLM.from_pretrained(tiny_model_dirs["bloom"]).num_parameters()
    assert memory.to_json()["gpu_gib_per_rank"] is None and memory.covers == COUNTED_ONLY


def test_weights_the_headers_cannot_count_are_left_uncounted(tiny_model_dirs, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["llama"], model)
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    (model / "config.json").write_text(json.dumps(config | {"quantization_config": {"load_in_8bit": True}}))
    assert saved_parameter_counts(model) is None  # stored int8 shapes are not the parameters
    (model / "config.json").write_text(json.dumps(config))
    (model / "model.safetensors").write_bytes(b"\xff" * 16)
    assert saved_parameter_counts(model) is None
    (model / "model.safetensors").unlink()
    assert count_saved_parameters(str(model)) is None
