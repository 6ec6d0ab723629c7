"""The one check loop every reader shares: valid records in order, each invalid one reported."""

from __future__ import annotations

import pytest

from yayi_cli.core.reader import read_records
from yayi_cli.core.record_files import Problem, load_records, valid_records
from yayi_cli.core.records import NO_DOMAIN
from yayi_cli.runtime.errors import DataError


LINES = [
    '{"instruction": "【舆情领域任务】判断情感", "output": "正面"}',
    '{"instruction": "no answer"}',
    "not json",
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}',
]


def test_valid_records_come_in_order_and_every_invalid_one_reaches_on_problem(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    problems: list[Problem] = []
    valid = list(valid_records(read_records(path), lambda source, problem: problems.append(problem)))
    assert [source.line for source, _ in valid] == [1, 4]
    assert [record.domain for _, record in valid] == ["舆情领域任务", NO_DOMAIN]
    assert [(p.line, p.code) for p in problems] == [(2, "missing-field"), (3, "invalid-json")]


def test_load_records_refuses_invalid_data_pointing_at_data_validate(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"2 invalid record\(s\), the first at {path}:2: .*`yayi data validate`"):
        load_records([path])


def test_load_records_of_empty_files_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="no records in"):
        load_records([path])
