"""An adapter directory is a model reference like any other (chat, eval, quantize, data validate), and
`yayi merge` turns it into a plain model with the same logits. The adapter here is made by PEFT itself
on a tiny base whose tokenizer lacked the markers, with random non-zero adapter weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import SAMPLE_DATA, plain_transformers_loss, yayi
from yayi_cli.cli.app import app
from yayi_cli.convert.quantize import weights_size
from yayi_cli.core.prompt import TEMPLATES
from yayi_cli.models.reference import ADAPTER_CONFIG_FILE, resolve_model, resolve_model_reference
from yayi_cli.runtime.errors import UsageError


TOLERANCE = 1e-4
"""fp32 on the CPU: merged W + s*B@A against W x + s*B(A x) differ by rounding only (about 1e-6)."""


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from yayi_cli.core.prompt import add_markers, save_template
    from yayi_cli.models.tiny import TinySpec, build_tiny, training_texts
    from yayi_cli.models.tokenizers import load_tokenizer
    from yayi_cli.models.weights import fit_embeddings
    from yayi_cli.train.adapters import DEFAULT_TARGETS, attach_adapter
    from yayi_cli.train.options import TrainOptions

    root = tmp_path_factory.mktemp("adapter")
    base = build_tiny(root / "base", training_texts([SAMPLE_DATA], TEMPLATES["yayi"]), TinySpec(markers=False))
    tokenizer = load_tokenizer(str(base))
    before = len(tokenizer)
    add_markers(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(base)
    fit_embeddings(model, len(tokenizer))
    options = TrainOptions(data=["d"], model=str(base), output="o", lora=True, lora_r=4,
                           lora_targets=list(DEFAULT_TARGETS["llama"]))
    trained = attach_adapter(model, options, list(range(before, len(tokenizer))))
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in trained.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    directory = root / "adapter"
    trained.save_pretrained(directory, save_embedding_layers=False)
    tokenizer.save_pretrained(directory)
    save_template(directory, TEMPLATES["yayi-llama2"])
    return directory


@pytest.fixture
def orphan(adapter, tmp_path) -> Path:
    """The adapter copied, its base gone."""
    copy = shutil.copytree(adapter, tmp_path / "orphan")
    config = json.loads((copy / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = str(tmp_path / "deleted-base")
    (copy / ADAPTER_CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    return copy


def one_error(arguments: list[str], message: str, **invoke) -> None:
    result = CliRunner().invoke(app, arguments, **invoke)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("[20")]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_an_adapter_directory_resolves_to_its_base_or_the_one_given(adapter, orphan):
    base = adapter.parent / "base"
    assert resolve_model(str(adapter)).base == resolve_model(str(orphan), str(base)).base == str(base)
    assert resolve_model(str(adapter)).tokenizer == str(adapter)
    assert resolve_model(str(base)).adapter is None
    with pytest.raises(UsageError, match="adapter whose base cannot be used.*give the base with --base"):
        resolve_model(str(orphan))
    with pytest.raises(UsageError, match="only an adapter directory takes a base"):
        resolve_model(str(base), str(base))
    with pytest.raises(UsageError, match="is a LoRA adapter, not a full model here; make one with `yayi merge"):
        resolve_model_reference(str(adapter))


def test_chat_eval_and_validate_take_the_adapter_directory(adapter, orphan):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from yayi_cli.core.prompt import PromptTokenizer
    from yayi_cli.core.record_files import load_records

    result = yayi("chat", "--model", str(adapter), "--prompt", "你好", "--greedy", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    base = ["--base", str(adapter.parent / "base")]
    result = yayi("eval", "--model", str(orphan), *base, "--data", str(SAMPLE_DATA), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["template"] == "yayi-llama2"  # the adapter's own template
    # The loss is the adapter's, as PEFT itself computes it on the same ids: not the base's.
    prompts = PromptTokenizer(TEMPLATES["yayi-llama2"], AutoTokenizer.from_pretrained(adapter))
    conversations = [record.conversation for record in load_records([SAMPLE_DATA])]
    with_adapter = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    assert report["metrics"]["loss"] == pytest.approx(plain_transformers_loss(with_adapter, prompts, conversations), abs=1e-4)
    with with_adapter.disable_adapter():
        assert report["metrics"]["loss"] != pytest.approx(plain_transformers_loss(with_adapter, prompts, conversations), abs=1e-2)
    result = yayi("data", "validate", str(SAMPLE_DATA), "--model", str(orphan), "--json")
    assert result.exit_code == 0, result.output  # the tokenizer travels with the adapter: no base needed
    assert json.loads(result.stdout)["tokens"]["records"] > 0


def test_a_missing_base_or_peft_is_one_error_line(adapter, orphan, monkeypatch):
    one_error(["chat", "--model", str(orphan), "--prompt", "你好"], "give the base with --base")
    one_error(["eval", "--model", str(orphan), "--data", str(SAMPLE_DATA)], "give the base with --base")
    monkeypatch.setitem(sys.modules, "peft", None)  # what a chat-only install without peft sees
    one_error(["chat", "--model", str(adapter), "--prompt", "你好"], "loading it needs peft: pip install 'yayi-cli[lora]'")


def test_merge_writes_a_plain_model_with_the_adapters_logits(adapter, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from yayi_cli.models.weights import load_model

    output = tmp_path / "merged"
    result = CliRunner().invoke(app, ["merge", str(adapter), "-o", str(output), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dtype"] == "fp32" and report["notes"] == []
    assert not (output / ADAPTER_CONFIG_FILE).exists() and (output / "yayi_template.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(output)
    ids = torch.tensor([tokenizer("<|Human|>:\n你好\n\n<|YaYi|>:\n<|End|>")["input_ids"]])
    with torch.no_grad():
        expected = load_model(str(adapter), device="cpu")(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(output)
        got = merged(input_ids=ids).logits
    assert (expected - got).abs().max().item() < TOLERANCE
    assert merged.get_input_embeddings().num_embeddings == len(tokenizer)

    one_error(["merge", str(adapter), "-o", str(output)], "already exists; use --force")
    result = CliRunner().invoke(app, ["merge", str(adapter), "-o", str(output), "--force", "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert json.loads((output / "config.json").read_text(encoding="utf-8"))["dtype"] == "bfloat16"


def sixteen_bit_base(adapter: Path, directory: Path, dtype: str) -> Path:
    """The adapter's base saved again in `dtype` (bfloat16 or float16), into `directory`."""
    import torch
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(adapter.parent / "base", dtype=getattr(torch, dtype)).save_pretrained(directory)
    return directory


