"""Resuming on another number of ranks: the ZeRO state is converted to a DeepSpeed universal checkpoint
and training continues from the same step with the optimizer's state (2 ranks -> 1 -> 2, CPU ranks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train.test_train_end_to_end import finished, yayi_train

pytestmark = pytest.mark.slow


def adam_steps(checkpoint: Path) -> set[int]:
    """The step count AdamW keeps for each parameter group, from every rank's ZeRO shard."""
    import torch

    steps = set()
    for shard in checkpoint.glob("global_step*/zero_pp_rank_*_optim_states.pt"):
        state = torch.load(shard, map_location="cpu", weights_only=False)["optimizer_state_dict"]["base_optimizer_state"]
        steps |= {int(group["step"]) for group in state["state"].values()}
    return steps


def test_a_run_continues_on_one_rank_then_on_two_with_its_optimizer_state(tiny_model_dirs, small_data, tmp_path):  # noqa: F811
    output = tmp_path / "run"
    common = ["--data", str(small_data), "--model", str(tiny_model_dirs["llama"]), "-o", str(output),
              "--micro-batch-size", "1", "--save-steps", "2", "--logging-steps", "1", "--zero", "2"]
    finished(yayi_train(*common, "--max-steps", "2"))
    for ranks, step in (("1", 4), ("2", 6)):
        text = finished(yayi_train(*common, "--gpus", ranks, "--resume", "auto", "--max-steps", str(step)))
        assert "it will be converted to a DeepSpeed universal checkpoint" in " ".join(text.split())
        run = json.loads((output / "run.json").read_text(encoding="utf-8"))
        assert run["world_size"] == int(ranks) and run["resume_converted_from_world_size"] == 3 - int(ranks)
        assert run["resume_from"] == str(output / f"checkpoint-{step - 2}")
        state = json.loads((output / f"checkpoint-{step}" / "trainer_state.json").read_text(encoding="utf-8"))
        assert state["global_step"] == step
        assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == list(range(1, step + 1))
        assert adam_steps(output / f"checkpoint-{step}") == {step}  # a fresh optimizer would count only 2
