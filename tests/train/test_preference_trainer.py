"""The preference trainers as each rank builds them: TRL's DPOTrainer and KTOTrainer on the prompt core's ids.

These run in this process on the CPU (no launcher), a few steps on a tiny model; the launcher runs are in
test_preference_end_to_end.py.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest

from tests.helpers import REPO
from yayi_cli.core.prompt import TEMPLATES, PromptTokenizer
from yayi_cli.core.record_files import load_records
from yayi_cli.core.records import answered
from yayi_cli.runtime.errors import UsageError
from yayi_cli.train.dataset import count_examples, usable
from yayi_cli.train.options import DPO, KTO, TrainOptions
from yayi_cli.train.preference import PreferenceRecipe, reference_in_use, tokenize_preferences, unpaired


def run_options(model: Path, output: Path, **chosen) -> TrainOptions:
    return TrainOptions(**{"data": ["unused"], "model": str(model), "output": str(output), "method": DPO, "cpu": True,
                           "seed": 0, "logging_steps": 1, "report_to": "none", **chosen})


class CountingLoads(PreferenceRecipe):
    """The recipe, noting each model it loads (the policy, and a reference copy where it holds one) in `loads`."""

    loads: list[str]

    def load_model(self, tokenizer):
        self.loads.append(self.options.model)
        return super().load_model(tokenizer)


def build(options: TrainOptions, records, *, steps: int = 2, lr: float = 1e-2, loads: list | None = None):
    """A trainer as a rank's recipe builds it, in this process (no launcher, no DeepSpeed), on one batch of all the
    records; and the tokenizer. `loads` gets each model the recipe loads."""
    from transformers import AutoTokenizer, set_seed

    tokenizer = AutoTokenizer.from_pretrained(options.model)
    prompts = PromptTokenizer(TEMPLATES["yayi"], tokenizer)
    data = usable(tokenize_preferences(records, prompts, method=options.method, max_length=256, overlong="truncate",
                                       cache_file=None))
    options = dataclasses.replace(options, micro_batch_size=len(data), max_steps=steps, lr=lr)
    recipe = CountingLoads(options, {"gradient_accumulation_steps": 1, "max_length": 256})
    recipe.loads = [] if loads is None else loads
    args = recipe.training_arguments("fp32", has_eval=False, deepspeed=False)
    set_seed(0)
    model = recipe.load_model(tokenizer)  # as a rank loads it: 4-bit with --qlora
    trainer, _ = recipe.make_trainer(model, args, (data, None), tokenizer, callbacks=[])
    return trainer, tokenizer


def losses(trainer) -> list[float]:
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_trl_trains_on_exactly_the_ids_the_prompt_core_renders(tiny_model_dirs, arch, pairs_file, tmp_path):
    records = load_records([pairs_file])
    trainer, tokenizer = build(run_options(tiny_model_dirs[arch], tmp_path), records)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(records))])
    core = PromptTokenizer(TEMPLATES["yayi"], tokenizer)
    rows = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    completions = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["completion_mask"])]
    for index, record in enumerate(records):
        for half, answer in enumerate(record.answers):  # chosen rows first, then the rejected ones
            sft = core.encode_training(answered(record.conversation, answer))
            assert rows[half * len(records) + index] == sft.input_ids
            assert completions[half * len(records) + index] == [t for t, label in zip(sft.input_ids, sft.labels) if label >= 0]


@pytest.mark.parametrize(("loss", "first"), [("sigmoid", math.log(2)), ("hinge", 1.0), ("ipo", None), ("sigmoid_norm", math.log(2))])
def test_each_dpo_loss_starts_where_its_formula_says_and_trains(tiny_model_dirs, pairs_file, tmp_path, loss, first):
    trainer, _ = build(run_options(tiny_model_dirs["llama"], tmp_path, dpo_loss=loss), load_records([pairs_file]), steps=3)
    logged = losses(trainer)
    if first is not None:  # policy == reference at the first step: no margin yet
        assert logged[0] == pytest.approx(first, abs=1e-4)
    assert all(math.isfinite(value) for value in logged) and logged[-1] < logged[0]


def test_simpo_loss_and_the_sft_term_change_the_losses(tiny_model_dirs, pairs_file, tmp_path):
    records = load_records([pairs_file])
    plain = losses(build(run_options(tiny_model_dirs["llama"], tmp_path / "a"), records, steps=3)[0])
    simpo = losses(build(run_options(tiny_model_dirs["llama"], tmp_path / "b", dpo_loss="sigmoid_norm"), records, steps=3)[0])
    with_sft = losses(build(run_options(tiny_model_dirs["llama"], tmp_path / "c", sft_weight=1.0), records, steps=3)[0])
    assert with_sft[0] > plain[0] + 0.1  # the chosen answers' token loss is added from the first step
    assert abs(simpo[-1] - plain[-1]) > 1e-3


def test_the_logged_losses_are_the_dpo_formula_on_plain_transformers_log_probs(tiny_model_dirs, pairs_file, tmp_path):
    """Steps 1 and 2, computed here from plain transformers logits of the starting model (the reference, and the
    policy at step 1) and of the policy after step 1: the mean over pairs of
    -log sigmoid(beta x ((pi_c - ref_c) - (pi_r - ref_r))), plus W x the mean negative log-prob of the chosen
    answers' tokens (--sft-weight W)."""
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback

    from yayi_cli.core.preference_tokens import encode_preferences

    model, beta, weight = tiny_model_dirs["bloom"], 0.5, 0.7
    records = load_records([pairs_file])
    trainer, tokenizer = build(run_options(model, tmp_path, beta=beta, sft_weight=weight), records, steps=2)
    after_first_step = []

    class KeepTheFirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 1:
                after_first_step.append({name: value.detach().clone() for name, value in model.state_dict().items()})

    trainer.add_callback(KeepTheFirstStep())
    logged = losses(trainer)
    encoded = encode_preferences(records, PromptTokenizer(TEMPLATES["yayi"], tokenizer))

    def answer_token_log_probs(weights: dict | None) -> list[list[torch.Tensor]]:
        """Per pair: the log-prob of each token of the chosen answer, then of the rejected one."""
        lm = AutoModelForCausalLM.from_pretrained(model).eval()
        if weights is not None:
            lm.load_state_dict(weights)
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

    start = answer_token_log_probs(None)
    assert len(logged) == 2 and len(after_first_step) == 1
    assert logged[0] == pytest.approx(loss(start, start), rel=1e-4)  # log 2 + W x the SFT loss
    assert logged[1] == pytest.approx(loss(answer_token_log_probs(after_first_step[0]), start), rel=1e-4)


