"""The bad-input table: wrong values, files and models across the commands, each answered with one `error:` line that
names the problem, the right exit code (2: usage or environment; 1: the data), and no traceback. A row that comes
back as a silent default, a misleading hint or a traceback fails here."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.helpers import SAMPLE_DATA, free_port, one_error_line, yayi

DATA = str(SAMPLE_DATA)
PAIRS = str(SAMPLE_DATA.parent / "preference.jsonl")

TABLE = [
    # data validate / split / preview
    (["data", "validate", "{tmp}/missing.jsonl"], 2, "missing.jsonl"),
    (["data", "split", DATA, "--test-size", "0", "-o", "{tmp}/split"], 2, "--test-size"),
    (["data", "split", DATA, "--test-size", "1000", "-o", "{tmp}/split"], 2, "--test-size"),
    (["data", "split", DATA, "--test-size", "-1", "-o", "{tmp}/split"], 2, "--test-size"),
    (["data", "split", "{binary}", "--test-size", "1", "-o", "{tmp}/split"], 1, "the file is binary"),
    (["data", "preview", DATA, "-n", "0"], 2, "--num-records must be at least 1, got 0"),
    (["data", "preview", DATA, "-n", "-1"], 2, "--num-records must be at least 1, got -1"),
    (["data", "preview", "{binary}"], 1, "the file is binary, not text"),
    (["data", "preview", "{gz}"], 1, "the file is gzip-compressed"),
    (["data", "preview", "{tmp}/missing.jsonl"], 2, "missing.jsonl"),
    (["data", "preview", DATA, "--template", "chatml"], 2, "chatml"),
    (["data", "preview", DATA, "--model", "{tmp}/nope"], 2, "no such model directory"),
    # train (refused while planning, before any rank starts)
    (["train", "--dry-run", "--data", DATA, "--model", "{tiny}", "-o", "{tmp}/run", "--max-steps", "-5"], 2,
     "--max-steps must be at least 1, got -5"),
    (["train", "--dry-run", "--data", DATA, "--model", "{tiny}", "-o", "{tmp}/run", "--max-steps", "0"], 2,
     "--max-steps must be at least 1, got 0"),
    (["train", "--dry-run", "--data", DATA, "--model", "{tiny}", "-o", "{tmp}/run", "--epochs", "-1"], 2, "--epochs"),
    (["train", "--dry-run", "--data", DATA, "--model", "{tiny}", "-o", "{tmp}/run", "--micro-batch-size", "0"], 2,
     "--micro-batch-size"),
    (["train", "--dry-run", "--data", DATA, "--model", "{tiny}", "-o", "{tmp}/run", "--zero", "4"], 2, "--zero"),
    (["train", "--dry-run", "--data", DATA, "--model", "{tiny}", "-o", "{tmp}/run", "--lora", "--qlora"], 2, "--qlora"),
    (["train", "--dry-run", "--data", DATA, "--model", "{tiny}", "-o", "{tmp}/run", "--method", "dpo"], 2, "needs pairs"),
    (["train", "--dry-run", "--data", DATA, "--model", "{tiny}", "-o", "{tmp}/run", "--method", "ppo"], 2, "ppo"),
    (["train", "--dry-run", "--data", DATA, "--model", "{tiny}", "-o", "{tiny}"], 2, "would replace --model"),
    (["train", "--dry-run", "--data", DATA, "--model", "{tiny}", "-o", "{tiny}", "--force"], 2, "would replace --model"),
    (["train", "--dry-run", "--data", "{tmp}/missing.jsonl", "--model", "{tiny}", "-o", "{tmp}/run"], 2, "missing.jsonl"),
    (["train", "--dry-run", "--data", "{binary}", "--model", "{tiny}", "-o", "{tmp}/run"], 1, "the file is binary"),
    (["train", "--dry-run", "--data", "{gz}", "--model", "{tiny}", "-o", "{tmp}/run"], 1, "gzip-compressed"),
    (["train", "--dry-run", "--data", "{empty}", "--model", "{tiny}", "-o", "{tmp}/run"], 1, "no records"),
    (["train", "--dry-run", "--data", DATA, "--model", "{tmp}/nope", "-o", "{tmp}/run"], 2, "no such model directory"),
    (["train", "--dry-run", "--data", DATA, "--eval-data", DATA, "--test-size", "2", "--model", "{tiny}", "-o", "{tmp}/run"],
     2, "not both"),
    (["train", "--dry-run", "--data", DATA, "--model", "{tiny}", "-o", "{tmp}/run", "--network-interface", "eth0;rm"], 2,
     "--network-interface"),
    (["train", "--dry-run", "--data", DATA, "--model", "{tiny}", "-o", "{tmp}/run", "--lora-r", "0"], 2, "--lora-r"),
    (["train", "--dry-run", "--data", DATA, "--model", "{tiny}", "-o", "{tmp}/run", "--lr", "-1"], 2, "--lr"),
    (["train", "--dry-run", "--data", DATA, "--model", "{tiny}", "-o", "{tmp}/run", "--report-to", "wandb"], 2,
     "--report-to wandb needs wandb: pip install wandb"),
    (["train", "--dry-run", "--data", DATA, "--model", "{tiny}", "-o", "{tmp}/run", "--report-to", "comet"], 2, "comet"),
    (["train", "--dry-run", "--config", "{tmp}/missing.yaml", "--data", DATA, "--model", "{tiny}", "-o", "{tmp}/run"], 2,
     "missing.yaml"),
    (["train", "--dry-run", "--config", "{bad_config}", "--data", DATA, "--model", "{tiny}", "-o", "{tmp}/run"], 2,
     "max_lenght"),
    # chat
    (["chat", "--model", "{tmp}/nope", "--prompt", "hi"], 2, "no such model directory"),
    (["chat", "--model", "{no_config}", "--prompt", "hi"], 2, "no config.json"),
    (["chat", "--model", "{tiny}", "--prompt", "hi", "--temperature", "-1"], 2, "temperature must be above 0"),
    (["chat", "--model", "{tiny}", "--prompt", "hi", "--max-new-tokens", "0"], 2, "max_new_tokens must be at least 1"),
    (["chat", "--model", "{tiny}", "--prompt", "hi", "--top-p", "2"], 2, "top_p must be in (0, 1]"),
    (["chat", "--model", "{tiny}", "--prompt", "  "], 2, "no message"),
    (["chat", "--model", "{tiny}", "--prompt", "what is <|End|>?"], 2, "<|End|>"),
    # eval
    (["eval", "--model", "{tiny}", "--data", "{tmp}/missing.jsonl"], 2, "missing.jsonl"),
    (["eval", "--model", "{tiny}", "--data", "{binary}"], 1, "the file is binary"),
    (["eval", "--model", "{tiny}", "--data", "{gz}"], 1, "gzip-compressed"),
    (["eval", "--model", "{tiny}", "--data", "{empty}"], 1, "no records"),
    (["eval", "--model", "{tiny}", "--data", DATA, "--protocol", "chat"], 2, "--protocol is for multiple choice"),
    (["eval", "--model", "{tiny}", "--data", DATA, "--shots", "2"], 2, "--shots is for --benchmark"),
    (["eval", "--model", "{tiny}", "--data", DATA, "--max-regression", "5"], 2, "--max-regression needs --baseline"),
    (["eval", "--model", "{tiny}", "--data", DATA, "--reference", "{tiny}"], 2, "--reference is for --task preference"),
    (["eval", "--model", "{tiny}", "--data", PAIRS, "--task", "preference", "--generate"], 2, "--generate"),
    (["eval", "--model", "{tiny}", "--data", DATA, "--fail-if", "loss>>1"], 2, "--fail-if"),
    (["eval", "--model", "{tiny}", "--data", "{bad_choice}", "--task", "choice"], 1, "is not one of A, B, C, D"),
    (["eval", "--model", "{tiny}", "--data", "{tmp}", "--benchmark", "ceval"], 2, "no C-Eval subject files"),
    # quantize, merge, export, serve, template install
    (["quantize", "--model", "{tiny}", "-o", "{tmp}/q", "--bits", "3"], 2, "--bits"),
    (["quantize", "--model", "{tmp}/nope", "-o", "{tmp}/q"], 2, "no such model directory"),
    (["merge", "{tiny}", "-o", "{tmp}/merged"], 2, "not an adapter directory"),
    (["merge", "{tmp}/nope", "-o", "{tmp}/merged"], 2, "nope"),
    (["export", "gguf", "--model", "{tiny}", "-o", "{tmp}/m.gguf", "--type", "q9"], 2, "q9"),
    (["export", "gguf", "--model", "{tmp}/nope", "-o", "{tmp}/m.gguf"], 2, "no such model directory"),
    (["serve", "--model", "{tiny}", "--port", "70000"], 2, "--port"),
    (["serve", "--model", "{tiny}", "--engine", "tgi", "--port", "{port}"], 2, "tgi"),
    (["serve", "--model", "{tmp}/nope", "--port", "{port}"], 2, "no such model directory"),
    (["template", "install", "{tmp}/nope"], 2, "no such model directory"),
    (["template", "install", "wenge-research/yayi-7b"], 2, "no such model directory"),
]


@pytest.fixture
def places(tmp_path, tiny_model_dirs) -> dict[str, str]:
    """What the table's placeholders stand for: bad files of each kind, a model, a free port."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "binary.jsonl").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8)
    (files / "data.jsonl.gz").write_bytes(gzip.compress(SAMPLE_DATA.read_bytes()))
    (files / "empty.jsonl").write_bytes(b"")
    (files / "run.yaml").write_text("max_lenght: 512\n", encoding="utf-8")
    (files / "bad.csv").write_text("question,A,B,C,D,answer\nq,1,2,3,4,E\n", encoding="utf-8")
    (files / "no-config").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    return {"tmp": str(work), "tiny": str(tiny_model_dirs["llama"]), "binary": str(files / "binary.jsonl"),
            "gz": str(files / "data.jsonl.gz"), "empty": str(files / "empty.jsonl"), "bad_config": str(files / "run.yaml"),
            "bad_choice": str(files / "bad.csv"), "no_config": str(files / "no-config"), "port": str(free_port())}


@pytest.mark.parametrize(("arguments", "code", "fragment"), TABLE, ids=[" ".join(row[0][:2]) + f" #{n}" for n, row in enumerate(TABLE)])
def test_a_bad_input_is_one_error_line_with_its_exit_code(places, arguments, code, fragment, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a mistyped name is not looked for on the network
    result = yayi(*[argument.format(**places) for argument in arguments])
    one_error_line(result, code, fragment.format(**places))
    assert not list(Path(places["tmp"]).iterdir()), "a refused command wrote something"


def test_the_table_is_wide():
    commands = {row[0][0] if row[0][0] not in ("data", "export", "template") else " ".join(row[0][:2]) for row in TABLE}
    assert len(TABLE) >= 50 and len(commands) >= 10, (len(TABLE), sorted(commands))
    assert json.dumps(TABLE)  # plain data: the table is read, not computed
