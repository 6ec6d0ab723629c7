"""The worker's choices that need no launcher: which records it trains and evaluates on; and that a rank
imports nothing of the launcher's side."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.helpers import SAMPLE_DATA, split_into
from yayi_cli.core.prompt import TEMPLATES, PromptTokenizer, add_markers
from yayi_cli.core.reader import sha256_of
from yayi_cli.core.record_files import load_records
from yayi_cli.runtime.errors import UsageError
from yayi_cli.train.options import TrainOptions
from yayi_cli.train.recipe import share_cores, training_records
from yayi_cli.train.sft import SFTRecipe


LAUNCHER_SIDE = ("yayi_cli.train.plan", "yayi_cli.train.ranks", "yayi_cli.train.checkpoints",
                 "yayi_cli.train.environment", "yayi_cli.train.supervise", "yayi_cli.train.console",
                 "yayi_cli.train.report", "yayi_cli.train.launch", "yayi_cli.train.memory", "yayi_cli.train.runs",
                 "yayi_cli.core.reader", "yayi_cli.cli.app")


def imported_modules(argv: list[str]) -> set[str]:
    """The modules a Python process imports, as `-X importtime` lists them."""
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, check=True)
    return {line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


def test_a_rank_imports_nothing_of_the_launchers_side():
    imported = imported_modules(["-m", "yayi_cli.train.worker", "--help"])
    assert {"yayi_cli.train.options", "yayi_cli.models.run_files", "yayi_cli.train.progress"} <= imported  # what it does need
    assert sorted(imported & set(LAUNCHER_SIDE)) == []


def conversations(records):
    return [record.conversation for record in records]


def test_test_size_holds_out_exactly_what_data_split_puts_in_test(tmp_path):
    for seed in (515, 7):
        split_into(tmp_path / str(seed), SAMPLE_DATA, test_size=4, seed=seed)
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


def test_a_cache_hit_reads_no_data_file_and_other_data_is_tokenized_anew(tokenizer, tmp_path):
    add_markers(tokenizer)
    prompts = PromptTokenizer(TEMPLATES["yayi"], tokenizer)
    data = tmp_path / "train.jsonl"
    shutil.copyfile(SAMPLE_DATA, data)
    options = TrainOptions(data=[str(data)], test_size=4, cache_dir=str(tmp_path / "cache"))
    run = {"data": [{"path": str(data), "sha256": sha256_of(data)}], "eval_data": []}  # as the launcher records it
    recipe = SFTRecipe(options, run | {"max_length": 512})
    first = recipe.build_datasets(prompts)
    data.unlink()  # only the cache is left to read from
    train, held_out, counts = recipe.build_datasets(prompts)
    assert (train["input_ids"], held_out["input_ids"], counts) == (first[0]["input_ids"], first[1]["input_ids"], first[2])
    assert (counts["train"]["records"], counts["eval"]["records"]) == (len(load_records([SAMPLE_DATA])) - 4, 4)
    edited = {"data": [{"path": str(data), "sha256": "another hash: the file was changed"}], "eval_data": []}
    with pytest.raises(UsageError, match="no such file"):  # a miss: the data is read again
        SFTRecipe(options, edited | {"max_length": 512}).build_datasets(prompts)


@pytest.fixture
def torch_threads():
    import torch

    before = torch.get_num_threads()
    yield torch
    torch.set_num_threads(before)


def test_cpu_ranks_on_one_machine_split_its_cores_between_them(torch_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setenv("LOCAL_SIZE", "2")
    assert share_cores(torch_threads) == 4 == torch_threads.get_num_threads()
    monkeypatch.setenv("LOCAL_SIZE", "16")  # more ranks than cores: one thread each, never none
    assert share_cores(torch_threads) == 1


def test_omp_num_threads_set_by_the_user_is_left_as_it_is(torch_threads, monkeypatch):
    torch_threads.set_num_threads(3)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("LOCAL_SIZE", "2")
    assert share_cores(torch_threads) == 3
