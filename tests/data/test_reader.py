"""Streaming every accepted file layout, with exact line numbers and the records' own text."""

from __future__ import annotations

import json

import pytest

from yayi_cli.core import reader
from yayi_cli.core.reader import read_records
from yayi_cli.runtime.errors import UsageError


RECORDS = [{"instruction": "你好", "output": "hello"}, {"conversations": [{"from": "human", "value": "q"}]}, {"n": 12345}]


def write(tmp_path, name: str, content: bytes | str):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_json_lines_keep_line_numbers_across_blank_lines_and_crlf(tmp_path):
    lines = [json.dumps(r, ensure_ascii=False) for r in RECORDS]
    path = write(tmp_path, "d.jsonl", "\ufeff" + lines[0] + "\r\n\r\n" + lines[1] + "\n  \n" + lines[2])
    found = list(read_records(path))
    assert [(r.line, r.index, r.value) for r in found] == [(1, 0, RECORDS[0]), (3, 1, RECORDS[1]), (5, 2, RECORDS[2])]
    assert [r.raw for r in found] == lines
    assert found[1].location == f"{path}:3"


def test_a_json_file_may_hold_json_lines_like_the_upstream_example(tmp_path):
    path = write(tmp_path, "d.json", "\n".join(json.dumps(r) for r in RECORDS))
    assert [r.value for r in read_records(path)] == RECORDS


def test_bad_lines_are_reported_and_reading_goes_on(tmp_path):
    path = write(tmp_path, "d.jsonl", b'{"a": 1}\n{"a": \n\xff\xfe{}\n{"a": 2}\n')
    found = list(read_records(path))
    assert [(r.line, r.error is None) for r in found] == [(1, True), (2, False), (3, False), (4, True)]
    assert found[1].error.startswith("invalid JSON: Expecting value")
    assert found[2].error == "invalid UTF-8 at byte 1 of the line"


@pytest.mark.parametrize("chunk_chars", [3, 7, 1 << 20])
def test_a_json_array_is_streamed_with_each_items_line_and_text(tmp_path, monkeypatch, chunk_chars):
    monkeypatch.setattr(reader, "CHUNK_CHARS", chunk_chars)
    text = "\ufeff[\n  " + ",\n  ".join(json.dumps(r, ensure_ascii=False, indent=1) for r in RECORDS) + "\n]\n"
    path = write(tmp_path, "d.json", text)
    found = list(read_records(path))
    assert [r.value for r in found] == RECORDS
    assert [r.error for r in found] == [None] * 3
    body = text.lstrip("\ufeff")
    assert [r.line for r in found] == [body[: body.index(r.raw)].count("\n") + 1 for r in found]
    assert [json.loads(r.raw) for r in found] == RECORDS


def test_an_empty_array_has_no_records(tmp_path):
    assert list(read_records(write(tmp_path, "d.json", " [ ] "))) == []


@pytest.mark.parametrize(
    "text, line, error",
    [
        ('[{"a": 1}\n{"a": 2}]', 2, "expected ',' or ']' between array items, found '{'"),
        ('[{"a": 1},\n{"a": }]', 2, "invalid JSON: Expecting value"),
        ('[{"a": 1},\n{"a": 2}', 2, "expected ',' or ']' between array items, found end of file"),
    ],
)
def test_a_broken_array_reports_where_it_breaks(tmp_path, text, line, error):
    found = list(read_records(write(tmp_path, "d.json", text)))
    assert found[0].value == {"a": 1}
    assert found[-1].line == line and error in found[-1].error


def test_invalid_utf8_in_an_array_is_reported(tmp_path):
    found = list(read_records(write(tmp_path, "d.json", b'[{"a": "\xff"}]')))
    assert found[-1].error == "invalid UTF-8; the file must be UTF-8 encoded"


def test_missing_files_and_directories_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file") as missing:
        list(read_records(tmp_path / "nope.jsonl"))
    assert missing.value.exit_code == 2
    with pytest.raises(UsageError, match="is a directory"):
        list(read_records(tmp_path))


def test_pretty_printed_objects_one_after_another_in_a_json_file(tmp_path):
    body = "\n".join(json.dumps(r, ensure_ascii=False, indent=2) for r in RECORDS[:2])
    found = list(read_records(write(tmp_path, "d.json", body)))
    assert [(r.line, r.value) for r in found] == [(1, RECORDS[0]), (5, RECORDS[1])]
    one = list(read_records(write(tmp_path, "one.json", json.dumps(RECORDS[0], indent=2))))
    assert [r.value for r in one] == [RECORDS[0]]
