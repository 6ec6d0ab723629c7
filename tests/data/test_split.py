"""`yayi data split`: deterministic, disjoint, stratified, and never a partial or clobbered output."""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import signal
import subprocess
import sys
from collections import Counter

import pytest
from typer.testing import CliRunner

from tests.helpers import SAMPLE_DATA, split_into, start
from yayi_cli.cli.app import app
from yayi_cli.data import split as split_module
from yayi_cli.runtime import atomic
from yayi_cli.runtime.errors import DataError, UsageError


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
        split_into(tmp_path / out, data, test_size=10, stratify="domain")
    for name in ("train.jsonl", "test.jsonl", "split.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    split_into(tmp_path / "c", data, test_size=10, stratify="domain", seed=1)
    assert (tmp_path / "c" / "test.jsonl").read_bytes() != (tmp_path / "a" / "test.jsonl").read_bytes()


def test_the_selection_is_pinned_so_it_never_changes_between_versions(tmp_path):
    """Test records are the positions with the smallest BLAKE2b-64 of "seed NUL stratum NUL position"."""
    split_into(tmp_path / "out", SAMPLE_DATA, test_size=4)
    sample = read_lines(SAMPLE_DATA)
    lines = [sample.index(line) + 1 for line in read_lines(tmp_path / "out" / "test.jsonl")]
    by_key = sorted(range(20), key=lambda p: hashlib.blake2b(f"515\x00\x00{p}".encode(), digest_size=8).digest())
    assert lines == sorted(p + 1 for p in by_key[:4]) == [1, 9, 10, 14]


def test_train_and_test_are_disjoint_and_together_exactly_the_input(tmp_path):
    data = domain_data(tmp_path / "d.jsonl")
    report = split_into(tmp_path / "out", data, test_size=0.25)
    train, test = read_lines(tmp_path / "out" / "train.jsonl"), read_lines(tmp_path / "out" / "test.jsonl")
    assert (len(test), report.test, report.train) == (25, 25, 75)
    assert not set(train) & set(test)
    assert Counter(train + test) == Counter(read_lines(data))


def test_stratified_test_keeps_each_domains_share_within_one_record(tmp_path):
    data = domain_data(tmp_path / "d.jsonl")
    split_into(tmp_path / "out", data, test_size=17, stratify="domain")
    test = read_lines(tmp_path / "out" / "test.jsonl")
    total = sum(DOMAINS.values())
    for domain, count in DOMAINS.items():
        in_test = sum((f"【{domain}】" in line) if domain else ("【" not in line) for line in test)
        assert abs(in_test - 17 * count / total) < 1, domain
    strata = json.loads((tmp_path / "out" / "split.json").read_text())["strata"]
    assert sum(s["test"] for s in strata.values()) == 17 and strata["(none)"]["records"] == 3


def test_a_test_set_that_leaves_no_training_data_is_refused(tmp_path):
    with pytest.raises(UsageError, match="asks for 20 test records out of 20"):
        split_into(tmp_path / "out", SAMPLE_DATA, test_size=20)
    assert not (tmp_path / "out").exists()


def test_a_library_call_gets_the_messages_the_cli_gives(tmp_path):
    with pytest.raises(UsageError, match="--stratify True: choose one of domain"):
        split_into(tmp_path / "out", SAMPLE_DATA, test_size=4, stratify=True)
    with pytest.raises(UsageError, match="^missing --output DIR$"):
        split_into(None, SAMPLE_DATA, test_size=4)


def test_invalid_input_is_refused_unless_skipped(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n{"instruction": "x"}\n' + '{"instruction": "q2", "output": "b"}\n' * 3)
    with pytest.raises(DataError, match=rf"1 invalid record\(s\), the first at {data}:2 \(field 'output' is missing\); `yayi data validate`"):
        split_into(tmp_path / "out", data, test_size=1)
    assert not (tmp_path / "out" / "train.jsonl").exists()
    report = split_into(tmp_path / "out", data, test_size=1, skip_invalid=True)
    assert report.to_json()["counts"] == {"records": 5, "invalid_skipped": 1, "duplicates_dropped": 0, "train": 3, "test": 1}


def test_dedupe_drops_later_copies_only(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n{"output": "a", "instruction": "q"}\n{"instruction": "q", "output": "b"}\n{"instruction": "r", "output": "a"}\n')
    report = split_into(tmp_path / "out", data, test_size=1, dedupe=True)
    assert report.to_json()["counts"]["duplicates_dropped"] == 1
    written = read_lines(tmp_path / "out" / "train.jsonl") + read_lines(tmp_path / "out" / "test.jsonl")
    assert sorted(written) == sorted(read_lines(data)[i] for i in (0, 2, 3))


def test_array_items_lose_only_their_line_breaks(tmp_path):
    data = tmp_path / "d.json"
    data.write_text('[{"instruction":"q1",  "output":"a"},\n {\n  "instruction": "q2",\n  "output": "b"\n}]')
    split_into(tmp_path / "out", data, test_size=1)
    written = sorted(read_lines(tmp_path / "out" / "train.jsonl") + read_lines(tmp_path / "out" / "test.jsonl"))
    assert written == ['{  "instruction": "q2",  "output": "b"}', '{"instruction":"q1",  "output":"a"}']


def test_existing_outputs_and_inputs_are_never_overwritten(tmp_path):
    split_into(tmp_path / "out", SAMPLE_DATA, test_size=2)
    before = (tmp_path / "out" / "test.jsonl").read_bytes()
    with pytest.raises(UsageError, match="already exists; use --force"):
        split_into(tmp_path / "out", SAMPLE_DATA, test_size=3)
    assert (tmp_path / "out" / "test.jsonl").read_bytes() == before
    split_into(tmp_path / "out", SAMPLE_DATA, test_size=3, force=True)
    assert len(read_lines(tmp_path / "out" / "test.jsonl")) == 3
    own = tmp_path / "out" / "train.jsonl"
    with pytest.raises(UsageError, match="is one of the inputs"):
        split_into(tmp_path / "out", own, test_size=1, force=True)


def test_a_failure_mid_write_leaves_no_output_and_no_temp_file(tmp_path, monkeypatch):
    copy_lines = split_module._copy_lines

    def interrupted_copy(path, numbers, to_test, train, *rest):
        copy_lines(path, numbers, to_test, train, *rest)
        train.flush()
        assert (tmp_path / "out").exists() or any(tmp_path.iterdir()), "nothing was staged: nothing was tested"
        raise KeyboardInterrupt

    monkeypatch.setattr(split_module, "_copy_lines", interrupted_copy)
    with pytest.raises(KeyboardInterrupt):
        split_into(tmp_path / "out", SAMPLE_DATA, test_size=2)
    assert list(tmp_path.iterdir()) == []  # not even the output directory it would have made


def numbered_data(path, records):
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(records):
            handle.write(json.dumps({"instruction": f"问题 {i}", "output": f"回答 {i}"}, ensure_ascii=False) + "\n")
    return path


def previous_output(out):
    out.mkdir()
    (out / "train.jsonl").write_text("previous train\n")


STOP_WHILE_WRITING = """
import sys, time
from yayi_cli.cli.app import main
from yayi_cli.data import split

copy_lines = split._copy_lines

def copy_then_wait(path, numbers, to_test, train, test, digest=None):
    copy_lines(path, numbers, to_test, train, test, digest)
    train.flush()
    print("staged", flush=True)  # the outputs are half written: the test kills the process now
    time.sleep(600)

split._copy_lines = copy_then_wait
sys.argv = ["yayi", *sys.argv[1:]]
main()
"""


def test_a_split_killed_while_writing_leaves_the_previous_outputs_whole(tmp_path):
    data, out = numbered_data(tmp_path / "data.jsonl", records=50), tmp_path / "out"
    previous_output(out)
    command = [sys.executable, "-c", STOP_WHILE_WRITING, "data", "split", str(data), "--test-size", "5", "-o", str(out), "--force"]
    process = start(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "staged\n", process.communicate()[1]
    assert [f for f in tmp_path.glob(".out.*.tmp/train.jsonl") if f.stat().st_size > 0], "nothing staged: nothing tested"
    process.kill()
    process.wait()
    assert sorted(p.name for p in out.iterdir()) == ["train.jsonl"]
    assert (out / "train.jsonl").read_text() == "previous train\n"


DIE_AFTER_FIRST_RENAME = """
import os, signal, sys
from yayi_cli.runtime import atomic
from yayi_cli.cli.app import main

def dying(step):
    def call(*args):
        result = step(*args)
        os.kill(os.getpid(), signal.SIGKILL)
        return result
    return call

os.rename, os.replace, atomic._exchange = dying(os.rename), dying(os.replace), dying(atomic._exchange)
sys.argv = ["yayi", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("existing", [False, True], ids=["new-directory", "replacing-outputs"])
def test_a_split_killed_between_renames_shows_all_new_outputs_or_the_old_ones(tmp_path, existing):
    data, out = numbered_data(tmp_path / "data.jsonl", records=50), tmp_path / "out"
    if existing:
        previous_output(out)
    command = [sys.executable, "-c", DIE_AFTER_FIRST_RENAME, "data", "split", str(data), "--test-size", "5", "-o", str(out), "--force"]
    process = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    assert process.returncode == -signal.SIGKILL, process.stderr  # it died right after its first rename
    names = sorted(p.name for p in out.iterdir())
    if existing and not swaps_directories(tmp_path):  # its first step was a swap the file system refused: nothing moved
        assert names == ["train.jsonl"] and (out / "train.jsonl").read_text() == "previous train\n"
        return
    assert names == ["split.json", "test.jsonl", "train.jsonl"]
    counts = json.loads((out / "split.json").read_text())["counts"]
    lines = {name: len((out / f"{name}.jsonl").read_text().splitlines()) for name in ("train", "test")}
    assert (counts["train"], counts["test"]) == (lines["train"], lines["test"]) == (45, 5)


def swaps_directories(folder) -> bool:
    """Whether the file system under `folder` swaps two directories in one step (what a replacing split uses)."""
    first, second = folder / "swap-a", folder / "swap-b"
    first.mkdir()
    second.mkdir()
    try:
        return atomic._exchange(first, second)
    finally:
        first.rmdir()
        second.rmdir()


def test_the_cli_writes_the_three_files_and_reports_counts(tmp_path):
    result = runner.invoke(app, ["data", "split", str(SAMPLE_DATA), "--test-size", "0.2", "-o", str(tmp_path / "o"), "--stratify", "domain", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    records = sum(1 for line in SAMPLE_DATA.read_text(encoding="utf-8").splitlines() if line.strip())
    assert document["counts"]["test"] == math.ceil(0.2 * records) and document["stratify"] == "domain"
    assert document == json.loads((tmp_path / "o" / "split.json").read_text())
    assert document["inputs"][0]["sha256"] == hashlib.sha256(SAMPLE_DATA.read_bytes()).hexdigest()
    again = runner.invoke(app, ["data", "split", str(SAMPLE_DATA), "--test-size", "0.2", "-o", str(tmp_path / "o")])
    assert again.exit_code == 2 and "already exists" in again.stderr
    bad = runner.invoke(app, ["data", "split", str(SAMPLE_DATA), "--test-size", "lots", "-o", str(tmp_path / "p")])
    assert bad.exit_code == 2 and "--test-size 'lots'" in bad.stderr


def test_lines_are_copied_byte_for_byte_without_their_crs(tmp_path):
    """A BOM, CRLF endings, blank and invalid lines go; text (a raw U+2028 or U+0085 too) stays exactly."""
    records = ['{"instruction": "q1", "output": "a\u2028b"}', '{"instruction" : "q2","output":"a\u0085"}', '{"instruction": "q3", "output": "c"}']
    data = tmp_path / "d.jsonl"
    data.write_bytes(codecs.BOM_UTF8 + "\r\n".join([records[0], "", "{broken", records[1], "   ", records[2]]).encode() + b"\r\n")
    split_into(tmp_path / "out", data, test_size=1, skip_invalid=True)
    out = tmp_path / "out"
    written = (out / "train.jsonl").read_bytes() + (out / "test.jsonl").read_bytes()
    assert sorted(written.decode().split("\n")[:-1]) == sorted(records)
    assert b"\r" not in written and (out / "test.jsonl").read_bytes().count(b"\n") == 1


def test_worker_processes_and_small_chunks_write_the_same_bytes(tmp_path, monkeypatch):
    """The parallel pass and the chunk-at-once copy give exactly what one process line by line gives."""
    from yayi_cli.core import reader
    from yayi_cli.data import scan

    data = domain_data(tmp_path / "d.jsonl")
    with open(data, "a", encoding="utf-8") as handle:
        handle.write('{"instruction": "【媒宣领域任务】问题1", "output": "回答1"}\n\n{"instruction": "x", "output": 5}\n')
    options = dict(test_size=0.2, stratify="domain", dedupe=True, skip_invalid=True)
    split_into(tmp_path / "one", data, **options)
    monkeypatch.setattr(reader, "CHUNK_BYTES", 300)
    monkeypatch.setattr(scan, "RANGE_BYTES", 300)
    monkeypatch.setattr(scan, "PARALLEL_MIN_BYTES", 0)
    report = split_into(tmp_path / "many", data, **options)
    for name in ("train.jsonl", "test.jsonl", "split.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "many" / name).read_bytes()
    counts = report.to_json()["counts"]
    assert (counts["invalid_skipped"], counts["duplicates_dropped"], counts["train"] + counts["test"]) == (1, 1, 100)
