"""Wall time of `yayi train` on two hosts (one CPU rank each, pdsh over ssh) against one host with two
CPU ranks, split into start-up (launch to the first logged step) and training (first step to exit).

The two hosts are the test suite's (tests/two_hosts.py: two network namespaces on this machine, an
sshd in each), so this needs root, sshd and pdsh. The runs alternate so that load on a shared machine
hits both alike; the report gives medians.

    sudo .venv/bin/python benchmarks/train_two_hosts.py [--runs 3] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests/two_hosts.py

from synthetic import instruction_records  # noqa: E402

from tests.two_hosts import ADDRESSES, INTERFACE, TwoHosts, two_hosts  # noqa: E402
from yayi_cli.core.prompt import TEMPLATES, render_training  # noqa: E402
from yayi_cli.core.records import parse_record  # noqa: E402
from yayi_cli.models.tiny import TinySpec, build_tiny  # noqa: E402


def timed_run(hosts: TwoHosts, placement: list[str], common: list[str], work: Path) -> tuple[float, float]:
    """(seconds from launch to the first logged step, seconds from there to the end) of one run."""
    started = time.monotonic()
    process = hosts.yayi_train(*placement, *common, cwd=work)
    first_step = None
    for line in process.stdout:
        if first_step is None and line.startswith("step="):
            first_step = time.monotonic()
    if process.wait() != 0 or first_step is None:
        raise SystemExit(f"yayi train {' '.join(placement)} failed ({process.returncode}); see its train.log")
    return first_step - started, time.monotonic() - first_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--records", type=int, default=64)
    args = parser.parse_args()
    placements = {
        "two hosts x 1 rank (pdsh, ssh)": ["--network-interface", INTERFACE],  # the hostfile is added below
        "one host x 2 ranks": ["--gpus", "2"],
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in placements}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        records = instruction_records(args.records)
        data = work / "train.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        texts = [render_training(parse_record(r).conversation, TEMPLATES["yayi"]).text for r in records]
        model = build_tiny(work / "model", texts, TinySpec(arch="llama"), TEMPLATES["yayi"])
        (work / "hosts").mkdir()
        with two_hosts(work / "hosts") as hosts:
            placements["two hosts x 1 rank (pdsh, ssh)"] += ["--hostfile", str(hosts.hostfile(*ADDRESSES))]
            for run in range(args.runs):
                for name, placement in placements.items():
                    common = ["--data", str(data), "--model", str(model), "-o", str(work / "out"), "--force",
                              "--max-steps", str(args.steps), "--micro-batch-size", "2", "--logging-steps", "1",
                              "--save-steps", "100000"]
                    times[name].append(timed_run(hosts, placement, common, work))
                    print(f"run {run + 1} {name}: start-up {times[name][-1][0]:.1f} s, training {times[name][-1][1]:.1f} s",
                          file=sys.stderr)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, Python {platform.python_version()}")
    print(f"tiny Llama, {args.steps} steps of micro batch 2 per rank, ZeRO-2, fp32, CPU ranks (gloo); "
          f"median of {args.runs} alternating runs")
    print(f"{'':34} {'start-up s':>11} {'training s':>11} {'total s':>9}")
    for name, pairs in times.items():
        start_up, training = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        print(f"{name:34} {start_up:11.1f} {training:11.1f} {start_up + training:9.1f}")


if __name__ == "__main__":
    main()
