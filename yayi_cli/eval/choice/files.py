"""Reading multiple-choice questions: a benchmark's files as they are downloaded (a directory, or the zip/tar
archive itself), and the loose files `yayi eval --task choice` takes. Both become `Question`s, checked the same way.

The split folders (dev, val, test) may sit at the top or under one folder (MMLU's data.tar unpacks into
data/). Every cell is read as text, exactly as written: no number parsing, no NaN for empty cells.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from yayi_cli.core.reader import open_data_file, read_records
from yayi_cli.core.records import PAIRED_KEYS
from yayi_cli.eval.choice.subjects import Benchmark
from yayi_cli.runtime.errors import DataError, UsageError


LETTERS = ("A", "B", "C", "D")
SPLITS = ("dev", "val", "test")
ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class Question:
    subject: str
    split: str
    id: str
    """C-Eval's id column, else the row's number in its file (from 0)."""
    location: str
    """file:line, for error lines and --predictions."""
    question: str
    options: tuple[str, str, str, str]
    answer: str | None
    """A-D, or None where the answers are withheld (C-Eval's test split)."""


@dataclass(frozen=True)
class BenchmarkFiles:
    """Where each (split, subject) file is, and a reader of its bytes."""

    source: Path
    paths: dict[tuple[str, str], str]
    read_bytes: Callable[[str], bytes]

    def subjects(self, split: str) -> list[str]:
        return sorted(subject for kind, subject in self.paths if kind == split)

    def location(self, split: str, subject: str) -> str:
        inner = self.paths[(split, subject)]
        return inner if self.source.is_dir() else f"{self.source}:{PurePosixPath(inner).relative_to('/')}"

    def fingerprint(self, keys: list[tuple[str, str]]) -> str:
        """sha256 over the files used (name and bytes), so a report names exactly what it scored."""
        digest = hashlib.sha256()
        for key in sorted(keys):
            digest.update(f"{key[0]}/{key[1]}\0".encode())
            digest.update(hashlib.sha256(self.read_bytes(self.paths[key])).digest())
        return digest.hexdigest()


def _members(source: Path) -> tuple[list[str], Callable[[str], bytes]]:
    """The file names inside `source` (as absolute posix paths for archives) and how to read one."""
    if source.is_dir():
        return [str(path) for path in sorted(source.rglob("*.csv"))], lambda name: Path(name).read_bytes()
    if source.name.endswith(".zip"):
        archive = zipfile.ZipFile(source)
        names = [name for name in archive.namelist() if not name.endswith("/")]
        return ["/" + name for name in names], lambda name: archive.read(name[1:])
    tar = tarfile.open(source)
    names = [member.name for member in tar.getmembers() if member.isfile()]
    return ["/" + name for name in names], lambda name: tar.extractfile(name[1:]).read()  # type: ignore[union-attr]


def open_benchmark(source: Path, benchmark: Benchmark) -> BenchmarkFiles:
    """Index the subject files of `source`; refused when it holds none in the benchmark's layout."""
    if not source.exists():
        raise UsageError(f"{source}: no such directory or file; give the benchmark's folder or its zip as downloaded")
    if not source.is_dir() and not source.name.endswith(ARCHIVES):
        raise UsageError(f"{source}: not a directory or a .zip/.tar archive; give the benchmark's folder or its zip")
    try:
        names, read_bytes = _members(source)
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as error:
        raise UsageError(f"{source}: cannot be read as an archive ({error})") from None
    paths: dict[tuple[str, str], str] = {}
    for name in names:
        key = _subject_file(PurePosixPath(name), benchmark)
        if key is None:
            continue
        if key in paths:
            raise UsageError(f"{source}: two {key[0]} files for {key[1]} ({paths[key]} and {name}); keep one copy")
        paths[key] = name
    if not paths:
        layout = "{dev,val,test}/{subject}_{split}.csv" if benchmark.subject_suffix else "{dev,test}/{subject}.csv"
        raise UsageError(f"{source}: no {benchmark.title} subject files; expected {layout}, as the benchmark is downloaded")
    return BenchmarkFiles(source, paths, read_bytes)


def _subject_file(path: PurePosixPath, benchmark: Benchmark) -> tuple[str, str] | None:
    """(split, subject) of a file in a split folder, or None for anything else."""
    split = path.parent.name
    if path.suffix != ".csv" or split not in SPLITS or path.name.startswith(".") or "__MACOSX" in path.parts:
        return None
    if not benchmark.subject_suffix:
        return split, path.stem
    suffix = f"_{split}"
    return (split, path.stem.removesuffix(suffix)) if path.stem.endswith(suffix) else None


def read_questions(files: BenchmarkFiles, split: str, subject: str, benchmark: Benchmark) -> list[Question]:
    """Every question of one subject file, checked: the benchmark's columns, an answer A-D."""
    location = files.location(split, subject)
    try:
        text = files.read_bytes(files.paths[(split, subject)]).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{location}: not UTF-8 text; the benchmark's files are UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    columns = _columns(reader, location, split, benchmark)
    withheld = split == benchmark.withheld_split
    width = max(columns.values()) + 1
    questions = []
    for number, row in enumerate(_rows(reader)):
        where = f"{location}:{reader.line_num}"
        if len(row) < width or (benchmark.header is None and len(row) != width):
            raise UsageError(f"{where}: {len(row)} fields; {benchmark.title} rows are {_layout(benchmark)}; is --benchmark right?")
        if benchmark.header is None and number == 0 and row[0].strip().lower() == "question":
            raise UsageError(f"{where}: a header row; {benchmark.title} files have none (rows are {_layout(benchmark)})")
        answer = None if withheld else checked_answer(row[columns["answer"]], where)
        options = (row[columns["A"]], row[columns["B"]], row[columns["C"]], row[columns["D"]])
        question_id = row[columns["id"]].strip() if "id" in columns else str(number)
        questions.append(Question(subject, split, question_id, where, row[columns["question"]], options, answer))
    if not questions:
        raise DataError(f"{location}: no questions")
    return questions


def _layout(benchmark: Benchmark) -> str:
    return ",".join(benchmark.header) if benchmark.header else "question,A,B,C,D,answer without a header"


def _rows(reader: Iterator[list[str]]) -> Iterator[list[str]]:
    return (row for row in reader if any(cell.strip() for cell in row))


def _columns(reader: Iterator[list[str]], location: str, split: str, benchmark: Benchmark) -> dict[str, int]:
    """Column positions by role (question, A-D, answer, id), from the header or the headerless layout."""
    if benchmark.header is None:  # MMLU: question,A,B,C,D,answer without a header row
        return {"question": 0, "A": 1, "B": 2, "C": 3, "D": 4, "answer": 5}
    header = [cell.strip() for cell in next(reader, [])]
    required = [name for name in benchmark.header if not (split == benchmark.withheld_split and name.lower() == "answer")]
    missing = [name for name in required if name not in header]
    if missing:
        raise UsageError(f"{location}: columns {','.join(header) or '(none)'} are not {benchmark.title}'s; it needs "
                         f"{','.join(benchmark.header)} (missing {', '.join(missing)}); is --benchmark right?")
    roles = {name: header.index(name) for name in benchmark.header if name in header}
    return {"question" if name.lower() == "question" else "answer" if name.lower() == "answer" else name: index
            for name, index in roles.items()}


def checked_answer(cell: Any, where: str) -> str:
    """An answer cell as its letter (any case, spaces around ignored); anything else is refused."""
    answer = str(cell).strip().upper()
    if answer not in LETTERS:
        raise DataError(f"{where}: answer {cell!r} is not one of A, B, C, D")
    return answer


CHOICE_KEYS = ("question", "a", "b", "c", "d", "answer")


def _subject_of(path: Path) -> str:
    """C-Eval and MMLU name files `<subject>_<split>.csv`; CMMLU `<subject>.csv`."""
    return re.sub(r"_(val|dev|test)$", "", path.stem)


def _loose_question(row: dict[Any, Any], where: str, subject: str, number: int) -> Question:
    fields = {str(key).strip().lower(): value for key, value in row.items() if key is not None}
    missing = [name for name in CHOICE_KEYS if not str(fields.get(name) or "").strip()]
    if missing and set(PAIRED_KEYS) <= fields.keys():
        raise UsageError(f"{where}: a preference pair (chosen/rejected), not a choice item; score pairs with --task preference")
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)}; a choice item needs question, A, B, C, D and answer")
    options = tuple(str(fields[letter.lower()]) for letter in LETTERS)
    return Question(str(fields.get("subject") or subject), "", str(fields.get("id") or number), where,
                    str(fields["question"]), options, checked_answer(fields["answer"], where))  # type: ignore[arg-type]


def read_choice_files(paths: Sequence[Path]) -> list[Question]:
    """`--task choice`'s files: CSV with a header naming question, A-D and answer (any case; other columns, such as
    C-Eval's id and explanation, ignored), or JSON lines with those keys and optionally subject. The subject is the
    file name without `_val`/`_dev`/`_test`."""
    questions: list[Question] = []
    for path in map(Path, paths):
        subject = _subject_of(path)
        if path.suffix.lower() != ".csv":
            for number, source in enumerate(read_records(path)):
                if source.error is not None or not isinstance(source.value, dict):
                    raise DataError(f"{source.location}: {source.error or 'expected a JSON object'}")
                questions.append(_loose_question(source.value, source.location, subject, number))
            continue
        open_data_file(path).close()  # one clear error for a missing file or a directory
        try:
            with open(path, encoding="utf-8-sig", newline="") as handle:
                reader = csv.DictReader(handle)
                questions += [_loose_question(row, f"{path}:{reader.line_num}", subject, number)
                              for number, row in enumerate(reader)]
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text; save the CSV as UTF-8") from None
    if not questions:
        raise DataError("no choice items in " + ", ".join(str(p) for p in paths))
    return questions
