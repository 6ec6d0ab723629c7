"""Writes that either complete or leave nothing behind, so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from yayi_cli.errors import UsageError


def _make_parent(path: Path) -> None:
    """Create the directory `path` goes in, or say in one line why it cannot be."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{path}: cannot create {Path(path).parent} ({error.strerror or error})") from None


def _default_mode(directory: bool) -> int:
    """The mode a plain open()/mkdir() would give, since mkstemp/mkdtemp make private ones."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_files(paths: Sequence[Path]) -> Iterator[list[TextIO]]:
    """Yield text handles to temp files that replace `paths` together, only if the block succeeds.

    Each temp file sits beside its target, so the final renames are atomic; an error or an
    interrupt removes them and leaves the targets as they were.
    """
    for path in paths:  # refused before anything is written, so the renames below cannot fail on it
        if Path(path).is_dir():
            raise UsageError(f"{path} is a directory; it cannot be replaced by a file")
    temps: list[str] = []
    handles: list[TextIO] = []
    try:
        for path in paths:
            _make_parent(path)
            try:
                fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".tmp")
            except OSError as error:
                raise UsageError(f"{path}: cannot write here ({error.strerror or error})") from None
            temps.append(tmp)
            handles.append(os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="\n"))
        yield handles
        for handle in handles:
            handle.close()
        for tmp, path in zip(temps, paths):
            os.chmod(tmp, _default_mode(directory=False))
            os.replace(tmp, path)
    except BaseException:
        for handle in handles:
            handle.close()
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, then rename it into place."""
    with atomic_files([path]) as (handle,):
        handle.write(text)


@contextlib.contextmanager
def atomic_directory(path: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temp directory that becomes `path` only if the block succeeds.

    With `replace`, an existing `path` is swapped out only after the new one is complete, so a
    failed run (or --force on a crash) never costs the user the directory they had.
    """
    path = Path(path)
    _make_parent(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: exists and is not a directory")
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, _default_mode(directory=True))
        if replace and path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
