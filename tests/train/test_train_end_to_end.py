"""`yayi train` for real: the deepspeed launcher, 2 CPU ranks (gloo), a tiny model built offline.

The first DeepSpeed run on a machine JIT-builds a CPU communication op (about 2 minutes, then
cached under ~/.cache/torch_extensions); each run after that takes some 30 seconds.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import (
    LAUNCH_SECONDS,
    RECORDS,
    OutputReader,
    ctrl_c_after_two_checkpoints,
    finished,
    processes_mentioning,
    wait_until,
    yayi_train,
)
from yayi_cli.core.prompt import HUMAN, Conversation, PromptTokenizer, Turn, resolve_template
from yayi_cli.models.inference import generate_answers
from yayi_cli.models.tokenizers import load_tokenizer
from yayi_cli.models.weights import load_model
from yayi_cli.serve.template_install import format_problems
from yayi_cli.train.checkpoints import latest_complete_checkpoint


pytestmark = pytest.mark.launch

def test_two_ranks_with_zero2_learn_the_data_and_save_a_model_that_answers(finished_run):
    output = finished_run.output
    summary = json.loads((output / "train_summary.json").read_text(encoding="utf-8"))
    losses = [entry["loss"] for entry in summary["loss_history"]]
    assert losses[-1] < losses[0] / 10
    assert summary["examples"]["train"]["kept"] == 8
    run = json.loads((output / "run.json").read_text(encoding="utf-8"))
    assert run["world_size"] == 2 and run["global_batch_size"] == 4
    assert json.loads((output / "ds_config.json").read_text(encoding="utf-8"))["zero_optimization"]["stage"] == 2

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(output).num_parameters() > 0
    model = load_model(str(output), device="cpu")
    template, source = resolve_template(None, str(output))
    assert source == "saved with the model"
    prompts = PromptTokenizer(template, load_tokenizer(str(output)))
    assert format_problems(output, prompts.tokenizer, template) == []  # apply_chat_template gives the core's text
    questions = [Conversation((Turn(HUMAN, record["instruction"]),)) for record in RECORDS]
    assert generate_answers(model, prompts, questions, max_new_tokens=40) == [r["output"] for r in RECORDS]


def test_ctrl_c_stops_every_rank_and_the_run_resumes_from_its_last_checkpoint(tiny_model_dirs, small_data, tmp_path):
    output = tmp_path / "run"
    common = ["--data", str(small_data), "--model", str(tiny_model_dirs["llama"]), "-o", str(output),
              "--micro-batch-size", "1", "--save-steps", "2", "--save-total-limit", "2"]
    process = yayi_train(*common, "--max-steps", "100000")
    output_text = ctrl_c_after_two_checkpoints(process, output)
    assert process.returncode == 130
    assert "interrupted: all ranks stopped;" in output_text and "Traceback" not in output_text
    assert processes_mentioning(str(output / "run.json")) == []

    last = latest_complete_checkpoint(output, [])
    step = int(last.name.split("-")[1])
    finished(yayi_train(*common, "--resume", "auto", "--max-steps", str(step + 2)))
    run = json.loads((output / "run.json").read_text(encoding="utf-8"))
    assert run["resume_from"] == str(last.resolve())
    state = json.loads((output / f"checkpoint-{step + 2}" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == step + 2
    assert (output / "model.safetensors").is_file()


QUIET = ["--max-steps", "100000", "--save-steps", "100000", "--micro-batch-size", "1"]
"""A run that goes on for longer than any test and, with --logging-steps 100000, prints nothing after
its first step: a rank that only ended when a print failed would stay."""


def ranks_of(output: Path) -> set[int]:
    """The run's rank processes: the launcher gives each its --local_rank."""
    return set(processes_mentioning(str(output / "run.json"))) & set(processes_mentioning("--local_rank="))


def first_step(process: subprocess.Popen, output: Path) -> OutputReader:
    """Wait until both ranks have trained a step (the first rank logs step 1 whatever --logging-steps says)."""
    reader = OutputReader(process.stdout)
    reader.wait_for(lambda line: line.startswith("step=1/"), timeout=LAUNCH_SECONDS)
    assert len(ranks_of(output)) == 2
    return reader


def test_killing_yayi_outright_leaves_no_rank_running(tiny_model_dirs, small_data, tmp_path):
    """SIGKILL gives yayi no chance to stop anything: the launcher and the ranks end on their own."""
    output = tmp_path / "run"
    process = yayi_train("--data", str(small_data), "--model", str(tiny_model_dirs["llama"]), "-o", str(output),
                         *QUIET, "--logging-steps", "100000")
    first_step(process, output)
    process.kill()
    process.wait()
    wait_until(lambda: processes_mentioning(str(output)) == [], 30,
               lambda: f"still running: {processes_mentioning(str(output))}")


def test_an_error_in_yayi_while_the_ranks_run_is_one_error_line_and_stops_every_rank(tiny_model_dirs, small_data,
                                                                                    tmp_path):
    """train.log reaches the file size limit (set on yayi alone, mid-run: ranks write on), as a full disk would."""
    import resource

    output = tmp_path / "run"
    process = yayi_train("--data", str(small_data), "--model", str(tiny_model_dirs["llama"]), "-o", str(output),
                         *QUIET, "--logging-steps", "1")
    reader = first_step(process, output)
    log = output / "train.log"
    _, hard = resource.prlimit(process.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (log.stat().st_size, hard))
    assert process.wait(timeout=60) == 2, reader.text()[-3000:]
    assert reader.ended.wait(timeout=30)
    lines = [line for line in reader.text().splitlines() if line.strip()]
    assert "Traceback" not in reader.text()
    assert lines[-1] == f"error: cannot write {log}: File too large; stopped the run, whose output could not be kept"
    wait_until(lambda: processes_mentioning(str(output)) == [], 10,
               lambda: f"still running: {processes_mentioning(str(output))}")
