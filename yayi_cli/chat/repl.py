"""`yayi chat` in a terminal: line editing, persistent history, slash commands, streamed answers.

Everything the terminal does goes through two injected things, `read_line(prompt) -> str`
(prompt_toolkit in real use: raises EOFError on Ctrl-D, KeyboardInterrupt on Ctrl-C) and a Rich
`Console`, so tests can drive a `Repl` with a list of lines and read what it printed.

Ctrl-C during an answer stops it at the next token; the interrupted exchange is left out of the
conversation (the message stays in the history, so up-arrow brings it back).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from rich.markup import escape

from yayi_cli.chat.session import EMPTY_ANSWER_NOTE, ChatSession, Reply
from yayi_cli.runtime.atomic import write_text_atomic
from yayi_cli.runtime.errors import UsageError, YayiError


PROMPT, CONTINUATION = ">>> ", "... "
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
"""Control characters a model may emit that would drive the terminal (escape sequences); shown as U+FFFD."""


def default_history_file() -> Path:
    """`$XDG_STATE_HOME/yayi/chat_history`, else `~/.local/state/yayi/chat_history`."""
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "yayi" / "chat_history"


class Command(NamedTuple):
    """A slash command: `handler(repl, argument)` returns False to end the session."""

    name: str
    aliases: tuple[str, ...]
    usage: str
    help: str
    handler: Callable[[Repl, str], bool | None]


@contextlib.contextmanager
def ctrl_c_sets(event: threading.Event) -> Iterator[None]:
    """While the block runs, Ctrl-C sets `event` instead of raising KeyboardInterrupt.

    Generation checks the event after every token, so the answer stops cleanly there and the
    model, its cache and the session are never left half-way through a step.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Repl:
    """The interactive loop: reads messages and commands, streams answers to the console."""

    def __init__(self, session: ChatSession, console: Any, read_line: Callable[[str], str]) -> None:
        self.session, self.console, self.read_line = session, console, read_line

    def run(self) -> None:
        """Until /exit or Ctrl-D; Ctrl-C at the prompt only clears the line."""
        self.note(
            f"yayi chat · {self.session.model_name} · template {self.session.prompt_tokenizer.template.name}"
            " · /help for commands · a line ending in \\ continues · Ctrl-D to leave"
        )
        while True:
            try:
                message = self.read_message()
            except KeyboardInterrupt:
                continue
            except EOFError:
                return
            if message.startswith("/"):
                if not self.command(message):
                    return
            elif message.strip():
                self.stream(functools.partial(self.session.reply, message))

    def read_message(self) -> str:
        """One message; a line ending in a backslash continues on the next (joined by a newline)."""
        lines, prompt = [], PROMPT
        while True:
            line = self.read_line(prompt)
            if not line.endswith("\\"):
                return "\n".join([*lines, line])
            lines.append(line[:-1])
            prompt = CONTINUATION

    def command(self, line: str) -> bool:
        """Run one slash command; False ends the session. Mistakes are reported, never raised."""
        name, _, argument = line[1:].strip().partition(" ")
        command = COMMAND_INDEX.get(name.lower())
        if command is None:
            self.error(f"unknown command /{name}")
            show_help(self, "")
            return True
        try:
            return command.handler(self, argument.strip()) is not False
        except YayiError as error:
            self.error(str(error))
            return True

    def stream(self, generate: Callable[[Callable[[str], None], threading.Event], Reply]) -> None:
        """Run `generate(on_text, stop_event)`, printing its text as it comes."""
        event = threading.Event()
        try:
            with ctrl_c_sets(event):
                reply = generate(self.write, event)
        except YayiError as error:
            self.error(str(error))
            return
        self.console.file.write("\n")
        if reply.stop_reason == "interrupted":
            self.note("(stopped: this exchange is not kept; up-arrow brings the message back)")
        elif reply.stop_reason == "length":
            self.note(f"(cut at {reply.new_tokens} new tokens: /set max_new_tokens=N for longer answers)")
        elif reply.ended_empty:
            self.note(f"({EMPTY_ANSWER_NOTE})")
        if reply.notice:
            self.note(reply.notice)
        self.console.file.write("\n")
        self.console.file.flush()

    def write(self, text: str) -> None:
        self.console.file.write(_CONTROL.sub("\ufffd", text))
        self.console.file.flush()

    def note(self, text: str) -> None:
        self.console.print(f"[dim]{escape(text)}[/]", highlight=False, soft_wrap=True)

    def error(self, text: str) -> None:
        self.console.print(f"[red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)

    def confirm(self, question: str) -> bool:
        try:
            return self.read_line(f"{question} [y/N] ").strip().lower() in ("y", "yes")
        except (EOFError, KeyboardInterrupt):
            return False


# --- the commands -----------------------------------------------------------------------------


def show_help(repl: Repl, argument: str) -> None:
    for command in COMMANDS:
        names = " ".join(f"/{name}" for name in (command.name, *command.aliases))
        repl.console.print(f"  [bold]{escape(names)}[/] {escape(command.usage)}", highlight=False, end="")
        repl.console.print(f"  {escape(command.help)}", style="dim", highlight=False)
    repl.note(
        "A line ending in \\ continues the message on the next line (Alt-Enter or a paste also add lines). "
        "Ctrl-C stops an answer or clears the line; Ctrl-D leaves."
    )


def clear(repl: Repl, argument: str) -> None:
    repl.session.clear()
    repl.note("new conversation")


def set_system(repl: Repl, argument: str) -> None:
    session = repl.session
    if argument:
        session.system = argument
        repl.note("system prompt set; it applies from the next answer")
    else:
        current = session.system if session.system is not None else session.prompt_tokenizer.template.system
        repl.note(f"system prompt: {current}")


def set_settings(repl: Repl, argument: str) -> None:
    repl.session.settings = repl.session.settings.apply(argument)
    repl.note(repl.session.settings.describe())


def show(repl: Repl, argument: str) -> None:
    session = repl.session
    window = (len(session.turns) - session.window_start) // 2
    lines = [
        f"model      {session.model_name}",
        f"template   {session.prompt_tokenizer.template.name}",
        f"settings   {session.settings.describe()}",
        (f"context    {session.context_tokens()} of {session.max_context_tokens or 'unknown'} tokens; "
         f"{window} of {session.exchanges} exchanges in the prompt"),
    ]
    if session.warmup_seconds is not None:
        lines.append(f"compiled   static cache, warm-up {session.warmup_seconds:.1f} s")
    if session.last_reply is not None:
        lines.append(f"last reply {session.last_reply.new_tokens} tokens, {session.last_reply.tokens_per_second:.1f} tokens/s")
    for line in lines:
        repl.console.print(escape(line), highlight=False, soft_wrap=True)


def retry(repl: Repl, argument: str) -> None:
    if not repl.session.turns:
        raise UsageError("nothing to retry yet")
    repl.stream(repl.session.retry)


def undo(repl: Repl, argument: str) -> None:
    dropped = repl.session.undo()
    repl.note("dropped the last exchange" if dropped else "nothing to undo")


def save(repl: Repl, argument: str) -> None:
    record = repl.session.to_record()
    path = Path(argument or time.strftime("chat-%Y%m%d-%H%M%S.jsonl")).expanduser()
    if path.exists() and not repl.confirm(f"{path} exists; replace it?"):
        repl.note("not saved")
        return
    write_text_atomic(path, json.dumps(record, ensure_ascii=False) + "\n")
    repl.note(f"saved {repl.session.exchanges} exchange(s) to {path} (a conversations record for yayi data)")


def load(repl: Repl, argument: str) -> None:
    from yayi_cli.core.reader import read_records

    if not argument:
        raise UsageError("/load needs a file: /load FILE")
    source = next(iter(read_records(Path(argument).expanduser())), None)
    if source is None:
        raise UsageError(f"{argument}: holds no record")
    if source.error is not None:
        raise UsageError(f"{source.location}: {source.error}")
    repl.session.load_record(source.value)
    repl.note(f"loaded {repl.session.exchanges} exchange(s) from {source.location}; continue the conversation")


def leave(repl: Repl, argument: str) -> bool:
    return False


COMMANDS = (
    Command("help", ("?",), "", "show the commands", show_help),
    Command("clear", ("new",), "", "start a new conversation", clear),
    Command("system", (), "[TEXT]", "set the system prompt (without TEXT: show it)", set_system),
    Command("set", (), "KEY=VALUE...", "temperature, top_p, top_k, max_new_tokens, repetition_penalty, do_sample, seed", set_settings),
    Command("show", (), "", "model, template, settings and context use", show),
    Command("retry", (), "", "answer the last message again", retry),
    Command("undo", (), "", "drop the last exchange", undo),
    Command("save", (), "[FILE]", "save the conversation as a training record (asks before replacing)", save),
    Command("load", (), "FILE", "continue the conversation of a record (the first in FILE)", load),
    Command("exit", ("quit",), "", "leave (Ctrl-D too)", leave),
)
COMMAND_INDEX = {name: command for command in COMMANDS for name in (command.name, *command.aliases)}


# --- the real terminal --------------------------------------------------------------------------


def terminal_reader(history_file: Path | None) -> Callable[[str], str]:
    """prompt_toolkit's line editor: history (kept in `history_file`), TAB completion of commands."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import WordCompleter
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings

    history: Any = InMemoryHistory()
    if history_file is not None:
        try:
            history_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"--history-file {history_file}: cannot create its directory ({error.strerror})") from None
        history = FileHistory(str(history_file))
    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    completer = WordCompleter(sorted(f"/{name}" for name in COMMAND_INDEX), sentence=True)
    prompt_session: Any = PromptSession(history=history, completer=completer, key_bindings=bindings)
    return lambda prompt: prompt_session.prompt(prompt)


def run_repl(session: ChatSession, console: Any, history_file: Path | None) -> None:
    Repl(session, console, terminal_reader(history_file)).run()
