"""The ZeRO config: valid for DeepSpeed at every stage x offload x precision, or refused up front."""

from __future__ import annotations

import itertools
import os

import pytest

from yayi_cli.runtime.errors import UsageError
from yayi_cli.train.options import OFFLOADS, PRECISIONS, ZERO_STAGES, TrainOptions
from yayi_cli.train.zero import (
    check_batch_sizes,
    deepspeed_config,
    resolve_accumulation,
)


COMBINATIONS = list(itertools.product(ZERO_STAGES, OFFLOADS, PRECISIONS))


REFUSED = {
    (0, "cpu"): "needs ZeRO stage 1, 2 or 3",  # stage 0 partitions nothing, so there is nothing to offload
    (0, "nvme"): "needs ZeRO stage 1, 2 or 3",
    (1, "nvme"): "needs --zero 3",  # DeepSpeed's NVMe offload (ZeRO-Infinity) is a stage-3 feature
    (2, "nvme"): "needs --zero 3",
}
"""The stage x offload pairs refused up front, with the way out each message names; every other pair must run."""


def filled_by_transformers(config: dict, precision: str, model) -> dict:
    """What the Hugging Face integration turns our "auto" values into for a real run."""
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args = TrainingArguments(output_dir="unused", use_cpu=True, bf16=precision == "bf16", fp16=precision == "fp16",
                             per_device_train_batch_size=4, gradient_accumulation_steps=2, report_to="none")
    hf_config = HfTrainerDeepSpeedConfig(config)
    hf_config.trainer_config_process(args)
    hf_config.trainer_config_finalize(args, model, num_training_steps=10)
    return hf_config.config


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])


@pytest.mark.parametrize(("stage", "offload", "precision"), COMBINATIONS)
def test_every_combination_is_valid_for_deepspeed_or_refused_with_the_way_out(stage, offload, precision, tiny_llama):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.config import DeepSpeedConfig

    def options() -> TrainOptions:
        return TrainOptions(zero=stage, offload=offload, precision=precision,
                            nvme_path="/local/nvme" if offload == "nvme" else None)

    expected_refusal = REFUSED.get((stage, offload))
    if expected_refusal:  # refused by the options themselves, so a library call meets it too
        with pytest.raises(UsageError, match=expected_refusal):
            options()
        return
    config = deepspeed_config(options())
    concrete = "bf16" if precision == "auto" else precision  # the worker decides "auto" from the hardware
    parsed = DeepSpeedConfig(filled_by_transformers(config, concrete, tiny_llama))
    assert parsed.zero_optimization_stage == stage
    assert parsed.train_batch_size == 8 and parsed.train_micro_batch_size_per_gpu == 4
    assert parsed.bfloat16_config.enabled == (concrete == "bf16")
    assert parsed.float16_config.enabled == (concrete == "fp16")
    zero = parsed.zero_config
    if stage == 3:
        assert zero.gather_16bit_weights_on_model_save  # a complete model on save, not placeholders
    if offload != "none":
        assert zero.offload_optimizer.device == offload
        assert (zero.offload_param is not None) == (stage == 3)


def test_nvme_offload_needs_a_path():
    with pytest.raises(UsageError, match="--nvme-path"):
        TrainOptions(zero=3, offload="nvme")


def test_an_nvme_path_without_nvme_offload_is_refused():
    with pytest.raises(UsageError, match="--nvme-path only matters with --offload nvme"):
        TrainOptions(zero=3, offload="cpu", nvme_path="/local/nvme")


def test_fp16_is_refused_on_the_cpu():
    with pytest.raises(UsageError, match="fp16 does not run on the CPU"):
        TrainOptions(precision="fp16", cpu=True)


def test_global_batch_size_sets_accumulation_or_is_refused():
    assert resolve_accumulation(TrainOptions(micro_batch_size=4, global_batch_size=64), world_size=8) == 2
    with pytest.raises(UsageError, match="not a multiple of micro batch 4 x 8 rank"):
        resolve_accumulation(TrainOptions(micro_batch_size=4, global_batch_size=100), world_size=8)


def test_a_users_config_with_numbers_must_match_the_batch_arithmetic():
    options = TrainOptions(micro_batch_size=4, gradient_accumulation_steps=2)
    check_batch_sizes({"train_batch_size": 16, "train_micro_batch_size_per_gpu": 4}, options, world_size=2)
    check_batch_sizes({"train_batch_size": "auto"}, options, world_size=3)
    with pytest.raises(UsageError, match=r"train_batch_size=32, but this run has 16 \(micro batch 4 x accumulation 2 x 2"):
        check_batch_sizes({"train_batch_size": 32}, options, world_size=2)


@pytest.mark.parametrize(("config", "message"), [
    ({"zero_optimization": {"stage": "x"}}, "stage must be 0, 1, 2 or 3"),
    ({"bf16": True}, '"bf16" must be an object'),
    ({"zero_optimization": {"stage": 3}}, "stage3_gather_16bit_weights_on_model_save"),
])
def test_a_users_config_is_checked_for_what_yayi_relies_on(tmp_path, config, message):
    import json

    from yayi_cli.train.zero import read_user_config

    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(UsageError, match=message):
        read_user_config(path)
