"""`yayi data split`: a deterministic train/test split, optionally stratified by domain.

Two streaming passes. The first checks every record and counts the records of each stratum
(domain, or one stratum for all); the test records of a stratum are then its `k` positions
with the smallest keyed BLAKE2 hashes of (seed, stratum, position), which any machine and
any Python version computes alike. The second pass writes each record, byte for byte as it
was, to train or test. Memory holds the test positions only (plus one 8-byte key and a
stratum id per record with --dedupe).
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yayi_cli import __version__
from yayi_cli.atomic import atomic_files
from yayi_cli.data import DEFAULT_SEED
from yayi_cli.data.checked import Problem, skip_problem, valid_records
from yayi_cli.data.reader import SourceRecord, read_records, refuse_repeated_inputs, sha256_of
from yayi_cli.data.validate import DUPLICATE, find_repeats
from yayi_cli.errors import DataError, UsageError
from yayi_cli.records import NO_DOMAIN_LABEL, ParsedRecord
from yayi_cli.sampling import allocate, chosen_positions

OUTPUT_NAMES = ("train.jsonl", "test.jsonl", "split.json")


@dataclass
class InputFile:
    path: str
    sha256: str
    records: int = 0
    valid: int = 0


@dataclass
class Survey:
    """What the first pass learns: validity, strata sizes, duplicates."""

    inputs: list[InputFile] = field(default_factory=list)
    invalid: list[Problem] = field(default_factory=list)
    invalid_count: int = 0
    strata: Counter[str] = field(default_factory=Counter)
    duplicates: set[int] = field(default_factory=set)

    def count_invalid(self, source: SourceRecord, problem: Problem) -> None:
        self.inputs[-1].records += 1
        self.invalid_count += 1
        self.invalid[:1] = self.invalid[:1] or [problem]


def _valid_records(paths: Sequence[Path], survey: Survey | None) -> Iterator[tuple[SourceRecord, ParsedRecord]]:
    """(source, parsed record) of every valid record; counts into `survey` when given."""
    for path in paths:
        if survey is not None:
            survey.inputs.append(InputFile(str(path), sha256_of(path)))
        for source, record in valid_records(read_records(path), survey.count_invalid if survey else skip_problem):
            if survey is not None:
                survey.inputs[-1].records += 1
                survey.inputs[-1].valid += 1
            yield source, record


def stable_content_keys(record: ParsedRecord) -> tuple[int, int]:
    """Like `content_keys`, but BLAKE2b: what --dedupe drops must not depend on Python's hash seed."""
    *prompt, answer = record.turns
    prompt_text = json.dumps([record.system, prompt], ensure_ascii=False)
    keys = []
    for text in (prompt_text, json.dumps(answer, ensure_ascii=False)):
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        keys.append(int.from_bytes(digest, "little"))
    return keys[0], keys[1]


def survey_inputs(paths: Sequence[Path], *, stratify: bool, dedupe: bool) -> Survey:
    """First pass: check and count everything; with `dedupe`, find the later copies of records."""
    survey = Survey()
    prompt_keys, answer_keys, stratum_ids, names = array("Q"), array("Q"), array("H"), {}
    for _, record in _valid_records(paths, survey):
        stratum = record.domain if stratify else ""
        survey.strata[stratum] += 1
        if dedupe:
            prompt_key, answer_key = stable_content_keys(record)
            prompt_keys.append(prompt_key)
            answer_keys.append(answer_key)
            stratum_ids.append(names.setdefault(stratum, len(names)))
    if dedupe:
        survey.duplicates = {r.ordinal for r in find_repeats(prompt_keys, answer_keys) if r.kind == DUPLICATE}
        by_id = {number: name for name, number in names.items()}
        for ordinal in survey.duplicates:
            survey.strata[by_id[stratum_ids[ordinal]]] -= 1
    return survey


