"""LoRA/QLoRA planning: options, targets checked on the meta device, trainable counts against PEFT's own,
the memory estimate, and every refusal (one `error:` line, exit 2, nothing written)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import SAMPLE_DATA
from yayi_cli.cli.app import app
from yayi_cli.core.prompt import TEMPLATES, add_markers
from yayi_cli.models.tiny import ARCHITECTURES, TinySpec, build_tiny, training_texts
from yayi_cli.runtime.errors import UsageError
from yayi_cli.train.adapters import DEFAULT_TARGETS, attach_adapter, plan_adapter, resolve_targets
from yayi_cli.train.memory import model_skeleton
from yayi_cli.train.options import ADAPTER_LR, FULL_FINE_TUNE_LR, TrainOptions


REQUIRED = {"data": ["d.jsonl"], "model": "m", "output": "out"}


@pytest.fixture(scope="module")
def bases_without_markers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("no-markers")
    texts = list(training_texts([SAMPLE_DATA], TEMPLATES["yayi"]))
    return {arch: build_tiny(root / arch, texts, TinySpec(arch=arch, markers=False)) for arch in ARCHITECTURES}


def test_adapter_runs_default_to_an_adapter_learning_rate_and_alpha_twice_r():
    assert TrainOptions.resolve(None, REQUIRED).lr == FULL_FINE_TUNE_LR
    options = TrainOptions.resolve(None, REQUIRED | {"lora": True, "lora_r": 8})
    assert (options.lr, options.lora_alpha, options.adapter) == (ADAPTER_LR, 16, "lora")
    assert TrainOptions.resolve(None, REQUIRED | {"qlora": True, "lr": 3e-4}).lr == 3e-4


def test_the_same_options_come_from_a_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("qlora: true\nlora_r: 64\nlora-alpha: 16\nlora_dropout: 0.1\nlora_targets: q_proj,v_proj\n",
                      encoding="utf-8")
    options = TrainOptions.resolve(config, REQUIRED)
    assert (options.adapter, options.lora_r, options.lora_alpha, options.lora_dropout) == ("qlora", 64, 16, 0.1)
    assert options.lora_targets == ["q_proj,v_proj"]  # split into names when the targets are resolved


def test_help_says_the_adapter_learning_rate():
    result = CliRunner().invoke(app, ["train", "--help"])
    assert f"[default: {FULL_FINE_TUNE_LR:g}; {ADAPTER_LR:g} with --lora/--qlora]" in " ".join(result.stdout.split())


@pytest.mark.parametrize(("values", "message"), [
    ({"lora": True, "qlora": True}, "give --lora or --qlora, not both"),
    ({"lora": True, "lora_r": 0}, "--lora-r must be at least 1"),
    ({"lora": True, "lora_alpha": -2}, "--lora-alpha must be above 0"),
    ({"qlora": True, "lora_dropout": 1.0}, "--lora-dropout must be at least 0 and below 1"),
])
def test_adapter_settings_no_run_can_use_are_refused(values, message):
    with pytest.raises(UsageError, match=message):
        TrainOptions.resolve(None, REQUIRED | values)


def test_each_architecture_gets_its_attention_and_mlp_projections(tiny_model_dirs, arch):
    skeleton = model_skeleton(str(tiny_model_dirs[arch]))
    assert resolve_targets([], skeleton) == list(DEFAULT_TARGETS[arch])
    assert "lm_head" not in resolve_targets(["all-linear"], skeleton)
    assert set(resolve_targets(["all-linear"], skeleton)) == set(DEFAULT_TARGETS[arch])


def test_a_target_that_matches_nothing_lists_the_modules_that_exist(tiny_model_dirs):
    skeleton = model_skeleton(str(tiny_model_dirs["bloom"]))
    with pytest.raises(UsageError, match="q_proj: no linear module of this bloom model.*dense_h_to_4h.*query_key_value"):
        resolve_targets(["q_proj"], skeleton)
    assert resolve_targets(["self_attention.dense,mlp.dense_4h_to_h"], skeleton) == ["self_attention.dense", "mlp.dense_4h_to_h"]


def test_planned_trainable_parameters_equal_what_peft_trains(bases_without_markers, arch):
    from transformers import AutoModelForCausalLM

    from yayi_cli.models.tokenizers import load_tokenizer
    from yayi_cli.models.weights import fit_embeddings

    base = str(bases_without_markers[arch])
    options = TrainOptions(data=["d"], model=base, output="o", lora=True, lora_r=4, cpu=True)
    plan = plan_adapter(options, stage=2, offload="none", gpus_per_node=2, num_nodes=1)
    assert plan.new_tokens == 4
    options.lora_targets = plan.targets
    tokenizer = load_tokenizer(base)
    before = len(tokenizer)
    add_markers(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(base)
    fit_embeddings(model, len(tokenizer))
    trained = attach_adapter(model, options, list(range(before, len(tokenizer))))
    assert trained.get_nb_trainable_parameters()[0] == plan.memory.trainable_parameters


def test_the_memory_estimate_counts_the_frozen_base_at_its_bits(tiny_model_dirs):
    model = str(tiny_model_dirs["llama"])
    estimate = {}
    for method in ("lora", "qlora"):
        options = TrainOptions(data=["d"], model=model, output="o", precision="bf16", **{method: True})
        estimate[method] = plan_adapter(options, stage=2, offload="none", gpus_per_node=1, num_nodes=1).memory
    total, trainable = estimate["lora"].parameters, estimate["lora"].trainable_parameters
    states = 4 * trainable + 16 * trainable  # DeepSpeed's ZeRO-2 formula, one rank: 16-bit weights and grads, fp32 copies + Adam
    assert estimate["lora"].gpu_bytes_per_rank == int(2 * total) + states
    assert states < estimate["qlora"].gpu_bytes_per_rank < estimate["lora"].gpu_bytes_per_rank
    assert "NF4" in estimate["qlora"].covers


def dry_run(*arguments: str) -> CliRunner:
    return CliRunner().invoke(app, ["train", "--dry-run", "--cpu", "--gpus", "2", "--data", str(SAMPLE_DATA), *arguments])


def test_a_dry_run_shows_trainable_and_total_parameters_and_the_resolved_targets(bases_without_markers, tmp_path):
    result = dry_run("--lora", "--lora-targets", "all-linear", "--model", str(bases_without_markers["llama"]),
                     "-o", str(tmp_path / "run"), "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert 0 < plan["memory"]["trainable_parameters"] < plan["memory"]["parameters"]
    options = plan["run"]["options"]
    assert options["lora"] and options["lr"] == ADAPTER_LR and len(options["lora_targets"]) == 7
    assert not (tmp_path / "run").exists()


def refused(arguments: list[str], message: str, output: Path) -> None:
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("[20")]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert not output.exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--lora", "--qlora"], "give --lora or --qlora, not both"),
    (["--lora", "--lora-r", "0"], "--lora-r must be at least 1"),
    (["--lora", "--lora-targets", "q_proj,wq"], "--lora-targets wq: no linear module of this llama model"),
    (["--lora", "--lora-targets", "lm_head"], "marker token(s) added to this tokenizer"),
    (["--lora", "--zero", "3"], "--lora cannot run at ZeRO-3"),
    (["--qlora", "--zero", "3"], "--qlora cannot run at ZeRO-3"),
])
def test_bad_adapter_runs_are_refused_before_launch_in_one_line(bases_without_markers, tmp_path, extra, message):
    output = tmp_path / "run"
    refused(["train", "--cpu", "--data", str(SAMPLE_DATA), "--model", str(bases_without_markers["llama"]),
             "-o", str(output), *extra], message, output)


def test_qlora_without_bitsandbytes_is_refused(monkeypatch, tiny_model_dirs, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    output = tmp_path / "run"
    refused(["train", "--cpu", "--qlora", "--data", str(SAMPLE_DATA), "--model", str(tiny_model_dirs["llama"]),
             "-o", str(output)], "--qlora needs bitsandbytes", output)
