"""The worker's choices that need no launcher: which records it trains and evaluates on."""

from __future__ import annotations

from tests.helpers import SAMPLE_DATA
from yayi_cli.data.checked import load_records
from yayi_cli.data.split import split
from yayi_cli.train.options import TrainOptions
from yayi_cli.train.worker import training_records


def conversations(records):
    return [record.conversation for record in records]


def test_test_size_holds_out_exactly_what_data_split_puts_in_test(tmp_path):
    for seed in (515, 7):
        split([SAMPLE_DATA], tmp_path / str(seed), test_size=4, seed=seed)
        train, held_out = training_records(TrainOptions(data=[str(SAMPLE_DATA)], test_size=4, seed=seed))
        assert conversations(held_out) == conversations(load_records([tmp_path / str(seed) / "test.jsonl"]))
        assert conversations(train) == conversations(load_records([tmp_path / str(seed) / "train.jsonl"]))


def test_the_seed_changes_the_held_out_records_and_they_are_not_simply_the_first():
    first = conversations(load_records([SAMPLE_DATA]))[:4]
    chosen = [conversations(training_records(TrainOptions(data=[str(SAMPLE_DATA)], test_size=4, seed=seed))[1])
              for seed in (515, 7)]
    assert chosen[0] != chosen[1]
    assert first not in chosen


def test_eval_data_is_used_as_it_is(tmp_path):
    train, held_out = training_records(TrainOptions(data=[str(SAMPLE_DATA)], eval_data=[str(SAMPLE_DATA)]))
    assert conversations(train) == conversations(held_out) == conversations(load_records([SAMPLE_DATA]))
