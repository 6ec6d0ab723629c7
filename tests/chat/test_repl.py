"""The REPL: commands driven through injected input, and a real terminal session in a pty."""

from __future__ import annotations

import io
import json
import os
import sys

import pytest
from rich.console import Console

from tests.helpers import REPO
from yayi_cli.chat.options import ChatOptions
from yayi_cli.chat.repl import COMMANDS, Repl, default_history_file
from yayi_cli.chat.session import open_session
from yayi_cli.data.options import ValidateOptions
from yayi_cli.data.validate import validate
from yayi_cli.options.shared import GenerationSettings


def run_repl(model_dir, lines: list[str]) -> tuple[str, Repl]:
    """Run a REPL on `lines` (then Ctrl-D); returns what it printed."""
    session = open_session(ChatOptions(str(model_dir), settings=GenerationSettings(max_new_tokens=8, seed=0)))
    console = Console(file=io.StringIO(), width=200, color_system=None)
    pending = iter(lines)

    def read_line(prompt: str) -> str:
        console.file.write(prompt)
        line = next(pending, None)
        if line is None:
            raise EOFError
        if line == "^C":
            raise KeyboardInterrupt
        return line

    repl = Repl(session, console, read_line)
    repl.run()
    return console.file.getvalue(), repl


def test_every_command_is_declared_once_with_help():
    names = [name for command in COMMANDS for name in (command.name, *command.aliases)]
    assert len(names) == len(set(names))
    assert {"help", "clear", "system", "set", "show", "retry", "undo", "save", "load", "exit", "quit"} <= set(names)
    assert all(command.help for command in COMMANDS)


def test_commands_change_the_session_and_mistakes_get_a_message(tiny_model_dirs):
    output, repl = run_repl(tiny_model_dirs["llama"], [
        "/set temperature=0.5 top_k=10", "/set temp=1", "/frobnicate", "/system 你是一个诗人", "你好", "^C",
        "/retry", "/show", "再见", "/undo", "/exit", "never read",
    ])
    session = repl.session
    assert (session.settings.temperature, session.settings.top_k, session.system) == (0.5, 10, "你是一个诗人")
    assert "error: unknown setting 'temp'; did you mean temperature?" in output
    assert "error: unknown command /frobnicate" in output and "/retry" in output  # help follows
    assert [turn.text for turn in session.turns][:1] == ["你好"] and session.exchanges == 1
    assert "template   yayi" in output and "of 1024 tokens; 1 of 1 exchanges in the prompt" in output


def test_a_line_ending_in_a_backslash_continues_the_message(tiny_model_dirs):
    output, repl = run_repl(tiny_model_dirs["llama"], ["第一行\\", "第二行"])
    assert repl.session.turns[0].text == "第一行\n第二行"
    assert "... " in output


def test_save_writes_a_valid_record_and_asks_before_replacing(tiny_model_dirs, tmp_path):
    path = tmp_path / "chat.jsonl"
    output, _ = run_repl(tiny_model_dirs["bloom"], ["你好", f"/save {path}", "再问一次", f"/save {path}", "n"])
    assert "exists; replace it? [y/N]" in output and "not saved" in output
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["conversations"][0]["value"] == "你好" and len(record["conversations"]) == 2
    assert validate(ValidateOptions([path])).errors == 0
    output, _ = run_repl(tiny_model_dirs["bloom"], [f"/load {path}", "/clear", f"/load {tmp_path / 'none.jsonl'}"])
    assert "loaded 1 exchange(s)" in output and "new conversation" in output and "no such file" in output


def test_retry_after_load_asks_the_loaded_question_again_with_its_input(tiny_model_dirs, tmp_path):
    path = tmp_path / "record.jsonl"
    path.write_text(json.dumps({"instruction": "翻译成英文", "input": "你好", "output": "Hello"}, ensure_ascii=False) + "\n", encoding="utf-8")
    output, repl = run_repl(tiny_model_dirs["llama"], [f"/load {path}", "/retry"])
    assert "error" not in output
    question, answer = repl.session.turns
    assert (question.text, question.input) == ("翻译成英文", "你好") and answer.text != "Hello"


