"""Conversations to token ids and labels, on the tiny BLOOM- and Llama-style tokenizers."""

from __future__ import annotations

import pytest

from yayi_cli.core.prompt import (
    ASSISTANT,
    END_MARKER,
    HUMAN,
    HUMAN_MARKER,
    IGNORE_INDEX,
    MARKERS,
    TEMPLATES,
    Conversation,
    MarkerInjectionError,
    MissingMarkersError,
    PromptTokenizer,
    Turn,
    add_markers,
    marker_token_ids,
    stop_token_ids,
)


YAYI = TEMPLATES["yayi"]


def exchange(*texts: str) -> Conversation:
    roles = [HUMAN, ASSISTANT] * len(texts)
    return Conversation(tuple(Turn(role, text) for role, text in zip(roles, texts)))


def loss_text(tokenizer, encoded) -> str:
    return tokenizer.decode([label for label in encoded.labels if label != IGNORE_INDEX])


def test_marker_ids_are_the_markers_own_tokens_not_the_bos_in_front(tokenizer, arch):
    ids = marker_token_ids(tokenizer)
    first_id_of_encoding = tokenizer(END_MARKER).input_ids[0]
    if arch == "llama":  # the pitfall: a BOS-prepending tokenizer puts BOS first
        assert first_id_of_encoding == tokenizer.bos_token_id
    assert ids[END_MARKER] != tokenizer.bos_token_id
    for marker in MARKERS:
        assert tokenizer.convert_ids_to_tokens(ids[marker]) == marker
        assert tokenizer.encode(marker, add_special_tokens=False) == [ids[marker]]


def test_llama_style_encodings_start_with_bos_and_bloom_style_ones_do_not(tokenizer, arch):
    ids = PromptTokenizer(YAYI, tokenizer).encode_training(exchange("q", "a")).input_ids
    assert (ids[0] == tokenizer.bos_token_id) == (arch == "llama")


def test_loss_is_on_every_answer_and_its_end_marker_only(tokenizer):
    encoded = PromptTokenizer(YAYI, tokenizer).encode_training(exchange("第一个问题", "first answer", "second question", "第二个回答"))
    assert loss_text(tokenizer, encoded) == "first answer\n\n<|End|>第二个回答\n\n<|End|>"
    end_id, human_id = marker_token_ids(tokenizer)[END_MARKER], marker_token_ids(tokenizer)[HUMAN_MARKER]
    assert encoded.labels.count(end_id) == 2
    assert human_id in encoded.input_ids and human_id not in encoded.labels
    for token, label in zip(encoded.input_ids, encoded.labels):
        assert label in (token, IGNORE_INDEX)


def test_inference_ids_are_the_prefix_of_the_training_ids(tokenizer):
    prompt_tokenizer = PromptTokenizer(YAYI, tokenizer)
    finished = exchange("你好", "你好！", "What can you do?", "Many things.")
    training_ids = prompt_tokenizer.encode_training(finished).input_ids
    prompt_ids = prompt_tokenizer.encode_inference(Conversation(finished.turns[:3]))
    assert training_ids[: len(prompt_ids)] == prompt_ids
    assert prompt_tokenizer.encode_training(finished).labels[len(prompt_ids) - 1] == IGNORE_INDEX


def test_the_tokenizers_own_special_tokens_are_refused_inside_text(tokenizer):
    prompt_tokenizer = PromptTokenizer(YAYI, tokenizer)
    conversation = exchange("what does </s> mean?", "an end tag")  # a valid conversation ...
    with pytest.raises(MarkerInjectionError, match="'</s>'"):  # ... that would tokenize to EOS
        prompt_tokenizer.encode_training(conversation)


def test_generation_stops_at_end_at_a_new_human_turn_and_at_eos(tokenizer):
    ids = marker_token_ids(tokenizer)
    assert stop_token_ids(tokenizer) == [ids[END_MARKER], ids[HUMAN_MARKER], tokenizer.eos_token_id]


def bare_tokenizer():
    """A fast tokenizer that has never heard of the YaYi markers."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, **{chr(c): i + 2 for i, c in enumerate([10, *range(32, 127)])}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")


def test_markers_are_added_once_to_a_tokenizer_that_lacks_them():
    tokenizer = bare_tokenizer()
    with pytest.raises(MissingMarkersError, match="no single token for '<|System|>'"):
        PromptTokenizer(YAYI, tokenizer)
    assert add_markers(tokenizer) == 4
    assert add_markers(tokenizer) == 0
    ids = marker_token_ids(tokenizer)
    assert sorted(ids.values()) == list(range(len(tokenizer) - 4, len(tokenizer)))
    encoded = PromptTokenizer(YAYI, tokenizer).encode_training(exchange("q", "a"))
    assert loss_text(tokenizer, encoded).replace(" ", "") == "a\n\n<|End|>"  # a, \n, \n, <|End|>
    assert encoded.num_loss_tokens == 4


def streamed(prompt_tokenizer: PromptTokenizer, ids: list[int]) -> list[str]:
    stream = prompt_tokenizer.answer_stream()
    return [stream.push(token) for token in ids] + [stream.finish()]


@pytest.mark.parametrize(
    "answer, after",
    [
        ("你好，世界！", "\n\n" + END_MARKER),
        ("第一段\n\n第二段", "\n\n" + END_MARKER + "继续"),
        ("ends with one newline\n", ""),
        ("半个", "\n\n" + HUMAN_MARKER + ":\n下一轮"),
        ("three\n\n\n", ""),
    ],
)
def test_the_answer_stream_releases_exactly_what_decode_answer_gives(tokenizer, answer, after):
    prompt_tokenizer = PromptTokenizer(YAYI, tokenizer)
    ids = tokenizer.encode(answer + after, add_special_tokens=False)
    pieces = streamed(prompt_tokenizer, ids)
    assert "".join(pieces) == prompt_tokenizer.decode_answer(ids)
    assert not any(marker in piece for piece in pieces for marker in MARKERS)


def test_the_answer_stream_never_splits_a_wide_character(tokenizer):
    """Byte-level tokens can end inside a UTF-8 character; such text waits for the next token."""
    prompt_tokenizer = PromptTokenizer(YAYI, tokenizer)
    ids = tokenizer.encode("雅意大模型：龘齉爨𠀀😀，谢谢", add_special_tokens=False)
    pieces = streamed(prompt_tokenizer, ids)
    assert len(ids) > len("雅意大模型：龘齉爨𠀀😀，谢谢")  # rare characters take several byte tokens
    assert "".join(pieces) == "雅意大模型：龘齉爨𠀀😀，谢谢"
    assert all("\ufffd" not in piece for piece in pieces)


def test_the_answer_stream_matches_decode_answer_on_arbitrary_tokens(tokenizer):
    prompt_tokenizer = PromptTokenizer(YAYI, tokenizer)
    vocabulary = sorted(tokenizer.get_vocab().values())
    for start in range(0, len(vocabulary) - 40, 13):
        ids = vocabulary[start : start + 40]
        assert "".join(streamed(prompt_tokenizer, ids)) == prompt_tokenizer.decode_answer(ids)
