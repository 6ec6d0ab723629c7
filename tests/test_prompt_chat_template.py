"""The Jinja chat template renders what the core renders, byte for byte, and refuses what the core refuses."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2.exceptions import TemplateError

from tests.strategies import conversations, templates, tokenizer_settings
from yayi_cli.core.prompt import (
    ASSISTANT,
    HUMAN,
    MARKERS,
    TEMPLATES,
    Conversation,
    PromptTokenizer,
    Template,
    Turn,
    chat_messages,
    chat_template,
    find_markers,
    marker_token_ids,
    prompt_prefix,
    render_inference,
    render_training,
    reserved_tokens,
    save_model_format,
)


YAYI = TEMPLATES["yayi"]


def with_template(tokenizer, template):
    """A copy of the tokenizer carrying the chat template that yayi writes for it."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = chat_template(template, prompt_prefix(tokenizer), reserved_tokens(tokenizer))
    return tokenizer


def asking(conversation: Conversation) -> Conversation:
    return Conversation(conversation.turns[:-1], conversation.system)


def test_the_prefix_is_the_bos_of_llama_style_tokenizers_and_nothing_for_bloom_style(tokenizer, arch):
    assert prompt_prefix(tokenizer) == ("<s>" if arch == "llama" else "")


def test_a_single_exchange_renders_as_the_upstream_training_format():
    from transformers.utils.chat_template_utils import render_jinja_template

    from tests.test_prompt import UPSTREAM_SYSTEM

    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！我是雅意。"}]
    (text,), _ = render_jinja_template(conversations=[messages], chat_template=chat_template(YAYI))
    assert text == "<|System|>:\n" + UPSTREAM_SYSTEM + "\n\n<|Human|>:\n你好\n\n<|YaYi|>:\n你好！我是雅意。\n\n<|End|>"


@tokenizer_settings
@given(conversation=conversations(), template_name=templates)
def test_apply_chat_template_gives_the_core_text_byte_for_byte(tokenizer, conversation, template_name):
    """Inference prompts (add_generation_prompt) and finished conversations, both templates, any
    text (Chinese, empty or absent system, several turns): the tokenizer's own prefix (a Llama BOS,
    which engines do not add to chat prompts) followed by exactly the core's text."""
    template = TEMPLATES[template_name]
    prepared = with_template(tokenizer, template)
    prefix = prompt_prefix(tokenizer)
    reserved = reserved_tokens(tokenizer)
    if any(find_markers(text, reserved) for _, text in conversation.text_fields()):  # such as "</s>"
        with pytest.raises(TemplateError, match="control token"):
            prepared.apply_chat_template(chat_messages(conversation, template), tokenize=False)
        return
    question = asking(conversation)
    prompt = prepared.apply_chat_template(chat_messages(question, template), tokenize=False, add_generation_prompt=True)
    assert prompt == prefix + render_inference(question, template)
    finished = prepared.apply_chat_template(chat_messages(conversation, template), tokenize=False)
    assert finished == prefix + render_training(conversation, template).text
    ids = prepared.apply_chat_template(chat_messages(question, template), add_generation_prompt=True, return_dict=True)
    assert ids["input_ids"] == PromptTokenizer(template, tokenizer).encode_inference(question)


@given(st.sampled_from(MARKERS), st.sampled_from(["system", "user", "assistant"]), st.text(max_size=5))
def test_a_marker_in_any_message_is_an_error_of_the_template_itself(marker, role, text):
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                {"role": "user", "content": "Q2"}]
    index = {"system": 0, "user": 3, "assistant": 2}[role]
    messages[index]["content"] = text + marker + text
    with pytest.raises(TemplateError, match="control token"):
        render_jinja_template(conversations=[messages], chat_template=chat_template(YAYI), add_generation_prompt=True)


@pytest.mark.parametrize(("messages", "message"), [
    ([{"role": "assistant", "content": "A"}], "alternate"),
    ([{"role": "user", "content": "Q"}, {"role": "user", "content": "Q"}], "alternate"),
    ([{"role": "user", "content": "Q"}, {"role": "system", "content": "S"}], "alternate"),
    ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "last message"),
])
def test_conversations_the_core_refuses_are_refused(messages, message):
    from transformers.utils.chat_template_utils import render_jinja_template

    with pytest.raises(TemplateError, match=message):
        render_jinja_template(conversations=[messages], chat_template=chat_template(YAYI), add_generation_prompt=True)


def test_separators_and_headers_come_from_the_template_data():
    from transformers.utils.chat_template_utils import render_jinja_template

    variant = Template(name="v", system="系统", separator="\n---\n", human_header="Q: ", assistant_header="A: ")
    conversation = Conversation((Turn(HUMAN, "你好", input="x"), Turn(ASSISTANT, "好")))
    (text,), _ = render_jinja_template(conversations=[chat_messages(conversation, variant)], chat_template=chat_template(variant))
    assert text == render_training(conversation, variant).text


def test_saved_models_carry_the_template_and_stop_ids(tiny_model_dirs, arch, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs[arch])
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": 2, "_from_model_config": true}', encoding="utf-8")
    save_model_format(tmp_path, tokenizer, YAYI)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.chat_template == chat_template(YAYI, prompt_prefix(tokenizer), reserved_tokens(tokenizer))
    ids = marker_token_ids(tokenizer)
    config = GenerationConfig.from_pretrained(tmp_path)
    assert config.eos_token_id == [ids["<|End|>"], ids["<|Human|>"], tokenizer.eos_token_id]
    assert config.pad_token_id == tokenizer.pad_token_id
    assert "_from_model_config" not in json.loads((tmp_path / "generation_config.json").read_text(encoding="utf-8"))
    assert json.loads((tmp_path / "yayi_template.json").read_text(encoding="utf-8"))["name"] == "yayi"
