"""`yayi chat` for scripts: one message in, only the answer out; or JSON lines in and out."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from yayi_cli.chat.session import EMPTY_ANSWER_NOTE, ChatSession
from yayi_cli.core.prompt import Conversation, PromptFormatError
from yayi_cli.core.reader import TOO_DEEP
from yayi_cli.core.records import parse_question
from yayi_cli.runtime.atomic import json_line
from yayi_cli.runtime.errors import UsageError, YayiError


def answer_text(session: ChatSession, message: str, out: TextIO) -> None:
    """Stream the answer to `message` to `out` as it is generated, then a newline: nothing else."""
    if not message.strip():
        raise UsageError("no message: give one on stdin or with --prompt")

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    try:
        reply = session.reply(message, on_text=write)
    except PromptFormatError as error:  # the message is the user's input here, not a data file
        raise UsageError(str(error)) from None
    out.write("\n")
    out.flush()
    if reply.ended_empty:  # on stderr: stdout holds the answer alone
        print(f"note: {EMPTY_ANSWER_NOTE}", file=sys.stderr)


def question_of(value: Any) -> Conversation:
    """`{"prompt": ..., "system"?: ...}` or a record of any shape; a record that ends with an
    answer is asked its last question again (that answer is left out)."""
    conversation = parse_question(value).conversation
    if conversation.ends_with_answer:
        return Conversation(conversation.turns[:-1], conversation.system)
    return conversation


def answer_lines(session: ChatSession, lines: Iterable[str], write: Callable[[str], None]) -> int:
    """Answer each JSON line (a fresh conversation each); returns how many lines could not be answered.

    Every non-blank input line gives one output line, in order: the answer and token counts, or
    the error; `line` is the input line number and an input `id` is copied.
    """
    failures = 0
    for number, line in enumerate(lines, start=1):
        line = line.removeprefix("\ufeff") if number == 1 else line  # a byte-order mark some editors write
        if not line.strip():
            continue
        result: dict[str, Any] = {"line": number}
        try:
            value = json.loads(line)
        except ValueError as error:
            value, result["error"] = None, f"invalid JSON: {error}"
        except RecursionError:
            value, result["error"] = None, TOO_DEEP
        if isinstance(value, dict) and "id" in value:
            result["id"] = value["id"]
        try:
            if "error" not in result:
                result.update(session.answer(question_of(value)).to_json())
        except YayiError as error:
            result["error"] = str(error)
        failures += "error" in result
        write(json_line(result) + "\n")  # strict: an input id of NaN comes back as null
    return failures
