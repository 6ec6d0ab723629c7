"""Inputs new users feed the data commands that their authors did not plan for."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.helpers import SAMPLE_DATA, split_into
from yayi_cli.cli.app import app
from yayi_cli.core.reader import read_records
from yayi_cli.core.record_files import load_records
from yayi_cli.data.options import ValidateOptions
from yayi_cli.data.validate import validate
from yayi_cli.runtime.errors import DataError, UsageError


runner = CliRunner()


def test_text_after_the_closing_bracket_of_an_array_is_an_error(tmp_path):
    path = tmp_path / "two.json"
    path.write_text('[{"instruction": "q", "output": "a"}]\n[{"instruction": "r", "output": "b"}]\n')
    found = list(read_records(path))
    assert found[-1].line == 2 and "text after the closing ']'" in found[-1].error


def test_the_same_file_twice_is_refused(tmp_path):
    with pytest.raises(UsageError, match="are the same file"):
        validate(ValidateOptions([SAMPLE_DATA, SAMPLE_DATA.parent / ".." / SAMPLE_DATA.parent.name / SAMPLE_DATA.name]))
    with pytest.raises(UsageError, match="are the same file"):
        split_into(tmp_path / "o", SAMPLE_DATA, SAMPLE_DATA, test_size=2)


def test_tokenizer_options_without_a_model_are_refused():
    with pytest.raises(UsageError, match="only matter with --model"):
        validate(ValidateOptions([SAMPLE_DATA], max_length=5))


def test_a_special_token_makes_a_record_invalid_not_valid_and_invalid(tiny_model_dirs, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"instruction": "q</s>", "output": "a"}) + "\n")
    stats = validate(ValidateOptions([path], model=str(tiny_model_dirs["bloom"]))).to_json()["totals"]
    assert (stats["records"], stats["valid"], stats["errors"]) == (1, 0, 1)


def test_a_directory_where_an_output_goes_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "o" / "test.jsonl").mkdir(parents=True)
    with pytest.raises(UsageError, match="is a directory"):
        split_into(tmp_path / "o", SAMPLE_DATA, test_size=2, force=True)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["test.jsonl"]


def test_rich_markup_in_data_and_paths_is_shown_as_text(tmp_path):
    data = tmp_path / "x[red]y.jsonl"
    data.write_text(json.dumps({"conversations": [{"from": "[/x]", "value": "a"}]}) + "\n" + json.dumps({"instruction": "【[bold]重要】q", "output": "a"}, ensure_ascii=False) + "\n")
    result = runner.invoke(app, ["data", "preview", str(data)])
    assert result.exit_code == 1 and "unknown role '[/x]'" in result.stdout and "[bold]重要" in result.stdout
    out = runner.invoke(app, ["data", "split", str(SAMPLE_DATA), "--test-size", "2", "-o", str(tmp_path / "o[/x]")])
    assert out.exit_code == 0 and "o[/x]" in out.stdout


def test_dedupe_does_not_depend_on_the_hash_seed(tmp_path):
    data = tmp_path / "d.jsonl"
    records = [{"instruction": "写一首诗", "output": f"answer {i}"} for i in range(50)] + [{"instruction": "写一首诗", "output": "answer 7"}]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    outputs = []
    for seed in ("0", "1"):
        out = tmp_path / f"o{seed}"
        command = [sys.executable, "-m", "yayi_cli", "data", "split", str(data), "--test-size", "5", "--dedupe", "-o", str(out)]
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed})
        outputs.append(((out / "train.jsonl").read_bytes(), (out / "test.jsonl").read_bytes()))
        assert json.loads((out / "split.json").read_text())["counts"]["duplicates_dropped"] == 1
    assert outputs[0] == outputs[1]


def test_a_pipe_is_refused_because_split_reads_twice(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        split_into(tmp_path / "o", fifo, test_size=1)


DEEP_RECORDS = ["[" * 200_000 + "]" * 200_000, '{"conversations": ' + "[" * 5000 + "]" * 5000 + "}"]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_record_nested_too_deeply_is_one_invalid_record_not_a_crash(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    good = [json.dumps({"instruction": f"问{i}", "output": "答"}, ensure_ascii=False) for i in range(2)]
    text = "\n".join([good[0], *DEEP_RECORDS, good[1]]) + "\n" if suffix == ".jsonl" else "[" + DEEP_RECORDS[0] + "]"
    path.write_text(text, encoding="utf-8")
    report = validate(ValidateOptions([path]))
    assert [p.code for p in report.tally.problems] == ["invalid-json"] * (2 if suffix == ".jsonl" else 1)
    assert all("nested too deeply" in p.message for p in report.tally.problems)
    for arguments in (["data", "validate", str(path)], ["eval", "--model", "unused", "--data", str(path)],
                      ["data", "split", str(path), "--test-size", "1", "-o", str(tmp_path / "out")]):
        result = runner.invoke(app, arguments)
        assert result.exit_code in (1, 2) and not isinstance(result.exception, RecursionError), arguments
        assert "Traceback" not in result.output


def test_a_key_written_twice_in_one_object_is_a_warning_naming_it(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text(
        '{"instruction": "q", "output": "first", "output": "second"}\n'
        '{"messages": [{"role": "user", "content": "a", "content": "b"}, {"role": "assistant", "content": "c"}]}\n'
        '{"instruction": "a \\":\\" inside a string is no key", "output": "x"}\n'
        '{"instruction": "q4", "output"  : "first", "output"\t: "second"}\n',
        encoding="utf-8",
    )
    report = validate(ValidateOptions([path]))
    found = [(p.line, p.code, p.message.split(" appears")[0]) for p in report.tally.problems]
    assert found == [(1, "duplicate-key", "key 'output'"), (2, "duplicate-key", "key 'content'"), (4, "duplicate-key", "key 'output'")]
    assert report.ok and not validate(ValidateOptions([path], strict=True)).ok


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_number_of_thousands_of_digits_is_one_invalid_record(tmp_path, suffix):
    path = tmp_path / f"digits{suffix}"
    record = '{"instruction": "q", "output": ' + "9" * 5000 + "}"
    path.write_text(record + "\n" if suffix == ".jsonl" else f"[{record}]", encoding="utf-8")
    report = validate(ValidateOptions([path]))
    assert [(p.line, p.code) for p in report.tally.problems] == [(1, "invalid-json")]
    assert "thousands of digits" in report.tally.problems[0].message
    result = runner.invoke(app, ["data", "validate", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("recursion_limit", [1000, 20000])
def test_a_key_repeated_beside_deep_nesting_is_found_whatever_the_recursion_limit(tmp_path, recursion_limit):
    """Other libraries raise Python's recursion limit; the answer must not depend on who ran first."""
    path = tmp_path / "deep-keys.jsonl"  # orjson reads 990 levels; Python's json cannot at the default limit
    path.write_text('{"instruction": "q", "output": "a", "x": ' + "[" * 990 + "]" * 990 + ', "x": 1}\n', encoding="utf-8")
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(recursion_limit)
    try:
        report = validate(ValidateOptions([path]))
    finally:
        sys.setrecursionlimit(previous)
    assert report.ok and sorted((p.code, p.message.split(" appears")[0]) for p in report.tally.problems) == [
        ("duplicate-key", "key 'x'"), ("unknown-key", "unknown key 'x' is ignored")]