@dataclass
class SplitReport:
    """Everything `split.json` records about a split."""

    seed: int
    test_size: int | float
    stratify: bool
    dedupe: bool
    skip_invalid: bool
    survey: Survey
    test_counts: dict[str, int]
    train: int = 0
    test: int = 0

    def to_json(self) -> dict[str, Any]:
        document = {
            "yayi_version": __version__,
            "seed": self.seed,
            "test_size": self.test_size,
            "stratify": "domain" if self.stratify else None,
            "dedupe": self.dedupe,
            "skip_invalid": self.skip_invalid,
            "inputs": [vars(item) for item in self.survey.inputs],
            "counts": {
                "records": sum(item.records for item in self.survey.inputs),
                "invalid_skipped": self.survey.invalid_count,
                "duplicates_dropped": len(self.survey.duplicates),
                "train": self.train,
                "test": self.test,
            },
        }
        if self.stratify:
            document["strata"] = {
                name or NO_DOMAIN_LABEL: {"records": self.survey.strata[name], "test": self.test_counts[name]}
                for name in sorted(self.survey.strata)
            }
        return document


def _output_paths(out_dir: Path, inputs: Sequence[Path], force: bool) -> list[Path]:
    refuse_repeated_inputs(inputs)
    for path in inputs:
        if Path(path).exists() and not Path(path).is_file() and not Path(path).is_dir():
            raise UsageError(f"{path}: not a regular file; split reads its inputs twice, so save a pipe's data to a file first")
    outputs = [out_dir / name for name in OUTPUT_NAMES]
    resolved_inputs = {Path(p).resolve() for p in inputs}
    for output in outputs:
        if output.resolve() in resolved_inputs:
            raise UsageError(f"{output} is one of the inputs; choose another output directory")
        if output.exists() and not force:
            raise UsageError(f"{output} already exists; use --force to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a directory")
    return outputs


def _line(source: SourceRecord) -> str:
    """The record's own text as one line. JSON strings cannot hold a raw line break, so the
    breaks of a pretty-printed array item are whitespace between tokens and can go."""
    return "".join(source.raw.splitlines()) + "\n"


def split(
    paths: Sequence[Path],
    out_dir: Path,
    *,
    test_size: int | float,
    seed: int = DEFAULT_SEED,
    stratify: bool = False,
    dedupe: bool = False,
    skip_invalid: bool = False,
    force: bool = False,
) -> SplitReport:
    """Write OUT/train.jsonl, OUT/test.jsonl and OUT/split.json, all three or none."""
    out_dir = Path(out_dir)
    outputs = _output_paths(out_dir, paths, force)
    survey = survey_inputs(paths, stratify=stratify, dedupe=dedupe)
    if survey.invalid_count and not skip_invalid:
        raise DataError(
            f"{survey.invalid_count} invalid record(s), the first at {survey.invalid[0].path}:"
            f"{survey.invalid[0].line} ({survey.invalid[0].message}); "
            "`yayi data validate` lists them all, or pass --skip-invalid to leave them out"
        )
    counts = allocate(test_size, dict(survey.strata))
    chosen = {name: chosen_positions(seed=seed, stratum=name, size=survey.strata[name], count=count) for name, count in counts.items()}
    report = SplitReport(seed, test_size, stratify, dedupe, skip_invalid, survey, counts)
    with atomic_files(outputs) as (train, test, manifest):
        position: Counter[str] = Counter()
        for ordinal, (source, record) in enumerate(_valid_records(paths, None)):
            if ordinal in survey.duplicates:
                continue
            stratum = record.domain if stratify else ""
            is_test = position[stratum] in chosen[stratum]
            position[stratum] += 1
            (test if is_test else train).write(_line(source))
            report.test += is_test
            report.train += not is_test
        manifest.write(json.dumps(report.to_json(), ensure_ascii=False, indent=2) + "\n")
    return report


def print_report(report: SplitReport, out_dir: Path, console: Any) -> None:
    counts = report.to_json()["counts"]
    dropped = [f"{counts['invalid_skipped']} invalid"] if counts["invalid_skipped"] else []
    dropped += [f"{counts['duplicates_dropped']} duplicates"] if counts["duplicates_dropped"] else []
    left_out = f" ({', '.join(dropped)} left out)" if dropped else ""
    from rich.markup import escape

    console.print(
        f"{counts['records']} records{left_out}: [bold]{counts['train']}[/] train, [bold]{counts['test']}[/] test "
        f"(seed {report.seed}) -> {escape(str(out_dir))}/{{train.jsonl,test.jsonl,split.json}}",
        highlight=False, soft_wrap=True,
    )
