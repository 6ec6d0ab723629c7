"""Outputs appear complete or not at all, and --force never loses the old output on failure."""

from __future__ import annotations

import pytest

from yayi_cli.runtime.atomic import atomic_directory, refuse_output_over, scratch_folder, write_text_atomic
from yayi_cli.runtime.errors import UsageError


def test_a_failed_directory_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "half.bin").write_text("partial")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_replacement_keeps_the_old_directory(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out", replace=True) as tmp:
            (tmp / "weights").write_text("new")
            raise RuntimeError("crash")
    assert (tmp_path / "out" / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_successful_replacement_swaps_in_the_new_directory(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale").write_text("old")
    with atomic_directory(tmp_path / "out", replace=True) as tmp:
        (tmp / "weights").write_text("new")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["weights"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_text_is_replaced_whole(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_missing_parent_directories_are_created(tmp_path):
    write_text_atomic(tmp_path / "reports" / "today" / "r.json", "{}")
    assert (tmp_path / "reports" / "today" / "r.json").read_text() == "{}"


def test_a_file_in_the_way_is_a_usage_error_not_a_traceback(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match=r"cannot create .*file/sub \(Not a directory\)"):
        write_text_atomic(tmp_path / "file" / "sub" / "r.json", "{}")
    with pytest.raises(UsageError, match="exists and is not a directory"):
        with atomic_directory(tmp_path / "file", replace=True):
            pass


def test_an_output_that_is_or_holds_an_input_is_refused(tmp_path):
    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    for output in (model, model / ".", tmp_path / "models", tmp_path):
        with pytest.raises(UsageError, match="would replace --model"):
            refuse_output_over(output, str(model), "--model")
    refuse_output_over(tmp_path / "models" / "m-int8", str(model), "--model")  # a sibling is fine
    refuse_output_over(model, "wenge-research/yayi-7b", "--model")  # a hub id is not on this disk


def test_every_command_refuses_an_existing_output_through_one_check():
    """`refuse_existing` is the one place that says "already exists; use --force": no command words it its own way."""
    from tests.helpers import REPO

    sayers = [path.relative_to(REPO).as_posix() for path in (REPO / "yayi_cli").rglob("*.py")
              if "already exists" in path.read_text(encoding="utf-8")]
    assert sayers == ["yayi_cli/runtime/atomic.py"]


def test_a_scratch_folder_is_hidden_beside_its_target_and_gone_afterwards_even_after_an_error(tmp_path):
    target = tmp_path / "out" / "model.gguf"
    with scratch_folder(target, ".16bit") as work:
        assert work.parent == target.parent and work.name.startswith(".model.gguf.") and work.name.endswith(".16bit")
        (work / "part").write_text("x")
    assert list(target.parent.iterdir()) == []
    with pytest.raises(RuntimeError), scratch_folder(target) as work:
        (work / "part").write_text("x")
        raise RuntimeError("the work failed")
    assert list(target.parent.iterdir()) == []


def test_working_folders_are_made_one_way():
    """`scratch_folder` is the one maker of working folders: no command calls mkdtemp or TemporaryDirectory itself."""
    from tests.helpers import REPO

    makers = sorted(path.relative_to(REPO).as_posix() for path in (REPO / "yayi_cli").rglob("*.py")
                    if "TemporaryDirectory(" in (text := path.read_text(encoding="utf-8")) or "mkdtemp(" in text)
    # atomic.py: scratch_folder and its own all-or-nothing writes; template_install.py: the backup folder it keeps
    assert makers == ["yayi_cli/runtime/atomic.py", "yayi_cli/serve/template_install.py"]
