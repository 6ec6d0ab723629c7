"""What `yayi chat` is asked to do, as data (each field declares its flags, help and checks: options/fields.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from yayi_cli.options.fields import CommandOptions, group, option
from yayi_cli.options.shared import (
    GenerationSettings,
    base_option,
    device_option,
    dtype_option,
    load_in_8bit_option,
    model_option,
    template_option,
    trust_remote_code_option,
)
from yayi_cli.runtime.errors import UsageError


@dataclass
class ChatOptions(CommandOptions):
    """Everything `yayi chat` needs to open a session and answer, resolved in one place."""

    COMMAND = "chat"
    CONFIG_FILE = True

    model: str = model_option()
    template: str | None = template_option()
    system: str | None = option("--system", default=None, help="System prompt (default: the template's).")
    settings: GenerationSettings = group(GenerationSettings)
    device: str = device_option()
    dtype: str = dtype_option()
    load_in_8bit: bool = load_in_8bit_option()
    trust_remote_code: bool = trust_remote_code_option()
    max_context_tokens: int | None = option(
        "--max-context-tokens", default=None, at_least=16, metavar="N",
        help="Drop the oldest exchanges beyond this (default: the model's context).")
    compile: bool = option("--compile", default=False,
                           help="Static KV cache compiled by torch.compile: faster decoding after a warm-up.")
    base: str | None = base_option()
    prompt: str | None = option("--prompt", "-p", default=None, help="Answer this one message, print only the answer, exit.")
    jsonl: bool = option("--jsonl", default=False,
                         help='Read JSON lines on stdin ({"prompt": ...} or any record), write one JSON line per answer.')
    history_file: Path | None = option("--history-file", default=None, metavar="FILE",
                                       help="Input history (default: $XDG_STATE_HOME/yayi/chat_history).")
    history: bool = option("--history/--no-history", default=True, help="Keep an input history on disk (--no-history: none).")

    def check_values(self) -> None:
        super().check_values()
        if self.jsonl and self.prompt is not None:
            raise UsageError("--jsonl reads its prompts from stdin; leave out --prompt")
