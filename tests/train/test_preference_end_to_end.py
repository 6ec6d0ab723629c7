"""`yayi train --method dpo|kto` for real: the deepspeed launcher, CPU ranks (gloo), TRL's trainers, tiny models.

Each run teaches pairs whose chosen and rejected answers differ clearly (tests.helpers.PAIRS).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from tests.helpers import (
    PAIRS,
    REPO,
    base_without_markers,
    chat,
    ctrl_c_after_two_checkpoints,
    files,
    finished,
    make_random_lora,
    metric_events,
    processes_mentioning,
    write_jsonl,
    yayi,
    yayi_train,
)
from yayi_cli.train.checkpoints import latest_complete_checkpoint


pytestmark = pytest.mark.launch

LOG_2 = math.log(2)
"""DPO's loss while policy and reference are the same model: -log sigmoid(0)."""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """PAIRS twice over: enough steps per epoch for the tiny model to learn them."""
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", PAIRS * 2)


def test_dpo_on_two_ranks_starts_at_log_2_and_learns_to_prefer_the_chosen_answers(tiny_model_dirs, pairs, tmp_path):
    output = tmp_path / "dpo"
    shared_before = set(Path("/dev/shm").glob("deepspeed_*"))
    console = finished(yayi_train("--method", "dpo", "--data", str(pairs), "--model", str(tiny_model_dirs["llama"]),
                                  "-o", str(output), "--zero", "2", "--micro-batch-size", "2", "--max-steps", "30",
                                  "--lr", "1e-3", "--logging-steps", "5", "--save-steps", "1000"))
    assert set(Path("/dev/shm").glob("deepspeed_*")) <= shared_before  # the ranks' 66 MB buffers went with them
    logs = metric_events(output, "log")
    assert logs[0]["loss"] == pytest.approx(LOG_2, abs=1e-3) and logs[0]["rewards/accuracies"] == 0.0
    for event in logs:  # the preference metrics at every logging step, on the console too
        assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"} <= set(event)
    assert "reward_acc=" in console and "margin=" in console
    summary = json.loads((output / "train_summary.json").read_text(encoding="utf-8"))
    assert summary["method"] == "dpo" and summary["preference"]["first"]["rewards/margins"] == 0.0
    assert summary["preference"]["last"]["rewards/accuracies"] >= 0.9
    assert "the reference is a frozen copy of the starting model" in (output / "train.log").read_text(encoding="utf-8")
    assert json.loads((output / "run.json").read_text(encoding="utf-8"))["options"]["beta"] == 0.1
    # Held-out scoring agrees: against the model it started from (run.json's), the chosen answers now win.
    before = evaluate(tiny_model_dirs["llama"], pairs, "--reference", str(tiny_model_dirs["llama"]))
    after = evaluate(output, pairs)
    assert before["pref_acc"] == 0.0 and before["margin"] == 0.0  # one model against itself prefers nothing
    assert after["pref_acc"] >= 0.9 and after["margin"] > 0


def evaluate(model: Path, data: Path, *extra: str) -> dict:
    """`yayi eval --task preference --json`'s metrics."""
    result = yayi("eval", "--task", "preference", "--model", str(model), "--data", str(data), "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["metrics"]


def test_lora_dpo_with_an_sft_term_answers_with_the_chosen_text(pairs, tmp_path):
    from safetensors import safe_open

    base = base_without_markers(tmp_path / "base", "llama", sharpness=30, markers=True)
    output = tmp_path / "adapter"
    finished(yayi_train("--method", "dpo", "--sft-weight", "1", "--lora", "--lora-dropout", "0", "--data", str(pairs),
                        "--model", str(base), "-o", str(output), "--micro-batch-size", "2", "--epochs", "40", "--lr", "1e-2",
                        "--logging-steps", "10", "--save-steps", "1000"))
    with safe_open(output / "adapter_model.safetensors", "pt") as saved:
        assert all("lora_" in name for name in saved.keys())  # only adapter weights trained and were saved
    log = (output / "train.log").read_text(encoding="utf-8")
    assert "the reference is the base with the adapter disabled (no copy)" in log
    for pair in PAIRS[:2]:
        assert chat(output, pair["instruction"]) == pair["chosen"]


def test_precompute_ref_at_zero_3_holds_no_reference_saves_the_whole_model_and_resumes(tiny_model_dirs, pairs, tmp_path):
    output = tmp_path / "precomputed"
    common = ["--method", "dpo", "--precompute-ref", "--zero", "3", "--data", str(pairs), "--model",
              str(tiny_model_dirs["bloom"]), "-o", str(output), "--micro-batch-size", "2", "--lr", "1e-3",
              "--logging-steps", "1", "--save-steps", "2"]
    finished(yayi_train(*common, "--max-steps", "2"))
    assert metric_events(output, "log")[0]["loss"] == pytest.approx(LOG_2, abs=1e-3)
    assert "computed once before training (no reference model held)" in (output / "train.log").read_text(encoding="utf-8")
    summary = json.loads((output / "train_summary.json").read_text(encoding="utf-8"))
    original, saved = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["bloom"]), AutoModelForCausalLM.from_pretrained(output)
    assert summary["parameters"] == summary["trainable_parameters"] == saved.num_parameters()  # counted whole
    assert saved.num_parameters() == original.num_parameters()  # ZeRO-3 saved the whole model, not its placeholders
    for (name, before), (_, after) in zip(original.state_dict().items(), saved.state_dict().items()):
        assert after.shape == before.shape, name
    finished(yayi_train(*common, "--max-steps", "4", "--resume", "auto"))
    run = json.loads((output / "run.json").read_text(encoding="utf-8"))
    assert Path(run["resume_from"]).name == "checkpoint-2"
    steps = [event["step"] for event in metric_events(output, "log")]
    assert steps == [1, 2, 3, 4] and (output / "model.safetensors").is_file()


