"""Wall time and peak memory of `yayi data validate` and `yayi data split` against bare parsing loops.

Every variant is a whole process started from the shell, as a user runs it, on the same generated
JSON-lines file; the variants alternate (A B C ... A B C ...) for `--rounds` rounds and medians are
reported, because the machine is shared and noisy:
- bare json:   `for line in file: json.loads(line)`, the floor the targets are set against;
- bare orjson: the same loop with `orjson.loads`;
- naive split: read every line, shuffle, write the last N to test and the rest to train (no checks);
- yayi validate / yayi split: the CLI with its defaults (worker processes: one per core above 32 MB);
- upstream:    `datasets.load_dataset("json")` plus a `map` that builds the upstream prompt strings
               (only up to `--upstream-up-to` records: it is slow).

Two data shapes (benchmarks/synthetic.py): `yayi`, records like YaYi's own (Chinese, ~740 bytes,
five domain prefixes, log-normal answers, 1% copies) and `short` (~150 bytes, mixed words).

    .venv/bin/python benchmarks/validate_throughput.py --records 200000 1000000 --shapes yayi short
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
BARE = {
    "bare json": "import json, sys\nfor line in open(sys.argv[1], encoding='utf-8'):\n    json.loads(line)\n",
    "bare orjson": "import orjson, sys\nfor line in open(sys.argv[1], 'rb'):\n    orjson.loads(line)\n",
    "naive split": (
        "import random, sys\nlines = open(sys.argv[1], encoding='utf-8').readlines()\nrandom.Random(0).shuffle(lines)\n"
        "test = len(lines) // 20\nopen(sys.argv[2] + '/test.jsonl', 'w', encoding='utf-8').writelines(lines[:test])\n"
        "open(sys.argv[2] + '/train.jsonl', 'w', encoding='utf-8').writelines(lines[test:])\n"
    ),
    "upstream": (
        "import sys, tempfile\nfrom datasets import load_dataset\n"
        "prompt = '<|System|>:\\n{system}\\n\\n<|Human|>:\\n{instruction}\\n{input}\\n\\n<|YaYi|>:\\n{output}\\n\\n<|End|>'\n"
        "with tempfile.TemporaryDirectory() as cache:\n"
        "    data = load_dataset('json', data_files=sys.argv[1], split='train', cache_dir=cache)\n"
        "    data.map(lambda r: {'text': prompt.format(system='YaYi', instruction=r['instruction'], input=r.get('input') or '', output=r['output'])})\n"
    ),
}


def command(variant: str, data: Path, out: Path) -> list[str]:
    if variant in BARE:
        return [sys.executable, "-c", BARE[variant], str(data), str(out)]
    if variant == "yayi validate":
        return [str(BIN / "yayi"), "data", "validate", str(data), "--json"]
    return [str(BIN / "yayi"), "data", "split", str(data), "--test-size", "0.05", "-o", str(out), "--force", "--json"]


def measure(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB, the largest of the process and its workers) of one run."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{argv} failed with status {status}")
    return seconds, usage.ru_maxrss / 1024


GENERATE = (
    "import sys\nsys.path.insert(0, sys.argv[4])\nfrom synthetic import instruction_records, write_jsonl, yayi_like_records\n"
    "shape, count, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]\n"
    "write_jsonl(path, yayi_like_records(count) if shape == 'yayi' else instruction_records(count, seed=1))\n"
)


def generate(path: Path, shape: str, count: int) -> Path:
    """Written by another process: this one stays small, since the runs it starts begin as its copies
    (their peak RSS would count its memory)."""
    subprocess.run([sys.executable, "-c", GENERATE, shape, str(count), str(path), str(HERE)], check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--shapes", nargs="+", choices=["yayi", "short"], default=["yayi", "short"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--upstream-up-to", type=int, default=200_000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "out"
        out.mkdir()
        for shape in args.shapes:
            for count in args.records:
                data = generate(Path(work) / f"{shape}-{count}.jsonl", shape, count)
                variants = ["bare json", "bare orjson", "yayi validate", "naive split", "yayi split"]
                variants += ["upstream"] if count <= args.upstream_up_to else []
                runs: dict[str, list[tuple[float, float]]] = {variant: [] for variant in variants}
                for _ in range(args.rounds):
                    for variant in variants:
                        runs[variant].append(measure(command(variant, data, out)))
                report(shape, count, data, runs)
                data.unlink()


def report(shape: str, count: int, data: Path, runs: dict[str, list[tuple[float, float]]]) -> None:
    size = data.stat().st_size
    print(f"\n{shape} records: {count:,} ({size / 2**20:.0f} MiB, {size / count:.0f} bytes a record), medians of {len(runs['bare json'])} rounds")
    print(f"{'variant':15} {'seconds':>8} {'records/s':>10} {'peak RSS MiB':>13} {'x bare json':>12}")
    median = {variant: statistics.median(s for s, _ in results) for variant, results in runs.items()}
    for variant, results in runs.items():
        seconds, rss = median[variant], max(r for _, r in results)
        print(f"{variant:15} {seconds:8.2f} {count / seconds:10.0f} {rss:13.0f} {median['bare json'] / seconds:12.2f}")
    print(f"yayi split / yayi validate: {median['yayi split'] / median['yayi validate']:.2f}x the time")


if __name__ == "__main__":
    main()
