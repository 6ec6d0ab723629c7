"""Seeded selection of records that any machine and any Python version reproduce exactly.

`data split`, `train --test-size` and `eval --max-samples` all pick their records here, so the
same seed and size pick the same records in each of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from typing import TypeVar

from yayi_cli.runtime.errors import UsageError


DEFAULT_SEED = 515
"""The upstream YaYi training default, used by `data split` and `train` alike."""

T = TypeVar("T")

BLOCK = 1 << 16
"""Items handled together in vectorised or parallel work: large enough to be fast, small enough that
its temporaries stay small."""


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


def chosen_positions(*, seed: int, stratum: str, size: int, count: int) -> set[int]:
    """The `count` positions out of `size` whose keyed BLAKE2 hashes of (seed, stratum, position)
    are smallest (the earlier position first among equal ones): a seeded sample that needs no
    random generator state. Large sizes are hashed in blocks by one process per core."""
    import numpy as np

    prefix = f"{seed}\x00{stratum}\x00".encode()
    starts = range(0, size, BLOCK)
    stops = [min(start + BLOCK, size) for start in starts]
    with _block_mapper(len(starts)) as mapper:
        keys = b"".join(mapper(_position_keys, [prefix] * len(starts), starts, stops))
    order = np.argsort(np.frombuffer(keys, dtype=">u8"), kind="stable")
    return set(order[:count].tolist())



def _position_keys(prefix: bytes, start: int, stop: int) -> bytes:
    """The 8-byte keys of positions start..stop-1, one after another."""
    return b"".join([hashlib.blake2b(b"%b%d" % (prefix, position), digest_size=8).digest() for position in range(start, stop)])


@contextlib.contextmanager
def _block_mapper(blocks: int) -> Iterator[Callable[..., Iterable[bytes]]]:
    """`map`, or a process pool's where several blocks and cores make one worth starting."""
    cores = os.cpu_count() or 1
    if blocks < 4 or cores < 2 or "fork" not in multiprocessing.get_all_start_methods():
        yield map
        return
    with ProcessPoolExecutor(min(cores, blocks), mp_context=multiprocessing.get_context("fork")) as pool:
        yield pool.map


def hold_out(items: Sequence[T], test_size: int | float, seed: int) -> tuple[list[T], list[T]]:
    """(kept, held out), both in input order: the selection `yayi data split` makes without strata."""
    count = allocate(test_size, {"": len(items)})[""]
    chosen = chosen_positions(seed=seed, stratum="", size=len(items), count=count)
    return [item for i, item in enumerate(items) if i not in chosen], [items[i] for i in sorted(chosen)]


def seeded_sample(items: Sequence[T], count: int | None, seed: int) -> list[T]:
    """At most `count` of `items`, a seeded choice kept in input order (all of them when fewer)."""
    if count is None or len(items) <= count:
        return list(items)
    return hold_out(items, count, seed)[1]
