"""`yayi data validate --prompts` and `yayi data split --prompts`: prompt records (GRPO, eval --task reward)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO, yayi
from yayi_cli.core.record_files import load_prompt_records
from yayi_cli.data import scan
from yayi_cli.data.options import SplitOptions, ValidateOptions
from yayi_cli.data.split import split
from yayi_cli.data.validate import validate


PROMPT_EXAMPLES = REPO / "examples" / "prompts.jsonl"


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def problems(report):
    return [(p.line, f"{p.severity}:{p.code}") for p in report.tally.problems]


def review(text, label):
    return {"instruction": "情感？", "input": text, "label": label}


def test_the_example_prompts_are_valid_prompt_records_of_every_shape():
    document = validate(ValidateOptions([PROMPT_EXAMPLES], prompts=True)).to_json()
    assert document["ok"], document["problems"]
    assert document["totals"]["kinds"] == {"sft": 0, "paired": 0, "unpaired": 0, "prompts": 8}
    assert all(document["totals"]["shapes"].values())
    assert len(load_prompt_records([PROMPT_EXAMPLES])) == 8  # what train --method grpo reads


def test_without_prompts_a_question_without_its_answer_stays_an_error():
    report = validate(ValidateOptions([PROMPT_EXAMPLES]))
    assert report.errors == 8 and not report.ok


@pytest.mark.parametrize("record, code", [
    ({"instruction": "q", "output": "a", "label": "x"}, "has-answer"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": "x"}, "has-answer"),
    ({"prompt": "q", "completion": "a", "label": "x"}, "has-answer"),
    ({"prompt": "q<|End|>", "label": "x"}, "marker-in-text"),
    ({"label": "x"}, "unknown-shape"),
    ({"instruction": "q", "answer": "x"}, "mixed-fields"),
])
def test_each_bad_prompt_record_is_an_error_at_its_line(tmp_path, record, code):
    path = write_jsonl(tmp_path / "p.jsonl", [review("好", "正面"), record, review("差", "负面")])
    report = validate(ValidateOptions([path], prompts=True))
    assert problems(report) == [(2, f"error:{code}")] and not report.ok
    assert str(report.tally.problems[0]).startswith(f"{path}:2: error: ")


def test_repeated_questions_are_warned_about_with_or_without_the_same_fields(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [review("好", "正面"), review("好", "负面"), review("好", "正面")])
    report = validate(ValidateOptions([path], prompts=True))
    assert problems(report) == [(2, "warning:conflicting-answer"), (3, "warning:duplicate")]
    assert "no answer can earn both rewards" in report.tally.problems[0].message
    assert report.ok and not validate(ValidateOptions([path], prompts=True, strict=True)).ok


def test_the_parallel_pass_reads_prompt_records_too(tmp_path, monkeypatch):
    monkeypatch.setattr(scan, "RANGE_BYTES", 256)  # many ranges, each checked in a worker process
    records = [review(f"评论{n}", "正面") for n in range(60)]
    records[45] = {"instruction": "q", "answer": "x"}
    path = write_jsonl(tmp_path / "p.jsonl", records)
    report = validate(ValidateOptions([path], prompts=True, workers=2))
    assert report.to_json()["totals"]["kinds"]["prompts"] == 60
    assert problems(report) == [(46, "error:mixed-fields")]


def test_with_a_model_a_prompt_longer_than_max_length_is_warned_about(tiny_model_dirs, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [review("好", "正面"), review("很长的评论" * 20, "负面")])
    model = str(tiny_model_dirs["llama"])
    short, long = validate(ValidateOptions([path], prompts=True, model=model)).tokens.lengths  # the system text and all
    assert short < long
    report = validate(ValidateOptions([path], prompts=True, model=model, max_length=short))
    assert problems(report) == [(2, "warning:prompt-too-long")]
    assert report.tokens.to_json()["truncated"] == 1


def test_split_copies_prompt_records_with_their_fields_and_refuses_mixed_fields(tmp_path):
    records = [review(f"评论{n}", "正面" if n % 2 else "负面") for n in range(10)]
    path = write_jsonl(tmp_path / "p.jsonl", records)
    result = yayi("data", "split", "--prompts", str(path), "--test-size", "3", "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    train, test = ((tmp_path / "out" / name).read_text(encoding="utf-8").splitlines() for name in ("train.jsonl", "test.jsonl"))
    assert len(test) == 3 and sorted(train + test) == sorted(path.read_text(encoding="utf-8").splitlines())
    assert len(load_prompt_records([tmp_path / "out" / "test.jsonl"])) == 3

    write_jsonl(path, [*records, {"instruction": "q", "answer": "x"}])
    with pytest.raises(Exception, match=r"p.jsonl:11: fields \['answer'\] differ"):
        split(SplitOptions([path], test_size=3, output=tmp_path / "again", prompts=True, skip_invalid=True))
    assert not (tmp_path / "again").exists()