def test_more_workers_than_cores_are_not_started(tmp_path, monkeypatch):
    from concurrent.futures import ProcessPoolExecutor

    from yayi_cli.data import scan

    started = []

    def counted_pool(max_workers, **options):  # the real pool, with its size noted
        started.append(max_workers)
        return ProcessPoolExecutor(max_workers=max_workers, **options)

    monkeypatch.setattr(scan, "ProcessPoolExecutor", counted_pool)
    monkeypatch.setattr(scan.os, "cpu_count", lambda: 2)
    path = tmp_path / "small.jsonl"
    path.write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
    assert validate(ValidateOptions([path], workers=3)).ok  # taken literally, --workers 100000 forked 100,000 processes at once
    assert started == [2]


RECORD_TEXT = '{"instruction": "问题", "output": "回答"}'


UTF16_HINT = "the file is UTF-16 text; yayi reads UTF-8: convert it, e.g. `iconv -f UTF-16 -t UTF-8 {data} > d.utf8.jsonl`"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_text_is_named_with_the_way_to_convert_it(tmp_path, encoding):
    data = tmp_path / "d.jsonl"
    data.write_bytes(("{" + '"instruction": "question", "output": "answer"}\n' * 2).encode(encoding))
    result = runner.invoke(app, ["data", "validate", str(data), "--json"])
    assert result.exit_code == 1
    assert [(p["line"], p["code"], p["message"]) for p in json.loads(result.stdout)["problems"]] == [
        (1, "not-utf8", UTF16_HINT.format(data=data))
    ]
    split_result = runner.invoke(app, ["data", "split", str(data), "--test-size", "1", "-o", str(tmp_path / "out")])
    assert split_result.exit_code == 1 and UTF16_HINT.format(data=data) in split_result.output
    with pytest.raises(DataError, match=f"{data}:1: the file is UTF-16 text"):
        load_records([data])


def test_lines_ending_in_a_lone_cr_are_named_with_the_way_to_convert_them(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes((RECORD_TEXT + "\r" + RECORD_TEXT + "\r").encode())
    result = runner.invoke(app, ["data", "validate", str(data)])
    assert result.exit_code == 1 and f"{data}:1: error: lines end with a lone CR (classic Mac)" in result.output


@pytest.mark.parametrize("head", [b"\x00" * 64, b"\x7fELF" + bytes(range(256)) * 4 + b"\r" * 40])
def test_binary_data_is_named_as_binary_not_as_utf16_or_lone_cr_lines(tmp_path, head):
    data = tmp_path / "d.jsonl"
    data.write_bytes(head)
    problems = validate(ValidateOptions([data])).tally.problems
    assert [p.message for p in problems] == ["the file is binary, not text (it holds NUL bytes); give a .jsonl or .json data file"]


@pytest.mark.parametrize("command", [["data", "validate"], ["data", "preview"]])
def test_compressed_data_is_named_with_the_way_to_unpack_it(tmp_path, command):
    import gzip

    data = tmp_path / "d.jsonl.gz"
    data.write_bytes(gzip.compress((RECORD_TEXT + "\n").encode()))
    result = runner.invoke(app, [*command, str(data)])
    assert result.exit_code in (1, 2) and "the file is gzip-compressed" in result.output and f"gunzip -k {data}" in result.output
