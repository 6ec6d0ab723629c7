"""What `yayi train` shows while its ranks run, and where it keeps everything they print.

The launcher's output (all ranks, tagged by train/progress.py; remote lines also prefixed by
pdsh) is read line by line: every line goes to OUTPUT/train.log; progress events from the first
rank drive the console (a live view on a terminal, one plain line per logging step elsewhere);
yayi's own lines and errors are shown; library output only with --verbose; a line that every rank
prints (a warning, an error) is shown once. When the run fails, the machine that failed (pdsh says
which) and the last lines of the ranks that failed are shown with the path of the full log.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from yayi_cli.models.run_files import TRAIN_LOG
from yayi_cli.runtime.errors import UsageError
from yayi_cli.train.progress import EVENT_TAG, RANK_SEPARATOR
from yayi_cli.train.supervise import failed_machine


LAUNCHER = "launcher"
TAGGED = re.compile(r"^((?:\S+: )?\S+ rank \d+)" + re.escape(RANK_SEPARATOR) + "(.*)$")
"""`host rank N| text`, after the `machine: ` that pdsh puts before each line from a machine (kept: it
is the name the hostfile gives the machine)."""
MACHINE_LINE = re.compile(r"^([^\s:@]+): (.+)$")
"""A line pdsh passed on from a machine, not tagged by a rank (the machine's launcher, ssh)."""
OWN_LINE = re.compile(r"^(\[yayi\] |error: |interrupted)")
FAILURE_LINES = 20


def split_line(line: str) -> tuple[str, str]:
    """(who printed it: `host rank N` or the launcher, the text)."""
    tagged = TAGGED.match(line)
    return (tagged.group(1), tagged.group(2)) if tagged else (LAUNCHER, line)


def _number(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


SHOWN_PREFERENCE = {"rewards/accuracies": "reward_acc", "rewards/margins": "margin", "kl": "kl", "reward": "reward",
                    "completions/mean_length": "answer_len"}
"""The preference metrics each console line shows (metrics.jsonl holds them all), with their short names."""


def preference_part(event: dict[str, Any], separator: str) -> str:
    """` reward_acc=… margin=…` (or with spaces) when the event has them, else nothing."""
    return "".join(f" {short}{separator}{event[name]:.3g}" for name, short in SHOWN_PREFERENCE.items() if name in event)


def plain_line(event: dict[str, Any]) -> str | None:
    """One line for a log that is not a terminal, `step=… loss=… lr=… tok/s=…`."""
    kind = event["event"]
    if kind == "log":
        return (f"step={event['step']}/{event['max_steps']} epoch={_number(event['epoch'], '.2f')} "
                f"loss={_number(event['loss'], '.4f')}{preference_part(event, '=')} lr={_number(event['learning_rate'], '.3g')} "
                f"grad_norm={_number(event['grad_norm'], '.3g')} tok/s={event['tokens_per_second']:.0f} "
                f"answer_tok/s={event['answer_tokens_per_second']:.0f} elapsed={event['elapsed_s']:.0f}s")
    if kind == "eval":
        return f"eval step={event['step']} eval_loss={_number(event['eval_loss'], '.4f')}{preference_part(event, '=')}"
    if kind == "checkpoint":
        return f"checkpoint step={event['step']} saved {event['path']}"
    return None


class LiveView:
    """The first rank's progress on a terminal: a step bar and the latest numbers under it."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("step"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=console,
        )
        self.task = self.progress.add_task("train", total=None)
        self.numbers = Text("waiting for the first step ...")
        self.notes: dict[str, str] = {}
        self.live = Live(Group(self.progress, self.numbers), console=console, refresh_per_second=4)
        self.live.start()

    def update(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        self.progress.update(self.task, completed=event["step"], total=event.get("max_steps") or None)
        if kind == "log":
            self.numbers = Text(
                f"epoch {_number(event['epoch'], '.2f')}  loss {_number(event['loss'], '.4f')}{preference_part(event, ' ')}  "
                f"lr {_number(event['learning_rate'], '.3g')}  grad norm {_number(event['grad_norm'], '.3g')}  "
                f"tokens/s {event['tokens_per_second']:.0f} (answers {event['answer_tokens_per_second']:.0f})"
            )
        elif kind == "eval":
            self.notes["eval"] = (f"eval loss {_number(event['eval_loss'], '.4f')}{preference_part(event, ' ')} "
                                  f"at step {event['step']}")
        elif kind == "checkpoint":
            self.notes["checkpoint"] = f"saved {event['path']}"
        lines = [self.numbers, *(Text(note, style="dim") for note in self.notes.values())]
        self.live.update(Group(self.progress, *lines))

    def stop(self) -> None:
        self.live.stop()


class RunConsole:
    """Reads the launcher's lines: logs them all, shows what a person should see."""

    def __init__(self, output: Path, *, verbose: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.verbose = verbose
        self.log_path = output / TRAIN_LOG
        self.log: TextIO = open(self.log_path, "a", encoding="utf-8", errors="replace", buffering=1)
        """Line-buffered: each line is on disk once written (yayi may be killed outright), and a write
        that fails raises here, in `line`, not later."""
        self.recent: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=FAILURE_LINES))
        self.said_first_by: dict[str, str] = {}
        self.last_machine_line: dict[str, str] = {}
        self.failed_machines: dict[str, str] = {}
        """machine -> the last line it printed before pdsh said it failed."""
        self.view = LiveView(self.console) if self.console.is_terminal and not verbose else None

    def line(self, line: str) -> None:
        line = line.rstrip("\n")
        source, text = split_line(line)
        stamp = time.strftime("%H:%M:%S")
        try:
            self.log.write(f"{stamp} {line}\n" if source != LAUNCHER else f"{stamp} {LAUNCHER}{RANK_SEPARATOR}{line}\n")
        except OSError as error:
            raise UsageError(f"cannot write {self.log_path}: {error.strerror or error}; stopped the run, "
                             "whose output could not be kept") from None
        self.recent[source].append(text)
        if source == LAUNCHER:
            self.note_machine(text)
        if text.startswith(EVENT_TAG):
            self.event(json.loads(text[len(EVENT_TAG):]))
        elif (self.verbose or OWN_LINE.match(text)) and self.first_to_say(source, text):
            self.show(text)

    def first_to_say(self, source: str, text: str) -> bool:
        """Whether no other rank has shown this text (a warning every rank prints shows once)."""
        return source == LAUNCHER or self.said_first_by.setdefault(text, source) == source

    def note_machine(self, text: str) -> None:
        """Remember each machine's last line, and which machines failed (pdsh says so)."""
        machine = failed_machine(text)
        if machine is not None:
            self.failed_machines.setdefault(machine, self.last_machine_line.get(machine, text))
            return
        from_machine = MACHINE_LINE.match(text)
        if from_machine:
            self.last_machine_line[from_machine.group(1)] = from_machine.group(2)

    def show(self, text: str) -> None:
        target = self.view.live.console if self.view else self.console
        target.print(escape(text), highlight=False, soft_wrap=True)

    def event(self, event: dict[str, Any]) -> None:
        if self.view is not None:
            self.view.update(event)
            return
        text = plain_line(event)
        if text is not None and not self.verbose:
            self.console.print(text, highlight=False, soft_wrap=True)

    def close(self) -> None:
        """Stop the live view and close the log. Every line was flushed as it was written, so all that
        closing can still fail on is a line whose failed write `line` has reported already."""
        if self.view is not None:
            self.view.stop()
        with contextlib.suppress(OSError):
            self.log.close()

    def finish(self, status: int) -> None:
        """Close; after a failure, show what the failing ranks printed last."""
        self.close()
        if status in (0, 130):
            return
        for machine, last_line in self.failed_machines.items():
            self.console.print(f"[red]{escape(machine)} failed[/], ending the run; its last line: {escape(last_line)}",
                               highlight=False, soft_wrap=True)
        failed = [source for source, lines in self.recent.items()
                  if source != LAUNCHER and any("Traceback" in line or line.startswith("error: ") for line in lines)]
        for source in failed or list(self.recent):
            self.console.print(f"[red]{escape(source)}[/] ended with:", highlight=False)
            for text in self.recent[source]:
                if not text.startswith(EVENT_TAG):
                    self.console.print(f"  {escape(text)}", highlight=False, soft_wrap=True)
        self.console.print(f"the full output of every rank is in {escape(str(self.log_path))}", highlight=False)
