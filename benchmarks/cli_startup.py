"""Start-up cost of `yayi --help` against `transformers --help`, measured side by side.

The two commands are run in alternation so that load on a shared machine hits both alike;
the report gives medians and their ratio. Target: `yayi --help` under 0.25 s.

    .venv/bin/python benchmarks/cli_startup.py [--runs 9]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def wall_time(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    runs = parser.parse_args().runs
    completion_env = {**os.environ, "_YAYI_COMPLETE": "complete_bash", "COMP_WORDS": "yayi data pr", "COMP_CWORD": "2"}
    commands = {
        "python -c pass (interpreter floor)": ([sys.executable, "-c", "pass"], None),
        "yayi --help": ([str(BIN / "yayi"), "--help"], None),
        "yayi TAB completion (bash)": ([str(BIN / "yayi")], completion_env),
        "transformers --help": ([str(BIN / "transformers"), "--help"], None),
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, (argv, env) in commands.items():
            times[name].append(wall_time(argv, env))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; {runs} runs each, alternating")
    print(f"{'command':40} {'median s':>9} {'min s':>7}")
    for name, median in medians.items():
        print(f"{name:40} {median:9.3f} {min(times[name]):7.3f}")
    ratio = medians["transformers --help"] / medians["yayi --help"]
    print(f"transformers --help / yayi --help = {ratio:.1f}x; target yayi --help < 0.25 s: "
          f"{'met' if medians['yayi --help'] < 0.25 else 'NOT met'}")


if __name__ == "__main__":
    main()
