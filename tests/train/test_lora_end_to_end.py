"""`yayi train --lora/--qlora` for real: the deepspeed launcher with 2 CPU ranks (gloo), PEFT, tiny models
whose tokenizers lack the YaYi markers (so training adds them and their rows must train), then every
command that takes the adapter: plain peft + transformers, `yayi chat`, `yayi merge`.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import RECORDS, base_without_markers, chat, finished, yayi, yayi_train
from yayi_cli.core.prompt import MARKERS


pytestmark = pytest.mark.launch

MERGE_TOLERANCE = 1e-4
"""Largest logit difference allowed between base + adapter and the merged model (fp32 on the CPU:
W + s*B@A once versus W x and s*B(A x) apart differ only by rounding, about 1e-6 here)."""


def test_lora_trains_only_the_adapter_and_the_new_marker_rows_and_every_command_loads_it(small_data, tmp_path):
    import torch
    from peft import AutoPeftModelForCausalLM
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = base_without_markers(tmp_path / "base", "llama", sharpness=30)
    output = tmp_path / "adapter"
    finished(yayi_train("--lora", "--data", str(small_data), "--model", str(base), "-o", str(output),
                        "--micro-batch-size", "2", "--epochs", "40", "--lr", "1e-2", "--lora-dropout", "0", "--max-length", "512",
                        "--logging-steps", "5", "--save-steps", "1000", "--packing"))
    summary = json.loads((output / "train_summary.json").read_text(encoding="utf-8"))
    losses = [entry["loss"] for entry in summary["loss_history"]]
    assert summary["adapter"] == "lora" and losses[-1] < losses[0] / 10, losses
    assert not (output / "model.safetensors").exists() and (output / "yayi_template.json").is_file()
    config = json.loads((output / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["base_model_name_or_path"] == str(base)  # the base itself, not a path of the worker's
    assert config["trainable_token_indices"]

    # Only adapter weights and the new markers' rows were trained and saved; the base's own rows are untouched.
    with safe_open(output / "adapter_model.safetensors", "pt") as saved:
        assert all("lora_" in key or "trainable_tokens" in key for key in saved.keys())
    original = AutoModelForCausalLM.from_pretrained(base)
    adapter = AutoPeftModelForCausalLM.from_pretrained(output)  # plain peft + transformers
    tokenizer = AutoTokenizer.from_pretrained(output)
    vocabulary = original.get_input_embeddings().num_embeddings
    assert len(tokenizer) == vocabulary + len(MARKERS)
    merged_in_memory = adapter.merge_and_unload()
    targets = set(config["target_modules"])
    for name, before in original.state_dict().items():
        after = merged_in_memory.state_dict()[name]
        if name.rsplit(".", 2)[-2] in targets:
            assert not torch.equal(after, before), name
        else:
            assert torch.equal(after[: before.shape[0]], before), name

    # yayi chat takes the adapter directory, answers a training question to the letter and stops at <|End|>.
    question, answer = RECORDS[0]["instruction"], RECORDS[0]["output"]
    assert chat(output, question) == answer
    result = yayi("chat", "--model", str(output), "--jsonl", "--greedy",
                  input=json.dumps({"prompt": question}, ensure_ascii=False) + "\n")
    assert json.loads(result.stdout)["stop_reason"] == "end"

    # yayi merge: a plain model with the adapter's logits, which answers the same.
    merged = tmp_path / "merged"
    result = yayi("merge", str(output), "-o", str(merged))
    assert result.exit_code == 0, result.output
    assert not (merged / "adapter_config.json").exists()
    from yayi_cli.models.weights import load_model

    ids = torch.tensor([tokenizer(question + "<|End|>")["input_ids"]])
    with torch.no_grad():
        expected = load_model(str(output), device="cpu")(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged)(input_ids=ids).logits
    assert (expected - got).abs().max().item() < MERGE_TOLERANCE
    assert chat(merged, question) == answer


def test_qlora_trains_a_4bit_base_on_the_cpu_resumes_and_merges_into_the_16bit_base(small_data, tmp_path):
    base = base_without_markers(tmp_path / "base", "bloom")
    output = tmp_path / "adapter"
    common = ["--qlora", "--data", str(small_data), "--model", str(base), "-o", str(output), "--micro-batch-size", "2",
              "--logging-steps", "1", "--save-steps", "2", "--gradient-checkpointing", "--packing"]
    finished(yayi_train(*common, "--max-steps", "2"))
    refused = finished(yayi_train(*common, "--max-steps", "4", "--resume", "auto", "--seed", "7"), status=2)
    assert "seed 515 -> 7" in refused
    log = finished(yayi_train(*common, "--max-steps", "4", "--resume", "auto"))
    assert "qlora on query_key_value, dense, dense_h_to_4h, dense_4h_to_h" in log
    run = json.loads((output / "run.json").read_text(encoding="utf-8"))
    assert run["resume_from"].endswith("checkpoint-2")
    # Each checkpoint holds the record of the launch that saved it, which names the checkpoint it resumed.
    saved_by = {step: json.loads((output / f"checkpoint-{step}" / "run.json").read_text(encoding="utf-8")) for step in (2, 4)}
    assert (saved_by[2]["launch"], saved_by[2]["resume_from"]) == (1, None) and saved_by[4] == run
    assert sorted(path.name for path in (output / "runs").iterdir()) == ["run-1.json", "run-2.json"]  # none refused
    summary = json.loads((output / "train_summary.json").read_text(encoding="utf-8"))
    assert summary["adapter"] == "qlora" and summary["loss_history"][-1]["step"] == 4
    result = yayi("merge", str(output), "-o", str(tmp_path / "merged"), "--json")
    assert result.exit_code == 0, result.output
    assert "merged into the 16-bit base" in json.loads(result.stdout)["notes"][0]
    # yayi chat loads the trained adapter on the 16-bit base, as merge does: the merged model's logits and answer.
    import torch
    from transformers import AutoModelForCausalLM

    from yayi_cli.models.tokenizers import load_tokenizer
    from yayi_cli.models.weights import load_model

    question = RECORDS[0]["instruction"]
    ids = torch.tensor([load_tokenizer(str(output))(question)["input_ids"]])
    with torch.no_grad():
        loaded = load_model(str(output), device="cpu")(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(input_ids=ids).logits
        untrained = AutoModelForCausalLM.from_pretrained(base)(input_ids=ids).logits
    assert (loaded - merged).abs().max().item() < MERGE_TOLERANCE
    assert not torch.allclose(loaded[..., : untrained.shape[-1]], untrained)  # the adapter is on, not the base alone
    answer = chat(output, question, "--max-new-tokens", "4")
    assert answer and answer == chat(tmp_path / "merged", question, "--max-new-tokens", "4")
