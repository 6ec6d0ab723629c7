"""Preference training on each rank: TRL's DPOTrainer and KTOTrainer on ids the prompt core made.

TRL would tokenize the texts itself (and append the tokenizer's EOS after `<|End|>`); yayi hands it
the ids of `yayi_cli.core.preference_tokens.encode_preferences` instead, so a preference run trains on exactly the
bytes and ids an SFT run of the same conversations would. Long records are cut or left out here, and
counted, as SFT examples are. The losses, the reference model and the metrics are TRL's.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from yayi_cli.core.prompt import PromptTokenizer
from yayi_cli.core.records import UNPAIRED, Record
from yayi_cli.runtime.errors import UsageError
from yayi_cli.train.dataset import KEPT, NO_ANSWER, TOO_LONG, TRUNCATED, map_cached
from yayi_cli.train.options import DPO, KTO
from yayi_cli.train.recipe import Recipe


ANSWER_COLUMNS = {DPO: ("chosen_ids", "rejected_ids"), KTO: ("completion_ids",)}


def unpaired(records: Sequence[Record]) -> list[Record]:
    """KTO's records: unpaired ones as they are, and each pair as its chosen (good) and rejected (bad) answer."""
    if all(record.kind == UNPAIRED for record in records):
        return list(records)
    return [Record(record.location, record.domain, record.conversation, (answer,), label)
            for record in records for answer, label in zip(record.answers, (True, False))]


