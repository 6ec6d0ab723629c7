"""What `yayi data validate`, `split` and `preview` are asked to do, declared once (see option_table.py)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from yayi_cli.core.sampling import DEFAULT_SEED
from yayi_cli.options.fields import CommandOptions, complete_directories, option
from yayi_cli.options.shared import as_test_size, force_option, model_option, template_option, trust_remote_code_option
from yayi_cli.runtime.errors import UsageError


MODEL_TOKENIZER_HELP = "Model directory or hub id (its tokenizer is used)."
PROMPTS_HELP = ("The files hold prompt records (train --method grpo, eval --task reward): questions without answers, "
                "with the same further fields for the rewards.")


@dataclass
class PreviewOptions(CommandOptions):
    COMMAND = "data preview"

    file: Path = option("FILE", argument=True, metavar="FILE", help="A .jsonl or .json data file.")
    num_records: int = option("-n", "--num-records", default=3, at_least=1, at_most=sys.maxsize, clamp=True,
                              help="How many records to show.")
    template: str | None = template_option()
    model: str | None = model_option(MODEL_TOKENIZER_HELP, required=False)
    trust_remote_code: bool = trust_remote_code_option()


@dataclass
class ValidateOptions(CommandOptions):
    COMMAND = "data validate"

    files: list[Path] = option("FILE...", argument=True, metavar="FILE...",
                               help="Data files (.jsonl, or .json array or lines).")
    model: str | None = model_option(MODEL_TOKENIZER_HELP, required=False)
    max_length: int | None = option("--max-length", default=None, at_least=1, metavar="TOKENS",
                                    help="Report records longer than this many tokens (default: the model's context).")
    template: str | None = template_option()
    strict: bool = option("--strict", default=False, help="Treat warnings as errors.")
    max_errors: int = option("--max-errors", default=100, at_least=0, metavar="N",
                             help="List at most this many problems (all are counted).")
    prompts: bool = option("--prompts", default=False, help=PROMPTS_HELP)
    workers: int | None = option("--workers", default=None, at_least=1, metavar="N", help=(
        "Processes for JSON-lines files, at most one per core (default: one per core above 32 MB)."))
    trust_remote_code: bool = trust_remote_code_option()

    def check_values(self) -> None:
        super().check_values()
        if self.model is None and (self.max_length is not None or self.template is not None):
            raise UsageError("--max-length and --template only matter with --model (the tokenizer to count with)")


@dataclass
class SplitOptions(CommandOptions):
    COMMAND = "data split"

    files: list[Path] = option("FILE...", argument=True, metavar="FILE...", help="Data files to split.")
    test_size: int | float = option("--test-size", metavar="N|F", required=True, parse=as_test_size,
                                    help="Test records: a count (400) or a fraction (0.05).")
    output: Path = option("--output", "-o", metavar="DIR", required=True, complete=complete_directories,
                          help="Directory for train.jsonl, test.jsonl and split.json.")
    seed: int = option("--seed", default=DEFAULT_SEED, help="Seed of the deterministic selection (as upstream).")
    stratify: str | None = option("--stratify", default=None, choices=("domain",), help="Keep each domain's share in test.")
    dedupe: bool = option("--dedupe", default=False, help="Drop later copies of identical records.")
    prompts: bool = option("--prompts", default=False, help=PROMPTS_HELP)
    skip_invalid: bool = option("--skip-invalid", default=False, help="Leave invalid records out instead of refusing.")
    force: bool = force_option("Replace existing outputs.")
