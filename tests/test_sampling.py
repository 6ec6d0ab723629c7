"""Seeded selection: the same seed and size pick the same records in split, train and eval."""

from __future__ import annotations

import pytest

from yayi_cli.core.sampling import allocate, chosen_positions, hold_out, parse_test_size, seeded_sample
from yayi_cli.runtime.errors import UsageError


def test_allocation_by_largest_remainder():
    assert allocate(10, {"a": 50, "b": 30, "c": 20}) == {"a": 5, "b": 3, "c": 2}
    assert allocate(3, {"a": 1, "b": 1, "c": 1, "d": 1}) == {"a": 1, "b": 1, "c": 1, "d": 0}
    assert allocate(0.1, {"a": 11}) == {"a": 2}  # fractions round up, as scikit-learn does


@pytest.mark.parametrize("text, value", [("400", 400), ("0.05", 0.05), ("1", 1)])
def test_test_size_is_a_count_or_a_fraction(text, value):
    assert parse_test_size(text) == value


@pytest.mark.parametrize("text", ["0", "1.5", "-3", "abc", "2.0"])
def test_impossible_test_sizes_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_test_size(text)


def test_fractions_are_exact():
    assert allocate(0.07, {"": 100}) == {"": 7}  # not ceil(7.000000000000001) = 8


def test_positions_depend_on_seed_and_stratum_and_are_a_sample_not_a_prefix():
    picks = {(seed, stratum): chosen_positions(seed=seed, stratum=stratum, size=1000, count=10)
             for seed in (1, 2) for stratum in ("", "媒宣领域任务")}
    assert all(len(p) == 10 and max(p) < 1000 for p in picks.values())
    assert len({frozenset(p) for p in picks.values()}) == 4
    assert all(p != set(range(10)) for p in picks.values())


def test_hold_out_keeps_input_order_and_loses_nothing():
    items = list(range(100))
    kept, held = hold_out(items, 0.1, seed=515)
    assert len(held) == 10 and kept == sorted(kept) and held == sorted(held)
    assert sorted(kept + held) == items


def test_a_seeded_sample_is_what_hold_out_would_hold_out():
    items = [f"record {i}" for i in range(50)]
    assert seeded_sample(items, 7, seed=3) == hold_out(items, 7, seed=3)[1]
    assert seeded_sample(items, 7, seed=3) != seeded_sample(items, 7, seed=4)
    assert seeded_sample(items, 50, seed=3) == items == seeded_sample(items, None, seed=3)
