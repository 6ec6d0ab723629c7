"""Shared terminal behaviour: where progress goes and when it shows."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Callable, Iterator

PROGRESS_MIN_BYTES = 8 << 20
"""Inputs smaller than this finish too fast for a progress bar to help."""


@contextlib.contextmanager
def byte_progress(description: str, total_bytes: int) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n_bytes)`; a transient bar on stderr only when stderr is a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal or total_bytes < PROGRESS_MIN_BYTES:
        yield lambda n_bytes: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total_bytes)
        yield lambda n_bytes: progress.advance(task, n_bytes)


def deepspeed_logs_to_stderr() -> None:
    """Keep stdout for results (`--json`, answers) when DeepSpeed is installed.

    DeepSpeed's logger writes to whatever stdout was when it was first imported, and it is imported
    by accelerate (int8 loading) and by `yayi train`; importing it here with stdout pointed at stderr
    sends its messages, such as "Setting accelerator to CPU", to stderr for good.
    """
    if "deepspeed" in sys.modules or importlib.util.find_spec("deepspeed") is None:
        return
    with contextlib.redirect_stdout(sys.stderr):
        import deepspeed  # noqa: F401
