"""Size, footprint and held-out perplexity of `yayi quantize` (LLM.int8) on a small trained model.

A Llama-shaped model (hidden 256, 4 layers) is built offline, trained with a bare PyTorch loop on
generated instruction records (`yayi train` is not there yet), and quantized with
`yayi_cli.convert.quantize.quantize`, whose report measures the original and the int8 model in the same
run on held-out records. The footprint of the quantized layers is also compared with what the
same weights take in bf16 (2 bytes a weight).

    .venv/bin/python benchmarks/quantize_quality.py [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
from pathlib import Path


WORDS = "数据 模型 城市 安全 金融 风险 舆情 媒体 宣传 治理 分析 报告 市民 交通 环境 政策".split()


def write_records(path: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(count):
            topic = rng.choice(WORDS)
            answer = "".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16)))
            record = {"instruction": f"请简述{topic}相关的要点", "output": f"{topic}：{answer}"}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def train(directory: Path, data: Path, steps: int) -> None:
    import torch

    from yayi_cli.core.prompt import PromptTokenizer, resolve_template
    from yayi_cli.core.record_files import load_records
    from yayi_cli.models.tokenizers import load_tokenizer
    from yayi_cli.models.weights import load_model

    model = load_model(str(directory), device="cpu")
    model.train()
    prompt_tokenizer = PromptTokenizer(resolve_template(None, str(directory))[0], load_tokenizer(str(directory)))
    encoded = prompt_tokenizer.encode_training_batch([e.conversation for e in load_records([data])])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    for _ in range(steps):
        for example in rng.sample(encoded, 8):
            model(input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(directory)


def quantized_layer_bytes(directory: Path) -> tuple[int, int]:
    """(bytes the int8 layers take, bytes the same weights take in bf16)."""
    from bitsandbytes.nn import Linear8bitLt

    from yayi_cli.models.weights import load_model

    model = load_model(str(directory), device="cpu")
    int8 = bf16 = 0
    for module in model.modules():
        if isinstance(module, Linear8bitLt):
            tensors = [module.weight, getattr(module.weight, "SCB", None), module.bias]
            int8 += sum(t.numel() * t.element_size() for t in tensors if t is not None)
            bf16 += sum(t.numel() * 2 for t in (module.weight, module.bias) if t is not None)
    return int8, bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    from yayi_cli.convert.options import QuantizeOptions
    from yayi_cli.convert.quantize import quantize
    from yayi_cli.core.prompt import TEMPLATES, render_training
    from yayi_cli.core.records import parse_record
    from yayi_cli.models.tiny import TinySpec, build_tiny

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        train_data, test_data = work / "train.jsonl", work / "test.jsonl"
        write_records(train_data, 2000, seed=1)
        write_records(test_data, 200, seed=2)
        texts = [render_training(parse_record(json.loads(line)).conversation, TEMPLATES["yayi"]).text for line in train_data.read_text().splitlines()]
        model_dir = build_tiny(work / "model", texts, TinySpec(arch="llama", hidden_size=256, layers=4, heads=8), TEMPLATES["yayi"])
        train(model_dir, train_data, args.steps)
        report = quantize(QuantizeOptions(str(model_dir), work / "int8", check_data=[test_data], max_check_samples=200))
        int8, bf16 = quantized_layer_bytes(work / "int8")
    document = report.to_json()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; CPU, bitsandbytes LLM.int8")
    print(f"model: Llama-shaped, {report.before.parameters / 1e6:.2f}M parameters, trained {args.steps} steps; held-out records: {report.check_records}")
    print(f"{'':34} {'original (fp32)':>16} {'int8':>12} {'ratio':>8}")
    rows = [
        ("memory footprint (MiB)", report.before.footprint_bytes / 2**20, report.after.footprint_bytes / 2**20),
        ("weights on disk (MiB)", report.before.disk_bytes / 2**20, report.after.disk_bytes / 2**20),
        ("decode tokens/s (batch 1)", report.before.decode_tokens_per_s, report.after.decode_tokens_per_s),
        ("held-out answer perplexity", report.before.perplexity, report.after.perplexity),
    ]
    for name, before, after in rows:
        print(f"{name:34} {before:16.3f} {after:12.3f} {after / before:7.3f}x")
    print(f"quantized layers: {int8 / 2**20:.3f} MiB in int8 vs {bf16 / 2**20:.3f} MiB in bf16 = {int8 / bf16:.3f}x")
    print(f"perplexity increase: {document['perplexity_increase_percent']:.3f}%; greedy tokens unchanged: {report.greedy_agreement:.1%}")


if __name__ == "__main__":
    main()
