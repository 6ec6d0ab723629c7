"""The chat engine without a terminal: settings, streaming, stopping, the context window, save and load."""

from __future__ import annotations

import json
import math
import threading

import pytest

from yayi_cli.chat.options import ChatOptions
from yayi_cli.chat.session import ChatSession, open_session
from yayi_cli.core.prompt import (
    END_MARKER,
    HUMAN,
    HUMAN_MARKER,
    MARKERS,
    TEMPLATES,
    Conversation,
    PromptTokenizer,
    Turn,
)
from yayi_cli.data.options import ValidateOptions
from yayi_cli.data.validate import validate
from yayi_cli.models.inference import generate_answers
from yayi_cli.options.shared import GenerationSettings
from yayi_cli.runtime.errors import UsageError


def scripted_model(directory, answer_ids: list[int]):
    """A real tiny model whose forward pass is forced to predict `answer_ids` one after the other
    (then the last one again, for ever), so transformers' own `generate` loop runs with yayi's stop
    ids, budget and stopping criteria: only those can end an answer early. It records every prompt, and
    `steps` counts the forward passes of the current answer (one per new token)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    model.prompts, model.steps = [], 0

    def force_next_token(module, args, kwargs, output):
        input_ids = kwargs["input_ids"]
        if input_ids.shape[1] > 1:  # the prompt: a new answer starts
            model.prompts.append(input_ids[0].tolist())
            model.steps = 0
        forced = torch.full_like(output.logits, -math.inf)
        forced[..., answer_ids[min(model.steps, len(answer_ids) - 1)]] = 0.0
        model.steps += 1
        output.logits = forced
        return output

    model.register_forward_hook(force_next_token, with_kwargs=True)
    return model


@pytest.fixture
def scripted_session(tiny_model_dirs, arch, tokenizer):
    """`scripted_session(text, **options)`: a ChatSession on a real model that answers `text` token by token."""

    def make(text: str, **options) -> ChatSession:
        model = scripted_model(tiny_model_dirs[arch], tokenizer.encode(text, add_special_tokens=False))
        return ChatSession(model, PromptTokenizer(TEMPLATES["yayi"], tokenizer), **options)

    return make


# --- settings -----------------------------------------------------------------------------------


def test_settings_default_to_upstream_yayi_sampling():
    settings = GenerationSettings()
    assert (settings.temperature, settings.repetition_penalty, settings.max_new_tokens, settings.do_sample) == (0.3, 1.1, 512, True)


def test_set_parses_each_value_by_its_type():
    settings = GenerationSettings().apply("temperature=0.5 top_k=0 do_sample=off seed=7 max_new_tokens=64")
    assert (settings.temperature, settings.top_k, settings.do_sample, settings.seed, settings.max_new_tokens) == (0.5, 0, False, 7, 64)
    assert settings.apply("seed=none").seed is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("temp=1", "unknown setting 'temp'; did you mean temperature?"),
        ("temperature", "expected key=value, got 'temperature'"),
        ("top_k=1.5", "top_k='1.5': expected a whole number"),
        ("do_sample=maybe", "expected true or false"),
        ("temperature=0", "temperature must be above 0"),
        ("top_p=1.5", "top_p must be in (0, 1]"),
        ("max_new_tokens=0", "max_new_tokens must be at least 1"),
        ("", "nothing to set"),
    ],
)
def test_a_bad_setting_is_refused_with_a_message_that_names_it(text, message):
    with pytest.raises(UsageError) as caught:
        GenerationSettings().apply(text)
    assert message in str(caught.value)


def test_greedy_settings_pass_no_sampling_knobs_to_generate():
    assert "temperature" not in GenerationSettings(do_sample=False).generate_kwargs()
    assert GenerationSettings().generate_kwargs()["temperature"] == 0.3


# --- streaming and stopping ---------------------------------------------------------------------


@pytest.mark.parametrize("stop, tail", [(END_MARKER, ""), (HUMAN_MARKER, ":\n下一个问题"), ("</s>", "")])
def test_an_answer_streams_without_markers_and_generation_ends_at_a_stop_token(scripted_session, tokenizer, stop, tail):
    script = "你好！很高兴见到你。\n\n" + stop + tail + "不该出现"
    session = scripted_session(script)
    pieces: list[str] = []
    reply = session.reply("你好", on_text=pieces.append)
    assert reply.text == "".join(pieces) == "你好！很高兴见到你。"
    assert not any(marker in piece for piece in pieces for marker in MARKERS)
    assert reply.stop_reason == "end"
    script_ids = tokenizer.encode(script, add_special_tokens=False)
    assert reply.new_tokens == script_ids.index(tokenizer.convert_tokens_to_ids(stop)) + 1  # nothing after the stop token
    assert session.turns[-1].text == "你好！很高兴见到你。"


def test_an_answer_cut_by_the_budget_says_so(scripted_session):
    session = scripted_session("一二三四五六七八九十" * 5, settings=GenerationSettings(max_new_tokens=5))
    reply = session.reply("数数")
    assert (reply.stop_reason, reply.new_tokens) == ("length", 5)


def test_an_answer_cut_inside_a_character_leaves_out_its_partial_bytes(scripted_session, tokenizer):
    first = len(tokenizer.encode("好", add_special_tokens=False))
    assert len(tokenizer.encode("龘", add_special_tokens=False)) > 1  # a rare character: several byte tokens
    session = scripted_session("好龘", settings=GenerationSettings(max_new_tokens=first + 1))  # stops inside 龘
    pieces: list[str] = []
    reply = session.reply("写两个字", on_text=pieces.append)
    assert reply.stop_reason == "length" and reply.text == "".join(pieces) == "好"


def test_an_answer_the_model_ends_at_once_comes_with_a_note_on_stderr(scripted_session, capsys):
    import io

    from yayi_cli.chat.batch import answer_text
    from yayi_cli.chat.session import EMPTY_ANSWER_NOTE

    session, out = scripted_session("\n\n" + END_MARKER), io.StringIO()
    capsys.readouterr()  # what loading the model printed
    answer_text(session, "你好", out)
    assert out.getvalue() == "\n"  # stdout holds the (empty) answer alone
    assert capsys.readouterr().err == f"note: {EMPTY_ANSWER_NOTE}\n"


def test_the_stop_event_ends_the_answer_at_the_next_token_and_the_exchange_is_not_kept(scripted_session):
    session = scripted_session("很长的回答 " * 50)
    stop = threading.Event()
    pieces: list[str] = []
    steps_when_stopped = []

    def interrupt_after_first_piece(text: str) -> None:
        pieces.append(text)
        steps_when_stopped.append(session.model.steps)
        stop.set()

    reply = session.reply("讲个故事", on_text=interrupt_after_first_piece, stop_event=stop)
    assert reply.stop_reason == "interrupted"
    assert reply.new_tokens == session.model.steps <= steps_when_stopped[0] + 1  # at the next token at the latest
    assert session.turns == []


def test_a_real_model_streams_what_batch_generation_answers(tiny_model_dirs, arch):
    session = open_session(ChatOptions(
        str(tiny_model_dirs[arch]), settings=GenerationSettings(do_sample=False, repetition_penalty=1.0, max_new_tokens=24),
    ))
    pieces: list[str] = []
    reply = session.reply("请介绍一下你自己", on_text=pieces.append)
    question = Conversation((Turn(HUMAN, "请介绍一下你自己"),))
    [expected] = generate_answers(session.model, session.prompt_tokenizer, [question], max_new_tokens=24)
    assert "".join(pieces) == reply.text == expected


# --- the conversation ---------------------------------------------------------------------------


def test_retry_undo_and_clear(scripted_session):
    session = scripted_session("好的\n\n" + END_MARKER)
    session.reply("第一")
    session.reply("第二")
    assert session.retry().text == "好的" and session.exchanges == 2
    assert [turn.text for turn in session.undo()] == ["第二", "好的"]
    assert [turn.text for turn in session.turns] == ["第一", "好的"]
    session.clear()
    assert session.turns == [] and session.undo() == ()


def test_old_exchanges_leave_the_prompt_when_the_context_is_full_and_the_user_is_told_once(scripted_session, tokenizer):
    answer = "这是一个比较长的回答，" * 4
    session = scripted_session(
        answer + "\n\n" + END_MARKER, system="简短的系统提示",
        max_context_tokens=160, settings=GenerationSettings(max_new_tokens=40),
    )
    notices = [session.reply(f"第{i}个问题").notice for i in range(6)]
    assert [n is not None for n in notices].count(True) == 1
    assert "outgrew the context (160 tokens)" in next(n for n in notices if n)
    last_prompt = session.model.prompts[-1]
    assert len(last_prompt) + 40 <= 160
    text = tokenizer.decode(last_prompt)
    assert "简短的系统提示" in text and "第0个问题" not in text and "第5个问题" in text
    assert session.exchanges == 6 and session.window_start > 0  # /save still has everything


def test_a_message_longer_than_the_context_is_refused(scripted_session):
    session = scripted_session("好", max_context_tokens=64)
    with pytest.raises(UsageError, match="the context holds 64"):
        session.reply("很长的问题" * 100)


def test_a_long_system_text_is_named_as_what_fills_the_context(scripted_session, tokenizer):
    system = "这是一段很长的系统提示。" * 20
    session = scripted_session("好", max_context_tokens=64, system=system)
    expected = len(tokenizer(system, add_special_tokens=False)["input_ids"])
    with pytest.raises(UsageError, match=rf"the system text alone takes {expected}: .*/system TEXT.*--template"):
        session.reply("你好")


def test_a_saved_conversation_is_valid_training_data_and_loads_back(scripted_session, tmp_path):
    session = scripted_session("好的\n\n" + END_MARKER, system="自定义系统提示")
    session.reply("你好")
    session.reply("再见")
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(session.to_record(), ensure_ascii=False) + "\n", encoding="utf-8")
    report = validate(ValidateOptions([path]))
    assert report.ok and report.errors == 0 and report.warnings == 0
    other = scripted_session("好")
    other.load_record(json.loads(path.read_text(encoding="utf-8")))
    assert (other.turns, other.system) == (session.turns, "自定义系统提示")


def test_answer_leaves_the_conversation_alone(scripted_session, tokenizer):
    session = scripted_session("好的\n\n" + END_MARKER)
    reply = session.answer(Conversation((Turn(HUMAN, "问题"),), "批量系统提示"))
    assert reply.text == "好的" and session.turns == [] and session.system is None
    assert "批量系统提示" in tokenizer.decode(session.model.prompts[0])


def test_answer_uses_the_conversations_system_else_the_sessions_else_the_templates(scripted_session, tokenizer):
    question = (Turn(HUMAN, "问题"),)
    own, session_system = scripted_session("好", system="会话系统提示"), scripted_session("好", system="会话系统提示")
    template = scripted_session("好")
    own.answer(Conversation(question, "记录系统提示"))
    session_system.answer(Conversation(question))
    template.answer(Conversation(question))
    prompts = [tokenizer.decode(session.model.prompts[0]) for session in (own, session_system, template)]
    assert "记录系统提示" in prompts[0] and "会话系统提示" not in prompts[0]
    assert "会话系统提示" in prompts[1]
    assert TEMPLATES["yayi"].system in prompts[2]


@pytest.mark.system  # torch.compile builds C++ kernels with the machine's compiler: about 20 s here
def test_compile_gives_the_same_greedy_tokens_as_the_default_path(tiny_model_dirs):
    settings = GenerationSettings(do_sample=False, max_new_tokens=32)
    plain = open_session(ChatOptions(str(tiny_model_dirs["llama"]), settings=settings))
    compiled = open_session(ChatOptions(str(tiny_model_dirs["llama"]), settings=settings, compile=True))
    assert compiled.warmup_seconds is not None and compiled.model.generation_config.cache_implementation == "static"
    for message in ("你好", "请写一首关于城市的诗", "第三个问题"):
        assert compiled.reply(message).text == plain.reply(message).text
