"""`make test`'s set-up: a fresh .venv with the tested set, installed by uv against the same by pip.

Both recipes install constraints.txt's pins into a new virtual environment in a temporary folder,
torch through pip from the machine's own build in both. They alternate (pip uv pip uv ...), and the
package caches are warm after the first round: that is a developer's second machine, and CI's.

    python benchmarks/setup_time.py --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"
EXTRAS = "dev,quant,train,serve"


def recipe(tool: str, venv: Path) -> list[list[str]]:
    """The install commands of one recipe, as argument lists."""
    pip, python = str(venv / "bin" / "pip"), str(venv / "bin" / "python")
    constraints = str(REPO / "constraints.txt")
    project = f"{REPO}[{EXTRAS}]"
    if tool == "pip":
        return [[pip, "install", "-q", TORCH],
                [pip, "install", "-q", "-c", constraints, "--no-build-isolation", "deepspeed"],
                [pip, "install", "-q", "-c", constraints, project]]
    uv = [str(venv / "bin" / "uv"), "pip", "install", "-q", "--python", python, "-c", constraints]
    return [[pip, "install", "-q", "-c", constraints, "uv"],
            [pip, "install", "-q", TORCH],
            [*uv, "setuptools"],
            [*uv, "--no-build-isolation-package", "deepspeed", project]]


def timed_install(tool: str) -> float:
    with tempfile.TemporaryDirectory(prefix=f"setup-{tool}-") as folder:
        venv = Path(folder) / ".venv"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        for command in recipe(tool, venv):
            subprocess.run(command, check=True, env=dict(os.environ, DS_BUILD_OPS="0"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    rounds = parser.parse_args().rounds
    times: dict[str, list[float]] = {"pip": [], "uv": []}
    for _ in range(rounds):
        for tool in times:
            times[tool].append(timed_install(tool))
            print(f"{tool}: {times[tool][-1]:.1f} s", flush=True)
    pip, uv = (statistics.median(times[tool]) for tool in ("pip", "uv"))
    print(f"median pip {pip:.1f} s, uv {uv:.1f} s: uv takes {uv / pip:.2f}x pip's time")


if __name__ == "__main__":
    main()
