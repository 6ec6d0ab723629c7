"""`yayi chat` for scripts: piped stdin, --prompt and --jsonl print only answers; errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.helpers import HEAVY_LIBRARIES
from yayi_cli.chat.options import ChatOptions
from yayi_cli.chat.session import open_session
from yayi_cli.cli.app import app
from yayi_cli.options.shared import GenerationSettings


runner = CliRunner()
GREEDY = ["--greedy", "--max-new-tokens", "12"]


def chat(*args: str, input: str | None = None):
    return runner.invoke(app, ["chat", *args], input=input, prog_name="yayi")


def expected_answer(model_dir, message: str) -> str:
    session = open_session(ChatOptions(str(model_dir), settings=GenerationSettings(do_sample=False, max_new_tokens=12)))
    return session.reply(message).text


def test_chat_help_imports_no_heavy_library():
    code = (
        "import sys; from yayi_cli.cli.app import main; sys.argv = ['yayi', 'chat', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY:' + ','.join(m for m in {HEAVY_LIBRARIES!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--max-context-tokens" in result.stdout and result.stdout.strip().endswith("HEAVY:")


def test_piped_stdin_is_one_message_and_only_the_answer_is_printed(tiny_model_dirs, arch):
    model = str(tiny_model_dirs[arch])
    result = chat("--model", model, *GREEDY, input="你好\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == expected_answer(model, "你好") + "\n"


def test_prompt_answers_without_reading_stdin(tiny_model_dirs):
    model = str(tiny_model_dirs["llama"])
    result = chat("--model", model, *GREEDY, "--prompt", "第一行\n第二行")
    assert result.exit_code == 0 and result.stdout == expected_answer(model, "第一行\n第二行") + "\n"


def test_jsonl_answers_each_line_and_reports_bad_lines_in_place(tiny_model_dirs):
    lines = [
        json.dumps({"id": "a", "prompt": "你好"}, ensure_ascii=False),
        "",
        "{not json",
        json.dumps({"instruction": "问题", "output": "参考答案"}, ensure_ascii=False),
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        json.dumps({"prompt": "<|End|>"}),
    ]
    result = chat("--model", str(tiny_model_dirs["bloom"]), *GREEDY, "--jsonl", input="\n".join(lines) + "\n")
    assert result.exit_code == 1  # some lines could not be answered
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["line"] for row in rows] == [1, 3, 4, 5, 6]
    answered = [row for row in rows if "error" not in row]
    assert [set(row) for row in answered] == [
        {"line", "id", "answer", "prompt_tokens", "completion_tokens", "stop_reason", "seconds"},
        {"line", "answer", "prompt_tokens", "completion_tokens", "stop_reason", "seconds"},
        {"line", "answer", "prompt_tokens", "completion_tokens", "stop_reason", "seconds"},
    ]
    assert all(0 < row["completion_tokens"] <= 12 and row["stop_reason"] in ("end", "length") for row in answered)
    assert all(row["seconds"] > 0 for row in answered)
    assert rows[1]["error"].startswith("invalid JSON") and "'<|End|>'" in rows[4]["error"]


def test_jsonl_lines_get_the_record_checks_and_a_bad_line_never_stops_the_rest(tiny_model_dirs):
    lines = [
        json.dumps({"prompt": "你好", "system": 5}, ensure_ascii=False),
        "[" * 100_000 + "]" * 100_000,
        json.dumps({"prompt": ""}),
        json.dumps([1, 2]),
        json.dumps({"prompt": "再见"}, ensure_ascii=False),
    ]
    result = chat("--model", str(tiny_model_dirs["llama"]), *GREEDY, "--jsonl", input="\n".join(lines) + "\n")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # exit 1: some lines failed, no crash
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row.get("error", "")[:40] for row in rows] == [
        "field 'system' must be a string, found a", "invalid JSON: nested too deeply to read ",
        "field 'prompt' is empty", "expected a JSON object, found an array", "",
    ]
    assert rows[-1]["answer"] == expected_answer(tiny_model_dirs["llama"], "再见")


def test_jsonl_uses_a_records_own_system_else_the_system_option_else_the_templates(tiny_model_dirs):
    lines = json.dumps({"prompt": "你好"}, ensure_ascii=False) + "\n" + json.dumps({"prompt": "你好", "system": "记录的系统提示"}, ensure_ascii=False) + "\n"

    def prompt_tokens(*system_option: str) -> list[int]:
        result = chat("--model", str(tiny_model_dirs["llama"]), *GREEDY, *system_option, "--jsonl", input=lines)
        assert result.exit_code == 0, result.output
        return [json.loads(line)["prompt_tokens"] for line in result.stdout.splitlines()]

    template_system, own_system = prompt_tokens()
    option_system, own_system_again = prompt_tokens("--system", "短")
    assert option_system < template_system  # --system replaced the template's long system text
    assert own_system_again == own_system  # and a record's own system still replaces --system


def test_jsonl_with_only_good_lines_exits_0(tiny_model_dirs):
    result = chat("--model", str(tiny_model_dirs["llama"]), *GREEDY, "--jsonl", input='{"prompt": "hi"}\n')
    assert result.exit_code == 0 and json.loads(result.stdout)["line"] == 1


def test_jsonl_output_is_strict_json_after_a_byte_order_mark_and_a_nan_id(tiny_model_dirs):
    result = chat("--model", str(tiny_model_dirs["llama"]), *GREEDY, "--jsonl", input='\ufeff{"prompt": "hi", "id": NaN}\n')
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} in the output"))
    assert row["id"] is None and "answer" in row


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["--model", "./no-such-model", "-p", "hi"], None, "error: ./no-such-model: no such model directory"),
        (["--temperature", "0", "-p", "hi"], None, "error: temperature must be above 0"),
        (["--jsonl", "-p", "hi"], None, "error: --jsonl reads its prompts from stdin"),
        ([], "  \n", "error: no message: give one on stdin or with --prompt"),
        (["--device", "tpu", "-p", "hi"], None, "error: --device 'tpu': use auto, cpu, cuda or cuda:N"),
        (["-p", "a<|End|>b"], None, "error: turn 1 (human) contains '<|End|>'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(tiny_model_dirs, args, stdin, message):
    if "--model" not in args:
        args = ["--model", str(tiny_model_dirs["llama"]), *args]
    result = chat(*args, input=stdin)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == message or result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
