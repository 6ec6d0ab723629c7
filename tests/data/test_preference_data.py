"""`yayi data validate`, `split` and `preview` on preference records (DPO pairs, KTO completions)."""

from __future__ import annotations

import json
from collections import Counter

from typer.testing import CliRunner

from tests.helpers import PAIRS, REPO, SAMPLE_DATA, split_into, yayi
from yayi_cli.core.preference_tokens import encode_preferences
from yayi_cli.core.prompt import TEMPLATES, PromptTokenizer, render_training
from yayi_cli.core.record_files import load_records
from yayi_cli.core.records import answered, parse_record
from yayi_cli.data import scan
from yayi_cli.data.options import ValidateOptions
from yayi_cli.data.validate import validate


runner = CliRunner()
PREFERENCE_DATA = REPO / "examples" / "preference.jsonl"
FEEDBACK_DATA = REPO / "examples" / "feedback.jsonl"
COMPLETIONS = [{"instruction": "q", "completion": "a", "label": True}, {"instruction": "q", "completion": "b", "label": False}]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def problems(report):
    return [(p.line, f"{p.severity}:{p.code}") for p in report.tally.problems]


PAIRED_NAME, SFT_NAME, UNPAIRED_NAME = ("preference pairs (chosen/rejected)", "SFT records (with their answers)",
                                       "unpaired preference records (completion/label)")


def mixing(first_kind, first, kind, where):
    """What `KindMixer` says at `where`, the first record of `kind`, when `first` began the data
    with `first_kind` (both instruction records)."""
    return (f"the data mixes {first_kind} (the first at {first} (instruction)) with {kind} (the first at {where} "
            "(instruction)); one training set holds one kind: put them in separate files")


# --- validate ------------------------------------------------------------------------------------


def test_statistics_count_records_per_kind_and_per_shape():
    document = validate(ValidateOptions([PREFERENCE_DATA, FEEDBACK_DATA, SAMPLE_DATA])).to_json()
    kinds = [file["kinds"] for file in document["files"]]
    assert kinds == [{"sft": 0, "paired": 5, "unpaired": 0, "prompts": 0}, {"sft": 0, "paired": 0, "unpaired": 4, "prompts": 0},
                     {"sft": 20, "paired": 0, "unpaired": 0, "prompts": 0}]
    assert document["totals"]["kinds"] == {"sft": 20, "paired": 5, "unpaired": 4, "prompts": 0}
    assert document["files"][0]["shapes"] == {"instruction": 2, "conversations": 1, "messages": 1, "prompt": 1}
    assert document["files"][1]["shapes"] == {"instruction": 2, "conversations": 0, "messages": 1, "prompt": 1}
    assert document["files"][0]["turns"] == 5 * 2 + 4 + 3  # two answers each, after a question (one: three turns)
    table = yayi("data", "validate", str(PREFERENCE_DATA))
    assert table.exit_code == 0, table.output
    rows = {cells[1]: cells[3] for cells in map(str.split, table.stdout.splitlines()) if len(cells) == 5}  # │ name │ n │
    assert (rows["sft"], rows["paired"], rows["unpaired"], rows["prompt"]) == ("0", "5", "0", "1")


def test_one_kind_alone_validates_without_a_warning():
    """Several pairs or labelled completions for one prompt are what preference data looks like."""
    for path in (PREFERENCE_DATA, FEEDBACK_DATA):
        report = validate(ValidateOptions([path], strict=True))
        assert report.ok and report.warnings == 0


def test_mixing_kinds_is_an_error_at_the_first_record_of_each_later_kind(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [PAIRS[0], PAIRS[1], {"instruction": "q", "output": "a"}, PAIRS[2], COMPLETIONS[0]])
    result = yayi("data", "validate", str(path))
    assert result.exit_code == 1
    lines = [line for line in result.stdout.splitlines() if ": error: " in line]
    assert lines == [f"{path}:3: error: " + mixing(PAIRED_NAME, f"{path}:1", SFT_NAME, f"{path}:3"),
                     f"{path}:5: error: " + mixing(PAIRED_NAME, f"{path}:1", UNPAIRED_NAME, f"{path}:5")]
    document = json.loads(yayi("data", "validate", str(path), "--json").stdout)
    assert document["problem_counts"] == {"error:mixed-kinds": 2}
    assert document["totals"]["kinds"] == {"sft": 1, "paired": 3, "unpaired": 1, "prompts": 0}


def test_mixing_across_files_and_worker_processes_names_the_same_records(tmp_path, monkeypatch):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS * 20)
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"instruction": f"q{i}", "output": "a"} for i in range(50)])
    serial = validate(ValidateOptions([pairs, sft], workers=1))
    monkeypatch.setattr(scan, "RANGE_BYTES", 300)
    parallel = validate(ValidateOptions([pairs, sft], workers=2))
    assert parallel.to_json() == serial.to_json()
    (problem,) = [p for p in serial.tally.problems if p.severity == "error"]
    assert (problem.path, problem.line, problem.code) == (str(sft), 1, "mixed-kinds")
    assert f"(the first at {pairs}:1 (instruction))" in problem.message


