"""The engine's answers as `yayi chat` gives them: without the separator before <|End|>, ended before a stop string.

The engine decodes every token before the stop id, so an answer the model closes with the YaYi format's
`\\n\\n<|End|>` arrives with that `\\n\\n`; and its batched path cannot stop at a stop string. yayi passes the
engine's own response through `AnswerText`, chunk by chunk for a stream, and closes a stream at its stop
string (which cancels the rest of its generation in the engine).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from yayi_cli.core.prompt import AnswerText


def clean_completion(completion: dict[str, Any], answer: AnswerText) -> dict[str, Any]:
    """A non-streamed chat completion with its text cleaned."""
    choice = completion["choices"][0]
    message = choice["message"]
    message["content"] = answer.push(message.get("content") or "") + answer.finish()
    if answer.stopped:
        choice["finish_reason"] = "stop"
    return completion


def sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


def events_of(piece: str) -> list[str]:
    """The `data:` payloads in a piece of the engine's stream (it may join several events in one write)."""
    return [block.removeprefix("data: ") for block in piece.split("\n\n") if block.startswith("data: ")]


def closing_chunk(chunk: dict[str, Any], text: str, finish_reason: str | None) -> dict[str, Any]:
    """A chunk like `chunk` carrying `text` and, when given, the finish reason."""
    choice = {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish_reason}
    return {key: value for key, value in chunk.items() if key not in ("choices", "usage")} | {"choices": [choice]}


async def clean_stream(pieces: AsyncIterator[str], answer: AnswerText) -> AsyncIterator[str]:
    """The engine's SSE stream with each text delta cleaned; at a stop string the stream ends with
    finish_reason "stop" and the engine's stream is closed (its generation is cancelled)."""
    try:
        async for piece in pieces:
            for data in events_of(piece):
                event = json.loads(data) if data.startswith("{") else None
                choices = event.get("choices") if isinstance(event, dict) else None
                if not choices:
                    yield f"data: {data}\n\n"  # the engine's error event, or [DONE]
                    continue
                delta, finish = choices[0].get("delta") or {}, choices[0].get("finish_reason")
                if finish is not None:
                    rest = answer.finish()
                    if rest:
                        yield sse(closing_chunk(event, rest, None))
                    yield sse(event)
                    continue
                if delta.get("content"):
                    delta["content"] = answer.push(delta["content"])
                if answer.stopped:
                    yield sse(closing_chunk(event, delta.get("content", ""), "stop"))
                    return
                if delta.get("content") or delta.get("role") or delta.get("tool_calls"):
                    yield sse(event)
    finally:
        await pieces.aclose()  # type: ignore[attr-defined] - the engine's generator: closing it cancels generation
