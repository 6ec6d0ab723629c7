"""Preference records become ids through the prompt core: the same bytes and ids as SFT."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import PAIRS, REPO
from yayi_cli.core.preference_tokens import encode_preferences
from yayi_cli.core.prompt import IGNORE_INDEX, TEMPLATES, PromptTokenizer
from yayi_cli.core.record_files import load_records
from yayi_cli.core.records import answered


@pytest.fixture
def prompt_tokenizer(tokenizer) -> PromptTokenizer:
    return PromptTokenizer(TEMPLATES["yayi"], tokenizer)


def test_prompt_and_each_answer_are_exactly_the_sft_rendering(prompt_tokenizer):
    records = load_records([REPO / "examples" / "preference.jsonl"])
    for record, encoded in zip(records, encode_preferences(records, prompt_tokenizer)):
        assert len(encoded.answer_ids) == 2
        for answer, ids in zip(record.answers, encoded.answer_ids):
            sft = prompt_tokenizer.encode_training(answered(record.conversation, answer))
            assert encoded.prompt_ids + ids == sft.input_ids
            # the answer's ids are exactly the last answer's loss tokens: all of them, nothing of the prompt
            start = len(encoded.prompt_ids)
            assert sft.labels[start:] == sft.input_ids[start:] and sft.labels[start - 1] == IGNORE_INDEX
        assert prompt_tokenizer.tokenizer.decode(encoded.answer_ids[0]).endswith("\n\n<|End|>")


def test_the_prompt_ends_with_the_assistant_header(prompt_tokenizer, tmp_path: Path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(f'{{"instruction": "{p["instruction"]}", "chosen": "{p["chosen"]}", '
                            f'"rejected": "{p["rejected"]}"}}\n' for p in PAIRS[1:]), encoding="utf-8")
    records = load_records([path])
    for record, encoded in zip(records, encode_preferences(records, prompt_tokenizer)):
        prompt = prompt_tokenizer.tokenizer.decode(encoded.prompt_ids)
        assert prompt.endswith("<|YaYi|>:\n") and record.conversation.turns[-1].text in prompt
        assert prompt_tokenizer.encode_inference(record.conversation) == encoded.prompt_ids
