"""Shared terminal behaviour: where progress goes and when it shows."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator


PROGRESS_MIN_BYTES = 8 << 20
"""Inputs smaller than this finish too fast for a progress bar to help."""


@contextlib.contextmanager
def progress_bar(description: str, total: int, *, in_bytes: bool = False, shown_from: int = 0
                 ) -> Iterator[Callable[..., None]]:
    """Yield `advance(amount, description=None)`: the one progress bar of every command, transient, on stderr, and
    only when stderr is a terminal and the work is at least `shown_from` (bytes, or counted items) big."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal or total < shown_from:
        yield lambda amount, description=None: None
        return
    count = DownloadColumn() if in_bytes else MofNCompleteColumn()
    with Progress(TextColumn("{task.description}"), BarColumn(), count, TimeRemainingColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task(description, total=total)

        def advance(amount: int, description: str | None = None) -> None:
            progress.update(task, advance=amount, **({"description": description} if description else {}))

        yield advance


def byte_progress(description: str, total_bytes: int) -> contextlib.AbstractContextManager[Callable[..., None]]:
    """`progress_bar` counting bytes, shown for inputs big enough for a bar to help."""
    return progress_bar(description, total_bytes, in_bytes=True, shown_from=PROGRESS_MIN_BYTES)


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


LIBRARIES = ("torch", "transformers", "deepspeed", "accelerate", "bitsandbytes", "peft", "datasets", "huggingface_hub")
QUIET_ENVIRONMENT = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
"""Read by transformers and huggingface_hub when they are first imported."""
SET_BY_YAYI = "YAYI_QUIETED"
"""Names the variables of QUIET_ENVIRONMENT that yayi set (not the user), so that training ranks,
whose every line belongs in train.log, can be started without them."""


class _DropAcceleratorNotice(logging.Filter):
    """DeepSpeed announces on import which accelerator it picked (a warning on CPU-only machines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "accelerator" not in record.getMessage()


_DROP_ACCELERATOR_NOTICE = _DropAcceleratorNotice()


def quiet_libraries() -> None:
    """Keep library noise off the console: weight-loading bars, info and warning logs, warnings
    from library code, DeepSpeed's accelerator notice. Errors still show; `--verbose` skips this."""
    set_here = [name for name in os.environ.get(SET_BY_YAYI, "").split(",") if name]
    for name, value in QUIET_ENVIRONMENT.items():
        if name not in os.environ:
            os.environ[name] = value
            set_here.append(name)
    os.environ[SET_BY_YAYI] = ",".join(set_here)
    deepspeed_logger = logging.getLogger("DeepSpeed")  # the logger DeepSpeed configures on import
    if _DROP_ACCELERATOR_NOTICE not in deepspeed_logger.filters:
        deepspeed_logger.addFilter(_DROP_ACCELERATOR_NOTICE)
    for name in ("accelerate", "bitsandbytes", "peft", "datasets", "llama-cpp-python", "gguf"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=rf"({'|'.join(LIBRARIES)})(\.|$)")


def library_environment(environment: dict[str, str]) -> dict[str, str]:
    """`environment` without what `quiet_libraries` set, for processes whose output is logged whole."""
    quieted = environment.pop(SET_BY_YAYI, "")
    for name in filter(None, quieted.split(",")):
        environment.pop(name, None)
    return environment
