"""`yayi merge`: fold a LoRA adapter into its base and save a plain Hugging Face model.

The result needs no peft: weights, config, generation config, the tokenizer with the markers and the
template, like any checkpoint `yayi train` writes. An adapter trained on a 4-bit (QLoRA) base is merged
into the 16-bit base, the usual QLoRA practice: merging into 4-bit weights would round the update away.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yayi_cli.atomic import refuse_output_over
from yayi_cli.errors import UsageError
from yayi_cli.models import ADAPTER_CONFIG_FILE, ModelSource, model_directory, resolve_model
from yayi_cli.options import MergeOptions

DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
SUMMARY_FILE = "train_summary.json"  # written by the training worker beside the adapter


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


def saved_dtype(reference: str) -> str:
    """The dtype a checkpoint (directory or hub id) was saved in, as bf16/fp16/fp32 (fp32 when it does not say).

    Read through transformers' own file lookup, so a hub id resolves to the same config (the HF cache
    offline) that loading the base will use."""
    from transformers.utils import CONFIG_NAME, cached_file

    try:
        config = json.loads(Path(cached_file(reference, CONFIG_NAME)).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no config to read: loading the base reports that, in one line
        return "fp32"
    return DTYPE_NAMES.get(str(config.get("dtype") or config.get("torch_dtype")), "fp32")


def trained_method(adapter: str) -> str | None:
    """"lora" or "qlora", from the training summary beside the adapter (None when there is none)."""
    try:
        return json.loads((Path(adapter) / SUMMARY_FILE).read_text(encoding="utf-8")).get("adapter")
    except (OSError, ValueError, AttributeError):
        return None


def resolve_adapter(options: MergeOptions) -> ModelSource:
    if not (Path(options.adapter).expanduser() / ADAPTER_CONFIG_FILE).is_file():
        raise UsageError(f"{options.adapter}: not an adapter directory (no {ADAPTER_CONFIG_FILE}); "
                         "yayi merge takes what yayi train --lora or --qlora wrote")
    return resolve_model(options.adapter, options.base)


def write_merged(options: MergeOptions, directory: Path) -> MergeReport:
    """Load base + adapter, merge, and save the plain model, tokenizer and template into `directory`."""
    from yayi_cli.models import load_model, load_tokenizer
    from yayi_cli.prompt import resolve_template, save_model_format

    started = time.perf_counter()
    source = resolve_adapter(options)
    dtype = saved_dtype(source.base) if options.dtype == "auto" else options.dtype
    notes = []
    if trained_method(options.adapter) == "qlora":
        notes.append("the adapter was trained on the 4-bit NF4 base; it is merged into the 16-bit base (the usual "
                     "QLoRA practice), so answers can differ slightly from the 4-bit model's")
    model = load_model(options.adapter, device="cpu", dtype=dtype, base=options.base,
                       trust_remote_code=options.trust_remote_code)
    merged = model.merge_and_unload()
    template, _ = resolve_template(None, options.adapter)
    merged.save_pretrained(directory)
    tokenizer = load_tokenizer(options.adapter, base=options.base, trust_remote_code=options.trust_remote_code)
    save_model_format(directory, tokenizer, template)
    return MergeReport(options, source.base, dtype, merged.num_parameters(), time.perf_counter() - started, notes)


def merge(options: MergeOptions) -> MergeReport:
    """`yayi merge`: the merged model appears in `output` whole, or nothing is written."""
    output = Path(options.output)
    source = resolve_adapter(options)  # refused before anything is written
    refuse_output_over(output, options.adapter, "the adapter")
    refuse_output_over(output, source.base, "its base")
    if output.exists() and not options.force:
        raise UsageError(f"{output} already exists; use --force to replace it")
    with model_directory(output, replace=options.force) as tmp:
        return write_merged(options, tmp)


@contextlib.contextmanager
def merged_adapter(adapter: str, base: str | None, *, near: Path, trust_remote_code: bool = False) -> Iterator[Path]:
    """The adapter merged into a temporary checkpoint beside `near` (for commands that need a full model
    on disk, such as quantize), removed afterwards."""
    Path(near).parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=Path(near).parent, prefix=f".{Path(near).name}.merge-"))
    try:
        write_merged(MergeOptions(adapter, work, base=base, trust_remote_code=trust_remote_code), work)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_report(report: MergeReport, console: Any) -> None:
    from rich.markup import escape

    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    console.print(f"merged {escape(report.options.adapter)} into {escape(report.base)} -> "
                  f"{escape(str(report.options.output))} ({report.dtype}, {report.parameters:,} parameters, "
                  f"{report.seconds:.1f} s); a plain model: yayi chat --model {escape(str(report.options.output))}",
                  highlight=False, soft_wrap=True)