def test_broken_preference_records_are_errors_at_their_lines(tmp_path):
    path = write_jsonl(tmp_path / "broken.jsonl", [
        {"instruction": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "chosen": " ", "rejected": "b"},
        {"messages": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": [{"role": "assistant", "content": "b <|End|>"}]},
        {"instruction": "q", "output": "a", "chosen": "a", "rejected": "b"},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "yayi", "value": "a"}], "chosen": "a", "rejected": "b"},
        {"instruction": "q", "chosen": "a"},
        PAIRS[0],
    ])
    report = validate(ValidateOptions([path]))
    assert problems(report) == [(1, "error:same-answers"), (2, "error:empty-field"), (3, "error:marker-in-text"),
                                (4, "error:mixed-shape"), (5, "error:bad-turn-order"), (6, "error:missing-field")]
    result = yayi("data", "validate", str(path))
    assert result.exit_code == 1
    assert f"{path}:1: error: fields 'chosen' and 'rejected' are the same answer" in result.stdout
    assert f"{path}:3: error: field 'rejected'[0].content contains the marker '<|End|>'" in result.stdout


def test_repeated_preference_records_are_duplicates_and_the_same_answers_judged_the_other_way_a_conflict(tmp_path):
    pair = {"instruction": "q", "chosen": "good", "rejected": "bad"}
    swapped = {**pair, "chosen": "bad", "rejected": "good"}
    another = {**pair, "rejected": "worse"}
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [pair, another, pair, swapped])
    report = validate(ValidateOptions([pairs]))
    assert problems(report) == [(3, "warning:duplicate"), (4, "warning:conflicting-preference")]
    assert report.tally.problems[1].message == f"same prompt and answers as the record at {pairs}:1, judged the other way"
    labelled = write_jsonl(tmp_path / "labelled.jsonl", [*COMPLETIONS, {**COMPLETIONS[0], "label": False}, COMPLETIONS[1]])
    assert problems(validate(ValidateOptions([labelled]))) == [(3, "warning:conflicting-preference"), (4, "warning:duplicate")]


def test_with_a_model_a_pair_counts_its_prompt_and_longest_answer(tiny_model_dirs, tiny_tokenizers, tmp_path):
    pair = {"instruction": "什么是雅意？", "chosen": "雅意是一个大语言模型。" * 4, "rejected": "不知道。"}
    path = write_jsonl(tmp_path / "pairs.jsonl", [pair])
    model = str(tiny_model_dirs["llama"])
    untruncated = validate(ValidateOptions([path], model=model))
    prompt_tokenizer = PromptTokenizer(TEMPLATES[untruncated.tokens.template], tiny_tokenizers["llama"])
    (encoded,) = encode_preferences(load_records([path]), prompt_tokenizer)
    prompt, chosen, rejected = len(encoded.prompt_ids), *map(len, encoded.answer_ids)
    assert list(untruncated.tokens.lengths) == [prompt + chosen] and untruncated.tokens.truncated == 0

    limit = prompt + rejected + 2  # cuts the chosen answer only
    cut = validate(ValidateOptions([path], model=model, max_length=limit))
    assert problems(cut) == [(1, "warning:truncated")]
    assert cut.tally.problems[0].message == (f"{prompt + chosen} tokens, more than --max-length {limit}: "
                                             f"{chosen - rejected - 2} of {chosen + rejected} answer tokens would be lost")
    too_long = validate(ValidateOptions([path], model=model, max_length=prompt))
    assert problems(too_long) == [(1, "warning:no-answer-tokens")]
    tokens = too_long.to_json()["tokens"]
    assert (tokens["truncated"], tokens["no_answer_tokens"], tokens["max"]) == (1, 1, prompt + chosen)
    assert not validate(ValidateOptions([path], model=model, max_length=prompt, strict=True)).ok


def test_a_special_token_of_the_model_in_an_answer_is_an_error(tiny_model_dirs, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"instruction": "q", "chosen": "a", "rejected": "b </s>"}])
    report = validate(ValidateOptions([path], model=str(tiny_model_dirs["bloom"])))
    assert problems(report) == [(1, "error:special-token")] and not report.ok


# --- split ---------------------------------------------------------------------------------------


def domain_pairs(path):
    """12 pairs in the four shapes, in domains 甲 (6), 乙 (4) and none (2), named by the first human message."""
    records = []
    for number, domain in enumerate(["甲"] * 6 + ["乙"] * 4 + [None] * 2):
        question = (f"【{domain}】" if domain else "") + f"问题{number}"
        shapes = [
            {"instruction": question},
            {"conversations": [{"from": "human", "value": question}, {"from": "yayi", "value": "嗯"},
                               {"from": "human", "value": "【乙】再说一遍"}]},
            {"messages": [{"role": "system", "content": "【乙】系统"}, {"role": "user", "content": question}]},
            {"prompt": question},
        ]
        records.append({**shapes[number % 4], "chosen": f"好答案{number}", "rejected": f"坏答案{number}"})
    return write_jsonl(path, records)


