"""Fixtures shared by the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import RECORDS


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """`RECORDS` four times over: enough for a tiny model to learn them in a short run."""
    path = tmp_path_factory.mktemp("train-data") / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS * 4), encoding="utf-8")
    return path
