"""Which `yayi chat` runs: the REPL on a terminal, else one answer, or JSON lines with --jsonl."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TextIO

from yayi_cli.chat.options import ChatOptions
from yayi_cli.chat.session import ChatSession, open_session
from yayi_cli.runtime.errors import UsageError


@contextlib.contextmanager
def loading_status(model: str, interactive: bool) -> Iterator[None]:
    """A spinner on stderr while the model loads, only in an interactive session on a terminal."""
    from rich.console import Console

    console = Console(stderr=True)
    if not (interactive and console.is_terminal):
        yield
        return
    with console.status(f"loading {model} ..."):
        yield


def read_stdin(stdin: TextIO) -> str:
    try:
        return stdin.buffer.read().decode("utf-8-sig") if hasattr(stdin, "buffer") else stdin.read()
    except UnicodeDecodeError as error:
        raise UsageError(f"stdin is not UTF-8 text ({error.reason} at byte {error.start})") from None


def chat(options: ChatOptions, *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Open the session and run the mode the options and streams call for; returns the exit code."""
    options.check()
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout  # read at call time: tests replace them
    interactive = options.prompt is None and not options.jsonl and stdin.isatty() and stdout.isatty()
    with loading_status(options.model, interactive):
        session = open_session(options)
    if interactive:
        return _interactive(session, options)
    from yayi_cli.chat.batch import answer_lines, answer_text

    if options.jsonl:
        return 1 if answer_lines(session, stdin, stdout.write) else 0
    message = options.prompt if options.prompt is not None else read_stdin(stdin).rstrip("\r\n")  # echo's newline is not the message's
    answer_text(session, message, stdout)
    return 0


def _interactive(session: ChatSession, options: ChatOptions) -> int:
    from rich.console import Console

    from yayi_cli.chat.repl import default_history_file, run_repl

    console = Console(highlight=False)
    if session.warmup_seconds is not None:
        console.print(f"[dim]--compile: warm-up took {session.warmup_seconds:.1f} s[/]")
    history_file = (options.history_file or default_history_file()) if options.history else None
    run_repl(session, console, history_file)
    return 0
