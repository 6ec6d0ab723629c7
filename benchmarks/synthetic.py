"""Generated data for the benchmarks: instruction records in two shapes, and preference pairs.

- `instruction_records`: short records (about 20 words of answer), the shape the first benchmarks used;
- `yayi_like_records`: records shaped like YaYi's own data: Chinese text, about 730 bytes a record
  as UTF-8 JSON, the five domain prefixes (`【媒宣领域任务】` ...), half with an `input`, answer lengths
  log-normal (many short, a few long) and 1% of the records exact copies of an earlier one;
- `preference_records`: `{"instruction", "chosen", "rejected"}` pairs for DPO, the two answers of a
  pair in different words and of different lengths.

All are seeded: the same arguments give the same records on any machine.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = "数据 模型 城市 安全 金融 风险 舆情 媒体 宣传 治理 分析 报告 the model data city risk report".split()
DOMAINS = ("媒宣领域任务", "舆情领域任务", "公共安全领域任务", "金融风控领域任务", "城市治理领域任务")
PHRASES = (
    "根据 以下 内容 请 回答 问题 分析 总结 报告 事件 城市 交通 环境 政策 新闻 评论 用户 平台 市民 风险 金融 "
    "安全 舆情 媒体 宣传 治理 数据 模型 发展 建设 服务 管理 工作 社会 经济 企业 部门 信息 情况 措施 影响 相关 主要"
).split()
PUNCTUATION = "，。；：、"


def instruction_records(count: int, *, spread: float = 0.8, seed: int = 0) -> list[dict[str, str]]:
    """`{"instruction", "output"}` records; answer lengths in words are log-normal (median ~20)."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        length = int(rng.lognormvariate(3.0, spread)) + 2
        question = _words(rng, 8)
        records.append({"instruction": question, "output": _words(rng, length)})
    return records


def _words(rng: random.Random, count: int) -> str:
    """`count` words of the mixed Chinese/English list, space-separated."""
    return " ".join(rng.choice(WORDS) for _ in range(count))


def _chinese(rng: random.Random, characters: int) -> str:
    """Chinese-looking text of about `characters` characters: two-character words and punctuation."""
    pieces, size = [], 0
    while size < characters:
        piece = rng.choice(PHRASES) + (rng.choice(PUNCTUATION) if rng.random() < 0.15 else "")
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)


def yayi_like_records(count: int, *, seed: int = 0, duplicates: float = 0.01) -> list[dict[str, str]]:
    """Instruction records shaped like YaYi's data (see the module docstring); answers ~120 characters median."""
    rng = random.Random(seed)
    records: list[dict[str, str]] = []
    for _ in range(count):
        if records and rng.random() < duplicates:
            records.append(dict(rng.choice(records)))
            continue
        record = {"instruction": f"【{rng.choice(DOMAINS)}】" + _chinese(rng, rng.randint(15, 45))}
        if rng.random() < 0.5:
            record["input"] = _chinese(rng, rng.randint(40, 160))
        record["output"] = _chinese(rng, min(2000, int(rng.lognormvariate(4.8, 0.6))))
        records.append(record)
    return records


def preference_records(count: int, *, spread: float = 0.8, seed: int = 0) -> list[dict[str, str]]:
    """`{"instruction", "chosen", "rejected"}` pairs: the chosen answer in the mixed words of
    `instruction_records` (median ~20 words), the rejected one in Chinese phrases (median ~40
    characters), each length drawn on its own (log-normal), so no pair's answers are the same text."""
    rng = random.Random(seed)
    return [{"instruction": _words(rng, 8), "chosen": _words(rng, int(rng.lognormvariate(3.0, spread)) + 2),
             "rejected": _chinese(rng, int(rng.lognormvariate(3.7, spread)) + 4)} for _ in range(count)]


def write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
