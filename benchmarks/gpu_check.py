"""The measuring parts of benchmarks/gpu_check.sh: data and random-weight models built offline, the
bare-PyTorch baselines, and the table. Each sub-command writes one JSON result (or a model) and
prints nothing else of note; gpu_check.sh calls them and the landed CLI side by side.

    python3 benchmarks/gpu_check.py data OUT.jsonl --records 2000
    python3 benchmarks/gpu_check.py pairs OUT.jsonl --text TEXT.jsonl --records 400 --tokens 1024
    python3 benchmarks/gpu_check.py model OUT_DIR --shape 1b --data OUT.jsonl
    python3 benchmarks/gpu_check.py bare-train MODEL --seq 2048 --batch 8 --steps 20 --result R.json
    python3 benchmarks/gpu_check.py bare-decode MODEL --tokens 128 --result R.json
    python3 benchmarks/gpu_check.py bandwidth --result R.json
    python3 benchmarks/gpu_check.py table OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {  # hidden, intermediate, layers, heads, key/value heads, vocabulary
    "tiny": (64, 128, 2, 4, 2, 2048),
    "small": (256, 688, 4, 8, 8, 4096),
    "1b": (2048, 5632, 22, 32, 4, 32000),  # a TinyLlama-1.1B shape
    "7b": (4096, 11008, 32, 32, 32, 32000),  # a Llama-2-7B shape
}
DOMAINS = ["媒宣领域任务", "舆情领域任务", "公共安全领域任务", "金融风控领域任务", "城市治理领域任务"]
WORDS = "数据 模型 城市 安全 金融 风险 舆情 媒体 宣传 治理 分析 报告 市民 交通 环境 政策 新闻 评论 用户 平台".split()


def write_result(path: str, result: dict) -> None:
    Path(path).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def device_and_dtype():
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def make_data(arguments) -> None:
    """YaYi-like records: a domain prefix, Chinese text, answers of log-normal length, a few duplicates."""
    rng = random.Random(0)
    text = lambda n: "".join(rng.choice(WORDS) for _ in range(max(n, 1)))  # noqa: E731
    with open(arguments.out, "w", encoding="utf-8") as handle:
        for i in range(arguments.records):
            record = {"instruction": f"【{DOMAINS[i % 5]}】{text(12)}", "output": text(int(rng.lognormvariate(4.0, 0.8)))}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def make_pairs(arguments) -> None:
    """Preference pairs whose answers run past `--tokens` (3 words each; the tokenizer trained on the
    data merges about two words a token), so that with `--max-length` at that number every prompt +
    answer fills the sequence; chosen and rejected differ. Beside them, `--text` gets the same pairs as
    prompt/chosen/rejected text rendered by the prompt core, for the bare TRL script."""
    from train_dpo import pair_texts  # benchmarks/ is this script's folder

    from yayi_cli.core.prompt import TEMPLATES

    rng = random.Random(0)
    text = lambda n: "".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    records = [{"instruction": f"【{DOMAINS[i % 5]}】{text(12)}", "chosen": text(3 * arguments.tokens),
                "rejected": text(3 * arguments.tokens)} for i in range(arguments.records)]
    for path, rows in ((arguments.out, records), (arguments.text, pair_texts(records, TEMPLATES["yayi-llama2"]))):
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def make_model(arguments) -> None:
    """A random-weight Llama of the given shape with a tokenizer trained on the data, saved as yayi saves."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from yayi_cli.core.prompt import TEMPLATES, render_training, save_model_format
    from yayi_cli.core.record_files import load_records
    from yayi_cli.models.tiny import train_tokenizer

    hidden, intermediate, layers, heads, kv_heads, vocabulary = SHAPES[arguments.shape]
    texts = [render_training(r.conversation, TEMPLATES["yayi-llama2"]).text for r in load_records([Path(arguments.data)])]
    tokenizer = train_tokenizer(texts, vocab_size=min(vocabulary, 8000), prepend_bos=True, max_length=4096)
    config = LlamaConfig(
        vocab_size=max(vocabulary, len(tokenizer)), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    device, dtype = device_and_dtype()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(arguments.out)
    save_model_format(Path(arguments.out), tokenizer, TEMPLATES["yayi-llama2"])
    print(f"{arguments.shape}: {model.num_parameters() / 1e9:.2f}B parameters -> {arguments.out}")


def bare_train(arguments) -> None:
    """The baseline for `yayi train`: a plain AdamW loop on the same model, sequence length and batch."""
    import torch
    from transformers import AutoModelForCausalLM

    device, dtype = device_and_dtype()
    model = AutoModelForCausalLM.from_pretrained(arguments.model, dtype=dtype).to(device)
    model.config.use_cache = False
    if arguments.checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = torch.randint(0, model.config.vocab_size, (arguments.batch, arguments.seq), device=device)
    for step in range(arguments.steps + 2):
        if step == 2:  # the first steps warm up kernels and the allocator
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    write_result(arguments.result, {"tokens_per_second": round(arguments.steps * arguments.batch * arguments.seq / seconds, 1),
                                    "peak_gib": peak_gib(), "parameters": model.num_parameters()})


def bare_decode(arguments) -> None:
    """The baseline for `yayi chat`: `generate` at batch 1 on a 64-token prompt, exactly N new tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    device, dtype = device_and_dtype()
    model = AutoModelForCausalLM.from_pretrained(arguments.model, dtype=dtype).to(device).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, 64), device=device)

    def timed() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(prompt, max_new_tokens=arguments.tokens, min_new_tokens=arguments.tokens, do_sample=False)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    timed()  # warm-up
    seconds = min(timed() for _ in range(2))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    write_result(arguments.result, {"tokens_per_second": round(arguments.tokens / seconds, 2), "weight_bytes": weights})


def bandwidth(arguments) -> None:
    """Device-to-device copy bandwidth (read + write), for the memory-bound decode floor."""
    import torch

    device, _ = device_and_dtype()
    size = (1 << 30) if device == "cuda" else (64 << 20)
    source = torch.empty(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        target.copy_(source)
    if device == "cuda":
        torch.cuda.synchronize()
    write_result(arguments.result, {"bytes_per_second": round(2 * 10 * size / (time.perf_counter() - started))})


def read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def chat_rate(out: Path, name: str) -> float | None:
    """Decode tokens/s of a `yayi chat --jsonl` run: tokens and seconds beyond a 1-token run of the same prompts.

    The seconds are the chat's own (each answer's `generate`), so process start and model loading, which vary
    more from run to run than a short decode takes, are not in them."""
    long, short = read(out / f"{name}.json"), read(out / f"{name}-1.json")
    if not long or not short or long["seconds"] <= short["seconds"]:
        return None
    return round((long["tokens"] - short["tokens"]) / (long["seconds"] - short["seconds"]), 2)


def table(arguments) -> None:
    """One table of every step: what was measured, against what, and which steps failed."""
    out = Path(arguments.out)
    status = {line.split()[0]: line.split()[1] for line in (out / "status.txt").read_text().splitlines() if line.strip()}
    train, bare = read(out / "train" / "train_summary.json"), read(out / "bare-train.json")
    speed = train.get("throughput", {})
    decode, copy = read(out / "bare-decode.json"), read(out / "bandwidth.json")
    floor = copy["bytes_per_second"] / 2 / decode["weight_bytes"] if copy and decode else None
    rows = [
        ("train (ZeRO-2, packing)", speed.get("train_tokens_per_second"), "tokens/s", bare.get("tokens_per_second"),
         f"peak {speed.get('peak_gpu_memory_gib')} GiB vs bare {bare.get('peak_gib')} GiB"),
    ]
    for kind in ("lora", "qlora"):
        summary = read(out / kind / "train_summary.json").get("throughput", {})
        rows.append((kind, summary.get("train_tokens_per_second"), "tokens/s", None,
                     f"peak {summary.get('peak_gpu_memory_gib')} GiB"))
    for bits in ("8", "4"):
        report = read(out / f"int{bits}" / "quantize.json")
        after = report.get("after", {})
        rows.append((f"quantize {bits}-bit", after.get("decode_tokens_per_s"), "decode tokens/s",
                     report.get("before", {}).get("decode_tokens_per_s"),
                     f"{(after.get('disk_bytes') or 0) / 2**20:.1f} MiB on disk, {report.get('seconds') or 0:.1f} s"))
    for name in ("chat", "chat-compile"):
        rows.append((f"yayi {name.replace('-', ' --')} --jsonl", chat_rate(out, name), "tokens/s",
                     decode.get("tokens_per_second"), f"floor {floor:.1f} tokens/s" if floor else ""))
    dpo, bare_dpo = read(out / "dpo" / "train_summary.json"), read(out / "bare-dpo.json")
    losses = [round(entry["loss"], 4) for entry in dpo.get("loss_history", [])] or [None]
    accuracy = dpo.get("preference", {}).get("last", {}).get("rewards/accuracies")
    rows.append(("LoRA-DPO (ckpt, mb 1)", dpo.get("metrics", {}).get("train_samples_per_second"), "pairs/s",
                 bare_dpo.get("metrics", {}).get("train_samples_per_second"),
                 f"peak {dpo.get('throughput', {}).get('peak_gpu_memory_gib')} GiB vs bare {bare_dpo.get('peak_gib')} GiB, "
                 f"{dpo.get('throughput', {}).get('train_tokens_per_second')} tokens/s, "
                 f"loss {losses[0]} -> {losses[-1]}, last reward accuracy {accuracy}"))
    evaluation = read(out / "eval.json")
    records = evaluation.get("counts", {}).get("records")
    loss_s = evaluation.get("timings", {}).get("loss_s")
    rows.append(("eval (batched loss)", round(records / loss_s, 1) if records and loss_s else None, "records/s", None, ""))
    print(f"{'step':28} {'yayi':>12} {'unit':16} {'baseline':>10} {'ratio':>7}  notes")
    shown = lambda number: f"{number:.5g}" if number else "-"  # noqa: E731
    for name, value, unit, baseline, notes in rows:
        ratio = f"{value / baseline:.2f}x" if value and baseline else ""
        print(f"{name:28} {shown(value):>12} {unit:16} {shown(baseline):>10} {ratio:>7}  {notes}")
    print("steps: " + ", ".join(f"{step} {state}" for step, state in status.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data")
    data.add_argument("out")
    data.add_argument("--records", type=int, default=2000)
    pairs = commands.add_parser("pairs")
    pairs.add_argument("out")
    pairs.add_argument("--records", type=int, default=400)
    pairs.add_argument("--tokens", type=int, default=1024)
    pairs.add_argument("--text", required=True, help="the same pairs as prompt/chosen/rejected text")
    model = commands.add_parser("model")
    model.add_argument("out")
    model.add_argument("--shape", choices=SHAPES, required=True)
    model.add_argument("--data", required=True)
    train = commands.add_parser("bare-train")
    train.add_argument("model")
    for name, default in (("--seq", 2048), ("--batch", 8), ("--steps", 20)):
        train.add_argument(name, type=int, default=default)
    train.add_argument("--checkpointing", action="store_true")
    train.add_argument("--result", required=True)
    decode = commands.add_parser("bare-decode")
    decode.add_argument("model")
    decode.add_argument("--tokens", type=int, default=128)
    decode.add_argument("--result", required=True)
    copy = commands.add_parser("bandwidth")
    copy.add_argument("--result", required=True)
    summary = commands.add_parser("table")
    summary.add_argument("out")
    arguments = parser.parse_args()
    {"data": make_data, "pairs": make_pairs, "model": make_model, "bare-train": bare_train, "bare-decode": bare_decode,
     "bandwidth": bandwidth, "table": table}[arguments.command](arguments)


if __name__ == "__main__":
    main()