def test_the_history_file_lives_in_the_xdg_state_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_history_file() == tmp_path / "yayi" / "chat_history"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_history_file().parts[-4:] == (".local", "state", "yayi", "chat_history")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("flags", "expected"), [
    ({}, "state/yayi/chat_history"), ({"history_file": "mine"}, "mine"), ({"history": False}, None),
])
def test_chat_on_a_terminal_keeps_the_history_the_options_ask_for(flags, expected, tiny_model_dirs, monkeypatch, tmp_path):
    """The default file in the XDG state directory, --history-file, or none with --no-history."""
    from yayi_cli.chat import command, repl

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    used = []
    monkeypatch.setattr(repl, "run_repl", lambda session, console, history_file: used.append(history_file))
    if "history_file" in flags:
        flags = {"history_file": tmp_path / flags["history_file"]}
    assert command.chat(ChatOptions(str(tiny_model_dirs["llama"]), **flags), stdin=Terminal(), stdout=Terminal()) == 0
    assert used == [None if expected is None else tmp_path / expected]


# --- a real terminal ------------------------------------------------------------------------------

pexpect = pytest.importorskip("pexpect")
PROMPT = ">>>"


def spawn(model_dir, history, *extra: str):
    env = dict(os.environ, NO_COLOR="1", TERM="xterm", PYTHONUNBUFFERED="1", PROMPT_TOOLKIT_NO_CPR="1")
    args = ["-m", "yayi_cli", "chat", "--model", str(model_dir), "--history-file", str(history), *extra]
    child = pexpect.spawn(sys.executable, args, cwd=str(REPO), env=env, encoding="utf-8", timeout=60, dimensions=(40, 200))
    child.expect(PROMPT)
    return child


def command(child, line: str, expect: str | None = None) -> None:
    """Send a line and wait for the next prompt (after `expect`, since the accepted line redraws the prompt)."""
    child.sendline(line)
    if expect:
        child.expect_exact(expect)
    child.expect(PROMPT)


@pytest.mark.launch
def test_a_terminal_session_from_start_to_ctrl_d(tiny_model_dirs, tmp_path):
    history, saved = tmp_path / "state" / "chat_history", tmp_path / "chat.jsonl"
    child = spawn(tiny_model_dirs["llama"], history, "--max-new-tokens", "16", "--seed", "1")
    child.send("你好世界")
    child.send("\x7f\x7f")  # backspace over two wide characters
    command(child, "")
    command(child, "/help", "/retry")
    command(child, "/set temperature=0.5", "temperature=0.5")
    command(child, "/show", "context")
    command(child, f"/save {saved}", "saved 1 exchange(s)")
    command(child, "/undo", "dropped the last exchange")
    command(child, f"/load {saved}", "loaded 1 exchange(s)")
    command(child, "/clear", "new conversation")
    command(child, "/set max_new_tokens=100000 do_sample=false", "do_sample=False")  # the reply, not the echo
    child.sendline("讲一个很长的故事")
    child.expect_exact("\x1b[?2004l")  # the prompt has taken the line and handed the terminal back
    child.expect(r"[\u4e00-\u9fffA-Za-z]{2}")  # the answer is streaming (terminal escapes have no two letters in a row)
    child.sendintr()  # Ctrl-C during the answer
    child.expect_exact("(stopped: this exchange is not kept")
    command(child, "/show", "0 of 0 exchanges in the prompt")
    child.sendintr()  # Ctrl-C at the prompt: a fresh line, still running
    command(child, "/show", "template")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    record = json.loads(saved.read_text(encoding="utf-8"))
    assert record["conversations"][0] == {"from": "human", "value": "你好"}

    child = spawn(tiny_model_dirs["llama"], history, "--max-new-tokens", "4")  # a second session
    for _ in range(20):  # up-arrow: the last line of the first session (once prompt_toolkit has read the history)
        child.send("\x1b[A")
        if child.expect_exact(["/show", pexpect.TIMEOUT], timeout=1) == 0:
            break
    else:
        pytest.fail("up-arrow never brought back the first session's last line")
    command(child, "", "template")  # Enter runs the recalled /show
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    assert "讲一个很长的故事" in history.read_text(encoding="utf-8")
