"""Served tokens/s of `yayi serve` (transformers serve), batching on and off, for 1, 4, 16 and 64 concurrent
streaming clients, against `yayi chat --jsonl` answering the same prompts one after another, same model, same run;
with each variant's p50 and p95 time to the first streamed token.

A tiny Llama-shaped model is built offline; its generation config asks for exactly `--tokens` new
tokens (`min_new_tokens`), which both paths inherit, with greedy decoding. The baseline is the code
`yayi chat --jsonl` runs (`answer_lines` on a loaded session), timed without the model load; each
served run sends the same prompts through the official `openai` client with `stream=True`, spread
over the clients, and counts the completion tokens the server reports. Two servers run side by side
(`yayi serve` as it comes, and with --no-continuous-batching); their start-up is not timed. The baseline and
the served runs alternate in rounds, as the machine may be shared; the report gives medians over the rounds
and ratios against chat's median and against one client of the same server.

    .venv/bin/python benchmarks/serve_throughput.py [--tokens 64] [--prompts 64] [--clients 1 4 16 64] [--rounds 3]

With --storm, it measures recovery instead, on the batching server: 16 clients' tokens/s before and after each storm
of 64 concurrent streams of which 16 close their connection after the first words, alternating for --rounds.
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


def served(base: str, questions: list[str], clients: int, tokens: int, first_token_s: list[float] | None = None) -> float:
    """Tokens/s over all clients: each streams its share of the prompts, one request at a time; each request's
    time to its first streamed text goes into `first_token_s`."""
    from openai import OpenAI

    def client_run(share: list[str]) -> int:
        client = OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        total = 0
        for question in share:
            sent, first = time.perf_counter(), None
            stream = client.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": question}], max_tokens=tokens, temperature=0,
                stream=True,
            )
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - sent
                if chunk.usage is not None:
                    total += chunk.usage.completion_tokens
            if first_token_s is not None and first is not None:
                first_token_s.append(first)
        return total

    shares = [questions[k::clients] for k in range(clients)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(client_run, shares))
    return total / (time.perf_counter() - started)


def storm(base: str, questions: list[str], tokens: int) -> int:
    """64 concurrent streams, every fourth closed by its client after its first words; returns how many finished."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)

    def one(index: int) -> bool:
        stream = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": questions[index % len(
            questions)]}], max_tokens=tokens, temperature=0, stream=True)
        chunks = iter(stream)
        if index % 4 == 0:
            next(chunks), next(chunks)
            stream.close()
            return False
        return any(chunk.choices and chunk.choices[0].finish_reason for chunk in chunks)

    with ThreadPoolExecutor(64) as pool:
        return sum(pool.map(one, range(64)))


def recovery(model: Path, tmp: Path, questions: list[str], tokens: int, rounds: int) -> None:
    """16 clients' tokens/s before and after storms on one batching server."""
    server, base = start_server(model, tmp / "storm.log", [])
    try:
        served(base, questions[:1], 1, tokens)  # warm-up
        before, after, finished = [], [], []
        for _ in range(rounds):
            before.append(served(base, questions, 16, tokens))
            finished.append(storm(base, questions, tokens))
            after.append(served(base, questions, 16, tokens))
    finally:
        server.terminate()  # SIGTERM: a background launch may have SIGINT ignored
        server.wait(timeout=60)
    print(f"16 clients before a storm: {statistics.median(before):.1f} tokens/s; after: {statistics.median(after):.1f} "
          f"tokens/s ({statistics.median(after) / statistics.median(before):.2f}x); streams finished per storm: "
          f"{finished} of 48 kept (16 dropped)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per answer")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the tiny Llama (4 layers)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of every variant")
    parser.add_argument("--storm", action="store_true", help="measure recovery after storms with dropped clients")
    args = parser.parse_args()
    questions = prompts(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / NAME, args.tokens, args.hidden)
        print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; tiny Llama "
              f"hidden {args.hidden}, 4 layers; {args.prompts} prompts x {args.tokens} tokens, greedy; "
              f"medians of {args.rounds} alternating rounds")
        if args.storm:
            return recovery(model, Path(tmp), questions, args.tokens, args.rounds)
        servers = {name: start_server(model, Path(tmp) / f"{name}.log", flags)
                   for name, flags in (("batching", []), ("one at a time", ["--no-continuous-batching"]))}
        try:
            variants = {"yayi chat --jsonl": lambda: chat_jsonl(model, questions, args.tokens)}
            first_token_s: dict[str, list[float]] = {}
            for name, (_, base) in servers.items():
                served(base, questions[:1], 1, args.tokens)  # warm-up
                for clients in args.clients:
                    label = f"serve ({name}), {clients} client(s)"
                    first_token_s[label] = []
                    variants[label] = lambda b=base, n=clients, t=first_token_s[label]: served(b, questions, n, args.tokens, t)
            rates = {name: statistics.median(values) for name, values in alternate(variants, args.rounds).items()}
        finally:
            for server, _ in servers.values():
                server.terminate()  # SIGTERM: a background launch may have SIGINT ignored
                server.wait(timeout=60)
    baseline = rates["yayi chat --jsonl"]
    print(f"{'variant':<38}{'tokens/s':>10}{'x chat':>8}{'x 1 client':>11}{'TTFT p50 s':>12}{'p95 s':>8}")
    for name, rate in rates.items():
        one = next((value for label, value in rates.items() if label == name.rsplit(",", 1)[0] + ", 1 client(s)"), None)
        times = sorted(first_token_s.get(name, []))
        p50, p95 = (times[len(times) // 2], times[min(len(times) - 1, int(0.95 * len(times)))]) if times else (None, None)
        print(f"{name:<38}{rate:10.1f}{rate / baseline:8.2f}" + (f"{rate / one:11.2f}" if one else " " * 11)
              + (f"{p50:12.3f}{p95:8.3f}" if p50 is not None else ""))


def start_server(model: Path, log_path: Path, flags: list[str]) -> tuple[subprocess.Popen, str]:
    """`yayi serve` with `flags` on a free port, once it has printed its curl line; and its base URL."""
    port = free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "yayi_cli", "serve", "--model", str(model), "--port", str(port),
                                   *flags], stdout=subprocess.PIPE, stderr=log, text=True)
    while not server.stdout.readline().startswith("curl"):
        if server.poll() is not None:
            raise SystemExit(f"yayi serve failed:\n{log_path.read_text()}")
    return server, f"http://127.0.0.1:{port}"

if __name__ == "__main__":
    main()
