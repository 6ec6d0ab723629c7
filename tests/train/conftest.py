"""Fixtures shared by the training tests, the one real run that tests of a finished run read among them."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import RECORDS, outputs, write_jsonl, yayi_train


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """`RECORDS` four times over: enough for a tiny model to learn them in a short run."""
    return write_jsonl(tmp_path_factory.mktemp("train-data") / "train.jsonl", RECORDS * 4)


@dataclass(frozen=True)
class FinishedRun:
    output: Path
    stdout: str
    stderr: str
    arguments: tuple[str, ...]
    """The options that decide its data stream and model: what a launch that resumes it repeats."""
    steps: int
    logging_steps: int
    eval_steps: int


@pytest.fixture(scope="session")
def finished_run(tiny_model_dirs, tmp_path_factory) -> FinishedRun:
    """One real `yayi train`, shared by the tests that only read a finished run (what the model learned, the
    console, the files, resuming it on another number of ranks, which each do to a copy): the deepspeed launcher
    with 2 CPU ranks, ZeRO-2, the tiny Llama taught RECORDS (8 records, global batch 4, 60 epochs: 120 steps) at a
    high learning rate, scored on held-out data every 40 steps, reporting to TensorBoard, with --json (the document on stdout, the console
    on stderr)."""
    root = tmp_path_factory.mktemp("finished-run")
    data = write_jsonl(root / "train.jsonl", RECORDS * 4)
    held_out = write_jsonl(root / "held-out.jsonl", RECORDS)
    arguments = ("--data", str(data), "--eval-data", str(held_out), "--model", str(tiny_model_dirs["llama"]),
                 "--zero", "2", "--micro-batch-size", "2", "--lr", "1e-2", "--logging-steps", "5", "--save-steps", "40",
                 "--report-to", "tensorboard")
    output = root / "run"
    stdout, stderr = outputs(yayi_train(*arguments, "-o", str(output), "--epochs", "60", "--json", stderr=subprocess.PIPE))
    return FinishedRun(output, stdout, stderr, arguments, steps=120, logging_steps=5, eval_steps=40)
