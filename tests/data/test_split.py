"""`yayi data split`: deterministic, disjoint, stratified, and never a partial or clobbered output."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from typer.testing import CliRunner

from tests.helpers import SAMPLE_DATA
from yayi_cli.cli import app
from yayi_cli.data import split as split_module
from yayi_cli.data.split import allocate, parse_test_size, split
from yayi_cli.errors import DataError, UsageError

runner = CliRunner()
DOMAINS = {"媒宣领域任务": 50, "舆情领域任务": 30, "公共安全领域任务": 12, "金融风控领域任务": 5, None: 3}


def domain_data(path):
    lines = []
    for domain, count in DOMAINS.items():
        prefix = f"【{domain}】" if domain else ""
        lines += [json.dumps({"instruction": f"{prefix}问题{i}", "output": f"回答{i}"}, ensure_ascii=False) for i in range(count)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_the_same_inputs_and_seed_give_byte_identical_outputs(tmp_path):
    data = domain_data(tmp_path / "d.jsonl")
    for out in ("a", "b"):
        split([data], tmp_path / out, test_size=10, stratify=True)
    for name in ("train.jsonl", "test.jsonl", "split.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    split([data], tmp_path / "c", test_size=10, stratify=True, seed=1)
    assert (tmp_path / "c" / "test.jsonl").read_bytes() != (tmp_path / "a" / "test.jsonl").read_bytes()


def test_the_selection_is_pinned_so_it_never_changes_between_versions(tmp_path):
    """Test records are the positions with the smallest BLAKE2b-64 of "seed NUL stratum NUL position"."""
    split([SAMPLE_DATA], tmp_path / "out", test_size=4)
    sample = read_lines(SAMPLE_DATA)
    lines = [sample.index(line) + 1 for line in read_lines(tmp_path / "out" / "test.jsonl")]
    by_key = sorted(range(20), key=lambda p: hashlib.blake2b(f"515\x00\x00{p}".encode(), digest_size=8).digest())
    assert lines == sorted(p + 1 for p in by_key[:4]) == [1, 9, 10, 14]


def test_train_and_test_are_disjoint_and_together_exactly_the_input(tmp_path):
    data = domain_data(tmp_path / "d.jsonl")
    report = split([data], tmp_path / "out", test_size=0.25)
    train, test = read_lines(tmp_path / "out" / "train.jsonl"), read_lines(tmp_path / "out" / "test.jsonl")
    assert (len(test), report.test, report.train) == (25, 25, 75)
    assert not set(train) & set(test)
    assert Counter(train + test) == Counter(read_lines(data))


def test_stratified_test_keeps_each_domains_share_within_one_record(tmp_path):
    data = domain_data(tmp_path / "d.jsonl")
    split([data], tmp_path / "out", test_size=17, stratify=True)
    test = read_lines(tmp_path / "out" / "test.jsonl")
    total = sum(DOMAINS.values())
    for domain, count in DOMAINS.items():
        in_test = sum((f"【{domain}】" in line) if domain else ("【" not in line) for line in test)
        assert abs(in_test - 17 * count / total) < 1, domain
    strata = json.loads((tmp_path / "out" / "split.json").read_text())["strata"]
    assert sum(s["test"] for s in strata.values()) == 17 and strata["(none)"]["records"] == 3


def test_allocation_by_largest_remainder():
    assert allocate(10, {"a": 50, "b": 30, "c": 20}) == {"a": 5, "b": 3, "c": 2}
    assert allocate(3, {"a": 1, "b": 1, "c": 1, "d": 1}) == {"a": 1, "b": 1, "c": 1, "d": 0}
    assert allocate(0.1, {"a": 11}) == {"a": 2}  # fractions round up, as scikit-learn does


@pytest.mark.parametrize("text, value", [("400", 400), ("0.05", 0.05), ("1", 1)])
def test_test_size_is_a_count_or_a_fraction(text, value):
    assert parse_test_size(text) == value


@pytest.mark.parametrize("text", ["0", "1.5", "-3", "abc", "2.0"])
def test_impossible_test_sizes_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_test_size(text)


def test_a_test_set_that_leaves_no_training_data_is_refused(tmp_path):
    with pytest.raises(UsageError, match="asks for 20 test records out of 20"):
        split([SAMPLE_DATA], tmp_path / "out", test_size=20)
    assert not (tmp_path / "out").exists()


def test_invalid_input_is_refused_unless_skipped(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n{"instruction": "x"}\n' + '{"instruction": "q2", "output": "b"}\n' * 3)
    with pytest.raises(DataError, match=rf"1 invalid record\(s\), the first at {data}:2 \(field 'output' is missing\); `yayi data validate`"):
        split([data], tmp_path / "out", test_size=1)
    assert not (tmp_path / "out" / "train.jsonl").exists()
    report = split([data], tmp_path / "out", test_size=1, skip_invalid=True)
    assert report.to_json()["counts"] == {"records": 5, "invalid_skipped": 1, "duplicates_dropped": 0, "train": 3, "test": 1}


def test_dedupe_drops_later_copies_only(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n{"output": "a", "instruction": "q"}\n{"instruction": "q", "output": "b"}\n{"instruction": "r", "output": "a"}\n')
    report = split([data], tmp_path / "out", test_size=1, dedupe=True)
    assert report.to_json()["counts"]["duplicates_dropped"] == 1
    written = read_lines(tmp_path / "out" / "train.jsonl") + read_lines(tmp_path / "out" / "test.jsonl")
    assert sorted(written) == sorted(read_lines(data)[i] for i in (0, 2, 3))


def test_array_items_lose_only_their_line_breaks(tmp_path):
    data = tmp_path / "d.json"
    data.write_text('[{"instruction":"q1",  "output":"a"},\n {\n  "instruction": "q2",\n  "output": "b"\n}]')
    split([data], tmp_path / "out", test_size=1)
    written = sorted(read_lines(tmp_path / "out" / "train.jsonl") + read_lines(tmp_path / "out" / "test.jsonl"))
    assert written == ['{  "instruction": "q2",  "output": "b"}', '{"instruction":"q1",  "output":"a"}']


def test_existing_outputs_and_inputs_are_never_overwritten(tmp_path):
    split([SAMPLE_DATA], tmp_path / "out", test_size=2)
    before = (tmp_path / "out" / "test.jsonl").read_bytes()
    with pytest.raises(UsageError, match="already exists; use --force"):
        split([SAMPLE_DATA], tmp_path / "out", test_size=3)
    assert (tmp_path / "out" / "test.jsonl").read_bytes() == before
    split([SAMPLE_DATA], tmp_path / "out", test_size=3, force=True)
    assert len(read_lines(tmp_path / "out" / "test.jsonl")) == 3
    own = tmp_path / "out" / "train.jsonl"
    with pytest.raises(UsageError, match="is one of the inputs"):
        split([own], tmp_path / "out", test_size=1, force=True)


def test_a_failure_mid_write_leaves_no_output_and_no_temp_file(tmp_path, monkeypatch):
    written = []

    def failing_line(source):
        written.append(source)
        if len(written) == 10:
            raise KeyboardInterrupt
        return source.raw + "\n"

    monkeypatch.setattr(split_module, "_line", failing_line)
    with pytest.raises(KeyboardInterrupt):
        split([SAMPLE_DATA], tmp_path / "out", test_size=2)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_a_killed_split_leaves_the_previous_outputs_whole(tmp_path):
    data = tmp_path / "big.jsonl"
    with open(data, "w", encoding="utf-8") as handle:
        for i in range(300_000):
            handle.write(json.dumps({"instruction": f"问题 {i}", "output": f"回答 {i}"}, ensure_ascii=False) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("previous train\n")
    command = [sys.executable, "-m", "yayi_cli", "data", "split", str(data), "--test-size", "100", "-o", str(out), "--force"]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob(".train.jsonl.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # well into writing
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert (out / "train.jsonl").read_text() == "previous train\n"
    assert not (out / "test.jsonl").exists() and not (out / "split.json").exists()


def test_the_cli_writes_the_three_files_and_reports_counts(tmp_path):
    result = runner.invoke(app, ["data", "split", str(SAMPLE_DATA), "--test-size", "0.2", "-o", str(tmp_path / "o"), "--stratify", "domain", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["counts"]["test"] == 4 and document["stratify"] == "domain"
    assert document == json.loads((tmp_path / "o" / "split.json").read_text())
    assert document["inputs"][0]["sha256"] == hashlib.sha256(SAMPLE_DATA.read_bytes()).hexdigest()
    again = runner.invoke(app, ["data", "split", str(SAMPLE_DATA), "--test-size", "0.2", "-o", str(tmp_path / "o")])
    assert again.exit_code == 2 and "already exists" in again.stderr
    bad = runner.invoke(app, ["data", "split", str(SAMPLE_DATA), "--test-size", "lots", "-o", str(tmp_path / "p")])
    assert bad.exit_code == 2 and "--test-size 'lots'" in bad.stderr
