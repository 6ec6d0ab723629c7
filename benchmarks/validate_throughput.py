"""Throughput and peak memory of `yayi data validate` against the upstream path and a bare parse.

Three ways of reading the same generated JSON-lines file, each in its own process, in one run:
- bare:     a `json.loads` loop over the lines (the floor: parsing and nothing else);
- upstream: `datasets.load_dataset("json")` and a `map` that builds the upstream prompt strings,
            as the upstream YaYi trainer prepares its data;
- yayi:     `yayi_cli.data.validate.validate` (every check, statistics, duplicate detection),
            with its default worker processes, and with `--workers 1` for reference.

    .venv/bin/python benchmarks/validate_throughput.py --records 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

DOMAINS = ["媒宣领域任务", "舆情领域任务", "公共安全领域任务", "金融风控领域任务", "城市治理领域任务"]
WORDS = "数据 模型 城市 安全 金融 风险 舆情 媒体 宣传 治理 分析 报告 市民 交通 环境 政策 新闻 评论 用户 平台".split()


def generate(path: Path, count: int) -> None:
    """Records shaped like the upstream example file: about 680 bytes each, a few duplicates."""
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            text = lambda n: "".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
            record = {
                "instruction": f"【{DOMAINS[i % 5]}】请根据以下内容回答问题：{text(12)}",
                "input": text(40),
                "output": text(45) + f"（{i}）",
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def run_bare(path: Path) -> int:
    count = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            json.loads(line)
            count += 1
    return count


UPSTREAM_PROMPT = "<|System|>:\n{system}\n\n<|Human|>:\n{instruction}\n{input}\n\n<|YaYi|>:\n{output}\n\n<|End|>"


def run_upstream(path: Path) -> int:
    from datasets import load_dataset

    system = "A chat between a human and an AI assistant named YaYi."
    with tempfile.TemporaryDirectory() as cache:
        dataset = load_dataset("json", data_files=str(path), split="train", cache_dir=cache)
        dataset = dataset.map(lambda r: {"text": UPSTREAM_PROMPT.format(system=system, **r)}, num_proc=None)
        return len(dataset)


def run_yayi(path: Path, workers: int | None) -> int:
    from yayi_cli.data.validate import validate

    report = validate([path], workers=workers)
    assert report.ok, report.to_json()["problem_counts"]
    return report.records


def measure(variant: str, path: Path) -> dict:
    """Run one variant in a fresh process; its peak RSS includes only itself (and its workers)."""
    code = (
        "import json, resource, sys, time\n"
        "sys.path.insert(0, %r)\n"
        "import validate_throughput as b\n"
        "start = time.perf_counter()\n"
        "n = b.dispatch(%r, %r)\n"
        "seconds = time.perf_counter() - start\n"
        "self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps({'records': n, 'seconds': seconds, 'rss_mb': self_kb / 1024, 'worker_rss_mb': kids_kb / 1024}))\n"
    ) % (str(Path(__file__).parent), variant, str(path))
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def dispatch(variant: str, path: str) -> int:
    if variant == "bare":
        return run_bare(Path(path))
    if variant == "upstream":
        return run_upstream(Path(path))
    if variant == "yayi":
        return run_yayi(Path(path), None)
    return run_yayi(Path(path), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--skip-upstream-above", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as work:
        for count in args.records:
            path = Path(work) / f"data-{count}.jsonl"
            generate(path, count)
            size_mb = path.stat().st_size / 2**20
            print(f"\n{count} records, {size_mb:.0f} MiB")
            print(f"{'variant':22} {'records/s':>10} {'seconds':>8} {'peak RSS MiB':>13} {'worker RSS MiB':>15}")
            results = {}
            variants = ["bare", "yayi", "yayi-1-worker"]
            if count <= args.skip_upstream_above:
                variants.insert(1, "upstream")
            for variant in variants:
                result = measure(variant, path)
                results[variant] = result
                rate = result["records"] / result["seconds"]
                print(f"{variant:22} {rate:10.0f} {result['seconds']:8.2f} {result['rss_mb']:13.0f} {result['worker_rss_mb']:15.0f}")
            yayi = results["yayi"]["seconds"]
            print(f"yayi vs bare json.loads: {results['bare']['seconds'] / yayi:.2f}x the throughput")
            if "upstream" in results:
                print(f"yayi vs upstream path:   {results['upstream']['seconds'] / yayi:.2f}x the throughput")


if __name__ == "__main__":
    main()
