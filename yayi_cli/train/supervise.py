"""Running the `deepspeed` launcher and its ranks as one process group that yayi stops as a whole."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Callable

from yayi_cli.runtime.processes import dies_with_parent, stop_group


MACHINE_FAILED = re.compile(r"^pdsh@\S+: (\S+): ssh exited with exit code (\d+)$")
"""What pdsh prints when the launcher on one machine ended with an error (or ssh could not reach it)."""


def failed_machine(line: str) -> str | None:
    """The machine a launcher line says has failed, if it says so."""
    failed = MACHINE_FAILED.match(line.rstrip("\n"))
    return failed.group(1) if failed else None


def run_launcher(command: list[str], env: dict[str, str], on_line: Callable[[str], None]) -> int:
    """Run the launcher, hand each line it and its ranks print to `on_line`, return its exit status
    (130 when interrupted; 1 when training failed).

    The launcher and its ranks get a process group of their own, so that Ctrl-C reaches only us;
    we then stop the whole group with SIGTERM (the launcher's own shutdown path, no tracebacks),
    as we do when we receive SIGTERM, and keep reading until they have all exited; a second
    Ctrl-C kills the group outright. A checkpoint cut short lacks its last file and is skipped by
    --resume auto, so the newest complete one stays usable.

    When one machine fails, the ranks elsewhere would wait for it until --dist-timeout: the whole
    run is stopped the same way at once. When anything else ends the reading (an error of ours),
    the group is stopped on the way out; when yayi is killed outright, the launcher gets SIGTERM
    from the kernel (with several machines, its handler stops the remote ones) and the ranks end
    themselves, their output pipe having no reader left (lifetime.end_when_unread).
    """
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
                               preexec_fn=dies_with_parent(signal.SIGTERM))  # noqa: PLW1509 - fork-safe

    def signal_group(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    machine_failed = False

    def read_all() -> None:
        nonlocal machine_failed
        for line in process.stdout:
            on_line(line)
            if not machine_failed and failed_machine(line):
                machine_failed = True
                signal_group(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, lambda *_: signal_group(signal.SIGTERM))
    interrupted = False
    try:
        while True:
            try:
                read_all()
                break
            except KeyboardInterrupt:
                signal_group(signal.SIGKILL if interrupted else signal.SIGTERM)
                interrupted = True
        status = process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        process.stdout.close()  # what is still running has no reader now: ranks end at once, nothing blocks
        stop_group(process)
    if interrupted:
        return 130
    if status < 0:
        return 128 - status  # killed by a signal: the shell's convention
    return 1 if machine_failed or status > 2 else status  # pdsh passes on ssh's 255 when a machine is unreachable
