"""`yayi export gguf` and `yayi export ollama`: check, resolve the model, write all or nothing, report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli.convert.export.options import LLAMA_CPP_TYPES, GgufOptions, OllamaOptions
from yayi_cli.models.reference import ModelSource, resolve_model
from yayi_cli.runtime.atomic import refuse_existing, scratch_folder
from yayi_cli.runtime.errors import UsageError
from yayi_cli.runtime.hub import download_snapshot
from yayi_cli.runtime.packages import require_package


@dataclass
class ExportReport:
    model: str
    output: Path
    """The GGUF file."""
    file_type: str
    architecture: str
    template: str
    tensors: int
    size_bytes: int
    seconds: float
    modelfile: Path | None = None

    def to_json(self) -> dict[str, Any]:
        document = {"model": self.model, "output": str(self.output), "type": self.file_type,
                    "architecture": self.architecture, "template": self.template, "tensors": self.tensors,
                    "size_bytes": self.size_bytes, "seconds": round(self.seconds, 3)}
        if self.modelfile is not None:
            document["modelfile"] = str(self.modelfile)
        return document


def _refuse_unexportable(source: ModelSource, model: str) -> dict[str, Any]:
    """The base's config, once it is known to be a BLOOM or Llama in full precision."""
    from yayi_cli.convert.export.layouts import layout_for
    from yayi_cli.runtime.hub import model_json

    config = model_json(source.base)
    if "quantization_config" in config:
        method = config["quantization_config"].get("quant_method", "bitsandbytes")
        raise UsageError(f"{model}: is a {method} quantized checkpoint, which llama.cpp cannot read; export from the "
                         "16-bit model, then quantize to GGUF types (--type q8_0, q4_k_m, q5_k_m or q6_k)")
    layout_for(config, model)
    return config


def _local(reference: str) -> Path:
    """A hub id's files in the local cache (downloaded when missing); a directory as it is."""
    return Path(reference) if Path(reference).is_dir() else download_snapshot(reference)


@contextlib.contextmanager
def model_on_disk(options: GgufOptions | OllamaOptions, near: Path) -> Iterator[Path]:
    """The directory to read: the model's own, or for an adapter its merge into the base, made in a
    temporary directory beside the output and removed afterwards (nothing is written beside the adapter)."""
    source = resolve_model(options.model, options.base)
    if source.adapter is None:
        yield _local(source.base)
        return
    from yayi_cli.convert.merge import merged_adapter

    with merged_adapter(options.model, options.base, near=near) as merged:
        yield merged


def write_model_file(directory: Path, path: Path, file_type: str, name: str) -> tuple[str, str, int]:
    """Write `directory`'s model as the GGUF file `path`; returns (architecture, template name, tensors)."""
    from yayi_cli.convert.export.checkpoint import Checkpoint
    from yayi_cli.convert.export.gguf_file import ModelFile, plan_tensors, write_gguf
    from yayi_cli.convert.export.layouts import layout_for
    from yayi_cli.convert.export.vocab import read_vocab
    from yayi_cli.models.loading import load_for_task
    from yayi_cli.models.tokenizers import context_length
    from yayi_cli.models.weights import saved_precision
    from yayi_cli.runtime.hub import model_json
    from yayi_cli.runtime.terminal import byte_progress

    config = model_json(directory)
    layout = layout_for(config, str(directory))
    loaded = load_for_task(str(directory), model_weights=False)  # refuses a tokenizer without the markers
    template, tokenizer = loaded.template, loaded.tokenizer
    written_type = file_type
    if file_type in LLAMA_CPP_TYPES:  # llama.cpp quantizes from a lossless-enough 16-bit file
        written_type = "bf16" if saved_precision(directory) == "bf16" else "f16"
    vocab = read_vocab(directory, tokenizer, template, config["vocab_size"])
    model = ModelFile(name, layout, config, context_length(str(directory), tokenizer) or 2048, vocab, template,
                      written_type)
    checkpoint = Checkpoint(directory)
    planned = plan_tensors(checkpoint, model)
    if written_type == file_type:
        with byte_progress(f"writing {path.name}", sum(t.nbytes for t in planned)) as advance:
            write_gguf(path, checkpoint, model, planned, advance)
    else:
        from yayi_cli.convert.export.llama_quantizer import quantize_gguf

        with scratch_folder(path, ".16bit") as work:
            with byte_progress(f"writing {written_type} for llama.cpp", sum(t.nbytes for t in planned)) as advance:
                write_gguf(work / "model.gguf", checkpoint, model, planned, advance)
            quantize_gguf(work / "model.gguf", path, file_type)
    return layout.gguf_arch.lower(), template.name, len(planned)


