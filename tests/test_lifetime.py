"""No process yayi starts outlives it: the kernel's ties (runtime/processes.py) on real processes and signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import alive, wait_until
from yayi_cli.runtime.processes import stop_group


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the ties are Linux's")


def python(code: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], text=True, **popen)


def test_a_child_started_with_dies_with_parent_ends_when_its_parent_is_killed_outright():
    parent = python("""
        import signal, subprocess, time
        from yayi_cli.runtime.processes import dies_with_parent
        child = subprocess.Popen(["sleep", "600"], preexec_fn=dies_with_parent(signal.SIGKILL))
        print(child.pid, flush=True)
        time.sleep(600)
    """, stdout=subprocess.PIPE)
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.kill()
    parent.wait()
    wait_until(lambda: not alive(child), 10, lambda: f"sleep {child} still runs")


def test_end_when_unread_ends_a_silent_process_once_its_output_pipe_has_no_reader():
    quiet = python("""
        import sys, time
        from yayi_cli.runtime.processes import end_when_unread
        end_when_unread()
        sys.stdout.write("watching\\n")
        sys.stdout.flush()
        time.sleep(600)  # prints nothing more: no failed write can end it
    """, stdout=subprocess.PIPE)
    assert quiet.stdout.readline() == "watching\n"  # the watch is on: closing the pipe now is what must end it
    assert quiet.poll() is None
    quiet.stdout.close()
    assert quiet.wait(timeout=10) == -signal.SIGKILL


def test_end_when_unread_leaves_a_process_whose_output_is_a_file_alone(tmp_path):
    with (tmp_path / "out.txt").open("w") as out:
        done = python("""
            import time
            from yayi_cli.runtime.processes import end_when_unread
            end_when_unread()
            time.sleep(1)
            print("done")
        """, stdout=out)
        assert done.wait(timeout=30) == 0
    assert (tmp_path / "out.txt").read_text() == "done\n"


def test_stop_group_asks_with_sigterm_then_kills_a_group_that_stays_children_included():
    stubborn = python("""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, lambda *_: print("asked to stop", flush=True))
        child = subprocess.Popen(["sleep", "600"], preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
        print(child.pid, flush=True)
        time.sleep(600)
    """, stdout=subprocess.PIPE, start_new_session=True)
    child = int(stubborn.stdout.readline())
    stop_group(stubborn, grace=1)
    assert stubborn.returncode == -signal.SIGKILL
    assert stubborn.stdout.read() == "asked to stop\n"  # SIGTERM first, and the group outlived it until SIGKILL
    wait_until(lambda: not alive(child), 10, lambda: f"sleep {child} still runs")
