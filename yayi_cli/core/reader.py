"""Streaming readers for instruction data files, shared by preview, validate and split.

Accepted: JSON lines (`.jsonl`, or `.json` files that are really JSON lines, as the upstream
example file is) and `.json` files holding one top-level array. UTF-8, with or without a BOM.
Records are yielded one at a time with their line number and their exact text, so memory
stays flat whatever the file size and every problem can be reported as `file:line`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson

from yayi_cli.runtime.errors import DataError, UsageError


CHUNK_CHARS = 1 << 20
"""Characters decoded at a time from a JSON array file."""
INVALID_UTF8 = "invalid UTF-8"
CHUNK_BYTES = 4 << 20
_NOT_WHITESPACE = re.compile(r"[^ \t\r\n]")
_decoder = json.JSONDecoder()


class SourceRecord(NamedTuple):
    """One record as found in a file: its JSON value, or why the text is not JSON."""

    path: str
    line: int
    index: int
    raw: str
    value: Any = None
    error: str | None = None

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def error_code(self) -> str:
        """`invalid-utf8` or `invalid-json`, for reports that programs read."""
        return "invalid-utf8" if self.error and self.error.startswith(INVALID_UTF8) else "invalid-json"


def open_data_file(path: Path) -> BinaryIO:
    """Open for reading, turning every OS problem into one clear usage error (exit 2)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; give the data files themselves")
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot open ({error.strerror or error})") from None


def refuse_repeated_inputs(paths: Sequence[Path]) -> None:
    """The same file named twice would count (and split) every record twice."""
    seen: dict[Path, Path] = {}
    for path in paths:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise UsageError(f"{path} and {seen[resolved]} are the same file; give each input once")
        seen[resolved] = Path(path)


def sha256_of(path: Path) -> str:
    """The file's SHA-256, so reports and manifests say exactly which data they describe."""
    digest = hashlib.sha256()
    with open_data_file(path) as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class BackgroundDigest:
    """A SHA-256 fed from another thread (hashlib lets go of the GIL), so that hashing a file
    overlaps whatever reads it; one block at a time in flight."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.thread = ThreadPoolExecutor(1)
        self.pending: Future[None] | None = None

    def update(self, block: bytes) -> None:
        if self.pending is not None:
            self.pending.result()
        self.pending = self.thread.submit(self.digest.update, block)

    def hexdigest(self) -> str:
        self.thread.shutdown(wait=True)
        return self.digest.hexdigest()

    def __enter__(self) -> BackgroundDigest:
        return self

    def __exit__(self, *exception: object) -> None:
        self.thread.shutdown(wait=True)


def read_records(path: Path) -> Iterator[SourceRecord]:
    """Yield every record of one data file in order."""
    layout = file_layout(path)
    if layout != LINES:
        with open_data_file(path) as handle:
            yield from _scanned_records(str(path), handle, in_array=layout == ARRAY)
        return
    index = 0
    for chunk in line_chunks(path):
        for record in chunk_records(chunk, index):
            yield record
            index = record.index + 1


LINES, ARRAY, VALUES = "lines", "array", "values"


def file_layout(path: Path) -> str:
    """How a file holds its records: JSON lines; or, in a `.json` file, one top-level array, or
    pretty-printed objects one after another (the first line alone is then not JSON)."""
    with open_data_file(path) as handle:
        head = handle.read(1 << 16)
    refuse_foreign_text(path, head)
    head = head.removeprefix(codecs.BOM_UTF8).lstrip()
    if Path(path).suffix.lower() != ".json":
        return LINES
    if head.startswith(b"["):
        return ARRAY
    first_line, newline, _ = head.partition(b"\n")
    if not head.startswith(b"{") or not newline:
        return LINES
    try:
        json.loads(first_line)
    except ValueError:
        return VALUES
    return LINES


class ForeignText(DataError):
    """A file that is not UTF-8 lines at all; `reason` says what it is and how to convert it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}:1: {reason}")
        self.path, self.reason = str(path), reason


COMPRESSED = {b"\x1f\x8b": ("gzip", "gunzip -k"), b"BZh": ("bzip2", "bunzip2 -k"), b"\xfd7zXZ\x00": ("xz", "unxz -k"),
              b"\x28\xb5\x2f\xfd": ("zstd", "unzstd"), b"PK\x03\x04": ("zip", "unzip")}
"""Magic bytes of compressed files, and the command that unpacks each."""


