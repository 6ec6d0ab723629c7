"""Served tokens/s of `yayi serve` (transformers serve) for 1, 4 and 16 concurrent streaming clients,
against `yayi chat --jsonl` answering the same prompts one after another, same model, same run.

A tiny Llama-shaped model is built offline; its generation config asks for exactly `--tokens` new
tokens (`min_new_tokens`), which both paths inherit, with greedy decoding. The baseline is the code
`yayi chat --jsonl` runs (`answer_lines` on a loaded session), timed without the model load; each
served run sends the same prompts through the official `openai` client with `stream=True`, spread
over the clients, and counts the completion tokens the server reports. Server start-up is not timed.
The baseline and the served runs alternate in rounds (chat, 1 client, 4, 16, chat, ...), as the
machine may be shared; the report gives medians over the rounds and ratios against chat's median.

    .venv/bin/python benchmarks/serve_throughput.py [--tokens 64] [--prompts 16] [--clients 1 4 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shapes import alternate

from yayi_cli.core.prompt import TEMPLATES, render_training
from yayi_cli.core.reader import read_records
from yayi_cli.core.records import parse_record


SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.jsonl"
NAME = "bench-llama"


def prompts(count: int) -> list[str]:
    questions = [parse_record(source.value).conversation.turns[0].text for source in read_records(SAMPLE)]
    return [questions[k % len(questions)] for k in range(count)]


def build_model(directory: Path, tokens: int, hidden: int) -> Path:
    from yayi_cli.models.tiny import TinySpec, build_tiny

    texts = [render_training(parse_record(s.value).conversation, TEMPLATES["yayi"]).text for s in read_records(SAMPLE)]
    build_tiny(directory, texts, TinySpec(hidden_size=hidden, layers=4, heads=8))
    config_path = directory / "generation_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(min_new_tokens=tokens, max_new_tokens=tokens, do_sample=False)
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory


def chat_jsonl(model: Path, questions: list[str], tokens: int) -> float:
    """Tokens/s of `yayi chat --jsonl`'s answering loop on a loaded session."""
    from yayi_cli.chat.batch import answer_lines
    from yayi_cli.chat.session import ChatOptions, GenerationSettings, open_session

    settings = GenerationSettings(max_new_tokens=tokens, do_sample=False, repetition_penalty=1.0)
    session = open_session(ChatOptions(str(model), settings=settings, device="cpu"))
    lines = [json.dumps({"prompt": question}, ensure_ascii=False) for question in questions]
    answer_lines(session, lines[:1], lambda line: None)  # warm-up
    results: list[dict] = []
    started = time.perf_counter()
    answer_lines(session, lines, lambda line: results.append(json.loads(line)))
    seconds = time.perf_counter() - started
    return sum(result["completion_tokens"] for result in results) / seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def served(base: str, questions: list[str], clients: int, tokens: int) -> float:
    """Tokens/s over all clients: each streams its share of the prompts, one request at a time."""
    from openai import OpenAI

    def client_run(share: list[str]) -> int:
        client = OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        total = 0
        for question in share:
            stream = client.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": question}], max_tokens=tokens, temperature=0,
                stream=True,
            )
            for chunk in stream:
                if chunk.usage is not None:
                    total += chunk.usage.completion_tokens
        return total

    shares = [questions[k::clients] for k in range(clients)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(client_run, shares))
    return total / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per answer")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the tiny Llama (4 layers)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of every variant")
    args = parser.parse_args()
    questions = prompts(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / NAME, args.tokens, args.hidden)
        print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; tiny Llama "
              f"hidden {args.hidden}, 4 layers; {args.prompts} prompts x {args.tokens} tokens, greedy; "
              f"medians of {args.rounds} alternating rounds")
        port = free_port()
        with open(Path(tmp) / "serve.log", "w") as log:
            server = subprocess.Popen([sys.executable, "-m", "yayi_cli", "serve", "--model", str(model), "--port",
                                       str(port)], stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            while not server.stdout.readline().startswith("curl"):
                if server.poll() is not None:
                    raise SystemExit(f"yayi serve failed:\n{(Path(tmp) / 'serve.log').read_text()}")
            base = f"http://127.0.0.1:{port}"
            served(base, questions[:1], 1, args.tokens)  # warm-up
            variants = {"yayi chat --jsonl": lambda: chat_jsonl(model, questions, args.tokens)}
            for clients in args.clients:
                variants[f"yayi serve, {clients} client(s)"] = lambda n=clients: served(base, questions, n, args.tokens)
            rates = {name: statistics.median(values) for name, values in alternate(variants, args.rounds).items()}
        finally:
            server.send_signal(2)
            server.wait(timeout=60)
    baseline = rates["yayi chat --jsonl"]
    for name, rate in rates.items():
        print(f"{name:<28}{rate:10.1f} tokens/s   x{rate / baseline:.2f} of chat")


if __name__ == "__main__":
    main()
