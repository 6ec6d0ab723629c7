"""Start-up cost of `yayi --help` against `transformers --help`, measured side by side.

The two commands are run in alternation so that load on a shared machine hits both alike;
the report gives medians and their ratio. Target: `yayi --help` under 0.25 s.
With `--against DIR` (another checkout, e.g. `git worktree add /tmp/before REV`), `--help` and TAB of
that tree's yayi_cli run in the same alternation, both through `python -m yayi_cli`, for a
before/after comparison. Commands run with their bytecode cached, as after `pip install` (one
untimed round first writes it, even where PYTHONDONTWRITEBYTECODE is set in the caller's environment).

    .venv/bin/python benchmarks/cli_startup.py [--runs 9] [--against DIR]
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
ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def wall_time(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env or ENV)
    return time.perf_counter() - start


def tree_commands(label: str, root: Path, completion_env: dict[str, str]) -> dict[str, tuple[list[str], dict[str, str]]]:
    """`--help` and TAB of the yayi_cli in `root`, run as `python -m yayi_cli` with that tree first on the path."""
    env = {**ENV, "PYTHONPATH": str(root)}
    module = [sys.executable, "-m", "yayi_cli"]
    return {f"--help ({label})": ([*module, "--help"], env),
            f"TAB ({label})": (module, {**completion_env, "PYTHONPATH": str(root)})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--against", type=Path, metavar="DIR", help="another checkout to compare with")
    arguments = parser.parse_args()
    runs = arguments.runs
    completion_env = {**ENV, "_YAYI_COMPLETE": "complete_bash", "COMP_WORDS": "yayi data pr", "COMP_CWORD": "2"}
    commands = {
        "python -c pass (interpreter floor)": ([sys.executable, "-c", "pass"], None),
        "yayi --help": ([str(BIN / "yayi"), "--help"], None),
        "yayi TAB completion (bash)": ([str(BIN / "yayi")], completion_env),
        "transformers --help": ([str(BIN / "transformers"), "--help"], None),
    }
    if arguments.against:
        commands |= tree_commands("this tree", Path(__file__).resolve().parents[1], completion_env)
        commands |= tree_commands(str(arguments.against), arguments.against.resolve(), completion_env)
    for argv, env in commands.values():  # untimed: writes the bytecode a user's installed copy has
        wall_time(argv, env)
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