@pytest.mark.parametrize(("chosen", "loads_reference"), [({}, True), ({"precompute_ref": True}, False), ({"lora": True}, False)])
def test_only_a_full_run_without_precompute_loads_a_reference_copy(tiny_model_dirs, pairs_file, tmp_path, chosen,
                                                                   loads_reference):
    loads: list[str] = []
    options = run_options(tiny_model_dirs["llama"], tmp_path, lora_targets=["q_proj", "v_proj"], **chosen)
    trainer, _ = build(options, load_records([pairs_file]), loads=loads)
    assert len(loads) == (2 if loads_reference else 1) and (trainer.ref_model is not None) == loads_reference
    if options.lora:  # the reference is the base with the adapter disabled: no second adapter either
        assert list(trainer.model.peft_config) == ["default"]
    assert losses(trainer)[0] == pytest.approx(math.log(2), abs=1e-4)


def test_qlora_dpo_trains_an_adapter_on_a_4bit_base_whose_reference_is_the_base_without_it(tiny_model_dirs, pairs_file,
                                                                                           tmp_path):
    loads: list[str] = []
    options = run_options(tiny_model_dirs["llama"], tmp_path, qlora=True, cpu=True, lora_targets=["q_proj", "v_proj"])
    trainer, _ = build(options, load_records([pairs_file]), loads=loads)
    assert any(type(module).__name__ == "Linear4bit" for module in trainer.model.modules())
    assert len(loads) == 1 and reference_in_use(trainer) == "the base with the adapter disabled (no copy)"
    logged = losses(trainer)
    assert logged[0] == pytest.approx(math.log(2), abs=1e-4) and all(math.isfinite(value) for value in logged)


def test_kto_takes_pairs_as_a_good_and_a_bad_answer_and_logs_its_metrics(tiny_model_dirs, pairs_file, tmp_path):
    records = load_records([pairs_file])
    split = unpaired(records)
    assert [(r.answers[0], r.label) for r in split[:2]] == [(records[0].answers[0], True), (records[0].answers[1], False)]
    trainer, _ = build(run_options(tiny_model_dirs["llama"], tmp_path, method=KTO), records, steps=3)
    losses(trainer)
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert {"kl", "rewards/chosen", "rewards/rejected"} <= set(logged)


