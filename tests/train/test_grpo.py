"""`yayi train --method grpo`: what is refused before launch, and real runs on 2 CPU ranks.

The runs start from a tiny Llama taught to answer either label to every review, so its answers are right about
half the time and each group of sampled answers holds right and wrong ones. (Whether such a tiny model learns to
pick the label from the review depends on its random start: one learned it to 1.0 on held-out reviews in 60
steps, others plateaued or stayed at 0.5; so these tests check what the run does, not how far it learns.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.helpers import ctrl_c_after_two_checkpoints, finished, metric_events, teach, write_jsonl, yayi_train
from yayi_cli.cli.app import app
from yayi_cli.train.checkpoints import latest_complete_checkpoint


THINGS, HELD_OUT = ["质量", "物流", "包装", "客服", "价格", "颜色", "味道", "做工"], ["服务", "速度", "外观", "手感"]
LABELS = "label:正面,负面"
MAX_COMPLETION = 8


def review(thing: str, good: bool) -> dict:
    return {"prompt": f"评论：{thing}{'好' if good else '差'}\n情感：", "label": "正面" if good else "负面"}


def prompts(tmp_path: Path, things: list[str], name: str) -> Path:
    return write_jsonl(tmp_path / name, [review(thing, good) for thing in things for good in (True, False)])


def plan(*args: str):
    """`yayi train --dry-run`: every check before launch, nothing started or written."""
    return CliRunner().invoke(app, ["train", "--dry-run", "--cpu", "--gpus", "2", "--method", "grpo", *args])


def one_line(result, code: int, *fragments: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


@pytest.fixture
def usual(tiny_model_dirs, tmp_path) -> list[str]:
    return ["--data", str(prompts(tmp_path, THINGS, "prompts.jsonl")), "--model", str(tiny_model_dirs["llama"]),
            "-o", str(tmp_path / "out"), "--num-generations", "4", "--micro-batch-size", "2"]


# --- refused before launch ------------------------------------------------------------------------


def test_a_plan_with_a_label_reward_passes_its_checks(usual):
    result = plan(*usual, "--reward", LABELS, "--json")
    assert result.exit_code == 0, result.output
    options = json.loads(result.stdout)["run"]["options"]
    assert (options["method"], options["reward"], options["beta"], options["grpo_loss"]) == ("grpo", [LABELS], 0.0, "dapo")


@pytest.mark.parametrize(("extra", "fragments"), [
    ([], ("--method grpo needs at least one --reward",)),
    (["--reward", "exact"], ("exact compares with each record's 'answer' field", "their fields: label")),
    (["--reward", "missing.py:check"], ("no such file missing.py",)),
    (["--reward", LABELS, "--num-generations", "3"], ("make it a multiple of --num-generations", "global batch is 4")),
    (["--reward", LABELS, "--test-size", "2"], ("does not evaluate during training", "yayi eval --task reward")),
    (["--reward", LABELS, "--use-vllm"], ("--use-vllm needs GPUs",)),
])
def test_what_grpo_cannot_run_is_one_line_before_launch(usual, extra, fragments):
    one_line(plan(*usual, *extra), 2, *fragments)


def test_grpo_options_with_another_method_are_refused(tiny_model_dirs, tmp_path):
    result = CliRunner().invoke(app, ["train", "--dry-run", "--cpu", "--data", str(prompts(tmp_path, THINGS, "p.jsonl")),
                                      "--model", str(tiny_model_dirs["llama"]), "-o", str(tmp_path / "o"), "--reward", "format"])
    one_line(result, 2, "--reward applies to --method grpo, not sft")


def test_a_prompt_record_with_an_answer_is_refused_at_its_line(usual, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [review("质量", True), {"instruction": "q", "output": "a", "label": "x"}])
    usual[1] = str(bad)
    one_line(plan(*usual, "--reward", LABELS), 1, f"--data: {bad}:2: a prompt record", "holds no answer ('output')")


def test_a_reward_function_that_asks_for_a_missing_field_is_refused(usual, tmp_path):
    rewards = tmp_path / "rewards.py"
    rewards.write_text("def check(completions, category):\n    return [0.0] * len(completions)\n", encoding="utf-8")
    one_line(plan(*usual, "--reward", f"{rewards}:check"), 2, "takes 'category', which the prompt records lack")


# --- a real run ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def either_label(tiny_model_dirs, tmp_path_factory) -> Path:
    """The tiny Llama taught both labels for every training review: right about half the time."""
    directory = Path(shutil.copytree(tiny_model_dirs["llama"], tmp_path_factory.mktemp("grpo") / "either"))
    teach(directory, None, [(review(thing, good)["prompt"], label) for thing in THINGS for good in (True, False)
                            for label in ("正面", "负面")], steps=192)
    return directory


def reward_on_held_out(model: Path, held_out: Path) -> dict:
    result = CliRunner().invoke(app, ["eval", "--model", str(model), "--data", str(held_out), "--task", "reward",
                                      "--reward", LABELS, "--max-new-tokens", str(MAX_COMPLETION), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["metrics"]


def grpo_run(model: Path, data: Path, output: Path, *extra: str) -> Any:
    """`yayi train --method grpo` with the label reward on 2 CPU ranks: 8 answers per prompt, one prompt per rank a step."""
    return yayi_train("--method", "grpo", "--data", str(data), "--model", str(model), "--output", str(output),
                      "--reward", LABELS, "--num-generations", "8", "--micro-batch-size", "8",
                      "--max-completion-length", str(MAX_COMPLETION), *extra)


@pytest.mark.launch
def test_grpo_runs_on_two_ranks_answers_end_at_the_end_marker_and_a_run_resumes(either_label, tmp_path):
    """Stopped with Ctrl-C after two checkpoints and resumed: the run finishes, its answers stopped at <|End|> well
    before the length limit, its console and metrics.jsonl carry the reward, and `yayi eval --task reward` scores it."""
    data, held_out = prompts(tmp_path, THINGS, "prompts.jsonl"), prompts(tmp_path, HELD_OUT, "held-out.jsonl")
    assert reward_on_held_out(either_label, held_out)["ended"] == 1.0
    output = tmp_path / "out"
    settings = ("--lr", "3e-3", "--save-steps", "4", "--logging-steps", "2")
    log = ctrl_c_after_two_checkpoints(grpo_run(either_label, data, output, *settings, "--max-steps", "100000"), output)
    assert "2 rank(s)" in log and "reward=" in log and "answer_len=" in log
    # the newest complete checkpoint: the second one may have been cut short by Ctrl-C, and is then skipped
    step = int(latest_complete_checkpoint(output, []).name.split("-")[1])
    finished(grpo_run(either_label, data, output, *settings, "--max-steps", str(step + 4), "--resume", "auto"))
    assert metric_events(output, "begin")[-1]["step"] == step  # the second launch went on from that checkpoint
    events = metric_events(output, "log")
    assert events[-1]["step"] == step + 4 and all("rewards/label/mean" in event for event in events)  # named after the reward
    # the answers ended at <|End|> (the label and the marker: about 3 tokens), not at the 8-token limit
    assert all(event["completions/mean_length"] < MAX_COMPLETION / 2 for event in events)
    assert all(event["completions/clipped_ratio"] < 0.5 for event in events)
    summary = json.loads((output / "train_summary.json").read_text(encoding="utf-8"))
    assert summary["method"] == "grpo" and summary["reward"]["last"]["reward"] == events[-1]["reward"]
    assert reward_on_held_out(output, held_out)["ended"] == 1.0


@pytest.mark.launch
def test_grpo_with_lora_saves_an_adapter_that_eval_scores(either_label, tmp_path):
    output = tmp_path / "out"
    finished(grpo_run(either_label, prompts(tmp_path, THINGS, "prompts.jsonl"), output, "--lora", "--max-steps", "4",
                      "--logging-steps", "2", "--lr", "5e-3", "--save-steps", "4"))
    assert (output / "adapter_config.json").is_file() and metric_events(output, "log")[-1]["step"] == 4
    assert reward_on_held_out(output, prompts(tmp_path, HELD_OUT, "held-out.jsonl"))["ended"] == 1.0


@pytest.mark.launch
def test_a_reward_that_fails_mid_run_stops_it_naming_the_line_and_the_checkpoint_stays(either_label, tmp_path):
    rewards = tmp_path / "rewards.py"
    rewards.write_text("calls = 0\n\ndef flaky(completions, label):\n    global calls\n    calls += 1\n"
                       "    if calls > 4:\n        raise KeyError(label[0])\n    return [0.0] * len(completions)\n",
                       encoding="utf-8")
    output = tmp_path / "out"
    process = yayi_train("--method", "grpo", "--data", str(prompts(tmp_path, THINGS, "p.jsonl")), "--model",
                         str(either_label), "--output", str(output), "--reward", f"{rewards}:flaky", "--num-generations",
                         "4", "--micro-batch-size", "2", "--max-completion-length", "4", "--max-steps", "10",
                         "--save-steps", "2", "--logging-steps", "1")
    log = finished(process, status=1)
    assert f"{rewards}:7: reward flaky raised KeyError" in log and "Traceback" not in log
    assert latest_complete_checkpoint(output, []) is not None
