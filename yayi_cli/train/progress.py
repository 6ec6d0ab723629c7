"""What a training rank reports while it trains.

Every line a rank prints (its own, the libraries' logs and warnings) is tagged with its host and
rank, so that `yayi train` can keep all of them in OUTPUT/train.log and still tell them apart. The
first rank also reports progress: one event per logging step, evaluation and checkpoint, printed
as a tagged JSON line for the console and appended to OUTPUT/metrics.jsonl.
"""

from __future__ import annotations

import atexit
import io
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from yayi_cli.core.prompt import IGNORE_INDEX
from yayi_cli.models.run_files import METRICS_FILE, checkpoint_name
from yayi_cli.runtime.atomic import json_line
from yayi_cli.runtime.errors import YayiError, first_line


EVENT_TAG = "@yayi-event "
"""Starts a line that carries a progress event (JSON) rather than text for people."""
RANK_SEPARATOR = "| "

PEAK_DENSE_FLOPS = {  # bf16/fp16 dense tensor-core peak per GPU, from the vendors' data sheets
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "A10": 125e12,
    "L4": 121e12, "RTX 4090": 165e12, "V100": 125e12,
}


def rank_tag(host: str, rank: int) -> str:
    return f"{host} rank {rank}{RANK_SEPARATOR}"


class TaggedStream(io.TextIOBase):
    """A text stream that writes each whole line to `target` with `tag` in front of it."""

    def __init__(self, target: TextIO, tag: str) -> None:
        self._target, self._tag, self._pending = target, tag, ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        if lines:
            self._target.write("".join(f"{self._tag}{line}\n" for line in lines))
            self._target.flush()
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def close_line(self) -> None:
        """Write out a last line that never got its newline."""
        if self._pending:
            self.write("\n")

    def isatty(self) -> bool:
        return False  # progress bars stay off: the console draws its own

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._target, "encoding", "utf-8")


def tag_output(rank: int) -> None:
    """From now on, everything this process prints goes out tagged with its host and rank."""
    tag = rank_tag(socket.gethostname(), rank)
    streams = [TaggedStream(sys.stdout, tag), TaggedStream(sys.stderr, tag)]
    sys.stdout, sys.stderr = streams
    for stream in streams:
        atexit.register(stream.close_line)


def count_sft_tokens(feature: dict[str, Any]) -> tuple[int, int]:
    """(tokens, answer tokens that carry loss) of one SFT example or packed row."""
    return len(feature["input_ids"]), sum(label != IGNORE_INDEX for label in feature["labels"])


class CountingCollator:
    """Wraps the collator and counts the tokens of every batch it builds on this rank: all of
    them (padding aside) and the answer tokens that carry loss (`count` says which are which)."""

    def __init__(self, collate: Any, count: Callable[[dict[str, Any]], tuple[int, int]] = count_sft_tokens) -> None:
        self.collate = collate
        self.count = count
        self.tokens = 0
        self.answer_tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        for feature in features:
            tokens, answer_tokens = self.count(feature)
            self.tokens += tokens
            self.answer_tokens += answer_tokens
        return self.collate(features)


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU model, else None (no MFU is claimed for it)."""
    return next((flops for model, flops in PEAK_DENSE_FLOPS.items() if model in device_name), None)


def flops_per_token(parameters: int, *, checkpointing: bool) -> int:
    """Training FLOPs per token: 2N forward + 4N backward, plus 2N more when activations are
    recomputed (gradient checkpointing). Attention's own FLOPs are left out."""
    return (8 if checkpointing else 6) * parameters


PREFERENCE_METRICS = ("reward", "kl", "completions/")
"""What TRL's DPO, KTO and GRPO trainers log about what they learn from: DPO and KTO's rewards/chosen, .../margins
and KTO's kl; GRPO's reward, reward_std, rewards/<function>/mean and completions/mean_length, clipped_ratio."""


