"""Decode tokens/s of `yayi chat`'s streaming path against a bare `model.generate`, same model, same run.

A tiny Llama-shaped model is built offline. Both paths generate exactly `--tokens` new tokens
(`min_new_tokens` in the model's generation config, which both inherit) with the chat's default
sampling settings and the same seed, so they produce the same tokens; repeats alternate and the
best of each is kept. The streaming path is `ChatSession.answer` with an `on_text` that writes to
/dev/null, as the REPL writes to the terminal. With `--compile`, the same again with the static
cache compiled by transformers, and the warm-up it costs.

    .venv/bin/python benchmarks/chat_decode.py [--tokens 256] [--repeats 5] [--hidden 256] [--compile]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from yayi_cli.chat.options import ChatOptions
from yayi_cli.chat.session import compile_decoding, open_session
from yayi_cli.core.prompt import HUMAN, TEMPLATES, Conversation, Turn, render_training
from yayi_cli.core.reader import read_records
from yayi_cli.core.records import parse_record


SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.jsonl"
QUESTION = Conversation((Turn(HUMAN, "请写一篇关于城市图书驿站的新闻稿。"),))


def bare_generate(session, tokens: int) -> float:
    import torch

    ids = torch.tensor([session.prompt_tokenizer.encode_inference(QUESTION)])
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.inference_mode():
        output = session.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
            eos_token_id=session._stop_ids, pad_token_id=session._pad_id, **session.settings.generate_kwargs(),
        )
    assert output.shape[1] - ids.shape[1] == tokens
    return tokens / (time.perf_counter() - started)


def streamed(session, tokens: int, sink) -> float:
    import torch

    torch.manual_seed(0)
    reply = session.answer(QUESTION, on_text=lambda text: (sink.write(text), sink.flush()))
    assert reply.new_tokens == tokens
    return reply.tokens_per_second


def measure(session, tokens: int, repeats: int) -> tuple[float, float]:
    bare = stream = 0.0
    with open(os.devnull, "w", encoding="utf-8") as sink:
        bare_generate(session, tokens), streamed(session, tokens, sink)  # warm-up
        for _ in range(repeats):
            bare = max(bare, bare_generate(session, tokens))
            stream = max(stream, streamed(session, tokens, sink))
    return bare, stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the tiny Llama (4 layers)")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    from yayi_cli.models.tiny import TinySpec, build_tiny

    texts = [render_training(parse_record(s.value).conversation, TEMPLATES["yayi"]).text for s in read_records(SAMPLE)]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny(Path(tmp) / "m", texts, TinySpec(hidden_size=args.hidden, layers=4, heads=8))
        session = open_session(ChatOptions(str(model_dir), max_context_tokens=1024))
        session.settings = session.settings.__class__(max_new_tokens=args.tokens, seed=0)
        session.model.generation_config.min_new_tokens = args.tokens  # both paths: exactly --tokens
        params = sum(p.numel() for p in session.model.parameters())
        print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
              f"tiny Llama {params / 1e6:.1f}M parameters; {args.tokens} tokens, best of {args.repeats}")
        bare, stream = measure(session, args.tokens, args.repeats)
        print(f"bare model.generate      {bare:8.1f} tokens/s")
        print(f"ChatSession streaming    {stream:8.1f} tokens/s   ratio {stream / bare:.3f}")
        if args.compile:
            print(f"--compile warm-up        {compile_decoding(session):8.1f} s")
            bare_c, stream_c = measure(session, args.tokens, args.repeats)
            print(f"bare generate, compiled  {bare_c:8.1f} tokens/s")
            print(f"streaming, compiled      {stream_c:8.1f} tokens/s   ratio {stream_c / bare_c:.3f}; "
                  f"compiled / default streaming {stream_c / stream:.2f}x")


if __name__ == "__main__":
    main()