def hub_cache_with(model: Path, hub: Path, repo: str) -> None:
    """`model` stored in `hub` as the Hugging Face cache stores a download of `repo`, so with
    HF_HUB_OFFLINE=1 and HF_HUB_CACHE=hub the hub id `repo` resolves to it."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(model, folder / "snapshots" / commit)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit, encoding="utf-8")


def on_base(adapter: Path, directory: Path, base: str) -> Path:
    """A copy of `adapter` whose adapter_config.json names `base`."""
    copy = shutil.copytree(adapter, directory)
    config = json.loads((copy / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    (copy / ADAPTER_CONFIG_FILE).write_text(json.dumps(config | {"base_model_name_or_path": base}), encoding="utf-8")
    return copy


def saved_tensor_dtypes(directory: Path) -> set[str]:
    """The dtypes of the saved weights, as safetensors names them (F32, BF16, F16)."""
    from safetensors import safe_open

    with safe_open(directory / "model.safetensors", framework="pt") as weights:
        return {str(weights.get_slice(name).get_dtype()) for name in weights.keys()}


@pytest.mark.launch
@pytest.mark.parametrize("dtype, short, stored, where", [("bfloat16", "bf16", "BF16", "hub"), ("float16", "fp16", "F16", "local")])
def test_merge_keeps_the_16_bit_dtype_of_a_base_named_by_hub_id_or_directory(adapter, tmp_path, dtype, short, stored, where):
    base = sixteen_bit_base(adapter, tmp_path / "base16", dtype)
    environment = dict(os.environ)
    if where == "hub":
        hub_cache_with(base, tmp_path / "hub", "yayi-test/tiny-16bit")
        environment |= {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    reference = "yayi-test/tiny-16bit" if where == "hub" else str(base)
    output = tmp_path / "merged"
    result = subprocess.run(
        [sys.executable, "-m", "yayi_cli", "merge", str(on_base(adapter, tmp_path / "adapter", reference)), "-o", str(output), "--json"],
        capture_output=True, text=True, env=environment, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dtype"] == short and json.loads(result.stdout)["base"] == reference
    assert json.loads((output / "config.json").read_text(encoding="utf-8"))["dtype"] == dtype
    assert saved_tensor_dtypes(output) == {stored}


def test_merge_refuses_what_it_cannot_merge_and_writes_nothing(adapter, orphan, tmp_path):
    output = tmp_path / "new" / "merged"
    one_error(["merge", str(adapter.parent / "base"), "-o", str(output)], "not an adapter directory")
    one_error(["merge", str(orphan), "-o", str(output)], "give the base with --base")
    one_error(["merge", str(adapter), "-o", str(adapter), "--force"], "would replace the adapter")
    one_error(["merge", str(adapter), "-o", str(adapter.parent / "base"), "--force"], "would replace its base")
    assert not output.parent.exists()


def test_quantize_merges_an_adapter_first_and_leaves_no_temporary_files(adapter, tmp_path):
    output = tmp_path / "int8"
    result = CliRunner().invoke(app, ["quantize", "--model", str(adapter), "-o", str(output), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == str(adapter)
    assert json.loads(result.stdout)["before"]["disk_bytes"] > weights_size(adapter.parent / "base")  # the merged model's
    assert "quantization_config" in json.loads((output / "config.json").read_text(encoding="utf-8"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["int8"]


def test_quantize_checks_free_memory_against_the_merged_model_not_the_adapter_files(adapter, tmp_path, monkeypatch):
    base_bytes, real_sysconf = weights_size(adapter.parent / "base"), os.sysconf
    assert 2 * weights_size(adapter) < base_bytes  # so the free memory below holds two adapters, not two merged models
    free = {"SC_AVPHYS_PAGES": base_bytes // real_sysconf("SC_PAGE_SIZE"), "SC_PAGE_SIZE": real_sysconf("SC_PAGE_SIZE")}
    monkeypatch.setattr(os, "sysconf", lambda name: free[name] if name in free else real_sysconf(name))
    one_error(["quantize", "--model", str(adapter), "-o", str(tmp_path / "int8")], f"quantizing {adapter} needs about")
    assert list(tmp_path.iterdir()) == []


def test_an_adapter_exports_to_gguf_as_its_merge_with_nothing_written_beside_it(adapter, tmp_path):
    import gguf

    before = sorted(p.name for p in adapter.iterdir())
    assert CliRunner().invoke(app, ["merge", str(adapter), "-o", str(tmp_path / "merged")]).exit_code == 0
    for source, name in ((adapter, "adapter.gguf"), (tmp_path / "merged", "merged.gguf")):
        result = CliRunner().invoke(app, ["export", "gguf", "-m", str(source), "-o", str(tmp_path / "out" / name), "--type", "f32"])
        assert result.exit_code == 0, result.output
    from_adapter, from_merged = (gguf.GGUFReader(tmp_path / "out" / name) for name in ("adapter.gguf", "merged.gguf"))
    assert [t.name for t in from_adapter.tensors] == [t.name for t in from_merged.tensors]
    for ours, theirs in zip(from_adapter.tensors, from_merged.tensors):
        assert (ours.data == theirs.data).all(), ours.name
    assert sorted(p.name for p in adapter.iterdir()) == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter.gguf", "merged.gguf"]
