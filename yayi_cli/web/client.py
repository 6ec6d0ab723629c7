"""The page's side of an OpenAI-compatible server (`yayi serve`, vLLM): streamed answers, and every failure as one
sentence a person can act on, never a stack trace."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


class PageError(Exception):
    """What went wrong, worded for the page."""


@dataclass(frozen=True)
class Sampling:
    """What the page's sliders set for one answer; temperature 0 means greedy, as OpenAI's API means it."""

    temperature: float
    top_p: float
    max_new_tokens: int


def as_text(content: Any) -> str:
    """A chat message's text: Gradio hands history back as a string or as a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def as_messages(history: list[dict[str, Any]], system: str) -> list[dict[str, str]]:
    """The OpenAI messages for the history: the system text first (sent as it is in the box, empty too, so that
    clearing the box means no system text rather than the template's)."""
    return [{"role": "system", "content": system}, *({"role": item["role"], "content": as_text(item["content"])}
                                                      for item in history)]


def api_base(url: str) -> str:
    """The `/v1` base of a server given as `http://host:port` or `http://host:port/v1`."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


class ChatClient:
    """One server's chat completions, through the `openai` client (its SSE parsing and errors)."""

    def __init__(self, base_url: str, model: str | None = None) -> None:
        from openai import OpenAI

        self.base_url = api_base(base_url)
        # a key only if the server wants one (vLLM --api-key); yayi serve takes none
        self.openai = OpenAI(base_url=self.base_url, api_key=os.environ.get("OPENAI_API_KEY", "none"), max_retries=0)
        self.model_id = model
        """The served model's id once known."""

    @property
    def model(self) -> str:
        """The id the server serves (asked once it answers: `yayi web --api` may start before the server does)."""
        if self.model_id is None:
            with explained(self.base_url):
                served = self.openai.models.list().data
            if not served:
                raise PageError(f"the server at {self.base_url} serves no model")
            self.model_id = served[0].id
        return self.model_id

    def stream(self, messages: list[dict[str, str]], sampling: Sampling) -> Iterator[str]:
        """The answer so far, after each piece the server sends. Closing the generator (the page's Stop) closes the
        request, and the server stops generating."""
        model = self.model
        answer = ""
        with explained(self.base_url):
            stream = self.openai.chat.completions.create(
                model=model, messages=messages, stream=True, temperature=sampling.temperature, top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens)
            with stream:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        answer += chunk.choices[0].delta.content
                        yield answer



@contextmanager
def explained(base_url: str) -> Iterator[None]:
    """The `openai` client's errors as a PageError with the server's own reason."""
    import openai

    try:
        yield
    except openai.APIConnectionError as error:
        raise PageError(f"the server at {base_url} does not answer ({_cause(error)}); start it, or check the address") from None
    except openai.APIStatusError as error:
        raise PageError(f"the server refused the request (HTTP {error.status_code}): {_reason(error)}") from None
    except openai.OpenAIError as error:
        raise PageError(f"the server at {base_url} failed: {error}") from None


def _cause(error: BaseException) -> str:
    """The innermost reason of a connection error ("Connection refused"), not the client's wrapper."""
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error).split("] ")[-1] or type(error).__name__


def _reason(error: Any) -> str:
    """The `message` of an OpenAI-shaped error body, else the text the server sent."""
    body = error.body
    if isinstance(body, dict):
        body = body.get("error", body)
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    return str(error.message)
