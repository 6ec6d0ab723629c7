"""Instruction records whose lengths are spread like real instruction data: many short, a few long."""

from __future__ import annotations

import random

WORDS = "数据 模型 城市 安全 金融 风险 舆情 媒体 宣传 治理 分析 报告 the model data city risk report".split()


def instruction_records(count: int, *, spread: float = 0.8, seed: int = 0) -> list[dict[str, str]]:
    """`{"instruction", "output"}` records; answer lengths in words are log-normal (median ~20)."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        length = int(rng.lognormvariate(3.0, spread)) + 2
        question = " ".join(rng.choice(WORDS) for _ in range(8))
        records.append({"instruction": question, "output": " ".join(rng.choice(WORDS) for _ in range(length))})
    return records
