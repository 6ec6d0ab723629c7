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
import heapq
import json
import math
from fractions import Fraction
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yayi_cli import __version__
from yayi_cli.atomic import atomic_files
from yayi_cli.data import DEFAULT_SEED
from yayi_cli.data.reader import SourceRecord, read_records, refuse_repeated_inputs, sha256_of
from yayi_cli.data.validate import DUPLICATE, Problem, check_record, find_repeats
from yayi_cli.errors import DataError, UsageError
from yayi_cli.records import ParsedRecord, domain_of

OUTPUT_NAMES = ("train.jsonl", "test.jsonl", "split.json")
NO_DOMAIN = ""
"""The stratum of records without a domain prefix (no real domain is empty); `(none)` in split.json."""


def parse_test_size(text: str) -> int | float:
    """A count (`400`) or a fraction of the records (`0.05`)."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--test-size {text!r}: give a count such as 400 or a fraction such as 0.05") from None
    if value.is_integer() and value >= 1 and "." not in text:
        return int(value)
    if 0 < value < 1:
        return value
    raise UsageError(
        f"--test-size {text!r}: give a count of 1 or more (400) or a fraction strictly between 0 and 1 (0.05)"
    )


def allocate(test_size: int | float, strata: dict[str, int]) -> dict[str, int]:
    """How many test records each stratum gives: its share of the total, rounded by largest remainder.

    So every stratum's test count is within one record of its exact share.
    """
    total = sum(strata.values())
    wanted = test_size if isinstance(test_size, int) else math.ceil(Fraction(repr(test_size)) * total)
    if not 0 < wanted < total:
        raise UsageError(
            f"--test-size {test_size} asks for {wanted} test records out of {total} usable ones; "
            "both train and test need at least one"
        )
    exact = {name: wanted * count / total for name, count in strata.items()}
    counts = {name: math.floor(share) for name, share in exact.items()}
    by_remainder = sorted(strata, key=lambda name: (-(exact[name] - counts[name]), name))
    for name in by_remainder[: wanted - sum(counts.values())]:
        counts[name] += 1
    return counts


def test_positions(seed: int, stratum: str, size: int, count: int) -> set[int]:
    """The `count` positions out of `size` whose keyed hashes are smallest: a seeded sample."""

    def key(position: int) -> bytes:
        return hashlib.blake2b(f"{seed}\x00{stratum}\x00{position}".encode(), digest_size=8).digest()

    return set(heapq.nsmallest(count, range(size), key=key))


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


def _valid_records(paths: Sequence[Path], survey: Survey | None) -> Iterator[tuple[SourceRecord, str, ParsedRecord]]:
    """(source, domain, parsed record) of every valid record; counts into `survey` when given."""
    for path in paths:
        if survey is not None:
            survey.inputs.append(InputFile(str(path), sha256_of(path)))
        for source in read_records(path):
            checked = check_record(source)
            if survey is not None:
                survey.inputs[-1].records += 1
            if isinstance(checked, Problem):
                if survey is not None:
                    survey.invalid_count += 1
                    survey.invalid[:1] = survey.invalid[:1] or [checked]
                continue
            if survey is not None:
                survey.inputs[-1].valid += 1
            yield source, domain_of(checked.turns[0].text) or NO_DOMAIN, checked


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
    for _, domain, record in _valid_records(paths, survey):
        stratum = domain if stratify else ""
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
                name or "(none)": {"records": self.survey.strata[name], "test": self.test_counts[name]}
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
    chosen = {name: test_positions(seed, name, survey.strata[name], count) for name, count in counts.items()}
    report = SplitReport(seed, test_size, stratify, dedupe, skip_invalid, survey, counts)
    with atomic_files(outputs) as (train, test, manifest):
        position: Counter[str] = Counter()
        for ordinal, (source, domain, _) in enumerate(_valid_records(paths, None)):
            if ordinal in survey.duplicates:
                continue
            stratum = domain if stratify else ""
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