def _prepare(options: GgufOptions | OllamaOptions) -> None:
    """Refusals that need nothing loaded, before anything is read or written."""
    options.check()
    require_package("gguf", "yayi export", extra="export")
    if options.type in LLAMA_CPP_TYPES:
        from yayi_cli.convert.export.llama_quantizer import require_quantizer

        require_quantizer(options.type)
    _refuse_unexportable(resolve_model(options.model, options.base), options.model)


def export_gguf(options: GgufOptions) -> ExportReport:
    """`yayi export gguf`: the file appears complete at --output, or nothing is written."""
    from yayi_cli.runtime.atomic import atomic_path

    _prepare(options)
    output = Path(options.output)
    refuse_existing(output, options.force)
    started = time.perf_counter()
    with model_on_disk(options, near=output) as directory, atomic_path(output, replace=options.force) as tmp:
        arch, template, tensors = write_model_file(directory, tmp, options.type, output.stem)
    return ExportReport(options.model, output, options.type, arch, template, tensors, output.stat().st_size,
                        time.perf_counter() - started)


def export_ollama(options: OllamaOptions) -> ExportReport:
    """`yayi export ollama`: DIR with model.gguf and a Modelfile, complete or not at all."""
    from yayi_cli.convert.export.ollama import GGUF_NAME, MODELFILE, modelfile
    from yayi_cli.core.prompt import resolve_template
    from yayi_cli.runtime.atomic import atomic_directory, refuse_output_over

    _prepare(options)
    output = Path(options.output)
    source = resolve_model(options.model, options.base)
    for path, flag in ((options.model, "--model"), (source.base, "its base")):
        refuse_output_over(output, path, flag)
    refuse_existing(output, options.force)
    started = time.perf_counter()
    with model_on_disk(options, near=output) as directory, atomic_directory(output, replace=options.force) as tmp:
        arch, template, tensors = write_model_file(directory, tmp / GGUF_NAME, options.type, output.name)
        (tmp / MODELFILE).write_text(modelfile(resolve_template(None, str(directory))[0]), encoding="utf-8")
    return ExportReport(options.model, output / GGUF_NAME, options.type, arch, template, tensors,
                        (output / GGUF_NAME).stat().st_size, time.perf_counter() - started, output / MODELFILE)


def print_report(report: ExportReport, console: Any) -> None:
    from rich.markup import escape

    from yayi_cli.convert.export.ollama import model_name

    console.print(f"wrote {escape(str(report.output))}: {report.architecture}, {report.file_type}, "
                  f"{report.size_bytes / 2**20:,.1f} MiB, {report.tensors} tensors, template {report.template}, "
                  f"{report.seconds:.1f} s", highlight=False, soft_wrap=True)
    if report.modelfile is not None:
        console.print(f"run it: ollama create {model_name(report.modelfile.parent.name)} -f "
                      f"{escape(str(report.modelfile))}", highlight=False, soft_wrap=True)
    else:
        console.print(f"run it: llama-cli -m {escape(str(report.output))} -cnv   (or load it in LM Studio, "
                      "llama-cpp-python, or yayi export ollama for Ollama)", highlight=False, soft_wrap=True)
