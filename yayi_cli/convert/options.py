"""What `yayi quantize` and `yayi merge` are asked to do, as data (`yayi export`'s: export/options.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from yayi_cli.options.fields import CommandOptions, complete_directories, option
from yayi_cli.options.shared import (
    base_option,
    device_option,
    dtype_option,
    force_option,
    model_option,
    trust_remote_code_option,
)


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
