"""`yayi train --method dpo|kto` for real: the deepspeed launcher, CPU ranks (gloo), TRL's trainers, tiny models.

Each run teaches pairs whose chosen and rejected answers differ clearly (tests.helpers.PAIRS).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from tests.helpers import PAIRS, REPO, files, processes_mentioning
from tests.train.test_lora_end_to_end import base_without_markers, chat
from tests.train.test_train_end_to_end import ctrl_c_after_two_checkpoints, finished, yayi_train
from yayi_cli.cli import app
from yayi_cli.train.checkpoints import latest_complete_checkpoint

pytestmark = pytest.mark.slow

LOG_2 = math.log(2)
"""DPO's loss while policy and reference are the same model: -log sigmoid(0)."""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in PAIRS * 2), encoding="utf-8")
    return path


def events(output: Path, kind: str) -> list[dict]:
    lines = (output / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [event for event in map(json.loads, lines) if event["event"] == kind]


def test_dpo_on_two_ranks_starts_at_log_2_and_learns_to_prefer_the_chosen_answers(tiny_model_dirs, pairs, tmp_path):
    output = tmp_path / "dpo"
    shared_before = set(Path("/dev/shm").glob("deepspeed_*"))
    console = finished(yayi_train("--method", "dpo", "--data", str(pairs), "--model", str(tiny_model_dirs["llama"]),
                                  "-o", str(output), "--zero", "2", "--micro-batch-size", "2", "--max-steps", "30",
                                  "--lr", "1e-3", "--logging-steps", "5", "--save-steps", "1000"))
    assert set(Path("/dev/shm").glob("deepspeed_*")) <= shared_before  # the ranks' 66 MB buffers went with them
    logs = events(output, "log")
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
    result = CliRunner().invoke(app, ["eval", "--task", "preference", "--model", str(model), "--data", str(data),
                                      "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["metrics"]


def test_lora_dpo_with_an_sft_term_answers_with_the_chosen_text(pairs, tmp_path):
    from safetensors import safe_open

    base = base_without_markers(tmp_path / "base", "llama", sharpness=30, markers=True)
    output = tmp_path / "adapter"
    finished(yayi_train("--method", "dpo", "--sft-weight", "1", "--lora", "--lora-dropout", "0", "--data", str(pairs),
                        "--model", str(base), "-o", str(output), "--micro-batch-size", "2", "--epochs", "40", "--lr", "1e-2",
                        "--logging-steps", "10", "--save-steps", "1000"), timeout=1500)
    with safe_open(output / "adapter_model.safetensors", "pt") as saved:
        assert all("lora_" in name for name in saved.keys())  # only adapter weights trained and were saved
    log = (output / "train.log").read_text(encoding="utf-8")
    assert "the reference is the base with the adapter disabled (no copy)" in log
    for pair in PAIRS[:2]:
        assert chat(output, pair["instruction"]) == pair["chosen"]


def test_qlora_dpo_trains_an_adapter_on_a_4bit_base(tiny_model_dirs, pairs, tmp_path):
    output = tmp_path / "qlora"
    finished(yayi_train("--method", "dpo", "--qlora", "--gpus", "1", "--data", str(pairs), "--model",
                        str(tiny_model_dirs["llama"]), "-o", str(output), "--micro-batch-size", "2", "--max-steps", "2",
                        "--logging-steps", "1", "--save-steps", "1000"))
    assert events(output, "log")[0]["loss"] == pytest.approx(LOG_2, abs=1e-3)
    assert "the base with the adapter disabled (no copy)" in (output / "train.log").read_text(encoding="utf-8")
    assert (output / "adapter_model.safetensors").is_file()


def test_precompute_ref_at_zero_3_holds_no_reference_and_resumes(tiny_model_dirs, pairs, tmp_path):
    output = tmp_path / "precomputed"
    common = ["--method", "dpo", "--precompute-ref", "--zero", "3", "--data", str(pairs), "--model",
              str(tiny_model_dirs["bloom"]), "-o", str(output), "--micro-batch-size", "2", "--lr", "1e-3",
              "--logging-steps", "1", "--save-steps", "2"]
    finished(yayi_train(*common, "--max-steps", "2"))
    assert events(output, "log")[0]["loss"] == pytest.approx(LOG_2, abs=1e-3)
    assert "computed once before training (no reference model held)" in (output / "train.log").read_text(encoding="utf-8")
    summary = json.loads((output / "train_summary.json").read_text(encoding="utf-8"))
    saved = AutoModelForCausalLM.from_pretrained(output).num_parameters()
    assert summary["parameters"] == summary["trainable_parameters"] == saved  # counted whole, not as ZeRO-3's placeholders
    finished(yayi_train(*common, "--max-steps", "4", "--resume", "auto"))
    run = json.loads((output / "run.json").read_text(encoding="utf-8"))
    assert Path(run["resume_from"]).name == "checkpoint-2"
    steps = [event["step"] for event in events(output, "log")]
    assert steps == [1, 2, 3, 4] and (output / "model.safetensors").is_file()


def test_dpo_scores_held_out_pairs_at_each_eval_stops_on_ctrl_c_and_resumes(tiny_model_dirs, pairs, tmp_path):
    output = tmp_path / "dpo"
    common = ["--method", "dpo", "--data", str(pairs), "--test-size", "2", "--model", str(tiny_model_dirs["llama"]),
              "-o", str(output), "--micro-batch-size", "1", "--logging-steps", "1", "--save-steps", "2",
              "--eval-steps", "2", "--save-total-limit", "2"]
    process = yayi_train(*common, "--max-steps", "100000", start_new_session=True)
    console = ctrl_c_after_two_checkpoints(process, output, timeout=300)
    assert process.returncode == 130
    assert "interrupted: all ranks stopped;" in console and "Traceback" not in console
    assert processes_mentioning(str(output / "run.json")) == []
    evals = events(output, "eval")
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
    logs = events(output, "log")
    assert len(logs) == 4 and all({"kl", "rewards/chosen", "rewards/rejected"} <= set(event) for event in logs)
    assert all(math.isfinite(event["loss"]) for event in logs)


def test_dpo_from_an_sft_adapter_takes_it_as_the_reference_and_leaves_it_as_it_was(small_data, pairs, tmp_path):
    base = base_without_markers(tmp_path / "base", "llama", sharpness=30, markers=True)
    sft = tmp_path / "sft"
    finished(yayi_train("--lora", "--data", str(small_data), "--model", str(base), "-o", str(sft), "--micro-batch-size", "2",
                        "--max-steps", "10", "--lr", "1e-2", "--save-steps", "1000"))
    before = files(sft)
    output = tmp_path / "dpo"
    finished(yayi_train("--method", "dpo", "--lora", "--data", str(pairs), "--model", str(sft), "-o", str(output),
                        "--micro-batch-size", "2", "--max-steps", "4", "--lr", "1e-3", "--logging-steps", "1",
                        "--save-steps", "1000"))
    assert events(output, "log")[0]["loss"] == pytest.approx(LOG_2, abs=1e-3)  # the SFT model is the reference
    assert files(sft) == before
    assert "the reference is a frozen copy of the starting adapter" in (output / "train.log").read_text(encoding="utf-8")
    adapter = json.loads((output / "adapter_config.json").read_text(encoding="utf-8"))
    assert Path(adapter["base_model_name_or_path"]) == base and not (output / "ref").exists()
    assert chat(output, PAIRS[0]["instruction"], "--max-new-tokens", "4")


def test_the_logged_losses_are_the_dpo_formula_on_plain_transformers_log_probs(tiny_model_dirs, tmp_path):
    """Steps 1 and 2, computed here from plain transformers logits of the starting model (the reference, and
    the policy at step 1) and of checkpoint-1 (the policy at step 2): the mean over pairs of
    -log sigmoid(beta x ((pi_c - ref_c) - (pi_r - ref_r))), plus W x the mean negative log-prob of the
    chosen answers' tokens (--sft-weight W)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from yayi_cli.data.checked import load_records
    from yayi_cli.preference import encode_preferences
    from yayi_cli.prompt import PromptTokenizer, resolve_template

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in PAIRS), encoding="utf-8")
    model, output, beta, weight = tiny_model_dirs["bloom"], tmp_path / "run", 0.5, 0.7
    finished(yayi_train("--method", "dpo", "--beta", str(beta), "--sft-weight", str(weight), "--gpus", "1", "--data",
                        str(data), "--model", str(model), "-o", str(output), "--micro-batch-size", str(len(PAIRS)),
                        "--max-steps", "2", "--lr", "1e-2", "--logging-steps", "1", "--save-steps", "1"))
    template = resolve_template(None, str(model))[0]  # the template saved with the model, as the run took it
    encoded = encode_preferences(load_records([data]), PromptTokenizer(template, AutoTokenizer.from_pretrained(model)))

    def answer_token_log_probs(weights: Path) -> list[list[torch.Tensor]]:
        """Per pair: the log-prob of each token of the chosen answer, then of the rejected one."""
        lm = AutoModelForCausalLM.from_pretrained(weights).eval()
        pairs = []
        with torch.no_grad():
            for item in encoded:
                pair = []
                for answer in item.answer_ids:
                    ids = torch.tensor([item.prompt_ids + answer])
                    log_probs = lm(ids).logits[0, :-1].log_softmax(-1)
                    pair.append(log_probs[torch.arange(ids.shape[1] - 1), ids[0, 1:]][-len(answer):])
                pairs.append(pair)
        return pairs

    def loss(policy: list[list[torch.Tensor]], reference: list[list[torch.Tensor]]) -> float:
        pi_c, pi_r = torch.tensor([[chosen.sum(), rejected.sum()] for chosen, rejected in policy]).T
        ref_c, ref_r = torch.tensor([[chosen.sum(), rejected.sum()] for chosen, rejected in reference]).T
        dpo = -torch.nn.functional.logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))).mean()
        sft = -torch.cat([chosen for chosen, _ in policy]).mean()
        return (dpo + weight * sft).item()

    start = answer_token_log_probs(model)
    logged = events(output, "log")
    assert [event["step"] for event in logged] == [1, 2]
    assert logged[0]["loss"] == pytest.approx(loss(start, start), rel=1e-4)  # log 2 + W x the SFT loss
    assert logged[1]["loss"] == pytest.approx(loss(answer_token_log_probs(output / "checkpoint-1"), start), rel=1e-4)
