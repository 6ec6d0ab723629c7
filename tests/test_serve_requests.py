"""What yayi's serving layer decides before and after the engine: request checks, defaults, routing, answer cleanup.

These are plain functions; tests/test_serve.py runs them in a real server against the openai client.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from yayi_cli.core.prompt import TEMPLATES, AnswerText, PromptTokenizer
from yayi_cli.serve.answers import clean_completion, clean_stream
from yayi_cli.serve.app import InFlight, batchable
from yayi_cli.serve.requests import DEFAULT_MAX_TOKENS, ModelFacts, RequestError, Sampling, plan_request


@pytest.fixture
def facts(tiny_tokenizers) -> ModelFacts:
    tokenizer = tiny_tokenizers["bloom"]
    return ModelFacts("tiny", PromptTokenizer(TEMPLATES["yayi"], tokenizer), 256, {"eos_token_id": [7, 5, 2]})


def ask(content="你好", **fields) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **fields}


def refusal(body: dict, facts: ModelFacts) -> RequestError:
    with pytest.raises(RequestError) as caught:
        plan_request(body, facts)
    return caught.value


# --- answers as yayi chat gives them ----------------------------------------------------------


def feed(answer: AnswerText, pieces: list[str]) -> str:
    return "".join(answer.push(piece) for piece in pieces) + answer.finish()


@pytest.mark.parametrize(("pieces", "expected"), [
    (["答案", "\n", "\n"], "答案"),  # the separator before <|End|> is left out, even split over pieces
    (["第一段\n\n", "第二段"], "第一段\n\n第二段"),  # a separator inside the answer stays
    (["a\n\n\n"], "a\n"),
    (["cut off \ufffd"], "cut off "),  # a character whose bytes the answer ended inside
])
def test_the_separator_before_the_end_and_a_cut_character_are_left_out(pieces, expected):
    assert feed(AnswerText("\n\n"), pieces) == expected


def test_the_answer_ends_before_the_first_stop_string_even_one_split_over_pieces():
    answer = AnswerText("\n\n", ("END", "。"))
    assert answer.push("一句话") == "一句话"
    assert answer.push("E") == "" and answer.push("N") == ""  # may be the start of END: held
    assert answer.push("D and more") == "" and answer.stopped
    assert answer.push("anything") == "" and answer.finish() == ""
    assert feed(AnswerText("\n\n", ("END",)), ["EN", "ough"]) == "ENough"  # not a stop after all: released


def test_a_non_streamed_completion_is_cleaned_and_stopped():
    completion = {"choices": [{"message": {"content": "好的。下一句\n\n"}, "finish_reason": "length"}]}
    clean_completion(completion, AnswerText("\n\n", ("。",)))
    assert completion["choices"][0] == {"message": {"content": "好的"}, "finish_reason": "stop"}


def engine_stream(texts: list[str], finish: str = "stop") -> list[str]:
    chunk = {"id": "r", "object": "chat.completion.chunk", "model": "tiny"}
    events = [dict(chunk, choices=[{"index": 0, "delta": {"role": "assistant"}}])]
    events += [dict(chunk, choices=[{"index": 0, "delta": {"content": text}}]) for text in texts]
    events.append(dict(chunk, choices=[{"index": 0, "delta": {}, "finish_reason": finish}], usage={"total_tokens": 9}))
    return [f"data: {json.dumps(event)}\n\n" for event in events]


def run_stream(pieces: list[str], answer: AnswerText) -> tuple[list[dict], bool]:
    """The events yayi sends for the engine's pieces, and whether the engine's stream was closed."""
    closed = []

    async def engine():
        try:
            for piece in pieces:
                yield piece
        finally:
            closed.append(True)

    async def collect():
        return [piece async for piece in clean_stream(engine(), answer)]

    sent = asyncio.run(collect())
    return [json.loads(block.removeprefix("data: ")) for piece in sent for block in piece.split("\n\n") if block], bool(closed)


def text_of(events: list[dict]) -> str:
    return "".join(event["choices"][0]["delta"].get("content", "") for event in events)


def test_a_stream_loses_the_closing_separator_and_keeps_its_finish_and_usage():
    events, closed = run_stream(engine_stream(["好", "的\n", "\n"]), AnswerText("\n\n"))
    assert text_of(events) == "好的" and closed
    assert events[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert events[-1]["choices"][0]["finish_reason"] == "stop" and events[-1]["usage"] == {"total_tokens": 9}


def test_a_stream_ends_at_its_stop_string_and_closes_the_engine_stream():
    pieces = engine_stream(["一", "二S", "TOP三", "四"], finish="length")
    joined = ["".join(pieces[:2]), *pieces[2:]]  # the engine may write several events at once
    events, closed = run_stream(joined, AnswerText("\n\n", ("STOP",)))
    assert text_of(events) == "一二" and closed
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(event["choices"][0].get("finish_reason") is None for event in events[:-1])


# --- requests refused with a reason -----------------------------------------------------------


@pytest.mark.parametrize(("messages", "status", "words"), [
    ([{"role": "user", "content": "请重复：<|End|>"}], 400, "contains '<|End|>'"),
    ([{"role": "system", "content": "<|Human|>"}, {"role": "user", "content": "hi"}], 400, "system prompt contains"),
    ([{"role": "user", "content": "a</s>b"}], 400, "'</s>'"),  # EOS of this tokenizer is a control token too
    ([{"role": "assistant", "content": "hi"}], 400, "'human' was expected"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], 400, "turns start with the human and alternate"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], 400, "last message must be from the user"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], 400, "'system' (first only)"),
    ([{"role": "tool", "content": "a"}], 400, "role 'tool'"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], 400, "list of text parts"),
    ([], 400, "non-empty list"),
])
def test_messages_a_yayi_model_cannot_take_are_refused_naming_the_problem(facts, messages, status, words):
    error = refusal({"model": "tiny", "messages": messages}, facts)
    assert error.status == status and words in error.message
    assert error.to_json()["error"]["type"] == "invalid_request_error"


def test_an_unknown_model_id_is_a_404_naming_the_served_one(facts):
    error = refusal(ask(model="gpt-4o"), facts)
    assert (error.status, error.code) == (404, "model_not_found") and "serves 'tiny'" in error.message


def test_a_prompt_the_context_cannot_hold_is_refused_with_both_numbers(facts):
    error = refusal(ask("你好" * 400), facts)
    assert error.code == "context_length_exceeded" and "the model's context is 256" in error.message
    prompt = plan_request(ask(), facts).prompt_tokens
    error = refusal(ask(max_tokens=256 - prompt + 1), facts)
    assert f"ask for at most {256 - prompt}" in error.message
    assert plan_request(ask(max_tokens=256 - prompt), facts).generation["max_new_tokens"] == 256 - prompt


@pytest.mark.parametrize(("fields", "param"), [
    ({"temperature": -1}, "temperature"), ({"temperature": "hot"}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stop": [""]}, "stop"),
    ({"n": 2}, "n"), ({"frequency_penalty": 0.5}, "frequency_penalty"), ({"presence_penalty": 1}, "presence_penalty"),
])
def test_settings_out_of_range_or_unsupported_are_refused_naming_the_field(facts, fields, param):
    assert refusal(ask(**fields), facts).param == param


# --- defaults and the engine's batch -----------------------------------------------------------


def test_the_models_defaults_replace_the_engines_and_openai_fields_keep_their_meaning(facts):
    planned = plan_request(ask(), facts)
    assert planned.generation == {"eos_token_id": [7, 5, 2], "max_new_tokens": 256 - planned.prompt_tokens}  # the room left
    unbounded = ModelFacts("tiny", facts.prompt_tokenizer, None, facts.generation)
    assert plan_request(ask(), unbounded).generation["max_new_tokens"] == DEFAULT_MAX_TOKENS  # yayi chat's, not 1024
    assert planned.sampling == Sampling(False)  # the model's generation config does not sample
    sampled = plan_request(ask(temperature=0.7, top_p=0.9, max_tokens=5, stop="。"), facts)
    assert sampled.sampling == Sampling(True, 0.7, 0.9, 50)  # a temperature above 0 samples, as OpenAI means it
    body = sampled.engine_body(batched=False)
    assert not {"temperature", "top_p", "max_tokens", "stop"} & set(body)
    assert json.loads(body["generation_config"])["stop_strings"] == ["。"]  # unbatched generation stops there itself
    assert "stop_strings" not in json.loads(sampled.engine_body(batched=True)["generation_config"])
    assert plan_request(ask(temperature=0), facts).sampling == Sampling(False)
    own = ModelFacts("tiny", facts.prompt_tokenizer, None, {"max_new_tokens": 64, "do_sample": True, "temperature": 0.3})
    assert plan_request(ask(), own).generation["max_new_tokens"] == 64
    assert plan_request(ask(), own).sampling == Sampling(True, 0.3, 1.0, 50)


def test_only_requests_that_sample_as_the_batch_does_join_it(facts):
    batch = Sampling(False)
    assert batchable(plan_request(ask(temperature=0, max_tokens=9, stop="x"), facts), batch)
    assert not batchable(plan_request(ask(temperature=0.5), facts), batch)
    penalized = ModelFacts("tiny", facts.prompt_tokenizer, None, {"repetition_penalty": 1.1})
    assert not batchable(plan_request(ask(), penalized), batch)  # the batch would drop the penalty
    assert not batchable(plan_request(ask(), facts), None)  # batching is off


def test_requests_beyond_the_bound_are_told_to_come_back():
    gate = InFlight(2)
    gate.enter(), gate.enter()
    with pytest.raises(RequestError) as caught:
        gate.enter()
    assert caught.value.status == 429
    gate.leave()
    gate.enter()
    unbounded = InFlight(0)
    for _ in range(1000):
        unbounded.enter()
