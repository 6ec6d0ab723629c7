"""What yayi checks and settles in a chat request before the engine sees it (plain functions, no server).

The engine renders the messages with the chat template and generates; yayi refuses what the template would
fail on (a marker in a message, roles out of order), a prompt the context cannot hold and a model id it
does not serve, each as an OpenAI-style 4xx with a reason, and gives every request the model's own
defaults in place of the engine's (transformers serve raises `max_new_tokens` to 1024, keeps sampling off
when `temperature` asks for it, and maps `frequency_penalty` to a repetition penalty).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from yayi_cli.core.prompt import ASSISTANT, HUMAN, Conversation, PromptFormatError, PromptTokenizer, Turn


class RequestError(Exception):
    """A request yayi refuses: its HTTP status, the OpenAI error type and code, and the field at fault."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.kind = message, param, status, code, kind

    def to_json(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


ROLES = {"user": HUMAN, "assistant": ASSISTANT}
MAX_STOPS = 4
"""The OpenAI API's limit on `stop` strings."""
DEFAULT_MAX_TOKENS = 512
"""An answer's length when neither the request nor the model's generation_config.json says: `yayi chat`'s."""


def message_text(message: Any, index: int) -> str:
    """A message's text: a string, or text parts (the only kind a YaYi model reads)."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise RequestError(f"{where} is not an object with 'role' and 'content'", param=where)
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text"
                                         and isinstance(part.get("text"), str) for part in content):
        return "".join(part["text"] for part in content)
    raise RequestError(f"{where}.content must be a string or a list of text parts", param=f"{where}.content")


def conversation_of(messages: Any) -> Conversation:
    """The conversation the messages hold: an optional first system message, then user and assistant in turn,
    ending with the user; no marker in any text."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    texts = [message_text(message, index) for index, message in enumerate(messages)]
    roles = [message.get("role") for message in messages]
    system = texts[0] if roles[0] == "system" else None
    start = 0 if system is None else 1
    turns = []
    for index in range(start, len(messages)):
        if roles[index] not in ROLES:
            allowed = "'system' (first only), 'user' or 'assistant'"
            raise RequestError(f"messages[{index}] has role {roles[index]!r}; a YaYi model takes {allowed}",
                               param=f"messages[{index}].role")
        turns.append(Turn(ROLES[roles[index]], texts[index]))
    try:
        conversation = Conversation(tuple(turns), system=system)
    except PromptFormatError as error:
        raise RequestError(f"messages: {error}", param="messages") from None
    if not turns or conversation.ends_with_answer:
        raise RequestError("the last message must be from the user: it is the one answered", param="messages")
    return conversation


@dataclass(frozen=True)
class Sampling:
    """How tokens are picked; requests that pick as the batch does share it."""

    do_sample: bool
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None

    @classmethod
    def of(cls, config: dict[str, Any]) -> Sampling:
        """From a generation config's fields (greedy: the sampling knobs do not matter)."""
        if not config.get("do_sample"):
            return cls(False)
        return cls(True, config.get("temperature", 1.0), config.get("top_p", 1.0), config.get("top_k", 50))


def number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise RequestError(f"'{key}' must be a number from {low:g} to {high:g}, got {value!r}", param=key)
    return float(value)


def stops_of(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, list) else () if stop is None else None
    if stops is None or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f"'stop' must be a string or a list of at most {MAX_STOPS} non-empty strings", param="stop")
    return stops


def refuse_unsupported(body: dict[str, Any]) -> None:
    """Fields the engine would take and answer wrongly: refused with the reason, never silently changed."""
    if body.get("n", 1) != 1:
        raise RequestError("'n' must be 1: one answer per request", param="n")
    for key in ("frequency_penalty", "presence_penalty"):
        if body.get(key):
            raise RequestError(f"'{key}' is not supported: the engine would apply a different penalty than the "
                               "OpenAI API defines", param=key)


@dataclass(frozen=True)
class ModelFacts:
    """What the checks need to know of the served model."""

    name: str
    prompt_tokenizer: PromptTokenizer
    context: int | None
    generation: dict[str, Any]
    """Its generation_config.json (the engine's base for every request)."""


ENGINE_SETTLED = ("temperature", "top_p", "stop", "max_tokens", "max_completion_tokens")
"""Request fields yayi folds into the generation config it sends (the engine would read them its own way)."""


@dataclass(frozen=True)
class PlannedRequest:
    """A checked request: the generation config it needs, how it samples, and where its answer is cut."""

    body: dict[str, Any]
    generation: dict[str, Any]
    stops: tuple[str, ...]
    prompt_tokens: int

    @property
    def sampling(self) -> Sampling:
        return Sampling.of(self.generation)

    def engine_body(self, *, batched: bool) -> dict[str, Any]:
        """The body for the engine. Unbatched generation stops at the stop strings itself; the batch cannot, and
        yayi ends its stream there."""
        generation = self.generation if batched or not self.stops else dict(self.generation, stop_strings=list(self.stops))
        body = {key: value for key, value in self.body.items() if key not in ENGINE_SETTLED}
        return dict(body, generation_config=json.dumps(generation))


def max_tokens_of(body: dict[str, Any], facts: ModelFacts, prompt_tokens: int) -> int:
    """The answer's length: the request's (refused when the context cannot hold it), else the model's default,
    cut to the room the context leaves."""
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    asked = body.get(key)
    if asked is not None and (isinstance(asked, bool) or not isinstance(asked, int) or asked < 1):
        raise RequestError(f"'{key}' must be a whole number of at least 1, got {asked!r}", param=key)
    room = None if facts.context is None else facts.context - prompt_tokens
    if room is not None and room < 1:
        raise RequestError(f"the prompt is {prompt_tokens} tokens, and the model's context is {facts.context}: "
                           "shorten the messages", param="messages", code="context_length_exceeded")
    if asked is not None:
        if room is not None and asked > room:
            raise RequestError(f"the model's context is {facts.context} tokens: {prompt_tokens} in the messages "
                               f"and {asked} asked for the answer do not fit; ask for at most {room}",
                               param=key, code="context_length_exceeded")
        return asked
    default = facts.generation.get("max_new_tokens") or DEFAULT_MAX_TOKENS
    return default if room is None else min(default, room)


def plan_request(body: Any, facts: ModelFacts) -> PlannedRequest:
    """Check a /v1/chat/completions body and settle what the engine should do; raises RequestError."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if body.get("model") != facts.name:
        raise RequestError(f"model {body.get('model')!r} is not served here; this server serves {facts.name!r}",
                           param="model", status=404, code="model_not_found")
    refuse_unsupported(body)
    conversation = conversation_of(body.get("messages"))
    try:
        prompt_tokens = len(facts.prompt_tokenizer.encode_inference(conversation))
    except PromptFormatError as error:  # a reserved token of this tokenizer (EOS, say) inside a message
        raise RequestError(f"messages: {error}", param="messages") from None
    temperature, top_p = number(body, "temperature", 0, 2), number(body, "top_p", 0, 1)
    stops = stops_of(body)
    generation = dict(facts.generation, max_new_tokens=max_tokens_of(body, facts, prompt_tokens))
    if temperature is not None:  # OpenAI's meaning: 0 picks the likeliest token, above 0 samples
        generation.update(do_sample=temperature > 0, temperature=temperature or 1.0)
    if top_p is not None:
        if top_p == 0:
            raise RequestError("'top_p' must be above 0", param="top_p")
        generation["top_p"] = top_p
    return PlannedRequest(body, generation, stops, prompt_tokens)