def refuse_foreign_text(path: Path, head: bytes) -> None:
    """Compressed or binary files, UTF-16 text, or lines ending in a lone CR, would show as every line invalid (or
    one huge line): say what the file is and what to do instead."""
    for magic, (kind, command) in COMPRESSED.items():
        if head.startswith(magic):
            raise ForeignText(path, f"the file is {kind}-compressed; yayi reads plain JSON lines: unpack it first, "
                              f"e.g. `{command} {path}`")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _alternating_nuls(head[:512]):
        raise ForeignText(path, "the file is UTF-16 text; yayi reads UTF-8: convert it, e.g. "
                          f"`iconv -f UTF-16 -t UTF-8 {path} > {Path(path).stem}.utf8{Path(path).suffix}`")
    if b"\x00" in head[:4096]:  # no UTF-8 text holds NUL bytes
        raise ForeignText(path, "the file is binary, not text (it holds NUL bytes); give a .jsonl or .json data file")
    if b"\n" not in head and head.count(b"\r") > 1:
        raise ForeignText(path, "lines end with a lone CR (classic Mac); convert them, e.g. "
                          f"`tr '\\r' '\\n' < {path} > {Path(path).stem}.lf{Path(path).suffix}`")


def _alternating_nuls(head: bytes) -> bool:
    """Every other byte NUL, the others not: UTF-16 without a BOM, of mostly ASCII text."""
    if len(head) < 8:
        return False
    return any(
        nuls.count(0) >= 0.9 * len(nuls) and others.count(0) <= 0.1 * len(others)
        for nuls, others in ((head[1::2], head[0::2]), (head[0::2], head[1::2]))
    )


def _json_error(error: json.JSONDecodeError) -> str:
    return f"invalid JSON: {error.msg} (column {error.colno})"


TOO_DEEP = "invalid JSON: nested too deeply to read (arrays or objects inside each other hundreds of levels deep)"
TOO_LONG_NUMBER = "invalid JSON value: a number with thousands of digits (no record field holds one; is it a number meant as text?)"


@dataclass(frozen=True)
class LineChunk:
    """Whole lines of a JSON-lines file, small enough to hand to another process."""

    path: str
    first_line: int
    data: bytes


def line_chunks(path: Path, digest: Any = None) -> Iterator[LineChunk]:
    """Cut a JSON-lines file into chunks of whole lines (a line longer than a chunk stays whole);
    `digest` (a hashlib object), when given, is fed the file's bytes on the way."""
    line, rest, first = 1, b"", True
    with open_data_file(path) as handle:
        while block := handle.read(CHUNK_BYTES):
            if digest is not None:
                digest.update(block)
            if first:
                block, first = block.removeprefix(codecs.BOM_UTF8), False
            data = rest + block
            cut = data.rfind(b"\n") + 1
            if cut:
                yield LineChunk(str(path), line, data[:cut])
                line += data.count(b"\n", 0, cut)
            rest = data[cut:]
    if rest:
        yield LineChunk(str(path), line, rest)


def chunk_records(chunk: LineChunk, first_index: int = 0) -> Iterator[SourceRecord]:
    """The records of a chunk; blank lines are skipped but still counted as lines."""
    index = first_index
    for number, data in enumerate(chunk.data.split(b"\n"), start=chunk.first_line):
        record = line_record(chunk.path, number, index, data)
        if record is not None:
            yield record
            index += 1


def line_record(path: str, number: int, index: int, data: bytes) -> SourceRecord | None:
    """The record on one line of a JSON-lines file (without its newline); None for a blank line."""
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return SourceRecord(path, number, index, "", error=f"{INVALID_UTF8} at byte {error.start + 1} of the line")
    raw = raw.removesuffix("\r")
    if not raw or raw.isspace():
        return None
    return _parsed_line(path, number, index, raw)


def line_range(path: Path, start: int, stop: int) -> LineChunk:
    """The lines of a JSON-lines file that begin in bytes [start, stop), numbered from 1 (a line
    that begins before `start` belongs to an earlier range; the last one is read to its end)."""
    with open_data_file(path) as handle:
        if start:
            handle.seek(start - 1)
            handle.readline()
        data = handle.read(max(stop - handle.tell(), 0))
        if data and not data.endswith(b"\n"):
            data += handle.readline()
    return LineChunk(str(path), 1, data if start else data.removeprefix(codecs.BOM_UTF8))