def test_kto_takes_every_kl_sample_from_another_prompt_and_shuffles_each_epoch(tiny_model_dirs, pairs_file, tmp_path):
    records = load_records([pairs_file])
    trainer, _ = build(run_options(tiny_model_dirs["llama"], tmp_path, method=KTO), records, steps=3)
    loader = trainer.get_train_dataloader()  # one batch holds every row (build's batch size)
    orders = []
    for epoch in (0, 1):  # as the Trainer starts each epoch
        loader.set_epoch(epoch)
        (batch,) = list(loader)
        rows = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
        kl_rows = [row[mask.bool()].tolist() for row, mask in zip(batch["KL_input_ids"], batch["KL_attention_mask"])]
        answers_by_prompt: dict[tuple, set] = {}
        for example in trainer.train_dataset:
            answers_by_prompt.setdefault(tuple(example["prompt_ids"]), set()).add(tuple(example["completion_ids"]))
        for row, kl_row in zip(rows, kl_rows):
            prompt = next(p for p in answers_by_prompt if tuple(row[:len(p)]) == p and tuple(row[len(p):]) in answers_by_prompt[p])
            assert tuple(kl_row[:len(prompt)]) == prompt  # the row's own prompt ...
            kl_answer = tuple(kl_row[len(prompt):])
            assert kl_answer not in answers_by_prompt[prompt]  # ... with an answer it was never given
            assert any(kl_answer in answers for other, answers in answers_by_prompt.items() if other != prompt)
        orders.append(rows)
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])


def test_kl_partners_never_pair_a_prompt_with_its_own_answers():
    from yayi_cli.train.preference import kl_partners

    for prompts in (["a", "a", "b", "b", "c", "c"], ["a", "b", "a", "c", "b", "d", "d"], ["a"] * 5 + ["b"]):
        partners = kl_partners(prompts, seed=3)
        assert all(prompts[partner] != prompt for prompt, partner in zip(prompts, partners)), prompts
    assert sorted(kl_partners(["a", "a", "b", "b", "c", "c"], seed=3)) == list(range(6))  # each answer serves once
    with pytest.raises(UsageError, match="every answer in the eval data is to one prompt"):
        kl_partners(["a", "a"], seed=0, what="the eval data")


def test_kto_reads_unpaired_feedback_as_it_is(tiny_model_dirs, tmp_path):
    records = load_records([REPO / "examples" / "feedback.jsonl"])
    assert unpaired(records) == records
    trainer, _ = build(run_options(tiny_model_dirs["bloom"], tmp_path, method=KTO), records, steps=2)
    assert all(math.isfinite(value) for value in losses(trainer))


def test_long_records_are_cut_or_counted_as_leaving_no_answer(tiny_model_dirs, pairs_file):
    from transformers import AutoTokenizer

    prompts = PromptTokenizer(TEMPLATES["yayi"], AutoTokenizer.from_pretrained(tiny_model_dirs["llama"]))
    records = load_records([pairs_file])
    prompt_length = len(prompts.encode_inference(records[0].conversation))
    tokenized = tokenize_preferences(records[:1], prompts, method=DPO, max_length=prompt_length + 2, overlong="truncate",
                                     cache_file=None)
    assert [len(ids) for ids in (tokenized[0]["chosen_ids"], tokenized[0]["rejected_ids"])] == [2, 2]
    assert count_examples(tokenized).truncated == 1
    nothing_left = tokenize_preferences(records[:1], prompts, method=DPO, max_length=prompt_length, overlong="truncate",
                                        cache_file=None)
    assert count_examples(nothing_left).skipped_no_answer == 1 and len(usable(nothing_left)) == 0


@pytest.fixture(scope="module")
def trl():
    """TRL itself (importing its trainers takes seconds)."""
    import trl
    from trl import DPOConfig, DPOTrainer, KTOTrainer  # noqa: F401 - imported here, not in the tests' time

    return trl


def test_the_trl_methods_yayi_overrides_still_take_what_it_expects(trl):
    """yayi replaces `_prepare_dataset` (TRL would tokenize the texts itself) and KTO's `_get_train_sampler`; a TRL
    release that renames them or changes their arguments would silently bypass the replacement."""
    import inspect

    DPOTrainer, KTOTrainer = trl.DPOTrainer, trl.KTOTrainer
    for trainer in (DPOTrainer, KTOTrainer):
        assert list(inspect.signature(trainer._prepare_dataset).parameters) == [
            "self", "dataset", "processing_class", "args", "dataset_name"], trainer
    assert list(inspect.signature(KTOTrainer._get_train_sampler).parameters) == ["self", "train_dataset"]


def test_every_dpo_loss_yayi_offers_is_one_dpoconfig_documents(trl):
    from yayi_cli.train.options import DPO_LOSSES

    documented = set(re.findall(r"`'(\w+)'`", trl.DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]))
    assert set(DPO_LOSSES) <= documented
    assert documented - set(DPO_LOSSES) == {"exo_pair", "sft"}  # exo_pair needs label smoothing; sft is --sft-weight
