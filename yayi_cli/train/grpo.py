"""GRPO on each rank: TRL's GRPOTrainer, prompted with the prompt core's inference text and rewarded by
core/rewards.py.

Each prompt is the text `yayi chat` would send (`render_inference`), which the tokenizer turns into exactly the
ids `PromptTokenizer.encode_inference` gives; the model's generation config stops at <|End|> (and the other stop
ids), so an answer ends where a chat answer ends, and the rewards score the answer as `yayi chat` would show it.
The sampling, the advantages, the loss and the reference (none at --beta 0) are TRL's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from yayi_cli.core.prompt import PromptTokenizer, render_inference, stop_token_ids
from yayi_cli.core.rewards import Reward
from yayi_cli.train.dataset import KEPT, TOO_LONG, map_cached
from yayi_cli.train.recipe import Recipe


if TYPE_CHECKING:
    from yayi_cli.core.record_files import PromptRecord

PROMPT = "prompt"


def tokenize_prompts(records: list[PromptRecord], prompt_tokenizer: PromptTokenizer, *, max_length: int,
                     cache_file: Path | None) -> Any:
    """A `datasets.Dataset` of prompts (the inference text) with each record's fields, its prompt length and its
    status: a prompt that leaves no room for an answer within `max_length` is left out, and counted."""

    def encode(batch: dict[str, list[int]]) -> dict[str, list[Any]]:
        chosen = [records[i] for i in batch["index"]]
        texts = [render_inference(record.conversation, prompt_tokenizer.template) for record in chosen]
        lengths = [len(prompt_tokenizer.encode_inference(record.conversation)) for record in chosen]
        columns: dict[str, list[Any]] = {PROMPT: texts, "length": lengths, "answer_tokens": [0] * len(chosen),
                                         "status": [KEPT if length < max_length else TOO_LONG for length in lengths]}
        for name in chosen[0].fields if chosen else ():
            columns[name] = [record.fields[name] for record in chosen]
        return columns

    return map_cached(len(records), encode, cache_file)


class ScoredAnswers:
    """A reward as TRL calls it: the answers decoded as `yayi chat` shows them (up to the first stop id, without the
    separator before <|End|>), whether each ended at a stop id, and the records' fields by name."""

    def __init__(self, reward: Reward, prompt_tokenizer: PromptTokenizer, fields: list[str]) -> None:
        self.reward, self.prompt_tokenizer, self.fields = reward, prompt_tokenizer, fields
        self.stops = set(stop_token_ids(prompt_tokenizer.tokenizer))
        self.__name__ = reward.__name__  # TRL logs rewards/<name>/mean and /std

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
                 **columns: Any) -> list[float]:
        answers = [self.prompt_tokenizer.decode_answer(list(ids)) for ids in completion_ids]
        ended = [any(token in self.stops for token in ids) for ids in completion_ids]
        return self.reward.score(answers, ended, {name: columns[name] for name in self.fields})


def count_prompt_tokens(feature: dict[str, Any]) -> tuple[int, int]:
    """(prompt tokens, 0): GRPO's answers are sampled during the step, and TRL logs their lengths itself."""
    return feature.get("length", 0), 0


class GRPORecipe(Recipe):
    """GRPO (`--method grpo`): answers sampled per prompt, scored by the rewards, compared within their group."""

    def arguments_class(self) -> Any:
        from trl import GRPOConfig

        return GRPOConfig

    def method_settings(self, max_length: int) -> dict[str, Any]:
        options = self.options
        settings: dict[str, Any] = {
            "num_generations": options.num_generations, "max_completion_length": options.max_completion_length,
            "loss_type": options.grpo_loss, "beta": options.beta, "temperature": options.temperature,
            "reward_weights": [reward.spec.weight for reward in self.rewards()],
            "remove_unused_columns": False,  # the records' fields reach the rewards
        }
        if options.use_vllm:
            settings |= {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": options.vllm_memory}
        return settings

    def rewards(self) -> list[Reward]:
        from yayi_cli.core.record_files import load_prompt_records
        from yayi_cli.core.rewards import load_rewards

        if not hasattr(self, "_rewards"):
            records = load_prompt_records([Path(path) for path in self.options.data])
            self._fields = sorted(records[0].fields)
            self._rewards = load_rewards(self.options.reward, set(self._fields))
        return self._rewards

    def training_records(self) -> tuple[list[Any], list[Any]]:
        from yayi_cli.core.record_files import load_prompt_records

        return load_prompt_records([Path(path) for path in self.options.data]), []

    def tokenize(self, records: list[Any], prompt_tokenizer: Any, *, max_length: int, cache_file: Path | None) -> Any:
        return tokenize_prompts(records, prompt_tokenizer, max_length=max_length, cache_file=cache_file)

    def make_trainer(self, model: Any, args: Any, data: tuple[Any, Any], tokenizer: Any, *,
                     callbacks: list[Any]) -> tuple[Any, Any]:
        from trl import GRPOTrainer

        from yayi_cli.train.progress import CountingCollator

        options = self.options
        prompt_tokenizer = PromptTokenizer(self.template, tokenizer)
        model.generation_config.eos_token_id = stop_token_ids(tokenizer)  # answers end at <|End|>, as in chat
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        peft_config = None
        if options.adapter:
            from yayi_cli.train.adapters import start_adapter

            model, peft_config = start_adapter(model, options, [])
        rewards = [ScoredAnswers(reward, prompt_tokenizer, self._fields) for reward in self.rewards()]
        trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=args, train_dataset=data[0],
                              processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
        trainer.create_model_card = lambda *args, **kwargs: None  # none in OUTPUT: it would not name the YaYi format
        counter = CountingCollator(trainer.data_collator, count_prompt_tokens)
        trainer.data_collator = counter
        return trainer, counter

    def summary_extra(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        from yayi_cli.train.progress import first_and_last

        return {"reward": first_and_last(history)} if history else {}
