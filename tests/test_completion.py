"""Shell completion: useful candidates, no heavy import on a TAB press, generated scripts up to date."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import NOT_AT_STARTUP, REPO
from yayi_cli.core.prompt import TEMPLATES


PRESS_TAB = (
    "import sys; from yayi_cli.cli.app import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    "sys.stderr.write('HEAVY:' + ','.join(m for m in %r if m in sys.modules))" % (NOT_AT_STARTUP,)
)


def tab(line: str, cwd=None) -> list[str]:
    """The candidates bash gets for `line` (the word after its last space is being completed)."""
    words = line.split(" ")
    env = dict(os.environ, COMP_WORDS=line, COMP_CWORD=str(len(words) - 1), _YAYI_COMPLETE="complete_bash")
    result = subprocess.run([sys.executable, "-c", PRESS_TAB], capture_output=True, text=True, env=env, cwd=cwd,
                            check=True)
    assert result.stderr.endswith("HEAVY:"), result.stderr  # a TAB press imports none of them
    return result.stdout.split()


def test_commands_and_sub_commands_complete():
    assert {"data", "train", "chat", "quantize", "eval", "serve", "template"} <= set(tab("yayi "))
    assert tab("yayi template ") == ["install"]
    assert set(tab("yayi data ")) == {"validate", "split", "preview"}


def test_options_and_their_choices_complete():
    assert "--precision" in tab("yayi train --pre")
    assert tab("yayi train --precision ") == ["auto", "bf16", "fp16", "fp32"]
    assert tab("yayi train --zero ") == ["0", "1", "2", "3"]
    assert tab("yayi chat --template ") == list(TEMPLATES)
    assert tab("yayi serve --engine ") == ["transformers", "vllm"]
    assert "--data-path" in tab("yayi train --data")


def test_model_and_output_options_offer_directories_only(tmp_path):
    (tmp_path / "ckpt-a").mkdir()
    (tmp_path / "ckpt-b").mkdir()
    (tmp_path / "ckpt-notes.txt").write_text("", encoding="utf-8")
    assert tab("yayi chat --model ckpt", cwd=tmp_path) == ["ckpt-a/", "ckpt-b/"]
    assert tab(f"yayi train -o {tmp_path}/ck") == [f"{tmp_path}/ckpt-a/", f"{tmp_path}/ckpt-b/"]


def test_data_options_leave_file_names_to_the_shell():
    """An empty answer makes bash (`complete -o default`), zsh (`_files`) and fish complete paths."""
    assert tab("yayi data validate ") == [] and tab("yayi train --data ") == []


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_shipped_completion_scripts_match_the_cli(shell):
    env = dict(os.environ, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    shown = subprocess.run([sys.executable, "-m", "yayi_cli", "--show-completion", shell], capture_output=True,
                           text=True, env=env, check=True).stdout
    shipped = (REPO / "completions" / f"yayi.{shell}").read_text(encoding="utf-8")
    assert shown == shipped, f"completions/yayi.{shell} is out of date: run `make completions`"


@pytest.mark.parametrize(("shell", "installed"), [
    ("bash", ".bash_completions/yayi.sh"), ("zsh", ".zfunc/_yayi"), ("fish", ".config/fish/completions/yayi.fish"),
])
def test_install_completion_writes_the_script_for_each_shell(tmp_path, shell, installed):
    env = dict(os.environ, HOME=str(tmp_path), _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    result = subprocess.run([sys.executable, "-m", "yayi_cli", "--install-completion", shell], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "_YAYI_COMPLETE" in (tmp_path / installed).read_text(encoding="utf-8")