def test_dpo_scores_held_out_pairs_at_each_eval_stops_on_ctrl_c_and_resumes(tiny_model_dirs, pairs, tmp_path):
    output = tmp_path / "dpo"
    common = ["--method", "dpo", "--data", str(pairs), "--test-size", "2", "--model", str(tiny_model_dirs["llama"]),
              "-o", str(output), "--micro-batch-size", "1", "--logging-steps", "1", "--save-steps", "2",
              "--eval-steps", "2", "--save-total-limit", "2"]
    process = yayi_train(*common, "--max-steps", "100000")
    console = ctrl_c_after_two_checkpoints(process, output)
    assert process.returncode == 130
    assert "interrupted: all ranks stopped;" in console and "Traceback" not in console
    assert processes_mentioning(str(output / "run.json")) == []
    evals = metric_events(output, "eval")
    assert evals and all({"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"} <= set(event)
                         for event in evals)  # the held-out pairs' preference metrics, named as the training ones
    assert "eval step=2" in console and "reward_acc=" in console.split("eval step=2", 1)[1].splitlines()[0]

    last = latest_complete_checkpoint(output, [])
    finished(yayi_train(*common, "--resume", "auto", "--max-steps", str(int(last.name.split("-")[1]) + 2)))
    assert json.loads((output / "run.json").read_text(encoding="utf-8"))["resume_from"] == str(last.resolve())
    summary = json.loads((output / "train_summary.json").read_text(encoding="utf-8"))
    assert "eval_rewards/accuracies" in summary["metrics"] and set(summary["preference"]) == {"first", "last"}


def test_kto_at_zero_3_trains_on_unpaired_feedback_and_logs_its_kl_and_rewards(tiny_model_dirs, tmp_path):
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text((REPO / "examples" / "feedback.jsonl").read_text(encoding="utf-8") * 2, encoding="utf-8")
    output = tmp_path / "kto"
    finished(yayi_train("--method", "kto", "--zero", "3", "--data", str(feedback), "--model", str(tiny_model_dirs["llama"]),
                        "-o", str(output), "--micro-batch-size", "2", "--max-steps", "4", "--logging-steps", "1",
                        "--save-steps", "1000"))
    assert "the reference is a frozen copy of the starting model" in (output / "train.log").read_text(encoding="utf-8")
    logs = metric_events(output, "log")
    assert len(logs) == 4 and all({"kl", "rewards/chosen", "rewards/rejected"} <= set(event) for event in logs)
    assert all(math.isfinite(event["loss"]) for event in logs)


def test_dpo_from_an_sft_adapter_takes_it_as_the_reference_and_leaves_it_as_it_was(pairs, tmp_path):
    from yayi_cli.core.prompt import resolve_template

    base = base_without_markers(tmp_path / "base", "llama", sharpness=30, markers=True)
    sft = make_random_lora(base, tmp_path / "sft", resolve_template(None, str(base))[0])  # as an SFT run leaves one
    before = files(sft)
    output = tmp_path / "dpo"
    finished(yayi_train("--method", "dpo", "--lora", "--data", str(pairs), "--model", str(sft), "-o", str(output),
                        "--micro-batch-size", "2", "--max-steps", "4", "--lr", "1e-3", "--logging-steps", "1",
                        "--save-steps", "1000"))
    assert metric_events(output, "log")[0]["loss"] == pytest.approx(LOG_2, abs=1e-3)  # the SFT model is the reference
    assert files(sft) == before
    assert "the reference is a frozen copy of the starting adapter" in (output / "train.log").read_text(encoding="utf-8")
    adapter = json.loads((output / "adapter_config.json").read_text(encoding="utf-8"))
    assert Path(adapter["base_model_name_or_path"]) == base and not (output / "ref").exists()
    assert chat(output, PAIRS[0]["instruction"], "--max-new-tokens", "4")
