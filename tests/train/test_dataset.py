"""Training examples: every record accounted for, tokens cached, and packing without cross-talk."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import SAMPLE_DATA
from yayi_cli.core.prompt import (
    ASSISTANT,
    HUMAN,
    IGNORE_INDEX,
    TEMPLATES,
    Conversation,
    PromptTokenizer,
    Turn,
    add_markers,
)
from yayi_cli.core.record_files import load_records
from yayi_cli.core.records import Record
from yayi_cli.train.dataset import (
    PackedExamples,
    PaddingCollator,
    count_examples,
    pack,
    supports_packing,
    tokenize_examples,
    usable,
)


def example(question: str, answer: str) -> Record:
    return Record("test", "", Conversation((Turn(HUMAN, question), Turn(ASSISTANT, answer))))


@pytest.fixture
def prompt_tokenizer(tokenizer):
    add_markers(tokenizer)
    return PromptTokenizer(TEMPLATES["yayi"], tokenizer)


def test_overlong_records_are_truncated_and_counted(prompt_tokenizer):
    examples = [example("短", "好"), example("short question", "a long answer " * 40)]
    full = [len(e.input_ids) for e in prompt_tokenizer.encode_training_batch([x.conversation for x in examples])]
    limit = full[0] + 10
    tokenized = tokenize_examples(examples, prompt_tokenizer, max_length=limit, overlong="truncate", cache_file=None)
    counts = count_examples(tokenized)
    assert (counts.records, counts.kept, counts.truncated, counts.skipped_too_long) == (2, 2, 1, 0)
    assert tokenized["length"] == [full[0], limit]
    assert len(usable(tokenized)) == 2


def test_overlong_records_are_skipped_and_counted_when_asked(prompt_tokenizer):
    examples = [example("短", "好"), example("short question", "a long answer " * 40)]
    tokenized = tokenize_examples(examples, prompt_tokenizer, max_length=60, overlong="skip", cache_file=None)
    counts = count_examples(tokenized)
    assert (counts.kept, counts.skipped_too_long) == (1, 1)
    assert len(usable(tokenized)) == 1


def test_a_truncation_that_leaves_no_answer_skips_the_record_and_says_why(prompt_tokenizer):
    examples = [example("a very long question " * 30, "answer")]
    tokenized = tokenize_examples(examples, prompt_tokenizer, max_length=40, overlong="truncate", cache_file=None)
    assert count_examples(tokenized).skipped_no_answer == 1
    assert len(usable(tokenized)) == 0


def test_a_second_run_reads_the_tokens_from_the_cache(prompt_tokenizer, tmp_path):
    cache = tmp_path / "key-train.arrow"
    first = tokenize_examples([example("一", "二")], prompt_tokenizer, max_length=512, overlong="truncate", cache_file=cache)
    assert cache.is_file()
    # Different records under the same key: only a cache read can return the first ones.
    again = tokenize_examples([example("三", "四"), example("五", "六")], prompt_tokenizer, max_length=512,
                              overlong="truncate", cache_file=cache)
    assert again["input_ids"] == first["input_ids"] and len(again) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 64), max_size=80), st.integers(64, 200))
def test_packing_places_every_example_once_within_the_row_length(lengths, max_length):
    rows = pack(lengths, max_length)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= max_length for row in rows)
    # best fit never leaves two rows that could have been one
    totals = sorted(sum(lengths[i] for i in row) for row in rows)
    assert len(totals) < 2 or totals[0] + totals[1] > max_length


def test_packed_rows_score_each_example_exactly_as_if_it_were_alone(tiny_model_dirs, tiny_tokenizers):
    import torch

    from yayi_cli.train.options import TrainOptions
    from yayi_cli.train.sft import SFTRecipe

    model = SFTRecipe(TrainOptions(model=str(tiny_model_dirs["llama"])), run={}).load_model(tiny_tokenizers["llama"])
    assert supports_packing(model)
    prompts = PromptTokenizer(TEMPLATES["yayi"], tiny_tokenizers["llama"])
    examples = load_records([SAMPLE_DATA])[:6]
    tokenized = usable(tokenize_examples(examples, prompts, max_length=1024, overlong="truncate", cache_file=None))
    packed = PackedExamples(tokenized, max_length=1024)
    assert len(packed) < len(examples)
    collate = PaddingCollator(tiny_tokenizers["llama"].pad_token_id or 0)
    batch = collate([packed[row] for row in range(len(packed))])
    assert "attention_mask" not in batch and batch["input_ids"].shape[1] % 8 == 0
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        for row, members in enumerate(packed.rows):
            start = 0
            for index in members:
                ids = torch.tensor([tokenized[index]["input_ids"]])
                alone = model(input_ids=ids).logits[0]
                together = packed_logits[row, start:start + ids.shape[1]]
                torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
                start += ids.shape[1]


def test_bloom_cannot_pack_so_it_is_batched_by_length_instead(tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    assert not supports_packing(AutoModelForCausalLM.from_pretrained(tiny_model_dirs["bloom"]))


def test_unpacked_batches_are_padded_to_a_multiple_of_8_with_no_loss_on_padding():
    batch = PaddingCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                                             {"input_ids": [5], "labels": [5]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]]
    assert batch["labels"][1].tolist() == [5] + [IGNORE_INDEX] * 7


def test_the_cache_key_tells_training_data_from_held_out_data(prompt_tokenizer):
    from yayi_cli.train.dataset import cache_key

    both_trained = {"data": ["a", "b"], "eval_data": [], "test_size": None, "seed": 515}
    one_held_out = {"data": ["a"], "eval_data": ["b"], "test_size": None, "seed": 515}
    assert cache_key(prompt_tokenizer, both_trained, 512, "truncate") != cache_key(prompt_tokenizer, one_held_out, 512, "truncate")
