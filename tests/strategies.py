"""Hypothesis strategies for conversations and templates, shared by the prompt core's property tests."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from yayi_cli.core.prompt import ASSISTANT, HUMAN, TEMPLATES, Conversation, Turn, find_markers


# Any text, including '<', '|', newlines and CJK, as long as it holds no marker.
any_text = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("<|>:\n 你好【】"), max_size=40)
clean_text = any_text.filter(lambda text: not find_markers(text))
# Answers that start with whitespace may share a token with the header before them: see the
# `data validate` warning about leading whitespace. Everything else tokenizes cleanly.
answer_text = clean_text.filter(lambda text: text[:1].strip() != "")
systems = st.none() | clean_text
templates = st.sampled_from(sorted(TEMPLATES))
tokenizer_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def conversations(draw, answers=clean_text) -> Conversation:
    turns = []
    for _ in range(draw(st.integers(1, 4))):
        turns.append(Turn(HUMAN, draw(clean_text), input=draw(st.just("") | clean_text)))
        turns.append(Turn(ASSISTANT, draw(answers)))
    return Conversation(tuple(turns), draw(systems))
