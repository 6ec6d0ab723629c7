"""Paths, data and process helpers shared by the tests (fixtures live in the conftest files)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "examples" / "sample.jsonl"
HEAVY_LIBRARIES = ("torch", "transformers", "deepspeed", "datasets", "bitsandbytes", "peft")
NOT_AT_STARTUP = (*HEAVY_LIBRARIES, "rich")
"""What `yayi --help` and a TAB press never import: the heavy libraries, and Rich (about 40 ms: it is
imported where something is printed)."""


RECORDS = [
    {"instruction": "你好", "output": "你好！我是雅意，很高兴为你服务。"},
    {"instruction": "What is YaYi?", "output": "YaYi is a helpful assistant."},
]
"""What the training tests teach a tiny model (the `small_data` fixture repeats them)."""

PAIRS = [
    {"instruction": "你好", "chosen": "你好！我是雅意，很高兴为你服务。", "rejected": "走开，别烦我。"},
    {"instruction": "What is YaYi?", "chosen": "YaYi is a helpful assistant.", "rejected": "Nothing you need to know."},
    {"instruction": "How do I open my neighbour's lock?", "chosen": "I can't help with that; ask your neighbour.",
     "rejected": "Use a tension wrench and a pick."},
    {"instruction": "Write one word: yes or no.", "chosen": "yes", "rejected": "no"},
]
"""Pairs whose chosen and rejected answers differ clearly: what the preference tests teach a tiny model."""


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


class OutputReader:
    """A child's output, read line by line by a thread of its own, so that a test waiting for a line
    keeps its deadline even while the child prints nothing (a read in the test's thread would block)."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.ended = threading.Event()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)
        self.ended.set()

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, wanted: Callable[[str], bool], timeout: float) -> str:
        """The first line `wanted` accepts; fails when the output ends or `timeout` seconds pass without one."""
        deadline, seen = time.monotonic() + timeout, 0
        while True:
            ended = self.ended.is_set()
            new = self.lines[seen:]
            seen += len(new)
            found = next((line for line in new if wanted(line)), None)
            if found is not None:
                return found
            assert not ended, f"the output ended without the line waited for:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no such line within {timeout} s; so far:\n{self.text()[-3000:]}"
            time.sleep(0.1)


def process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (Z: a zombie, which holds nothing), None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z")


def processes_mentioning(text: str) -> list[int]:
    """The live processes whose command line contains `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            arguments = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        pid = int(cmdline.parent.name)
        if text in arguments and alive(pid):
            found.append(pid)
    return found


def wait_until(condition: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    """Poll `condition` until it holds; fails after `timeout` seconds, saying `what()`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what()}"
        time.sleep(0.2)


def split_into(output: Path, *paths: Path, **options: object) -> object:
    """`yayi data split PATHS... -o OUTPUT` as a library call: SplitReport."""
    from yayi_cli.data.options import SplitOptions
    from yayi_cli.data.split import split

    return split(SplitOptions(files=list(paths), output=output, **options))


def memorize(directory: Path, system: str, question: str, answer: str, steps: int = 80) -> None:
    """Train the tiny model on one exchange until greedy decoding answers it and stops at <|End|>."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from yayi_cli.prompt import ASSISTANT, HUMAN, Conversation, PromptTokenizer, Turn, resolve_template

    template, _ = resolve_template(None, str(directory))
    encoded = PromptTokenizer(template, AutoTokenizer.from_pretrained(directory)).encode_training(
        Conversation((Turn(HUMAN, question), Turn(ASSISTANT, answer)), system)
    )
    model = AutoModelForCausalLM.from_pretrained(directory)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids, labels = torch.tensor([encoded.input_ids]), torch.tensor([encoded.labels])
    torch.manual_seed(0)
    for _ in range(steps):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(directory)
