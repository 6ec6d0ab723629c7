"""The checking pass over data files: JSON lines in byte ranges, by one process per core when large.

Each range is checked into its own `Tally` (in a worker process, or here) and the ranges' tallies are
merged in file order, so the result is the one a single line-by-line pass gives. `data validate` and
`data split` both make this pass.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from yayi_cli.core.reader import (
    LINES,
    ForeignText,
    SourceRecord,
    file_layout,
    line_range,
    read_records,
    refuse_repeated_inputs,
)
from yayi_cli.core.record_files import ERROR, Problem
from yayi_cli.core.records import ParsedRecord
from yayi_cli.data.tally import Tally
from yayi_cli.runtime.errors import UsageError


PARALLEL_MIN_BYTES = 32 << 20
"""JSON-lines input at least this large is checked by one process per core."""
RANGE_BYTES = 4 << 20
"""JSON lines are checked in ranges of about this many bytes, each in one piece of work."""


def tally_files(
    paths: Sequence[Path],
    tally: Tally,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] = lambda size: None,
    each_valid: Callable[[SourceRecord, ParsedRecord], None] | None = None,
) -> None:
    """Check and count every record of `paths` into `tally`, in one pass over each file.

    `workers=None` uses one process per core for large JSON-lines input (not with `each_valid`,
    which is called here with every valid record).
    """
    refuse_repeated_inputs(paths)
    sizes = _sizes(paths)
    cores = os.cpu_count() or 1
    if workers is None:
        workers = cores if sum(sizes) >= PARALLEL_MIN_BYTES else 1
    workers = min(workers, cores)  # more processes than cores only cost memory (and a huge number exhausts it)
    with contextlib.ExitStack() as stack:
        pool = None
        if workers > 1 and each_valid is None and "fork" in multiprocessing.get_all_start_methods():
            # fork: the workers share this process's string-hash secret (see checked.conversation_keys)
            context = multiprocessing.get_context("fork")
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers, mp_context=context))
        for path, size in zip(paths, sizes):
            tally.file(str(path))  # listed even when it holds no record
            try:
                layout = file_layout(path)
            except ForeignText as error:  # one invalid "record" that says what the file is
                tally.reject(SourceRecord(error.path, 1, 0, ""), Problem(error.path, 1, 0, ERROR, "not-utf8", error.reason))
                continue
            if each_valid is None and layout == LINES:
                _check_lines(path, tally, progress, pool, workers if pool else 1)
                continue
            with _no_cyclic_gc():
                for source, record in tally.check(read_records(path)):
                    if each_valid is not None:
                        each_valid(source, record)
            progress(size)



def _check_lines(path: Path, tally: Tally, progress: Callable[[int], None], pool: ProcessPoolExecutor | None, workers: int) -> None:
    """Check a JSON-lines file range by range, in the pool's processes if there is a pool (each
    reads its own range, so no data passes between processes), merging in file order. At most two
    ranges per worker are in flight.
    """
    pending: deque[tuple[Callable[[], tuple[Tally, int]], int]] = deque()
    records_before = lines_before = 0

    def merge_oldest() -> None:
        nonlocal records_before, lines_before
        result, size = pending.popleft()
        range_tally, lines = result()
        tally.merge(range_tally, records_before, lines_before)
        records_before += sum(stats.records for stats in range_tally.files.values())
        lines_before += lines
        progress(size)

    size = Path(path).stat().st_size
    for start in range(0, size, RANGE_BYTES):
        stop = min(start + RANGE_BYTES, size)
        if pool is None:
            result = functools.partial(_check_range, path, start, stop, tally.empty_like())
        else:
            result = pool.submit(_check_range, path, start, stop, tally.empty_like()).result
        pending.append((result, stop - start))
        if len(pending) >= 2 * workers:
            merge_oldest()
    while pending:
        merge_oldest()


def _check_range(path: Path, start: int, stop: int, tally: Tally) -> tuple[Tally, int]:
    """Check the lines that begin in bytes [start, stop) of a file into an empty tally (in a
    worker process, or in this one); with the number of lines, so later lines can be numbered."""
    chunk = line_range(path, start, stop)
    with _no_cyclic_gc():
        tally.count_lines(chunk)
    return tally, chunk.data.count(b"\n") + (not chunk.data.endswith(b"\n") and bool(chunk.data))


def _sizes(paths: Sequence[Path]) -> list[int]:
    sizes = []
    for path in paths:
        try:
            sizes.append(Path(path).stat().st_size)
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file") from None
    return sizes



@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cycle collector: parsed records hold no cycles, and its passes over millions of
    short-lived dicts cost a fifth of the checking time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
