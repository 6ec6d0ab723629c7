"""Paths, data and small helpers shared by the tests (fixtures live in the conftest files)."""

import hashlib
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "examples" / "sample.jsonl"

RECORDS = [
    {"instruction": "你好", "output": "你好！我是雅意，很高兴为你服务。"},
    {"instruction": "What is YaYi?", "output": "YaYi is a helpful assistant."},
]
"""What the training tests teach a tiny model (the `small_data` fixture repeats them)."""


def files(directory: Path) -> dict[str, str]:
    """Name -> sha256 of each file in `directory`, to show that nothing in it changed."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def strip_format(directory: Path) -> Path:
    """What a downloaded model looks like: no chat template, EOS as the only stop id, no template file."""
    (directory / "chat_template.jinja").unlink()
    (directory / "yayi_template.json").unlink()
    config = json.loads((directory / "generation_config.json").read_text(encoding="utf-8"))
    config["eos_token_id"] = 2
    (directory / "generation_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory
