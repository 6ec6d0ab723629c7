"""Writes that either complete or leave nothing behind, so a crash never leaves half a file.

Everything is flushed to disk (files, then their directory) before it is renamed into place, so
a power cut cannot leave a renamed but empty file. A write that fails (a full disk, a read-only
filesystem) becomes one error line naming the path and the cause, and leaves no temp file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from yayi_cli.runtime.errors import UsageError


def refuse_output_over(output: Path, source: str | Path, flag: str) -> None:
    """An output directory that is, or holds, a local input (`--model`, an adapter's base) would replace
    what is being read: refused with one line before anything is loaded or written."""
    source_path = Path(source).expanduser()
    if not source_path.exists():
        return  # a hub id, or nothing there to lose
    output, source_path = Path(output).expanduser().resolve(), source_path.resolve()
    if source_path == output or output in source_path.parents:
        raise UsageError(f"--output {output} would replace {flag} {source} (it is read from there); write into a new directory")


def refuse_existing(path: Path, force: bool) -> None:
    """The one check of every output a command writes: one that exists needs --force."""
    if Path(path).exists() and not force:
        raise UsageError(f"{path} already exists; use --force to replace it")


def _make_parent(path: Path) -> None:
    """Create the directory `path` goes in, or say in one line why it cannot be."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{path}: cannot create {Path(path).parent} ({error.strerror or error})") from None


@contextlib.contextmanager
def scratch_folder(beside: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """The one way to make a working folder: hidden beside `beside` (on its file system, so what is made there can
    be renamed into place), removed afterwards whatever happens; one that cannot be made is one error line."""
    _make_parent(beside)
    try:
        work = Path(tempfile.mkdtemp(dir=Path(beside).parent, prefix=f".{Path(beside).name}.", suffix=suffix))
    except OSError as error:
        raise UsageError(f"{Path(beside).parent}: cannot write here ({error.strerror or error})") from None
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _default_mode(directory: bool) -> int:
    """The mode a plain open()/mkdir() would give, since mkstemp/mkdtemp make private ones."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(root: Path) -> None:
    """Flush every file under `root`, then the directories, so a rename publishes data that is on disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder))


