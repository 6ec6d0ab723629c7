"""The training console: every rank's line in train.log, on the console only yayi's own lines and
the first rank's progress, and after a failure the failing rank's last lines."""

from __future__ import annotations

import json
import os

import pytest
from rich.console import Console

from tests.helpers import LIBRARY_LINE
from yayi_cli.train.console import LAUNCHER, RunConsole, plain_line, split_line
from yayi_cli.train.progress import EVENT_TAG, TaggedStream, rank_tag

LOG_EVENT = {"event": "log", "step": 4, "max_steps": 10, "epoch": 0.5, "elapsed_s": 3.0, "loss": 1.23456,
             "learning_rate": 2e-5, "grad_norm": 0.5, "tokens_per_second": 1234.5, "answer_tokens_per_second": 321.0}


def test_a_tagged_stream_tags_whole_lines_only():
    target = __import__("io").StringIO()
    stream = TaggedStream(target, rank_tag("node1", 3))
    stream.write("one\ntw")
    stream.write("o\nthr")
    stream.close_line()
    assert target.getvalue() == "node1 rank 3| one\nnode1 rank 3| two\nnode1 rank 3| thr\n"


@pytest.mark.parametrize(("line", "expected"), [
    ("node1 rank 0| [yayi] hello", ("node1 rank 0", "[yayi] hello")),
    ("node2: node2 rank 1| error: no", ("node2: node2 rank 1", "error: no")),  # pdsh puts `machine: ` first
    ("[2026-11-29 02:38:38,554] [INFO] [runner.py:618:main] cmd = ...", (LAUNCHER, "[2026-11-29 02:38:38,554] [INFO] [runner.py:618:main] cmd = ...")),
])
def test_lines_are_told_apart_by_rank(line, expected):
    assert split_line(line) == expected


def test_a_log_event_is_one_plain_line_with_the_numbers():
    assert plain_line(LOG_EVENT) == ("step=4/10 epoch=0.50 loss=1.2346 lr=2e-05 grad_norm=0.5 tok/s=1234 "
                                     "answer_tok/s=321 elapsed=3s")
    assert plain_line({"event": "eval", "step": 5, "eval_loss": None}) == "eval step=5 eval_loss=-"


def run_console(tmp_path, lines, status, **options):
    console = Console(record=True, width=200, force_terminal=False)
    run = RunConsole(tmp_path, console=console, **options)
    for line in lines:
        run.line(line + "\n")
    run.finish(status)
    return console.export_text(), (tmp_path / "train.log").read_text(encoding="utf-8")


LINES = [
    "[2026-11-29 02:38:38,554] [INFO] [runner.py:618:main] cmd = deepspeed ...",
    "vm rank 0| [yayi] precision fp32, 2 rank(s), global batch 16",
    "vm rank 1| Some weights were not initialized",
    "vm rank 0| " + EVENT_TAG + json.dumps(LOG_EVENT),
    "vm rank 1| Traceback (most recent call last):",
    "vm rank 1| ValueError: broken",
]


def test_the_console_shows_own_lines_and_progress_and_the_log_keeps_everything(tmp_path):
    shown, log = run_console(tmp_path, LINES[:4], 0)
    assert shown.splitlines() == ["[yayi] precision fp32, 2 rank(s), global batch 16", plain_line(LOG_EVENT)]
    assert [line.split(" ", 1)[1] for line in log.splitlines()] == [f"launcher| {LINES[0]}", *LINES[1:4]]


def test_verbose_shows_every_line(tmp_path):
    shown, _ = run_console(tmp_path, LINES[:3], 0, verbose=True)
    assert "Some weights were not initialized" in shown and "runner.py" in shown


def test_a_failure_shows_the_failing_ranks_last_lines_and_the_log(tmp_path):
    shown, _ = run_console(tmp_path, LINES, 1)
    assert "vm rank 1 ended with:\n  Some weights were not initialized\n  Traceback" in shown
    assert "ValueError: broken" in shown and "vm rank 0 ended with" not in shown
    assert f"the full output of every rank is in {tmp_path / 'train.log'}" in shown


@pytest.mark.launch
def test_a_real_run_keeps_library_output_off_the_console_and_in_the_log(finished_run):
    document = json.loads(finished_run.stdout, parse_constant=lambda constant: pytest.fail(f"{constant} in --json"))
    assert document["status"] == 0 and document["summary"]["throughput"]["train_tokens_per_second"] > 0
    stderr = finished_run.stderr.splitlines()
    noise = [line for line in stderr if LIBRARY_LINE.search(line)]
    assert noise == [], noise
    cores_each = max(1, len(os.sched_getaffinity(0)) // 2)  # the 2 CPU ranks share this machine's cores
    assert f"[yayi] precision fp32, 2 rank(s) of {cores_each} thread(s), global batch 4" in stderr
    steps, logged = finished_run.steps, [1, *range(finished_run.logging_steps, finished_run.steps + 1, finished_run.logging_steps)]
    assert [line.split()[0] for line in stderr if line.startswith("step=")] == [f"step={n}/{steps}" for n in logged]
    evaluated = list(range(finished_run.eval_steps, steps + 1, finished_run.eval_steps))
    assert [int(line.split()[1].removeprefix("step=")) for line in stderr if line.startswith("eval step=")] == evaluated  # once each
    assert all(" eval_loss=" in line for line in stderr if line.startswith("eval step="))
    log = (finished_run.output / "train.log").read_text(encoding="utf-8")
    for source in ("launcher| ", " rank 0| ", " rank 1| "):
        assert source in log
    assert LIBRARY_LINE.search(log)  # what the console left out is in the log
    events = [json.loads(line) for line in (finished_run.output / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["step"] for e in events if e["event"] == "log"] == logged
    assert all(e["loss"] > 0 and e["tokens_per_second"] > 0 for e in events if e["event"] == "log")
    assert [e["step"] for e in events if e["event"] == "eval"] == evaluated


def test_a_line_every_rank_prints_is_shown_once_and_logged_for_each(tmp_path):
    warning = "UserWarning: OMP_NUM_THREADS unset"
    lines = [f"node1: node1 rank 0| {warning}", f"node2: node2 rank 1| {warning}", f"node1: node1 rank 0| {warning}"]
    shown, log = run_console(tmp_path, lines, 0, verbose=True)
    assert shown.count(warning) == 2  # rank 0 said it twice itself; rank 1's echo of it is not shown
    assert log.count(warning) == 3 and "node2: node2 rank 1| " in log


def test_a_failed_machine_is_named_with_its_last_line(tmp_path):
    lines = ["node3: ssh: connect to host node3 port 22: No route to host", "pdsh@node1: node3: ssh exited with exit code 255",
             "node1: node1 rank 0| [yayi] waiting"]
    shown, _ = run_console(tmp_path, lines, 1)
    assert "node3 failed, ending the run; its last line: ssh: connect to host node3 port 22: No route to host" in shown
