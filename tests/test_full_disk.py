"""A full disk, for every command that writes: one `error:` line naming the path and the cause,
exit 2, no temporary file left behind, and the previous output untouched.

Each test mounts a small tmpfs (CI runs as root); where mounting is not allowed it is skipped and says why.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import SAMPLE_DATA


pytestmark = pytest.mark.system


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs, unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def fill(disk: Path) -> None:
    """Write a file until the disk has no room left."""
    with contextlib.suppress(OSError), open(disk / "filler", "wb", buffering=0) as handle:
        while True:
            handle.write(b"\0" * 4096)


def yayi(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yayi_cli", *arguments], capture_output=True, text=True, timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, path: Path) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and str(path) in lines[-1] and "No space left on device" in lines[-1], lines


def leftovers(disk: Path) -> list[str]:
    """Everything on the disk but the filler and what the test put there before."""
    return sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if p.name not in ("filler", "previous.txt"))


def big_data(path: Path, records: int = 3000) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(records):
            handle.write(json.dumps({"instruction": f"问题 {i} " * 4, "output": f"回答 {i} " * 4}, ensure_ascii=False) + "\n")
    return path


def test_data_split_on_a_full_disk_keeps_the_previous_split(small_disk, tmp_path):
    out = small_disk / "split"
    out.mkdir()
    (out / "train.jsonl").write_text("previous\n")
    result = yayi("data", "split", str(big_data(tmp_path / "data.jsonl")), "--test-size", "10", "-o", str(out), "--force")
    assert_one_line_error(result, out)
    assert leftovers(small_disk) == ["split", "split/train.jsonl"]
    assert (out / "train.jsonl").read_text() == "previous\n"


def test_eval_reports_on_a_full_disk(small_disk, tiny_model_dirs):
    (small_disk / "previous.txt").write_text("kept\n")
    fill(small_disk)
    report = small_disk / "report.json"
    result = yayi("eval", "--model", str(tiny_model_dirs["llama"]), "--data", str(SAMPLE_DATA), "--output", str(report))
    assert_one_line_error(result, report)
    assert leftovers(small_disk) == []
    assert (small_disk / "previous.txt").read_text() == "kept\n"


def test_quantize_on_a_full_disk(small_disk, tiny_model_dirs):
    pytest.importorskip("bitsandbytes")
    out = small_disk / "int8"
    result = yayi("quantize", "--model", str(tiny_model_dirs["llama"]), "-o", str(out))
    assert_one_line_error(result, out)
    assert leftovers(small_disk) == []


@pytest.mark.parametrize("command", ["gguf", "ollama"])
def test_export_on_a_full_disk_leaves_nothing_behind(small_disk, tiny_model_dirs, command):
    (small_disk / "previous.txt").write_text("kept\n")
    out = small_disk / ("model.gguf" if command == "gguf" else "ollama")
    result = yayi("export", command, "--model", str(tiny_model_dirs["llama"]), "-o", str(out), "--type", "f32")
    assert_one_line_error(result, out)
    assert leftovers(small_disk) == []
    assert (small_disk / "previous.txt").read_text() == "kept\n"


def test_building_a_tiny_model_on_a_full_disk(small_disk):
    out = small_disk / "tiny"
    result = subprocess.run([sys.executable, "-m", "yayi_cli.models.tiny", str(out), "--data", str(SAMPLE_DATA)],
                            capture_output=True, text=True, timeout=600)
    assert_one_line_error(result, out)
    assert leftovers(small_disk) == []


def test_train_run_files_on_a_full_disk(small_disk, tiny_model_dirs):
    fill(small_disk)
    out = small_disk / "run"
    result = yayi("train", "--data", str(SAMPLE_DATA), "--model", str(tiny_model_dirs["llama"]), "-o", str(out), "--cpu",
                  "--max-steps", "1")
    assert_one_line_error(result, out / "ds_config.json")
    assert leftovers(small_disk) == ["run"]  # the empty output directory it made, nothing in it
