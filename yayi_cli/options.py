"""What `yayi chat`, `eval` and `quantize` are asked to do, as data.

The CLI takes its `--help` defaults from these dataclasses, so the two cannot drift; this module
imports nothing heavy because every `yayi --help` and TAB press imports it. (`yayi train`'s
options, with their config-file layering, are in train/options.py.)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yayi_cli.errors import UsageError


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def finite_float(text: str | float) -> float:
    """A number that arithmetic can use: `nan` and `inf` (which float() accepts) are refused."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(text)
    return number


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "off", "") else int(text)


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated; the defaults are upstream YaYi's, with room for longer answers."""

    temperature: float = 0.3
    top_p: float = 1.0
    top_k: int = 50
    max_new_tokens: int = 512
    repetition_penalty: float = 1.1
    do_sample: bool = True
    seed: int | None = None

    PARSERS = {  # noqa: RUF012 - a class constant, not a field (no annotation)
        "temperature": finite_float, "top_p": finite_float, "top_k": int, "max_new_tokens": int,
        "repetition_penalty": finite_float, "do_sample": _flag, "seed": _optional_int,
    }

    def __post_init__(self) -> None:
        checks = (
            (self.temperature > 0, "temperature must be above 0 (for greedy answers use --greedy, or /set do_sample=false)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be 0 (off) or more"),
            (self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (self.repetition_penalty > 0, "repetition_penalty must be above 0 (1 is none)"),
            (self.seed is None or self.seed >= 0, "seed must be 0 or more (or none)"),
        )
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    def apply(self, text: str) -> GenerationSettings:
        """A copy with `key=value ...` applied ("temperature=0.5 top_k=40"); a bad pair raises, naming it."""
        changes: dict[str, Any] = {}
        for pair in text.split():
            key, equals, value = pair.partition("=")
            if not equals:
                raise UsageError(f"expected key=value, got {pair!r}")
            parse = self.PARSERS.get(key)
            if parse is None:
                close = difflib.get_close_matches(key, self.PARSERS, n=1, cutoff=0.5)
                hint = f"did you mean {close[0]}? " if close else ""
                raise UsageError(f"unknown setting {key!r}; {hint}settings: {', '.join(self.PARSERS)}")
            try:
                changes[key] = parse(value)
            except ValueError:
                expected = {_flag: "true or false", _optional_int: "a whole number or none", int: "a whole number"}
                raise UsageError(f"{key}={value!r}: expected {expected.get(parse, 'a number')}") from None
        if not changes:
            raise UsageError(f"nothing to set; give key=value pairs of: {', '.join(self.PARSERS)}")
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        return " ".join(f"{field.name}={getattr(self, field.name)}" for field in dataclasses.fields(self))

    def generate_kwargs(self) -> dict[str, Any]:
        """Arguments for `model.generate`; sampling knobs only when sampling (else transformers warns)."""
        kwargs: dict[str, Any] = {"do_sample": self.do_sample, "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs


@dataclass
class ChatOptions:
    """Everything `yayi chat` needs to open a session, resolved in one place."""

    model: str
    template: str | None = None
    system: str | None = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    device: str = "auto"
    dtype: str = "auto"
    load_in_8bit: bool = False
    trust_remote_code: bool = False
    max_context_tokens: int | None = None
    compile: bool = False
    base: str | None = None
    """With an adapter directory as `model`: its base (default: the one it names)."""


@dataclass
class EvalOptions:
    """Everything `yayi eval` is asked to do, resolved in one place (the CLI's defaults come from here)."""

    model: str
    data: list[Path]
    task: str = "lm"
    generate: bool = False
    sample: bool = False
    max_new_tokens: int = 256
    batch_size: int = 8
    max_samples: int | None = None
    max_length: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    load_in_8bit: bool = False
    template: str | None = None
    trust_remote_code: bool = False
    output: Path | None = None
    predictions: Path | None = None
    baseline: Path | None = None
    fail_if: list[str] = field(default_factory=list)
    max_regression: float | None = None
    force: bool = False
    base: str | None = None
    """With an adapter directory as `model`: its base (default: the one it names)."""


@dataclass
class QuantizeOptions:
    model: str
    output: Path
    bits: int = 8
    threshold: float = 6.0
    skip_modules: tuple[str, ...] = ("lm_head",)
    device: str = "auto"
    check_data: list[Path] = field(default_factory=list)
    max_check_samples: int = 64
    max_ppl_increase: float | None = None
    decode_tokens: int = 32
    force: bool = False
    trust_remote_code: bool = False
    base: str | None = None
    """With an adapter directory as `model`: the base to merge it into (default: the one it names)."""


@dataclass
class MergeOptions:
    adapter: str
    output: Path
    base: str | None = None
    dtype: str = "auto"
    """auto: the dtype the base was saved in."""
    force: bool = False
    trust_remote_code: bool = False


@dataclass
class ServeOptions:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    engine: str = "transformers"
    template: str | None = None
    trust_remote_code: bool = False
