"""`yayi data validate`: every error and warning at its exact line, statistics, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.helpers import SAMPLE_DATA
from yayi_cli.cli.app import app
from yayi_cli.data import scan
from yayi_cli.data.options import ValidateOptions
from yayi_cli.data.validate import validate


runner = CliRunner()

GOOD = {"instruction": "q", "output": "a"}
LINES = [
    (GOOD, None),
    ("{not json", "error:invalid-json"),
    ([1], "error:not-object"),
    ({"prompt": "q"}, "error:no-answer"),
    ({"instruction": "q", "output": ""}, "error:empty-field"),
    ({"instruction": "q", "output": 1}, "error:wrong-type"),
    ({"instruction": "q"}, "error:missing-field"),
    ({"conversations": [{"from": "yayi", "value": "a"}]}, "error:bad-turn-order"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}, "error:bad-turn-order"),
    ({"conversations": [{"from": "human", "value": "a"}]}, "error:no-answer"),
    ({"conversations": [{"from": "bot", "value": "a"}]}, "error:unknown-role"),
    ({"instruction": "q <|End|>", "output": "a"}, "error:marker-in-text"),
    (GOOD, "warning:duplicate"),
    ({"instruction": "q", "output": "another answer"}, "warning:conflicting-answer"),
    ({"instruction": "q2", "output": "a", "source": "web"}, "warning:unknown-key"),
    ({"instruction": "q3\x07", "output": "a"}, "warning:control-character"),
    ({"instruction": "q4 ", "output": "a"}, "warning:whitespace"),
]


def write_lines(path, lines):
    body = b"".join((json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v).encode() + b"\n" for v, _ in lines)
    path.write_bytes(body + b"\xff\xfe\n")  # and one line of invalid UTF-8
    return path


@pytest.fixture
def bad_file(tmp_path):
    return write_lines(tmp_path / "bad.jsonl", LINES)


def problems_by_line(report):
    return {p.line: f"{p.severity}:{p.code}" for p in report.tally.problems}


@pytest.mark.parametrize("workers", [1, 2])
def test_every_error_and_warning_is_reported_at_its_line(bad_file, workers):
    report = validate(ValidateOptions([bad_file], workers=workers))
    expected = {number: kind for number, (_, kind) in enumerate(LINES, start=1) if kind}
    expected[len(LINES) + 1] = "error:invalid-utf8"
    assert problems_by_line(report) == expected
    assert (report.errors, report.warnings, report.ok) == (12, 5, False)
    assert next(p for p in report.tally.problems if p.line == 13).message == f"duplicate of the record at {bad_file}:1"


def test_many_ranges_in_several_processes_report_exactly_what_one_range_does(tmp_path, monkeypatch):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    records = [json.dumps({"instruction": f"q{i % 7}", "output": f"a{i % 5}"}) for i in range(60)]
    first.write_text("\n".join(records[:30]) + "\n\n{broken\n" + "\n".join(records[30:45]) + "\n")
    second.write_text("\n" * 3 + "\n".join(records[45:]) + "\n")
    serial = validate(ValidateOptions([first, second], workers=1, max_errors=500))
    monkeypatch.setattr(scan, "RANGE_BYTES", 200)  # a range may begin or end inside a line
    parallel = validate(ValidateOptions([first, second], workers=2, max_errors=500))
    assert first.stat().st_size > 5 * scan.RANGE_BYTES
    assert parallel.tally.problems == serial.tally.problems
    assert parallel.to_json() == serial.to_json()
    assert serial.warnings == (60 - 35) + 7 * 4 and serial.errors == 1  # 35 distinct records, 7 prompts x 5 answers
    duplicate = next(p for p in serial.tally.problems if p.path == str(second))
    assert (duplicate.line, duplicate.message) == (4, f"duplicate of the record at {first}:11")


def test_array_files_report_each_items_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"instruction": "q", "output": "a"},\n  {"instruction": "q"},\n  {"output": 2}\n]\n')
    report = validate(ValidateOptions([path]))
    assert problems_by_line(report) == {3: "error:missing-field", 4: "error:missing-field"}
    assert [p.index for p in report.tally.problems] == [1, 2]


def test_max_errors_caps_the_list_but_not_the_count(bad_file):
    report = validate(ValidateOptions([bad_file], max_errors=3))
    assert len(report.tally.problems) == 3 and report.errors == 12


def test_strict_turns_warnings_into_failure(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"instruction": " q", "output": "a"}) + "\n")
    assert validate(ValidateOptions([path])).ok
    assert not validate(ValidateOptions([path], strict=True)).ok


def test_statistics_count_files_shapes_turns_and_domains():
    document = validate(ValidateOptions([SAMPLE_DATA])).to_json()
    assert document["ok"] and document["totals"]["records"] == 20
    assert document["totals"]["shapes"] == {"instruction": 14, "conversations": 3, "messages": 3, "prompt": 0}
    assert document["totals"]["kinds"] == {"sft": 20, "paired": 0, "unpaired": 0, "prompts": 0}
    assert document["totals"]["turns"] == 46
    assert document["domains"] == {d: 3 for d in ["媒宣领域任务", "舆情领域任务", "公共安全领域任务", "金融风控领域任务", "城市治理领域任务"]}
    assert document["no_domain"] == 5


def test_with_a_model_it_reports_token_lengths_and_truncation(tiny_model_dirs, tmp_path):
    path = tmp_path / "d.jsonl"
    records = [{"instruction": "q", "output": "a"}, {"instruction": "q2", "output": "很长的回答。" * 60}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    model = str(tiny_model_dirs["llama"])
    untruncated = validate(ValidateOptions([path], model=model))
    assert untruncated.tokens.max_length == 1024 and untruncated.tokens.truncated == 0
    short, long = untruncated.tokens.lengths
    limit = (short + long) // 2
    report = validate(ValidateOptions([path], model=model, max_length=limit))
    tokens = report.to_json()["tokens"]
    assert (tokens["records"], tokens["max_length"], tokens["truncated"], tokens["max"]) == (2, limit, 1, long)
    (problem,) = report.tally.problems
    assert (problem.line, problem.code) == (2, "truncated")
    assert problem.message == f"{long} tokens, more than --max-length {limit}: {long - limit} of 361 answer tokens would be lost"  # 360 characters and <|End|> (yayi-llama2: no whitespace beside a marker)


def test_special_tokens_of_the_model_are_errors(tiny_model_dirs, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"instruction": "what is </s>?", "output": "a tag"}) + "\n")
    assert validate(ValidateOptions([path])).ok
    report = validate(ValidateOptions([path], model=str(tiny_model_dirs["bloom"])))
    assert [p.code for p in report.tally.problems] == ["special-token"] and not report.ok


def cli(*args):
    return runner.invoke(app, ["data", "validate", *args], prog_name="yayi")


def test_exit_codes_are_0_valid_1_invalid_2_usage(bad_file, tmp_path):
    assert cli(str(SAMPLE_DATA)).exit_code == 0
    invalid = cli(str(bad_file))
    assert invalid.exit_code == 1
    assert f"{bad_file}:2: error: invalid JSON" in invalid.stdout
    missing = cli(str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 2 and missing.stderr.strip() == f"error: {tmp_path / 'nope.jsonl'}: no such file"
    directory = cli(str(tmp_path))
    assert directory.exit_code == 2 and "is a directory" in directory.stderr


def test_json_output_is_one_document_with_stable_keys(bad_file):
    result = cli(str(bad_file), "--json", "--max-errors", "2")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert set(document) == {"ok", "strict", "files", "totals", "domains", "no_domain", "problem_counts", "problems", "problems_listed", "tokens"}
    assert document["problems_listed"] == 2 and document["totals"]["errors"] == 12
    assert document["problem_counts"]["warning:duplicate"] == 1
    assert document["problems"][0] == {"path": str(bad_file), "line": 2, "index": 1, "severity": "error", "code": "invalid-json", "message": "invalid JSON: Expecting property name enclosed in double quotes (column 2)"}


def test_empty_files_and_huge_lines(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps({"instruction": "huge", "output": "x" * 9_000_000}) + "\n" + json.dumps(GOOD) + "\n")
    report = validate(ValidateOptions([empty, huge]))
    assert report.ok and report.records == 2
    assert report.to_json()["files"][0]["records"] == 0
    assert [(p.path, p.code) for p in report.tally.problems] == [(str(empty), "empty-file")]
    assert not validate(ValidateOptions([empty], strict=True)).ok


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300) | st.text(alphabet='{}[]",:\n\r 01aé【', max_size=200).map(str.encode))
def test_arbitrary_bytes_never_crash_it(tmp_path, content):
    for name in ("x.jsonl", "x.json"):
        path = tmp_path / name
        path.write_bytes(content)
        result = cli(str(path), "--json")
        assert result.exit_code in (0, 1), result.output
        assert "Traceback" not in result.output
        json.loads(result.stdout)


def test_the_cli_process_exits_2_on_a_missing_file_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "yayi_cli", "data", "validate", str(tmp_path / "x.jsonl")], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stdout == ""
