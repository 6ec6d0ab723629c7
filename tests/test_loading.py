"""`load_for_task`: a model reference becomes the template, the tokenizer, the PromptTokenizer and (when
asked) the model at a device and precision; every command that reads a model goes through it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import SAMPLE_DATA, free_port, one_error_line, yayi
from yayi_cli.core.prompt import MARKERS, TEMPLATES, MissingMarkersError, save_template
from yayi_cli.models.loading import load_for_task
from yayi_cli.models.reference import ADAPTER_CONFIG_FILE, ModelSource
from yayi_cli.runtime.errors import UsageError


@pytest.fixture(scope="module")
def lora(tiny_model_dirs, tmp_path_factory) -> Path:
    """A LoRA adapter made by PEFT on the tiny Llama (its tokenizer has the markers), saved as yayi train
    saves one (with its tokenizer) and with the `yayi` template, where a Llama base would get `yayi-llama2`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from yayi_cli.models.weights import peft_quietly

    base = tiny_model_dirs["llama"]
    with peft_quietly():
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                               LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    directory = tmp_path_factory.mktemp("lora") / "adapter"
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(base).save_pretrained(directory)
    save_template(directory, TEMPLATES["yayi"])
    return directory


def test_an_adapter_directory_loads_its_base_with_the_adapter_on_top(lora, tiny_model_dirs):
    from peft import PeftModel

    loaded = load_for_task(str(lora), device="cpu")
    assert loaded.source == ModelSource(str(tiny_model_dirs["llama"]), str(lora))
    assert isinstance(loaded.model, PeftModel) and not loaded.model.training
    assert loaded.context_length() == loaded.tokenizer.model_max_length


def test_base_replaces_the_base_an_adapter_names(lora, tiny_model_dirs, tmp_path):
    moved = shutil.copytree(tiny_model_dirs["llama"], tmp_path / "moved-base")
    assert load_for_task(str(lora), base=str(moved), model_weights=False).source.base == str(moved)


def test_an_adapter_whose_base_is_gone_is_refused_only_when_the_model_is_loaded(lora, tmp_path):
    orphan = shutil.copytree(lora, tmp_path / "orphan")
    config = json.loads((orphan / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = str(tmp_path / "deleted-base")
    (orphan / ADAPTER_CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")

    tokens_only = load_for_task(str(orphan), model_weights=False)  # data checks need the adapter's tokenizer only
    assert tokens_only.model is None and tokens_only.source.adapter == str(orphan)
    with pytest.raises(UsageError, match="is an adapter whose base cannot be used"):
        load_for_task(str(orphan), device="cpu")


def test_the_template_comes_from_the_model_directory_unless_one_is_named(lora, tiny_model_dirs):
    saved = load_for_task(str(lora), model_weights=False)
    assert (saved.template.name, saved.template_source) == ("yayi", "saved with the model")
    named = load_for_task(str(lora), template="yayi-llama2", model_weights=False)
    assert (named.template.name, named.template_source) == ("yayi-llama2", "--template")
    assert named.prompt_tokenizer.template is named.template


def test_markers_are_added_for_the_training_view_only(without_markers):
    view = load_for_task(str(without_markers), add_markers=True, model_weights=False)
    assert view.added_markers == len(MARKERS)
    assert all(marker in view.tokenizer.get_vocab() for marker in MARKERS)
    assert set(view.prompt_tokenizer.marker_ids) == set(MARKERS)
    # To run it, the model's embeddings would need untrained rows for them: refused, not grown.
    with pytest.raises(MissingMarkersError, match="not prepared for the YaYi format"):
        load_for_task(str(without_markers), device="cpu")


def test_a_tokenizer_only_load_builds_no_model(tiny_model_dirs, monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    loaded = load_for_task(str(tiny_model_dirs["bloom"]), model_weights=False)
    assert loaded.model is None and loaded.added_markers == 0
    assert loaded.prompt_tokenizer.encode_inference  # usable for counting tokens


@pytest.mark.parametrize(("dtype", "expected"), [("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32")])
def test_the_model_is_loaded_at_the_device_and_precision_asked(tiny_model_dirs, dtype, expected):
    loaded = load_for_task(str(tiny_model_dirs["bloom"]), device="cpu", dtype=dtype)
    parameter = next(loaded.model.parameters())
    assert (str(parameter.dtype), parameter.device.type) == (f"torch.{expected}", "cpu")
    assert not loaded.model.training


@pytest.mark.parametrize("command", [
    ["chat", "--prompt", "你好"], ["eval", "--data", str(SAMPLE_DATA)], ["export", "gguf", "-o", "{tmp}/out.gguf"],
    ["serve", "--port", "{port}"], ["quantize", "--bits", "8", "-o", "{tmp}/int8"],
])
def test_every_command_that_runs_a_model_refuses_one_without_the_markers_in_the_same_line(without_markers, tmp_path, command):
    """They all load through load_for_task, so a model without the markers gets the same one line everywhere."""
    result = yayi(*[part.format(tmp=tmp_path, port=free_port()) for part in command], "--model", str(without_markers))
    one_error_line(result, 2, "the tokenizer has no single token for '<|System|>'", "yayi template install")
    assert list(tmp_path.iterdir()) == [without_markers]  # nothing written beside the model


def test_one_context_length_rule_for_every_command_the_config_then_the_tokenizer():
    from yayi_cli.models.tokenizers import context_from

    assert context_from({"max_position_embeddings": 4096}, 2048) == 4096  # what the model was built for
    assert context_from({"n_positions": 1024, "max_position_embeddings": 4096}, None) == 1024  # lm-evaluation-harness's order
    assert context_from({"seq_length": 8192}, None) == 8192
    assert context_from({}, 2048) == 2048  # BLOOM's ALiBi config names none: the tokenizer's limit
    assert context_from({}, int(1e30)) is None  # a tokenizer without a limit: the caller's default
    assert context_from({"max_position_embeddings": 0}, 512) == 512
