"""No process yayi starts outlives it, even when yayi itself is killed with SIGKILL.

SIGKILL runs no handler and no `finally`, so the ties that end yayi's processes with it are the
kernel's (Linux; elsewhere they are left out and only yayi's own clean-up stops its children):

- `dies_with_parent(signum)` for the processes yayi starts itself (the serving engine, the deepspeed
  launcher): the kernel sends them `signum` when yayi ends (PR_SET_PDEATHSIG).
- `end_when_unread()` for the training ranks, where the first tie does not reach: the `deepspeed`
  runner starts them through a second launcher process (deepspeed.launcher.launch) that has no
  parent-death signal and outlives the runner. A rank writes to the pipe that yayi reads, and ends
  as soon as that pipe has no reader left, printing or not (ranks that print end anyway, on a
  failed write, but a rank can be silent for minutes: a long step, a checkpoint, an evaluation).

`stop_group` is the clean-up yayi does when it ends on its own: SIGTERM, a grace period, SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any


PR_SET_PDEATHSIG = 1
"""From <linux/prctl.h>."""
STOP_GRACE_SECONDS = 10.0
"""How long a group gets to end on SIGTERM before SIGKILL."""


def dies_with_parent(signum: int) -> Callable[[], None] | None:
    """A `preexec_fn` for Popen: the child gets `signum` when the thread that started it ends (so start
    it from the main thread). The libc function is looked up here, before the fork, so the child runs
    no import or loading between fork and exec; a parent already gone by then ends the child at once.
    None where there is no prctl (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def set_signal() -> None:
        if prctl(PR_SET_PDEATHSIG, signum) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent ended before the signal was set: it will never come
            os.kill(os.getpid(), signum)

    return set_signal


def end_when_unread(fd: int = 1) -> None:
    """End this process (SIGKILL) as soon as the pipe on `fd` loses its last reader. Linux reports
    POLLERR on a pipe's write end then, so a thread waits for it without reading or writing anything.
    A descriptor that is not a pipe (a terminal, a file) is left alone."""
    if not sys.platform.startswith("linux") or not stat.S_ISFIFO(os.fstat(fd).st_mode):
        return

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, 0)  # no events asked for: POLLERR and POLLHUP are always reported
        poller.poll()
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="end-when-unread", daemon=True).start()


class Stopped(Exception):
    """SIGTERM or SIGHUP reached yayi (inside `stop_signals_raise`): what it started is stopped as on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.exit_code = 128 + signum


def _raise_stopped(signum: int, frame: Any) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `Stopped` in the main thread while inside, as SIGINT raises KeyboardInterrupt, so the
    same `finally` stops a server's children whichever way it is asked to end."""
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_group(process: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to the process group that `process` leads, SIGKILL after `grace` seconds; returns once
    it is gone, and kills what is left of the group (children that outlived it) as well."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