def _parsed_line(path: str, line: int, index: int, raw: str) -> SourceRecord:
    """orjson parses (several times faster); what it refuses goes to the standard library, which
    accepts a little more (NaN, huge integers, lone surrogates that the record checks then name)
    and describes errors with the column."""
    try:
        return SourceRecord(path, line, index, raw, orjson.loads(raw))
    except orjson.JSONDecodeError:
        pass
    try:
        return SourceRecord(path, line, index, raw, _decoder.decode(raw))
    except json.JSONDecodeError as error:
        return SourceRecord(path, line, index, raw, error=_json_error(error))
    except ValueError:  # the only other one: an integer past Python's limit on digits
        return SourceRecord(path, line, index, raw, error=TOO_LONG_NUMBER)
    except RecursionError:
        return SourceRecord(path, line, index, raw, error=TOO_DEEP)


class _ArrayScanner:
    """Walks JSON text (an array, or values one after another) chunk by chunk with a read position, keeping only the
    unread tail in memory (it is moved to the front when the next chunk is read)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buffer = ""
        self.pos = 0
        self.line = 1
        self.eof = False

    def fill(self) -> bool:
        """Read one more chunk; False at end of file."""
        if self.eof:
            return False
        chunk = self.handle.read(CHUNK_CHARS)
        self.buffer = self.buffer[self.pos :] + self.decoder.decode(chunk, final=not chunk)
        self.pos = 0
        self.eof = not chunk
        return bool(chunk)

    def skip_whitespace(self) -> str:
        """Move past whitespace and return the next character ('' at end of file)."""
        while True:
            found = _NOT_WHITESPACE.search(self.buffer, self.pos)
            stop = found.start() if found else len(self.buffer)
            self.line += self.buffer.count("\n", self.pos, stop)
            self.pos = stop
            if found or not self.fill():
                return self.buffer[self.pos : self.pos + 1]

    def take(self, count: int) -> str:
        taken = self.buffer[self.pos : self.pos + count]
        self.line += taken.count("\n")
        self.pos += count
        return taken

    def decode_value(self) -> tuple[Any, int]:
        """Decode the value at the read position and return it with its length in characters,
        reading more until it is complete. A value that ends exactly at the end of the buffer
        may be cut (a number split across chunks), so that case reads on before trusting it."""
        while True:
            try:
                value, end = _decoder.raw_decode(self.buffer, self.pos)
                if end < len(self.buffer) or self.eof:
                    return value, end - self.pos
            except json.JSONDecodeError:
                if self.eof:
                    raise
            self.fill()


def _next_value(scanner: _ArrayScanner, path: str, index: int) -> SourceRecord:
    """The record at the read position, or an error record (after which nothing can be read)."""
    line = scanner.line
    try:
        value, end = scanner.decode_value()
    except json.JSONDecodeError as error:
        line += scanner.buffer.count("\n", scanner.pos, error.pos)
        return SourceRecord(path, line, index, "", error=_json_error(error) + "; the rest of the file is not read")
    except ValueError:
        return SourceRecord(path, line, index, "", error=TOO_LONG_NUMBER + "; the rest of the file is not read")
    except RecursionError:
        return SourceRecord(path, line, index, "", error=TOO_DEEP + "; the rest of the file is not read")
    return SourceRecord(path, line, index, scanner.take(end), value=value)


def _scanned_records(path: str, handle: BinaryIO, *, in_array: bool) -> Iterator[SourceRecord]:
    """Records of a top-level array, or of JSON values written one after another."""
    scanner, index = _ArrayScanner(handle), 0
    try:
        if in_array:
            scanner.skip_whitespace()
            scanner.take(1)  # the opening '['
        while True:
            char = scanner.skip_whitespace()
            if not in_array and not char:
                return
            if in_array and char == "]":
                scanner.take(1)
                if scanner.skip_whitespace():
                    yield SourceRecord(path, scanner.line, index, "", error="invalid JSON: text after the closing ']' of the array; a .json file holds one array (or use JSON lines)")
                return
            if in_array and index > 0:
                if char != ",":
                    found = repr(char) if char else "end of file"
                    yield SourceRecord(path, scanner.line, index, "", error=f"invalid JSON: expected ',' or ']' between array items, found {found}")
                    return
                scanner.take(1)
                scanner.skip_whitespace()
            record = _next_value(scanner, path, index)
            yield record
            if record.error is not None:
                return
            index += 1
    except UnicodeDecodeError:
        yield SourceRecord(path, scanner.line, index, "", error=f"{INVALID_UTF8}; the file must be UTF-8 encoded")
