"""Supervised fine-tuning (`--method sft`, with or without LoRA/QLoRA): the Hugging Face Trainer on the prompt
core's examples, packed where the model takes packed rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yayi_cli.train.recipe import Recipe


class SFTRecipe(Recipe):
    """Loss on the answers only; the markers' new embedding rows train with an adapter too."""

    def tokenize(self, records: list[Any], prompt_tokenizer: Any, *, max_length: int, cache_file: Path | None) -> Any:
        from yayi_cli.train.dataset import tokenize_examples

        return tokenize_examples(records, prompt_tokenizer, max_length=max_length, overlong=self.options.overlong,
                                 cache_file=cache_file)

    def make_trainer(self, model: Any, args: Any, data: tuple[Any, Any], tokenizer: Any, *,
                     callbacks: list[Any]) -> tuple[Any, Any]:
        from transformers import Trainer

        from yayi_cli.train.dataset import PackedExamples, PaddingCollator, supports_packing
        from yayi_cli.train.progress import CountingCollator

        options, (train_set, eval_set) = self.options, data
        if options.adapter:
            from yayi_cli.train.adapters import attach_adapter

            model = attach_adapter(model, options, self.new_token_ids)
        if options.packing and supports_packing(model.get_base_model() if options.adapter else model):
            train_set = PackedExamples(train_set, self.run["max_length"])
            self.log(f"packing: {len(train_set)} rows of at most {self.run['max_length']} tokens")
        elif options.packing:
            group_by_length(args)
            self.log(f"packing: {model.config.model_type} models take no position ids, so batches are grouped by length instead")
        counter = CountingCollator(PaddingCollator(tokenizer.pad_token_id))
        return Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, data_collator=counter,
                       processing_class=tokenizer, callbacks=callbacks), counter


def group_by_length(args: Any) -> None:
    """Batches of similar lengths (the `length` column), under this or an older transformers' name."""
    if hasattr(args, "train_sampling_strategy"):
        args.train_sampling_strategy = "group_by_length"
    else:
        args.group_by_length = True
