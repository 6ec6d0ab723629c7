"""Properties of the prompt core that must hold for any conversation, checked with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import answer_text, clean_text, conversations, templates, tokenizer_settings
from yayi_cli.core.prompt import (
    ASSISTANT,
    HUMAN,
    IGNORE_INDEX,
    MARKERS,
    TEMPLATES,
    Conversation,
    MarkerInjectionError,
    PromptTokenizer,
    Turn,
    find_markers,
    render_inference,
    render_training,
)
from yayi_cli.core.records import RecordError, parse_record


@given(conversations(), templates)
def test_spans_hold_exactly_each_answer_and_its_end_marker(conversation, template_name):
    template = TEMPLATES[template_name]
    rendered = render_training(conversation, template)
    answers = [turn.text for turn in conversation.turns if turn.role == ASSISTANT]
    if template.strip_at_markers:  # the whitespace before <|End|> goes, the answer's own trailing whitespace with it
        assert [rendered.text[s:e] for s, e in rendered.spans] == [a.rstrip() + "<|End|>" for a in answers]
    else:
        assert [rendered.text[s:e] for s, e in rendered.spans] == [a + "\n\n<|End|>" for a in answers]
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(rendered.spans, rendered.spans[1:]))
    assert rendered.spans[-1][1] == len(rendered.text)


@given(conversations(), templates)
def test_every_inference_prompt_is_a_prefix_of_the_training_text(conversation, template_name):
    template = TEMPLATES[template_name]
    rendered = render_training(conversation, template)
    for k, (start, _) in enumerate(rendered.spans):
        if template.strip_at_markers and not conversation.turns[2 * k + 1].text.strip():
            continue  # an empty answer's <|End|> takes the header's newline with it: "<|YaYi|>:<|End|>"
        asking = Conversation(conversation.turns[: 2 * k + 1], conversation.system)
        assert render_inference(asking, template) == rendered.text[:start]


@given(conversations(), templates)
def test_a_template_that_strips_at_markers_leaves_no_whitespace_beside_one(conversation, template_name):
    template = TEMPLATES[template_name]
    text = render_training(conversation, template).text
    beside = [text[max(at - 1, 0)] + text[at + len(marker):at + len(marker) + 1] for at, marker in find_markers(text)]
    assert any(side.isspace() for pair in beside for side in pair) != template.strip_at_markers


@st.composite
def injected(draw):
    """A conversation's fields with one marker put at a random place in one of them."""
    texts = draw(st.lists(clean_text.filter(str.strip), min_size=3, max_size=3))
    field = draw(st.integers(0, 2))
    text = texts[field]
    cut = draw(st.integers(0, len(text)))
    texts[field] = text[:cut] + draw(st.sampled_from(MARKERS)) + text[cut:]
    return texts


@given(injected())
def test_a_marker_anywhere_is_always_caught(texts):
    system, human, answer = texts
    with pytest.raises(MarkerInjectionError):
        Conversation((Turn(HUMAN, human), Turn(ASSISTANT, answer)), system)
    record = {"system": system, "conversations": [{"from": "human", "value": human}, {"from": "yayi", "value": answer}]}
    with pytest.raises(RecordError, match="contains the marker"):
        parse_record(record)


@tokenizer_settings
@given(conversation=conversations(answers=answer_text), template_name=templates)
def test_labels_are_the_answer_tokens_and_ignored_everywhere_else(tokenizer, conversation, template_name):
    prompt_tokenizer = PromptTokenizer(TEMPLATES[template_name], tokenizer)
    rendered = render_training(conversation, prompt_tokenizer.template)
    holds_special_token = any(find_markers(text, prompt_tokenizer.reserved) for _, text in conversation.text_fields())
    if holds_special_token:  # such as "</s>": refused, never tokenized
        with pytest.raises(MarkerInjectionError):
            prompt_tokenizer.encode_training(conversation)
        return
    encoded = prompt_tokenizer.encode_training(conversation)
    offsets = tokenizer(rendered.text, return_offsets_mapping=True)["offset_mapping"]
    for (start, end), token, label in zip(offsets, encoded.input_ids, encoded.labels):
        in_span = start < end and any(s <= start < e for s, e in rendered.spans)
        assert label == (token if in_span else IGNORE_INDEX)
    trained = tokenizer.decode([label for label in encoded.labels if label != IGNORE_INDEX])
    assert trained == "".join(rendered.text[s:e] for s, e in rendered.spans)
