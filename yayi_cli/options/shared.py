"""The options several commands share: the model, template, device and precision flags, and how to generate.

This module imports nothing heavy: every `yayi --help` and TAB press imports it. Each command's own options
are in its package (train/options.py, chat/options.py, eval/options.py, ...)."""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any

from yayi_cli.core.prompt import TEMPLATES
from yayi_cli.models.weights import DTYPES
from yayi_cli.options.fields import complete_directories, option
from yayi_cli.runtime.errors import UsageError


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


def as_test_size(value: Any) -> int | float:
    """`--test-size`: a count (400) or a fraction (0.05), from a flag's text or a config file."""
    from yayi_cli.core.sampling import parse_test_size

    return parse_test_size(str(value))


MODEL_HELP = "Model directory or hub id."


def model_option(help: str = MODEL_HELP, required: bool = True) -> Any:
    return option("--model", "-m", metavar="DIR|HUB_ID", help=help, complete=complete_directories, required=required,
                  default=dataclasses.MISSING if required else None)


def template_option() -> Any:
    return option("--template", default=None, choices=tuple(TEMPLATES),
                  help="Prompt template (default: saved with the model, else detected from its name or config).")


def trust_remote_code_option() -> Any:
    return option("--trust-remote-code", default=False, help="Allow the model's own Python code to run when loading it.")


def base_option() -> Any:
    return option("--base", default=None, metavar="DIR|HUB_ID", complete=complete_directories,
                  help="With a LoRA adapter directory as --model: the base model to load it on "
                       "[default: the one in its adapter_config.json].")


def device_option() -> Any:
    return option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")


def dtype_option(help: str = "Weights' precision when loading.") -> Any:
    return option("--dtype", default="auto", choices=DTYPES, help=help)


def load_in_8bit_option() -> Any:
    return option("--load-in-8bit", default=False, help="Load the model in int8 (bitsandbytes).")


def force_option(help: str) -> Any:
    return option("--force", default=False, help=help)


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated; the defaults are upstream YaYi's, with room for longer answers."""

    temperature: float = option("--temperature", default=0.3, help="Randomness of sampling (above 0).")
    top_p: float = option("--top-p", default=1.0, help="Sample from the smallest set of tokens this likely, in (0, 1].")
    top_k: int = option("--top-k", default=50, help="Sample from the K likeliest tokens; 0 turns it off.")
    max_new_tokens: int = option("--max-new-tokens", default=512, metavar="N", help="Longest answer in tokens.")
    repetition_penalty: float = option("--repetition-penalty", default=1.1, help="Above 1 discourages repeating (1 is none).")
    do_sample: bool = option("--sample/--greedy", default=True,
                             help="Sample (upstream's default) or take the most likely token.")
    seed: int | None = option("--seed", default=None, help="Seed the sampler once, for repeatable answers.")

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