def kl_partners(prompts: Sequence[Hashable], seed: int, what: str = "the training data") -> list[int]:
    """For each KTO row, the row whose answer is its KL sample: always an answer to another prompt.

    KTO estimates KL(policy || reference) from prompts paired with answers they were not given. The rows are laid
    out prompt by prompt, in an order shuffled with `seed`, and each takes the answer as many places on as the
    largest prompt has answers, so every answer serves once and never beside its own prompt. Where one prompt holds
    more than half of the answers, its leftover rows take a random answer to another prompt."""
    groups: dict[Hashable, list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(index)
    if len(groups) < 2:
        raise UsageError(f"KTO estimates its KL term from answers to other prompts, and every answer in {what} is to "
                         "one prompt; add answers to other prompts")
    generator = random.Random(seed)
    order = list(groups.values())
    generator.shuffle(order)
    laid = [index for group in order for index in group]
    shift = max(map(len, order))
    group_of = {index: number for number, group in enumerate(order) for index in group}
    partners = [0] * len(laid)
    for position, index in enumerate(laid):
        partner = laid[(position + shift) % len(laid)]
        while group_of[partner] == group_of[index]:
            partner = generator.choice(laid)
        partners[index] = partner
    return partners


def fit_preference(prompt: list[int], answers: tuple[list[int], ...], max_length: int,
                   overlong: str) -> tuple[list[int], tuple[list[int], ...], int]:
    """Prompt and answers within `max_length` tokens (prompt + each answer), and the record's fate."""
    if len(prompt) + max(map(len, answers)) <= max_length:
        return prompt, answers, KEPT
    if overlong == "skip":
        return [], tuple([] for _ in answers), TOO_LONG
    if len(prompt) >= max_length:
        return [], tuple([] for _ in answers), NO_ANSWER
    room = max_length - len(prompt)
    return prompt, tuple(answer[:room] for answer in answers), TRUNCATED


def tokenize_preferences(records: Sequence[Record], prompt_tokenizer: PromptTokenizer, *, method: str, max_length: int,
                         overlong: str, cache_file: Path | None) -> Any:
    """A `datasets.Dataset` with prompt_ids and the method's answer columns (KTO: and label), plus the
    length, answer tokens and status of every record (KTO: of every answer), in order."""
    from yayi_cli.core.preference_tokens import encode_preferences

    records = unpaired(records) if method == KTO else list(records)
    names = ANSWER_COLUMNS[method]

    def encode(batch: dict[str, list[int]]) -> dict[str, list[Any]]:
        chosen = [records[i] for i in batch["index"]]
        columns: dict[str, list[Any]] = {name: [] for name in ("prompt_ids", *names, "length", "answer_tokens", "status")}
        for encoded in encode_preferences(chosen, prompt_tokenizer):
            prompt, answers, status = fit_preference(encoded.prompt_ids, encoded.answer_ids, max_length, overlong)
            columns["prompt_ids"].append(prompt)
            for name, answer in zip(names, answers):
                columns[name].append(answer)
            columns["length"].append(len(prompt) + max(map(len, answers)))
            columns["answer_tokens"].append(sum(map(len, answers)))
            columns["status"].append(status)
        if method == KTO:
            columns["label"] = [record.label for record in chosen]
        return columns

    return map_cached(len(records), encode, cache_file)


def count_tokens(feature: dict[str, Any]) -> tuple[int, int]:
    """(tokens the model reads, answer tokens that carry loss) of one preference example."""
    answers = [len(feature[name]) for names in ANSWER_COLUMNS.values() for name in names if name in feature]
    return len(feature["prompt_ids"]) * len(answers) + sum(answers), sum(answers)


def trainer_class(method: str) -> Any:
    """TRL's trainer for the method, taking the datasets as yayi tokenized them."""
    from trl import DPOTrainer, KTOTrainer

    class CoreTokenizedDPO(DPOTrainer):
        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            return dataset

        def create_model_card(self, *args: Any, **kwargs: Any) -> None:
            """No TRL model card in OUTPUT: it names no base model and a quick start without the YaYi format."""

    class CoreTokenizedKTO(KTOTrainer):
        create_model_card = CoreTokenizedDPO.create_model_card

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            """Each row's KL sample is an answer to another prompt (`kl_partners`), fixed once, so it does not
            depend on which rows share a batch (TRL rotates answers within a batch of neighbours, and a pair's two
            rows are neighbours)."""
            if not self.calculate_KL:
                return dataset
            partners = kl_partners([tuple(ids) for ids in dataset["prompt_ids"]], args.seed, f"the {dataset_name} data")
            answers = dataset["completion_ids"]
            return dataset.add_column("KL_completion_ids", [answers[partner] for partner in partners])

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            """A new order each epoch, from the run's seed, as the Trainer gives SFT and DPO."""
            from torch.utils.data import RandomSampler

            return RandomSampler(self.train_dataset if train_dataset is None else train_dataset)

    return {DPO: CoreTokenizedDPO, KTO: CoreTokenizedKTO}[method]


class PreferenceRecipe(Recipe):
    """DPO and KTO (`--method dpo|kto`): TRL's trainers on ids the prompt core made, against a reference.

    The reference: with --lora/--qlora, TRL wraps the base with the adapter config and scores the reference
    with the adapter disabled (no second copy); a full fine-tune holds a frozen copy (a second load of the same
    weights; TRL shards it at ZeRO-3), or none with --precompute-ref, where the reference log-probs are
    computed once before training.
    """

    def arguments_class(self) -> Any:
        from trl import DPOConfig, KTOConfig

        return {DPO: DPOConfig, KTO: KTOConfig}[self.options.method]

    def method_settings(self, max_length: int) -> dict[str, Any]:
        """The DPOConfig / KTOConfig settings beyond the Trainer's own."""
        options = self.options
        settings: dict[str, Any] = {"beta": options.beta, "max_length": max_length,
                                    "precompute_ref_log_probs": options.precompute_ref}
        if options.method == DPO:
            losses, weights = [options.dpo_loss], [1.0]
            if options.sft_weight:
                losses, weights = [*losses, "sft"], [*weights, options.sft_weight]
            settings |= {"loss_type": losses, "loss_weights": weights}
        else:  # TRL asks for it (its KL pairs are neighbours in fixed batches); yayi's KTO sampler shuffles regardless
            settings["train_sampling_strategy"] = "sequential"
        return settings

    def tokenize(self, records: list[Any], prompt_tokenizer: Any, *, max_length: int, cache_file: Path | None) -> Any:
        return tokenize_preferences(records, prompt_tokenizer, method=self.options.method, max_length=max_length,
                                    overlong=self.options.overlong, cache_file=cache_file)

    def make_trainer(self, model: Any, args: Any, data: tuple[Any, Any], tokenizer: Any, *,
                     callbacks: list[Any]) -> tuple[Any, Any]:
        from yayi_cli.train.progress import CountingCollator

        options = self.options
        peft_config, reference = None, None
        if options.adapter:  # from an adapter --model, TRL keeps a frozen copy of it as the reference
            from yayi_cli.train.adapters import start_adapter

            model, peft_config = start_adapter(model, options, [])  # plan refuses new marker rows for preference adapters
        elif not options.precompute_ref:
            from transformers import set_seed

            set_seed(options.seed)  # the same new marker rows as the policy's, where markers were added
            reference = self.load_model(tokenizer)
        train_set, eval_set = data
        trainer = trainer_class(options.method)(model=model, ref_model=reference, args=args, train_dataset=train_set,
                                                eval_dataset=eval_set, processing_class=tokenizer, peft_config=peft_config,
                                                callbacks=callbacks)
        counter = CountingCollator(trainer.data_collator, count_tokens)
        trainer.data_collator = counter
        self.log(f"{options.method}: the reference is {reference_in_use(trainer)}")
        return trainer, counter

    def summary_extra(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        from yayi_cli.train.progress import first_and_last

        return {"preference": first_and_last(history)} if history else {}


def reference_in_use(trainer: Any) -> str:
    """What the trainer scores the reference with, as it holds it (for the run's log)."""
    if trainer.precompute_ref_logps:
        return "log-probs computed once before training (no reference model held)"
    if trainer.ref_model is not None:
        return "a frozen copy of the starting model"
    adapters = list(getattr(trainer.accelerator.unwrap_model(trainer.model), "peft_config", {}))
    return "a frozen copy of the starting adapter" if "ref" in adapters else "the base with the adapter disabled (no copy)"
