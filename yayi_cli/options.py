"""What `yayi chat`, `eval`, `quantize`, `merge`, `serve` and `template install` are asked to do, as data.

Each field declares its flags, help and checks (option_table.py); the CLI is made from these classes
and a library call gets the same checks. This module imports nothing heavy because every
`yayi --help` and TAB press imports it. (`yayi train`'s options are in train/options.py, the data
commands' in data/options.py.)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli.errors import UsageError
from yayi_cli.models import DTYPES
from yayi_cli.option_table import CommandOptions, complete_directories, group, option
from yayi_cli.prompt import TEMPLATES

CHOICE_PROTOCOLS = ("harness", "chat", "answer")
"""The ways a multiple-choice question is put to the model (benchmark/protocols.py builds each)."""


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
    from yayi_cli.sampling import parse_test_size

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


@dataclass
class ChatOptions(CommandOptions):
    """Everything `yayi chat` needs to open a session and answer, resolved in one place."""

    COMMAND = "chat"
    CONFIG_FILE = True

    model: str = model_option()
    template: str | None = template_option()
    system: str | None = option("--system", default=None, help="System prompt (default: the template's).")
    settings: GenerationSettings = group(GenerationSettings)
    device: str = device_option()
    dtype: str = dtype_option()
    load_in_8bit: bool = load_in_8bit_option()
    trust_remote_code: bool = trust_remote_code_option()
    max_context_tokens: int | None = option(
        "--max-context-tokens", default=None, at_least=16, metavar="N",
        help="Drop the oldest exchanges beyond this (default: the model's context).")
    compile: bool = option("--compile", default=False,
                           help="Static KV cache compiled by torch.compile: faster decoding after a warm-up.")
    base: str | None = base_option()
    prompt: str | None = option("--prompt", "-p", default=None, help="Answer this one message, print only the answer, exit.")
    jsonl: bool = option("--jsonl", default=False,
                         help='Read JSON lines on stdin ({"prompt": ...} or any record), write one JSON line per answer.')
    history_file: Path | None = option("--history-file", default=None, metavar="FILE",
                                       help="Input history (default: $XDG_STATE_HOME/yayi/chat_history).")
    history: bool = option("--history/--no-history", default=True, help="Keep an input history on disk (--no-history: none).")

    def check_values(self) -> None:
        super().check_values()
        if self.jsonl and self.prompt is not None:
            raise UsageError("--jsonl reads its prompts from stdin; leave out --prompt")


@dataclass
class EvalOptions(CommandOptions):
    """Everything `yayi eval` is asked to do, resolved in one place."""

    COMMAND = "eval"
    CONFIG_FILE = True

    model: str = model_option()
    data: list[Path] = option("--data", "-d", metavar="FILE", required=True, help="Held-out data (repeat for several files); with --benchmark, its folder or zip.")
    task: str = option("--task", default="lm", choices=("lm", "choice", "preference"), help=(
        "lm: answer loss and generation; choice: multiple-choice accuracy (CSV question,A,B,C,D,answer or JSON lines); "
        "preference: how often held-out chosen answers out-reward rejected ones (DPO's implicit reward)."))
    benchmark: str | None = option("--benchmark", default=None, choices=("ceval", "cmmlu", "mmlu"), help=(
        "Run a standard benchmark from its files as downloaded: --data is its folder or zip; accuracy per subject, "
        "category and overall."))
    protocol: str | None = option("--protocol", default=None, choices=CHOICE_PROTOCOLS, help=(
        "How a multiple-choice question is asked (--benchmark, --task choice): harness as lm-evaluation-harness does; "
        "chat puts the same text in one turn of the model's template and scores the letter as the answer's first "
        "token; answer scores the letter as the whole answer, <|End|> included [default: harness with --benchmark, "
        "answer with --task choice]."))
    split: str | None = option("--split", default=None, choices=("val", "test"), help=(
        "With --benchmark: the split to score [default: the harness's: val for C-Eval, test for CMMLU and MMLU]."))
    subjects: str | None = option("--subjects", default=None, metavar="A,B,...",
                                  help="With --benchmark: only these subjects (comma-separated file names).")
    shots: int | None = option("--shots", default=None, at_least=0, metavar="K",
                               help="With --benchmark: examples before each question, the first K of dev [default: 5].")
    submission: Path | None = option("--submission", default=None, metavar="FILE.json", help=(
        "With --benchmark ceval --split test: write the predictions in the file C-Eval's site takes."))
    reference: str | None = option("--reference", default=None, metavar="DIR|HUB_ID", complete=complete_directories,
                                   help="With --task preference: the model rewards are measured against [default: the "
                                        "model it was trained from, in its run.json, else an adapter's base].")
    generate: bool = option("--generate", default=False,
                            help="Also generate each last answer and score it (exact match, ROUGE-L, BLEU-4).")
    sample: bool = option("--sample", default=False, help="Sample instead of greedy decoding with --generate.")
    max_new_tokens: int = option("--max-new-tokens", default=256, at_least=1, metavar="N", help="Longest generated answer.")
    batch_size: int = option("--batch-size", default=8, at_least=1, metavar="N", help="Records per forward pass.")
    max_samples: int | None = option("--max-samples", default=None, at_least=1, metavar="N",
                                     help="Evaluate a seeded sample of this many records.")
    max_length: int | None = option("--max-length", default=None, at_least=1, metavar="TOKENS",
                                    help="Truncate longer sequences (default: the model's context).")
    seed: int = option("--seed", default=0, help="Seed of --max-samples and of --sample.")
    device: str = device_option()
    dtype: str = dtype_option()
    load_in_8bit: bool = load_in_8bit_option()
    template: str | None = template_option()
    trust_remote_code: bool = trust_remote_code_option()
    output: Path | None = option("--output", "-o", default=None, metavar="REPORT.json", help="Write the JSON report here.")
    predictions: Path | None = option("--predictions", default=None, metavar="FILE.jsonl",
                                      help="Write each prediction with its reference and scores.")
    baseline: Path | None = option("--baseline", default=None, metavar="REPORT.json",
                                   help="A previous report: print changes against it.")
    fail_if: list[str] = option("--fail-if", default_factory=list, metavar="EXPR",
                                help='Exit 1 when it holds, e.g. "ppl>12.5" (repeatable).')
    max_regression: float | None = option("--max-regression", default=None, at_least=0, metavar="PCT",
                                          help="With --baseline: exit 1 when a metric is more than PCT% worse.")
    force: bool = force_option("Replace existing --output or --predictions files.")
    base: str | None = base_option()

    def check_values(self) -> None:
        super().check_values()
        if self.max_regression is not None and self.baseline is None:
            raise UsageError("--max-regression needs --baseline REPORT.json")
        if self.reference is not None and self.task != "preference":
            raise UsageError("--reference is for --task preference")
        if self.generate and self.task == "preference":
            raise UsageError("--generate answers SFT records' last question; --task preference scores the answers the pairs give")
        if self.protocol is not None and self.benchmark is None and self.task != "choice":
            raise UsageError("--protocol is for multiple choice: --task choice or --benchmark ceval|cmmlu|mmlu")
        if self.benchmark is None:
            given = [flag for flag, value in (("--split", self.split), ("--subjects", self.subjects),
                                              ("--shots", self.shots), ("--submission", self.submission)) if value is not None]
            if given:
                raise UsageError(f"{given[0]} is for --benchmark ceval|cmmlu|mmlu")
            return
        from yayi_cli.benchmark.plan import check_benchmark_options

        check_benchmark_options(self)


@dataclass
class QuantizeOptions(CommandOptions):
    """Everything `yayi quantize` is asked to do."""

    COMMAND = "quantize"
    CONFIG_FILE = True

    model: str = model_option("Model to quantize.")
    output: Path = option("--output", "-o", metavar="DIR", required=True, complete=complete_directories,
                          help="Directory for the quantized checkpoint.")
    bits: int = option("--bits", default=8, choices=(8, 4), help="8: LLM.int8; 4: NF4.")
    threshold: float = option("--threshold", default=6.0, help="LLM.int8 outlier threshold.")
    skip_modules: tuple[str, ...] = option("--skip-modules", default=("lm_head",), metavar="NAME",
                                           help="Modules kept in full precision (repeatable).")
    device: str = device_option()
    check_data: list[Path] = option("--check-data", default_factory=list, metavar="FILE",
                                    help="Records to measure answer perplexity and greedy agreement on.")
    max_check_samples: int = option("--max-check-samples", default=64, at_least=1, metavar="N",
                                    help="Check on at most this many records.")
    max_ppl_increase: float | None = option("--max-ppl-increase", default=None, metavar="PCT",
                                            help="Exit 1 (and write nothing) if perplexity rises more.")
    decode_tokens: int = option("--decode-tokens", default=32, at_least=1, metavar="N",
                                help="Tokens generated to measure decoding speed before and after.")
    force: bool = force_option("Replace an existing output directory (only once the new one is complete).")
    trust_remote_code: bool = trust_remote_code_option()
    base: str | None = base_option()


@dataclass
class MergeOptions(CommandOptions):
    """Everything `yayi merge` is asked to do."""

    COMMAND = "merge"

    adapter: str = option("ADAPTER_DIR", argument=True, metavar="ADAPTER_DIR", complete=complete_directories,
                          help="What yayi train --lora/--qlora wrote.")
    output: Path = option("--output", "-o", metavar="DIR", required=True, complete=complete_directories,
                          help="Directory for the merged model.")
    base: str | None = option("--base", default=None, metavar="DIR|HUB_ID", complete=complete_directories,
                              help="The base model [default: the one in the adapter's adapter_config.json].")
    dtype: str = dtype_option("Weights of the merged model (auto: as the base was saved).")
    force: bool = force_option("Replace an existing output directory (only once the new one is complete).")
    trust_remote_code: bool = trust_remote_code_option()


@dataclass
class ServeOptions(CommandOptions):
    """Everything `yayi serve` is asked to do."""

    COMMAND = "serve"
    CONFIG_FILE = True

    model: str = model_option()
    host: str = option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 opens it to the network).")
    port: int = option("--port", default=8000, at_least=1, at_most=65535, help="Port to listen on.")
    engine: str = option("--engine", default="transformers", choices=("transformers", "vllm"),
                         help="transformers serve, or vLLM where installed.")
    template: str | None = template_option()
    trust_remote_code: bool = trust_remote_code_option()


@dataclass
class TemplateInstallOptions(CommandOptions):
    """Everything `yayi template install` is asked to do."""

    COMMAND = "template install"

    model: str = option("MODEL_DIR", argument=True, metavar="MODEL_DIR", complete=complete_directories,
                        help="A local model directory.")
    template: str | None = template_option()
    check_only: bool = option("--check", default=False,
                         help="Only report whether the model agrees with the yayi core; exit 1 if not.")
    trust_remote_code: bool = trust_remote_code_option()