def test_split_copies_preference_records_stratified_by_the_domain_of_the_first_human_message(tmp_path):
    data = domain_pairs(tmp_path / "pairs.jsonl")
    for out in ("a", "b"):
        report = split_into(tmp_path / out, data, test_size=6, stratify="domain")
    for name in ("train.jsonl", "test.jsonl", "split.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train = (tmp_path / "a" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    test = (tmp_path / "a" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    assert Counter(train + test) == Counter(data.read_text(encoding="utf-8").splitlines())
    assert (report.train, report.test) == (6, 6)
    strata = json.loads((tmp_path / "a" / "split.json").read_text())["strata"]
    assert strata == {"(none)": {"records": 2, "test": 1}, "乙": {"records": 4, "test": 2}, "甲": {"records": 6, "test": 3}}
    assert {parse_record(json.loads(line)).kind for line in test} == {"paired"}


def test_split_refuses_mixed_kinds_with_one_error_line_and_writes_nothing(tmp_path):
    for extra in ([], ["--skip-invalid"]):
        result = yayi("data", "split", str(PREFERENCE_DATA), str(SAMPLE_DATA), "--test-size", "2", "-o", str(tmp_path / "out"), *extra)
        assert result.exit_code == 1
        expected = f"error: {SAMPLE_DATA}:1: " + mixing(PAIRED_NAME, f"{PREFERENCE_DATA}:1", SFT_NAME, f"{SAMPLE_DATA}:1")
        assert result.stderr.splitlines() == [expected]
        assert not (tmp_path / "out").exists()


# --- preview -------------------------------------------------------------------------------------


def test_preview_shows_a_pairs_prompt_once_then_chosen_and_rejected_with_their_loss():
    result = yayi("data", "preview", str(PREFERENCE_DATA), "-n", "3")
    assert result.exit_code == 0, result.output
    third = result.stdout.split(f"{PREFERENCE_DATA}:3")[1]
    assert third.count("<|Human|>:\nWhat is 2 + 2?") == 1 and third.count("And times 3?") == 1
    assert "<|YaYi|>:\n4.\n\n<|End|>\n\n<|Human|>" in third  # the history's answer carries no loss
    chosen, rejected = third.index("── chosen"), third.index("── rejected")
    assert third.index("And times 3?") < chosen < third.index("⟦(2 + 2) × 3 = 12.\n\n<|End|>⟧") < rejected
    assert rejected < third.index("⟦2 + 2 × 3 = 8.\n\n<|End|>⟧")
    assert "paired" in third.splitlines()[0]


def test_preview_shows_an_unpaired_completion_with_its_label():
    result = yayi("data", "preview", str(FEEDBACK_DATA), "-n", "2")
    assert result.exit_code == 0, result.output
    second = result.stdout.split(f"{FEEDBACK_DATA}:2")[1]
    assert "── completion · label false" in second and "⟦Goodbye.\n\n<|End|>⟧" in second
    assert "── chosen" not in result.stdout


def test_preview_json_gives_the_prompt_and_each_answer_as_it_follows_the_prompt():
    document = json.loads(yayi("data", "preview", str(PREFERENCE_DATA), "-n", "5", "--json").stdout)
    for item, line in zip(document["records"], PREFERENCE_DATA.read_text(encoding="utf-8").splitlines()):
        parsed = parse_record(json.loads(line))
        assert (item["kind"], item["label"]) == ("paired", None)
        assert item["prompt"].endswith("<|YaYi|>:\n")
        assert [answer["field"] for answer in item["answers"]] == ["chosen", "rejected"]
        for answer, text in zip(item["answers"], parsed.answers):
            assert item["prompt"] + answer["text"] == render_training(answered(parsed.conversation, text), TEMPLATES["yayi"]).text
            assert [answer["text"][start:end] for start, end in answer["spans"]] == [text + "\n\n<|End|>"]
    unpaired = json.loads(yayi("data", "preview", str(FEEDBACK_DATA), "-n", "2", "--json").stdout)["records"]
    assert [(item["kind"], item["label"], [a["field"] for a in item["answers"]]) for item in unpaired] == [
        ("unpaired", True, ["completion"]), ("unpaired", False, ["completion"])]


def test_preview_with_a_tokenizer_counts_the_prompt_and_each_answers_tokens(tiny_model_dirs, tiny_tokenizers):
    result = yayi("data", "preview", str(PREFERENCE_DATA), "-n", "5", "--model", str(tiny_model_dirs["llama"]), "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    prompt_tokenizer = PromptTokenizer(TEMPLATES[document["template"]], tiny_tokenizers["llama"])
    encoded = encode_preferences(load_records([PREFERENCE_DATA]), prompt_tokenizer)
    for item, expected in zip(document["records"], encoded):
        assert item["prompt_tokens"] == len(expected.prompt_ids)
        assert [(a["num_tokens"], a["num_loss_tokens"]) for a in item["answers"]] == [
            (len(expected.prompt_ids) + len(ids), len(ids)) for ids in expected.answer_ids]
    human = yayi("data", "preview", str(FEEDBACK_DATA), "-n", "1", "--model", str(tiny_model_dirs["llama"]))
    assert human.exit_code == 0 and "none with loss" in human.stdout and "<|End|>" in human.stdout.split("── completion")[1]
