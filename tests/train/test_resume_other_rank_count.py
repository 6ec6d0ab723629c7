"""Resuming on another number of ranks: the ZeRO state is converted to a DeepSpeed universal checkpoint
and training continues from the same step with the optimizer's state (2 ranks -> 1 -> 2, CPU ranks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import finished, yayi_train

pytestmark = pytest.mark.launch


def adam_steps(checkpoint: Path) -> set[int]:
    """The step count AdamW keeps for each parameter group, from every rank's ZeRO shard."""
    import torch

    steps = set()
    for shard in checkpoint.glob("global_step*/zero_pp_rank_*_optim_states.pt"):
        state = torch.load(shard, map_location="cpu", weights_only=False)["optimizer_state_dict"]["base_optimizer_state"]
        steps |= {int(group["step"]) for group in state["state"].values()}
    return steps


def test_a_run_continues_on_one_rank_then_on_two_with_its_optimizer_state(finished_run, tmp_path):
    """The shared 2-rank run (checkpoints every 40 steps, 120 in all, a log line every 5), copied, goes on to step 160
    on one rank, then to step 200 on two, logging every 8 steps from then on as that launch asks."""
    output = Path(shutil.copytree(finished_run.output, tmp_path / "run"))
    previous = finished_run.steps
    for ranks, step, logging_steps in (("1", 160, finished_run.logging_steps), ("2", 200, 8)):
        text = finished(yayi_train(*finished_run.arguments, "-o", str(output), "--gpus", ranks, "--resume", "auto",
                                   "--max-steps", str(step), "--logging-steps", str(logging_steps)))
        assert "it will be converted to a DeepSpeed universal checkpoint" in " ".join(text.split())
        run = json.loads((output / "run.json").read_text(encoding="utf-8"))
        assert run["world_size"] == int(ranks) and run["resume_converted_from_world_size"] == 3 - int(ranks)
        assert run["resume_from"] == str(output / f"checkpoint-{previous}")
        state = json.loads((output / f"checkpoint-{step}" / "trainer_state.json").read_text(encoding="utf-8"))
        assert state["global_step"] == step
        logged = [entry["step"] for entry in state["log_history"] if "loss" in entry]
        assert logged[0] == 1 and logged == sorted(set(logged)) and previous < logged[-1] <= step  # one history, continued
        assert [entry for entry in logged if entry > previous] == list(range(previous + logging_steps, step + 1, logging_steps))
        assert adam_steps(output / f"checkpoint-{step}") == {step}  # a fresh optimizer would count only the new steps
        previous = step
