"""`yayi train --method dpo|kto` refuses what cannot train before anything is launched or written."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.helpers import PAIRS, REPO, SAMPLE_DATA, write_jsonl
from yayi_cli.cli.app import app
from yayi_cli.runtime.errors import UsageError
from yayi_cli.train.options import TrainOptions


def train(*args: str):
    return CliRunner().invoke(app, ["train", "--cpu", "--gpus", "2", *args])


def one_error_line(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_dpo_on_sft_records_says_what_dpo_needs(tiny_model_dirs, tmp_path):
    output = tmp_path / "out"
    result = train("--method", "dpo", "--data", str(SAMPLE_DATA), "--model", str(tiny_model_dirs["llama"]), "-o", str(output))
    one_error_line(result, 2, "--data holds SFT records", "add 'chosen' and 'rejected'")
    assert not output.exists()


def test_sft_on_preference_pairs_points_to_dpo(tiny_model_dirs, pairs_file, tmp_path):
    result = train("--data", str(pairs_file), "--model", str(tiny_model_dirs["llama"]), "-o", str(tmp_path / "out"))
    one_error_line(result, 2, "preference pairs", "--method dpo")


def test_dpo_on_unpaired_feedback_points_to_kto(tiny_model_dirs, tmp_path):
    result = train("--method", "dpo", "--data", str(REPO / "examples" / "feedback.jsonl"), "--model",
                   str(tiny_model_dirs["llama"]), "-o", str(tmp_path / "out"))
    one_error_line(result, 2, "unpaired", "--method kto")


@pytest.mark.parametrize(("beta", "message"), [("0", "--beta must be above 0 with --method dpo"),
                                               ("-0.1", "--beta must be at least 0")])
def test_beta_must_be_above_zero(tiny_model_dirs, pairs_file, tmp_path, beta, message):
    result = train("--method", "dpo", "--beta", beta, "--data", str(pairs_file), "--model", str(tiny_model_dirs["llama"]),
                   "-o", str(tmp_path / "out"))
    one_error_line(result, 2, message)


def test_a_preference_file_with_one_bad_line_is_invalid_data_and_nothing_is_written(tiny_model_dirs, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [*PAIRS, {"instruction": "q", "chosen": "same", "rejected": "same"}])
    output = tmp_path / "out"
    result = train("--method", "dpo", "--data", str(pairs), "--model", str(tiny_model_dirs["llama"]), "-o", str(output))
    one_error_line(result, 1, f"{pairs}:{len(PAIRS) + 1}", "same answer", "yayi data validate")
    assert not output.exists()


def test_kto_takes_pairs_as_good_and_bad_answers_and_says_so(tiny_model_dirs, pairs_file, tmp_path):
    result = train("--method", "kto", "--dry-run", "--json", "--data", str(pairs_file), "--model", str(tiny_model_dirs["llama"]),
                   "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert any("each pair of --data trains as its chosen answer (good)" in warning for warning in plan["warnings"])
    assert plan["run"]["options"]["method"] == "kto" and plan["run"]["options"]["beta"] == 0.1


@pytest.mark.parametrize(("chosen", "message"), [
    ({"method": "sft", "beta": 0.2}, "--beta applies to --method dpo, kto and grpo, not sft"),
    ({"method": "kto", "dpo_loss": "ipo"}, "--dpo-loss applies to --method dpo, not kto"),
    ({"method": "sft", "precompute_ref": True}, "--precompute-ref applies to --method dpo and kto"),
    ({"method": "dpo", "packing": True}, "--packing applies to --method sft"),
    ({"method": "kto", "micro_batch_size": 1}, "--method kto needs --micro-batch-size 2 or more"),
])
def test_options_of_another_method_or_combinations_trl_cannot_run_are_refused(chosen, message):
    with pytest.raises(UsageError, match=message):
        TrainOptions(data=["d.jsonl"], model="m", output="out", **chosen)


def test_a_dry_run_shows_the_method_settings_and_the_reference_in_the_memory(tiny_model_dirs, pairs_file, tmp_path):
    common = ["--dry-run", "--json", "--data", str(pairs_file), "--model", str(tiny_model_dirs["llama"]), "-o", str(tmp_path / "o")]
    dpo = json.loads(train("--method", "dpo", "--dpo-loss", "sigmoid_norm", "--sft-weight", "0.5", *common).stdout)
    assert dpo["run"]["options"] | {"method": "dpo", "dpo_loss": "sigmoid_norm", "sft_weight": 0.5} == dpo["run"]["options"]
    assert "frozen reference copy (32-bit)" in dpo["memory"]["covers"]
    precomputed = json.loads(train("--method", "dpo", "--precompute-ref", *common).stdout)
    assert "reference" not in precomputed["memory"]["covers"]
    lora = json.loads(train("--method", "dpo", "--lora", *common).stdout)
    assert "the reference is the base with the adapter disabled (no copy)" in lora["memory"]["covers"]


@pytest.mark.parametrize(("stage", "ranks", "precision", "per_rank"), [(2, 4, "bf16", 2_000), (3, 4, "bf16", 500),
                                                                      (2, 2, "fp32", 4_000)])
def test_the_reference_copy_costs_its_weights_on_every_rank_or_a_share_at_zero_3(stage, ranks, precision, per_rank):
    from yayi_cli.train.memory import MemoryEstimate
    from yayi_cli.train.plan import with_reference

    memory = MemoryEstimate(1_000, 10, 50_000, 0)
    options = TrainOptions(data=["d"], model="m", output="o", method="dpo", precision=precision)
    assert with_reference(memory, options, stage, ranks).gpu_bytes_per_rank == 50_000 + per_rank
    precomputed = TrainOptions(data=["d"], model="m", output="o", method="dpo", precompute_ref=True)
    assert with_reference(memory, precomputed, stage, ranks) == memory


def test_lora_preference_runs_on_a_model_without_the_markers_are_refused_with_the_way_out(without_markers, pairs_file, tmp_path):
    result = train("--method", "dpo", "--lora", "--dry-run", "--data", str(pairs_file), "--model", str(without_markers),
                   "-o", str(tmp_path / "out"))
    one_error_line(result, 2, "the YaYi markers are new", "merge the SFT adapter first")


def test_an_adapter_as_model_needs_lora_to_train_on_from_it(tiny_model_dirs, pairs_file, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = tmp_path / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model_dirs["llama"]).save_pretrained(adapter)
    common = ["--method", "dpo", "--dry-run", "--json", "--data", str(pairs_file), "--model", str(adapter), "-o", str(tmp_path / "o")]
    one_error_line(train(*[arg for arg in common if arg != "--json"]), 2, "is a LoRA adapter: add --lora")
    plan = json.loads(train(*common, "--lora").stdout)
    assert plan["run"]["options"]["lora_r"] == 4 and plan["run"]["options"]["lora_targets"] == ["q_proj"]
    assert any("training goes on from its weights" in warning for warning in plan["warnings"])
