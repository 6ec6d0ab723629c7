"""`yayi merge`: fold a LoRA adapter into its base and save a plain Hugging Face model.

The result needs no peft: weights, config, generation config, the tokenizer with the markers and the
template, like any checkpoint `yayi train` writes. An adapter trained on a 4-bit (QLoRA) base is merged
into the 16-bit base, the usual QLoRA practice: merging into 4-bit weights would round the update away.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yayi_cli.convert.options import MergeOptions
from yayi_cli.models.reference import ADAPTER_CONFIG_FILE, ModelSource, resolve_model
from yayi_cli.models.run_files import SUMMARY_FILE
from yayi_cli.models.weights import model_directory
from yayi_cli.runtime.atomic import refuse_existing, refuse_output_over, scratch_folder
from yayi_cli.runtime.errors import UsageError
from yayi_cli.runtime.hub import model_json


@dataclass
class MergeReport:
    options: MergeOptions
    base: str
    dtype: str
    parameters: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"adapter": self.options.adapter, "base": self.base, "output": str(self.options.output),
                "dtype": self.dtype, "parameters": self.parameters, "seconds": round(self.seconds, 2),
                "notes": self.notes}


def trained_method(adapter: str) -> str | None:
    """"lora" or "qlora", from the training summary beside the adapter (None when there is none)."""
    return model_json(adapter, SUMMARY_FILE).get("adapter")


def resolve_adapter(options: MergeOptions) -> ModelSource:
    if not (Path(options.adapter).expanduser() / ADAPTER_CONFIG_FILE).is_file():
        raise UsageError(f"{options.adapter}: not an adapter directory (no {ADAPTER_CONFIG_FILE}); "
                         "yayi merge takes what yayi train --lora or --qlora wrote")
    return resolve_model(options.adapter, options.base)


def write_merged(options: MergeOptions, directory: Path) -> MergeReport:
    """Load base + adapter, merge, and save the plain model, tokenizer and template into `directory`."""
    from yayi_cli.core.prompt import save_model_format
    from yayi_cli.models.loading import load_for_task
    from yayi_cli.models.weights import saved_precision

    started = time.perf_counter()
    source = resolve_adapter(options)
    dtype = saved_precision(source.base) if options.dtype == "auto" else options.dtype
    notes = []
    if trained_method(options.adapter) == "qlora":
        notes.append("the adapter was trained on the 4-bit NF4 base; it is merged into the 16-bit base (the usual "
                     "QLoRA practice), so answers can differ slightly from the 4-bit model's")
    loaded = load_for_task(options.adapter, base=options.base, trust_remote_code=options.trust_remote_code,
                           device="cpu", dtype=dtype)
    merged = loaded.model.merge_and_unload()
    merged.save_pretrained(directory)
    save_model_format(directory, loaded.tokenizer, loaded.template)
    return MergeReport(options, source.base, dtype, merged.num_parameters(), time.perf_counter() - started, notes)


def merge(options: MergeOptions) -> MergeReport:
    """`yayi merge`: the merged model appears in `output` whole, or nothing is written."""
    options.check()
    output = Path(options.output)
    source = resolve_adapter(options)  # refused before anything is written
    refuse_output_over(output, options.adapter, "the adapter")
    refuse_output_over(output, source.base, "its base")
    refuse_existing(output, options.force)
    with model_directory(output, replace=options.force) as tmp:
        return write_merged(options, tmp)


@contextlib.contextmanager
def merged_adapter(adapter: str, base: str | None, *, near: Path, trust_remote_code: bool = False) -> Iterator[Path]:
    """The adapter merged into a temporary checkpoint beside `near` (for commands that need a full model
    on disk, such as quantize), removed afterwards."""
    with scratch_folder(near, ".merge") as work:
        write_merged(MergeOptions(adapter, work, base=base, trust_remote_code=trust_remote_code), work)
        yield work


def print_report(report: MergeReport, console: Any) -> None:
    from rich.markup import escape

    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    console.print(f"merged {escape(report.options.adapter)} into {escape(report.base)} -> "
                  f"{escape(str(report.options.output))} ({report.dtype}, {report.parameters:,} parameters, "
                  f"{report.seconds:.1f} s); a plain model: yayi chat --model {escape(str(report.options.output))}",
                  highlight=False, soft_wrap=True)
