"""Tiny benchmark folders and archives in each official layout, written by the tests.

Questions are made from a seeded word list, so every file is the same on every machine; the answers
cycle through A-D so that a model that always picks one letter scores a quarter.
"""

from __future__ import annotations

import csv
import io
import random
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

WORDS = ("山", "水", "光", "风", "雨", "星", "河", "林", "石", "云", "海", "花", "alpha", "beta", "gamma", "delta")


@dataclass(frozen=True)
class Row:
    question: str
    options: tuple[str, str, str, str]
    answer: str


def make_rows(subject: str, count: int, seed: int) -> list[Row]:
    """`count` questions: distinct options of 2-3 words, answers A, B, C, D in turn."""
    chooser = random.Random(f"{subject}-{seed}")
    rows = []
    for number in range(count):
        options: list[str] = []
        while len(options) < 4:
            option = "".join(chooser.choice(WORDS) for _ in range(chooser.randint(2, 3)))
            if option not in options:
                options.append(option)
        question = f"{subject} 问题{number}：" + "".join(chooser.choice(WORDS) for _ in range(4)) + "？"
        rows.append(Row(question, tuple(options), "ABCD"[number % 4]))  # type: ignore[arg-type]
    return rows


def _csv(header: Sequence[str] | None, lines: Sequence[Sequence[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(lines)
    return buffer.getvalue()


def file_text(benchmark: str, split: str, rows: Sequence[Row], *, answers: bool = True) -> str:
    """One subject file as the benchmark ships it."""
    if benchmark == "ceval":
        header = ["id", "question", "A", "B", "C", "D"] + (["answer", "explanation"] if answers else [])
        explanation = "1. 解析" if split == "dev" else ""
        return _csv(header, [[str(k), r.question, *r.options] + ([r.answer, explanation] if answers else [])
                             for k, r in enumerate(rows)])
    if benchmark == "cmmlu":
        return _csv(["", "Question", "A", "B", "C", "D", "Answer"], [[str(k), r.question, *r.options, r.answer]
                                                                      for k, r in enumerate(rows)])
    return _csv(None, [[r.question, *r.options, r.answer] for r in rows])


def relative_path(benchmark: str, split: str, subject: str) -> str:
    return f"{split}/{subject}.csv" if benchmark == "cmmlu" else f"{split}/{subject}_{split}.csv"


def write_benchmark(root: Path, benchmark: str, subjects: dict[str, int], *, split: str | None = None,
                    dev_rows: int = 5, withheld: bool = False) -> dict[str, dict[str, list[Row]]]:
    """Write dev and the evaluated split for each subject (subject -> question count); returns the rows."""
    split = split or ("val" if benchmark == "ceval" else "test")
    written: dict[str, dict[str, list[Row]]] = {}
    for number, (subject, count) in enumerate(subjects.items()):
        rows = {"dev": make_rows(subject, dev_rows, 100 + number), split: make_rows(subject, count, number)}
        for kind, kind_rows in rows.items():
            path = root / relative_path(benchmark, kind, subject)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(file_text(benchmark, kind, kind_rows, answers=not (withheld and kind == "test")), encoding="utf-8")
        written[subject] = rows
    return written


def zip_folder(folder: Path, archive: Path, *, top: str = "") -> Path:
    """The folder's files in a zip, optionally under one top folder (as some downloads are)."""
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(folder.rglob("*.csv")):
            handle.write(path, f"{top}{path.relative_to(folder).as_posix()}")
    return archive
