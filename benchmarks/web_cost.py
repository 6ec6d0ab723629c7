"""What Gradio costs `yayi web`: the disk its install adds, its import time, and the time until the page answers.

- size: the installed files of gradio and of each package only it needs (its dependencies that nothing else of
  yayi's set requires), from their install records;
- `import gradio` against `import transformers` (what every yayi model command imports), alternated, medians;
- `yayi web --api URL` from start until the page answers HTTP 200 (no model: the page's own start-up), medians.

    .venv/bin/python benchmarks/web_cost.py [--runs 5]
"""

from __future__ import annotations

import argparse
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from importlib import metadata


def requirement_names(distribution: str) -> set[str]:
    """The distributions `distribution` requires (no extras), normalized."""
    names = set()
    for requirement in metadata.requires(distribution) or []:
        if "extra ==" not in requirement:
            names.add(normalize(re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0]))
    return names


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: set[str], installed: set[str]) -> set[str]:
    seen, pending = set(), list(roots)
    while pending:
        name = pending.pop()
        if name in seen or name not in installed:
            continue
        seen.add(name)
        pending += requirement_names(name)
    return seen


def installed_bytes(distribution: str) -> int:
    files = metadata.distribution(distribution).files or []
    return sum(path.locate().stat().st_size for path in files if path.locate().is_file())


def gradio_only_size() -> tuple[int, list[tuple[str, int]]]:
    """Bytes of gradio and the packages only it brings (not needed by yayi-cli without the web extra)."""
    installed = {normalize(d.metadata["Name"]) for d in metadata.distributions()}
    others = {normalize(r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip())
              for r in metadata.requires("yayi-cli") or [] if "extra == \"web\"" not in r}
    without_web = closure(others, installed) | {"yayi-cli"}
    only_gradio = closure({"gradio"}, installed) - without_web
    sizes = sorted(((name, installed_bytes(name)) for name in only_gradio), key=lambda item: -item[1])
    return sum(size for _, size in sizes), sizes


def import_seconds(module: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def page_seconds() -> float:
    """`yayi web --api` (a server that is not there: the page starts anyway) until its page answers 200."""
    port = free_port()
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "yayi_cli", "web", "--api", f"http://127.0.0.1:{free_port()}",
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    total, sizes = gradio_only_size()
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}")
    print(f"gradio {metadata.version('gradio')} and the {len(sizes) - 1} packages only it brings: {total / 2**20:.0f} MiB")
    for name, size in sizes[:6]:
        print(f"  {name}: {size / 2**20:.1f} MiB")
    import_seconds("gradio"), import_seconds("transformers")  # bytecode written, caches warm
    timings: dict[str, list[float]] = {"import gradio": [], "import transformers": [], "yayi web page ready": []}
    for _ in range(runs):
        timings["import gradio"].append(import_seconds("gradio"))
        timings["import transformers"].append(import_seconds("transformers"))
        timings["yayi web page ready"].append(page_seconds())
    for name, values in timings.items():
        print(f"{name}: median {statistics.median(values):.2f} s over {runs} runs")
    ratio = statistics.median(timings["import gradio"]) / statistics.median(timings["import transformers"])
    print(f"import gradio / import transformers: {ratio:.2f}x")


if __name__ == "__main__":
    main()