def _write_failed(paths: Sequence[Path], error: OSError) -> UsageError:
    where = ", ".join(str(p) for p in paths)
    return UsageError(f"cannot write {where}: {error.strerror or error}; nothing was changed")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes  # here, not at the top: every `yayi --help` imports this module

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _publish_directory(tmp: Path, path: Path) -> None:
    """Put the complete directory `tmp` at `path`, replacing what is there in one step where the
    system can swap two directories, else in two renames with the old one set aside first."""
    _fsync_tree(tmp)
    if not path.exists():
        os.rename(tmp, path)
    elif _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old contents
    else:
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
        os.replace(path, old / path.name)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_path(path.parent)


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
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as error:
        raise UsageError(f"{path}: cannot write here ({error.strerror or error})") from None
    try:
        yield tmp
        os.chmod(tmp, _default_mode(directory=True))
        if path.exists() and not replace:
            raise UsageError(f"{path} appeared while it was being written; nothing was changed")
        _publish_directory(tmp, path)
    except OSError as error:
        raise _write_failed([path], error) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`, for a writer that opens the file itself (the gguf package's);
    it becomes `path` only if the block succeeds, and is removed otherwise."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a directory; it cannot be replaced by a file")
    refuse_existing(path, replace)
    _make_parent(path)
    try:
        descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise UsageError(f"{path}: cannot write here ({error.strerror or error})") from None
    os.close(descriptor)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode(directory=False))
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(path.parent)
    except OSError as error:
        raise _write_failed([path], error) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _own_directory(paths: Sequence[Path]) -> Path | None:
    """The directory of several outputs when it can be swapped whole: it holds nothing but them
    (or does not exist yet) and is neither a mount point nor the working directory."""
    parents = {path.resolve().parent for path in paths}
    if len(paths) < 2 or len(parents) != 1:
        return None
    directory = parents.pop()
    if directory == Path.cwd() or os.path.ismount(directory):
        return None
    names = {path.name for path in paths}
    try:
        return directory if all(entry.name in names for entry in os.scandir(directory)) else None
    except FileNotFoundError:
        return directory


@contextlib.contextmanager
def atomic_files(paths: Sequence[Path]) -> Iterator[list[TextIO]]:
    """Yield text handles whose files replace `paths` together, only if the block succeeds.

    When several paths share a directory that holds nothing else (`data split -o DIR`, for one),
    the files are staged in a new directory that replaces it in one rename: all of them appear,
    or none, even if the process dies. Otherwise each file is staged beside its target and the
    renames follow one another at the end; an error or an interrupt before them changes nothing.
    """
    paths = [Path(p) for p in paths]
    for path in paths:  # refused before anything is written, so the renames below cannot fail on it
        if path.is_dir():
            raise UsageError(f"{path} is a directory; it cannot be replaced by a file")
    directory = _own_directory(paths)
    if directory is not None:
        with atomic_directory(directory, replace=True) as staging:
            with _open_all([staging / path.name for path in paths], paths) as handles:
                yield handles
        return
    with _files_beside(paths) as handles:
        yield handles


@contextlib.contextmanager
def _open_all(files: Sequence[Path], targets: Sequence[Path]) -> Iterator[list[TextIO]]:
    handles: list[TextIO] = []
    try:
        for file in files:
            handles.append(open(file, "w", encoding="utf-8", errors="surrogateescape", newline="\n"))
            os.chmod(file, _default_mode(directory=False))
        yield handles
        for handle in handles:
            handle.flush()
    except OSError as error:
        raise _write_failed(targets, error) from None
    finally:
        for handle in handles:
            with contextlib.suppress(OSError):
                handle.close()


@contextlib.contextmanager
def _files_beside(paths: Sequence[Path]) -> Iterator[list[TextIO]]:
    temps: list[Path] = []
    for path in paths:
        _make_parent(path)
    try:
        for path in paths:
            try:
                descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            except OSError as error:
                raise UsageError(f"{path}: cannot write here ({error.strerror or error})") from None
            os.close(descriptor)
            temps.append(Path(tmp))
        with _open_all(temps, paths) as handles:
            yield handles
            for handle in handles:
                os.fsync(handle.fileno())
        try:
            for tmp, path in zip(temps, paths):
                os.replace(tmp, path)
            for parent in {path.parent for path in paths}:
                _fsync_path(parent)
        except OSError as error:
            raise _write_failed(paths, error) from None
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` all at once or not at all."""
    with atomic_files([path]) as (handle,):
        handle.write(text)


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None: strict JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def json_text(document: Any) -> str:
    """A document as strict JSON that every parser reads: an undefined number is null, never NaN."""
    return json.dumps(_finite(document), ensure_ascii=False, indent=2, allow_nan=False) + "\n"


def json_line(document: Any) -> str:
    """A document as one line of strict JSON (for JSON-lines files), without the newline."""
    return json.dumps(_finite(document), ensure_ascii=False, allow_nan=False)


def write_figure_atomic(figure: Any, path: Path, *, replace: bool = True) -> Path:
    """A matplotlib figure as PNG or SVG (by `path`'s suffix), written whole or not at all."""
    with atomic_path(path, replace=replace) as tmp:
        figure.savefig(tmp, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=100)
    return Path(path)


def write_json_atomic(path: Path, document: Any) -> None:
    """A JSON document (strict: see `json_text`) written atomically."""
    write_text_atomic(path, json_text(document))


def write_json_lines_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One JSON object per line, written atomically."""
    import jsonlines

    with atomic_files([path]) as (handle,):
        with jsonlines.Writer(handle, dumps=json_line) as writer:
            writer.write_all(rows)
