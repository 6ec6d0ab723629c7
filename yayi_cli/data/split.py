"""`yayi data split`: a deterministic train/test split, optionally stratified by domain.

One checking pass, the one `data validate` makes (in worker processes for large JSON lines),
keeps for each valid record its line, a pair of 64-bit content keys (for --dedupe) and with
--stratify its domain. The test records of a stratum (a domain, or one for all) are then its
`k` positions with the smallest keyed BLAKE2 hashes of (seed, stratum, position), which any
machine and any Python version computes alike. Writing copies each record's line, byte for byte,
to train or test, without parsing it again: a chunk of lines that all go to train is copied
whole. A `.json` file of one array is read (and checked) a second time instead, since its
records span lines. Preference and prompt records (--prompts) are split like any other (their domain
is the one of their first human message), and like training, a split refuses two kinds of records in
one set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from yayi_cli import __version__
from yayi_cli.core.reader import (
    LINES,
    BackgroundDigest,
    file_layout,
    line_chunks,
    read_records,
    refuse_repeated_inputs,
    sha256_of,
)
from yayi_cli.core.record_files import ERROR, skip_problem, valid_records
from yayi_cli.core.records import NO_DOMAIN_LABEL
from yayi_cli.core.sampling import allocate, chosen_positions
from yayi_cli.data.options import SplitOptions
from yayi_cli.data.scan import tally_files
from yayi_cli.data.tally import DUPLICATE, Tally, find_repeats
from yayi_cli.runtime.atomic import atomic_files, refuse_existing
from yayi_cli.runtime.errors import DataError, UsageError


OUTPUT_NAMES = ("train.jsonl", "test.jsonl", "split.json")


@dataclass
class Survey:
    """What the checking pass learns, and which records go where."""

    tally: Tally
    kept: Any
    """Ordinals (among the valid records) of those written, in input order: numpy uint32."""
    strata: list[str]
    stratum_of: Any
    """For each kept record, its stratum: an index into `strata` (numpy)."""

    @property
    def invalid_count(self) -> int:
        return sum(stats.records - stats.valid for stats in self.tally.files.values())

    @property
    def duplicates(self) -> int:
        return len(self.tally.prompt_keys) - len(self.kept)

    @property
    def sizes(self) -> dict[str, int]:
        """Records per stratum (a domain whose records were all dropped copies counts 0)."""
        import numpy as np

        return dict(zip(self.strata, np.bincount(self.stratum_of, minlength=len(self.strata)).tolist()))


def survey_inputs(paths: Sequence[Path], *, stratify: bool, dedupe: bool, prompts: bool = False) -> Survey:
    """Check and count everything in one pass (as prompt records with `prompts`); with `dedupe`, leave out the
    later copies of records."""
    import numpy as np

    tally = Tally(max_listed=1, listed=frozenset({ERROR}), prompts=prompts)
    if stratify:
        tally.keep_domains()
    tally_files(paths, tally)
    kept = np.arange(len(tally.prompt_keys), dtype=np.uint32)
    if dedupe:
        copies = [repeat.ordinal for repeat in find_repeats(tally.prompt_keys, tally.answer_keys) if repeat.kind == DUPLICATE]
        kept = np.delete(kept, copies)
    if stratify:
        strata, stratum_of = tally.domain_names, np.frombuffer(tally.domain_ids, dtype=np.uint32)[kept]
    else:
        strata, stratum_of = [""], np.zeros(len(kept), dtype=np.uint32)
    return Survey(tally, kept, strata, stratum_of)


def select_test(survey: Survey, counts: dict[str, int], seed: int) -> Any:
    """For each kept record, whether it goes to test (numpy bool): each stratum's chosen positions."""
    import numpy as np

    to_test = np.zeros(len(survey.kept), dtype=bool)
    for number, name in enumerate(survey.strata):
        members = np.flatnonzero(survey.stratum_of == number)
        chosen = chosen_positions(seed=seed, stratum=name, size=len(members), count=counts[name])
        to_test[members[sorted(chosen)]] = True
    return to_test


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
    digests: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        files = self.survey.tally.files
        document = {
            "yayi_version": __version__,
            "seed": self.seed,
            "test_size": self.test_size,
            "stratify": "domain" if self.stratify else None,
            "dedupe": self.dedupe,
            "skip_invalid": self.skip_invalid,
            "inputs": [
                {"path": path, "sha256": self.digests[path], "records": stats.records, "valid": stats.valid}
                for path, stats in files.items()
            ],
            "counts": {
                "records": sum(stats.records for stats in files.values()),
                "invalid_skipped": self.survey.invalid_count,
                "duplicates_dropped": self.survey.duplicates,
                "train": self.train,
                "test": self.test,
            },
        }
        if self.stratify:
            sizes = self.survey.sizes
            document["strata"] = {
                name or NO_DOMAIN_LABEL: {"records": sizes[name], "test": self.test_counts[name]} for name in sorted(sizes)
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
        refuse_existing(output, force)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a directory")
    return outputs


def split(options: SplitOptions) -> SplitReport:
    """Write OUTPUT/train.jsonl, OUTPUT/test.jsonl and OUTPUT/split.json, all three or none."""
    options.check()
    paths, stratify = options.files, options.stratify == "domain"
    outputs = _output_paths(Path(options.output), paths, options.force)
    survey = survey_inputs(paths, stratify=stratify, dedupe=options.dedupe, prompts=options.prompts)
    if survey.invalid_count and not options.skip_invalid:
        first = survey.tally.problems[0]
        raise DataError(
            f"{survey.invalid_count} invalid record(s), the first at {first.path}:{first.line} ({first.message}); "
            "`yayi data validate` lists them all, or pass --skip-invalid to leave them out"
        )
    mixed = survey.tally.mixed_kinds() + survey.tally.mixed_fields()  # no option leaves these out: each kind belongs in a data set of its own
    if mixed:
        raise DataError(f"{mixed[0].path}:{mixed[0].line}: {mixed[0].message}")
    counts = allocate(options.test_size, survey.sizes)
    to_test = select_test(survey, counts, options.seed)
    report = SplitReport(options.seed, options.test_size, stratify, options.dedupe, options.skip_invalid, survey, counts)
    report.test = int(to_test.sum())
    report.train = len(to_test) - report.test
    with atomic_files(outputs) as (train, test, manifest):
        report.digests = {str(path): _write_records(path, survey, to_test, train.buffer, test.buffer) for path in paths}
        manifest.write(json.dumps(report.to_json(), ensure_ascii=False, indent=2) + "\n")
    return report


def _write_records(path: Path, survey: Survey, to_test: Any, train: BinaryIO, test: BinaryIO) -> str:
    """Copy the kept records of one input file to train or test, in input order; the file's SHA-256."""
    import numpy as np

    tally = survey.tally
    first = tally.first_ordinal[str(path)]
    start, end = np.searchsorted(survey.kept, [first, first + tally.files[str(path)].valid])
    ordinals, to_test = survey.kept[start:end], to_test[start:end]
    if file_layout(path) == LINES:
        with BackgroundDigest() as digest:
            _copy_lines(path, tally.lines_of(ordinals), to_test, train, test, digest)
            return digest.hexdigest()
    wanted = dict(zip((ordinals - first).tolist(), to_test.tolist()))
    records = valid_records(read_records(path), skip_problem, prompts=tally.prompts)
    for position, (source, _) in enumerate(records):
        if position in wanted:
            line = source.raw.replace("\r", "").replace("\n", "")  # breaks between an item's tokens
            (test if wanted[position] else train).write(line.encode("utf-8") + b"\n")
    return sha256_of(path)


def _copy_lines(path: Path, numbers: Any, to_test: Any, train: BinaryIO, test: BinaryIO, digest: Any = None) -> None:
    """Copy the lines `numbers` (sorted) of a JSON-lines file each to test or train, without CRs
    (JSON text holds none but line endings): each run of lines going the same way in one write."""
    import numpy as np

    for chunk in line_chunks(path, digest):
        data = chunk.data.replace(b"\r", b"")
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
        if not data.endswith(b"\n"):
            data += b"\n"
            ends = np.append(ends, len(data) - 1)
        start, end = np.searchsorted(numbers, [chunk.first_line, chunk.first_line + len(ends)])
        where = np.zeros(len(ends), dtype=np.int8)  # 0: left out (blank, invalid, a dropped copy)
        where[numbers[start:end] - chunk.first_line] = np.where(to_test[start:end], 2, 1)
        bounds = [0, *(np.flatnonzero(np.diff(where)) + 1).tolist(), len(ends)]
        view = memoryview(data)
        for first, stop in zip(bounds, bounds[1:]):
            if where[first]:
                begin = int(ends[first - 1]) + 1 if first else 0
                (test if where[first] == 2 else train).write(view[begin : int(ends[stop - 1]) + 1])


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
