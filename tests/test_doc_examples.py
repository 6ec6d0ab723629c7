"""Every example in the README and docs/ that uses the demo's outputs or examples/ runs as written on a fresh clone
after `make demo`: the ```sh and ```console blocks are read from the pages, each command is run (with `.demo/` a
folder this test fills as the demo does), and a console block's output lines must be what it prints."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO, yayi


PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNERS = ("yayi ", ".venv/bin/yayi ", ".venv/bin/python -m yayi_cli.models.tiny ")
"""How an example line starts when it is a command this test can run (`make ...` installs; the demo runs it)."""


@dataclass(frozen=True)
class Example:
    where: str
    command: str
    shown: tuple[str, ...]
    """The output lines a console block shows (its `...` and ruled lines left out)."""


def examples() -> list[Example]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in re.finditer(r"```(sh|console)\n(.*?)```", text, re.S):
            line_number = text.count("\n", 0, block.start()) + 2
            lines = block.group(2).splitlines()
            for index, line in enumerate(lines):
                command = line.removeprefix("$ ") if block.group(1) == "console" else line
                if not command.startswith(RUNNERS) or not (".demo/" in command or "examples/" in command):
                    continue
                shown = []
                if block.group(1) == "console":
                    for output in lines[index + 1:]:
                        if output.startswith("$ "):
                            break
                        if output.strip() and not output.startswith("...") and "───" not in output:
                            shown.append(output)
                found.append(Example(f"{page.relative_to(REPO)}:{line_number + index}", command, tuple(shown)))
    return found


EXAMPLES = examples()


def test_the_pages_hold_the_examples_a_newcomer_runs_first():
    commands = " ".join(example.command for example in EXAMPLES)
    assert "yayi_cli.models.tiny" in commands and "data validate examples/flawed.jsonl" in commands and len(EXAMPLES) >= 5


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo's tiny model, built by the demo's own command."""
    from yayi_cli.models.tiny import main

    folder = tmp_path_factory.mktemp("demo")
    assert main([str(folder / "tiny"), "--arch", "llama", "--data", str(REPO / "examples" / "sample.jsonl")]) == 0
    return folder


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.where for example in EXAMPLES])
def test_each_example_runs_as_written(example, demo, monkeypatch):
    monkeypatch.chdir(REPO)
    arguments = shlex.split(example.command.replace(".demo/", f"{demo}/"), comments=True)
    if arguments[:3] == [".venv/bin/python", "-m", "yayi_cli.models.tiny"]:
        from yayi_cli.models.tiny import main

        assert main(arguments[3:]) == 0
        return
    result = yayi(*arguments[1:])
    assert result.exit_code in (0, 1), result.output  # 1: the example shows data that fails its checks
    printed = [line.replace(str(demo) + "/", ".demo/").rstrip() for line in result.output.splitlines()]
    missing = [line for line in example.shown if line.rstrip() not in printed]
    assert missing == [], f"{example.where}: not printed:\n" + "\n".join(missing) + "\n--- printed:\n" + result.output