def preference_metrics(logs: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The preference metrics among a log's values, named without `prefix` (an eval's `eval_`)."""
    return {name.removeprefix(prefix): value for name, value in logs.items()
            if name.startswith(prefix) and name.removeprefix(prefix).startswith(PREFERENCE_METRICS)}


def first_and_last(history: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The learning-signal metrics of a run's first and last logged steps, for its summary."""
    return {"first": preference_metrics(history[0]), "last": preference_metrics(history[-1])}


def make_reporter(counter: CountingCollator, output: Path, *, world_size: int, main_rank: bool) -> Any:
    """A `TrainerCallback` (built here so that transformers is imported only inside the worker)."""
    from transformers import TrainerCallback

    class ProgressReporter(TrainerCallback):
        """Turns the Trainer's logs into progress events on the first rank."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.last = (self.started, 0, 0)

        def emit(self, event: dict[str, Any]) -> None:
            if not main_rank:
                return
            line = json_line(event)
            with open(output / METRICS_FILE, "a", encoding="utf-8") as metrics:
                metrics.write(line + "\n")
            print(EVENT_TAG + line, flush=True)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.monotonic()
            self.last = (self.started, counter.tokens, counter.answer_tokens)
            self.emit({"event": "begin", "step": state.global_step, "max_steps": state.max_steps})

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            logs = dict(logs or {})
            common = {"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
                      "elapsed_s": round(time.monotonic() - self.started, 3)}
            if "eval_loss" in logs:
                self.emit({"event": "eval", **common, "eval_loss": logs["eval_loss"], **preference_metrics(logs, "eval_")})
            elif "loss" in logs:
                self.emit({"event": "log", **common, **self._rates(), "loss": logs["loss"],
                           "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                           **preference_metrics(logs)})

        def _rates(self) -> dict[str, float]:
            """Tokens per second since the last log, for all ranks: this rank's count x ranks."""
            now, tokens, answer = time.monotonic(), counter.tokens, counter.answer_tokens
            then, tokens_then, answer_then = self.last
            self.last = (now, tokens, answer)
            seconds = max(now - then, 1e-9)
            return {"tokens_per_second": round((tokens - tokens_then) * world_size / seconds, 1),
                    "answer_tokens_per_second": round((answer - answer_then) * world_size / seconds, 1)}

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.emit({"event": "checkpoint", "step": state.global_step, "path": str(output / checkpoint_name(state.global_step))})
            if main_rank:
                draw_curves_now(output)

    return ProgressReporter()


def draw_curves_now(output: Path) -> None:
    """OUTPUT/curves.png redrawn from metrics.jsonl. A picture never costs a run: a failure to draw is one line."""
    from yayi_cli.train.curves import write_run_curves

    try:
        write_run_curves(output)
    except (ImportError, OSError, ValueError, YayiError) as error:
        print(f"[yayi] the curves were not drawn: {first_line(error)}", flush=True)


def throughput(counter: CountingCollator, seconds: float, *, world_size: int, parameters: int, checkpointing: bool,
               device_name: str | None, peak_memory_bytes: int | None) -> dict[str, float | None]:
    """Trained tokens per second over the whole run, the model FLOPs utilisation where the GPU's
    peak is known (tokens/s x FLOPs per token / (peak x GPUs)), and this rank's peak GPU memory."""
    tokens_per_second = counter.tokens * world_size / max(seconds, 1e-9)
    peak = peak_flops(device_name) if device_name else None
    mfu = tokens_per_second * flops_per_token(parameters, checkpointing=checkpointing) / (peak * world_size) if peak else None
    return {
        "train_tokens_per_second": round(tokens_per_second, 1),
        "train_answer_tokens_per_second": round(counter.answer_tokens * world_size / max(seconds, 1e-9), 1),
        "mfu": None if mfu is None else round(mfu, 4),
        "peak_gpu_memory_gib": None if peak_memory_bytes is None else round(peak_memory_bytes / 2**30, 2),
    }
