"""`yayi quantize`: an int8 (LLM.int8) or NF4 checkpoint made with bitsandbytes, and a report on it.

The quantized model is saved (safetensors, config with the quantization settings, tokenizer with
the markers, generation config, template) so that `yayi chat`, `yayi eval` and a plain
`from_pretrained` load it directly. The report compares before and after in the same run:
size on disk, memory footprint, decode speed, and with check data the answer-only perplexity
(through `yayi eval`'s own code) and how many greedy tokens stay the same.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from yayi_cli.convert.options import QuantizeOptions
from yayi_cli.core.sampling import seeded_sample
from yayi_cli.runtime.atomic import refuse_existing, refuse_output_over
from yayi_cli.runtime.errors import DataError, UsageError


REPORT_FILE = "quantize.json"


@dataclass
class ModelMeasure:
    """One side of the comparison."""

    parameters: int
    footprint_bytes: int
    disk_bytes: int | None
    decode_tokens_per_s: float
    perplexity: float | None = None


@dataclass
class QuantizeReport:
    options: QuantizeOptions
    template: str
    before: ModelMeasure
    after: ModelMeasure
    seconds: float
    greedy_agreement: float | None
    check_records: int

    @property
    def perplexity_increase_percent(self) -> float | None:
        if self.before.perplexity is None or self.after.perplexity is None:
            return None
        return (self.after.perplexity / self.before.perplexity - 1) * 100

    def to_json(self) -> dict[str, Any]:
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.options).items()}
        options["check_data"] = [str(p) for p in self.options.check_data]
        return {
            "model": self.options.model,
            "output": str(self.options.output),
            "method": "LLM.int8" if self.options.bits == 8 else "NF4",
            "template": self.template,
            "before": asdict(self.before),
            "after": asdict(self.after),
            "footprint_ratio": self.after.footprint_bytes / self.before.footprint_bytes,
            "disk_ratio": self.after.disk_bytes / self.before.disk_bytes if self.before.disk_bytes and self.after.disk_bytes else None,
            "decode_speed_ratio": self.after.decode_tokens_per_s / self.before.decode_tokens_per_s,
            "perplexity_increase_percent": self.perplexity_increase_percent,
            "greedy_agreement": self.greedy_agreement,
            "check_records": self.check_records,
            "seconds": self.seconds,
            "options": options,
        }


def weights_size(directory: Path) -> int | None:
    """Bytes of the weight files of a local checkpoint (None for a hub id)."""
    from yayi_cli.runtime.hub import WEIGHT_SUFFIXES

    if not Path(directory).is_dir():
        return None
    return sum(p.stat().st_size for p in Path(directory).iterdir() if p.suffix in WEIGHT_SUFFIXES)


def quantization_config(options: QuantizeOptions) -> Any:
    """LLM.int8 with --threshold, or NF4 computing in bf16 (no double quantization); both skip --skip-modules."""
    import torch
    from transformers import BitsAndBytesConfig

    from yayi_cli.models.weights import nf4_config

    if options.bits == 8:
        return BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_threshold=options.threshold, llm_int8_skip_modules=list(options.skip_modules)
        )
    return nf4_config(torch.bfloat16, double_quant=False, skip_modules=options.skip_modules)


def _check_memory(options: QuantizeOptions, reference: str, device: str) -> None:
    """Refuse before loading when the original and the quantized copy cannot both fit; `reference` is
    the full model that is quantized (for an adapter the merged one, not the adapter's own small files)."""
    size = weights_size(Path(reference))
    if size is None:
        return
    needed = size * 2
    if device.startswith("cuda"):
        import torch

        free = torch.cuda.mem_get_info(torch.device(device))[0]
        where = f"free on {device}"
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        where = "of free memory"
    if needed > free:
        raise UsageError(
            f"quantizing {options.model} needs about {needed / 2**30:.1f} GiB (the original and the quantized "
            f"copy), but only {free / 2**30:.1f} GiB {where}; free memory or use another --device"
        )


def decode_speed(model: Any, prompt_ids: list[int], tokens: int) -> float:
    """Tokens/s of greedy decoding at batch 1, exactly `tokens` new tokens."""
    import torch

    ids = torch.tensor([prompt_ids], device=next(model.parameters()).device)
    with torch.inference_mode():
        model.generate(input_ids=ids, max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm-up
        start = time.perf_counter()
        model.generate(input_ids=ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return tokens / (time.perf_counter() - start)


def greedy_tokens(model: Any, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    import torch

    device = next(model.parameters()).device
    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            output = model.generate(input_ids=torch.tensor([prompt], device=device), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            outputs.append(output[0, len(prompt):].tolist())
    return outputs


def agreement(before: list[list[int]], after: list[list[int]]) -> float:
    """Share of positions where both models chose the same greedy token."""
    pairs = [(a, b) for first, second in zip(before, after) for a, b in zip(first, second)]
    return sum(a == b for a, b in pairs) / max(len(pairs), 1)


def _measure(model: Any, parameters: int, disk: int | None, probe: list[int], options: QuantizeOptions) -> ModelMeasure:
    return ModelMeasure(parameters, model.get_memory_footprint(), disk, decode_speed(model, probe, options.decode_tokens))


def quantize(options: QuantizeOptions, reference: str | None = None) -> QuantizeReport:
    """Quantize, compare with the original in the same run, and save everything into `output`.

    The "after" side is the written checkpoint loaded back as `yayi eval` loads it, not the model in
    memory: on CPUs with AVX512-BF16, bitsandbytes repacks NF4 weights for its kernel on the first
    forward pass (scales rounded to bf16) and unpacks them on save, so the two can differ.
    Nothing is written when the perplexity gate fails or anything else goes wrong. An adapter is first
    merged into its base in a temporary directory (`reference`), and that full model is quantized.
    """
    from yayi_cli.core.prompt import save_model_format
    from yayi_cli.core.record_files import load_records
    from yayi_cli.models.inference import response_loss, split_last_answer
    from yayi_cli.models.loading import load_for_task
    from yayi_cli.models.reference import resolve_model, resolve_model_reference
    from yayi_cli.models.weights import load_model, model_directory, resolve_device
    from yayi_cli.runtime.packages import require_package

    options.check()
    source = resolve_model(options.model, options.base)
    for path, flag in ((options.model, "--model"), (source.base, "its base")):
        refuse_output_over(options.output, path, flag)
    refuse_existing(options.output, options.force)
    require_package("bitsandbytes", "quantizing", extra="quant")
    if reference is None and source.adapter:
        from yayi_cli.convert.merge import merged_adapter

        with merged_adapter(options.model, options.base, near=options.output,
                            trust_remote_code=options.trust_remote_code) as merged:
            return quantize(options, str(merged))
    reference = reference or resolve_model_reference(options.model)
    device = resolve_device(options.device)
    _check_memory(options, reference, device)
    started = time.perf_counter()
    loaded = load_for_task(reference, trust_remote_code=options.trust_remote_code, model_weights=False)
    template, tokenizer, prompt_tokenizer = loaded.template, loaded.tokenizer, loaded.prompt_tokenizer
    examples = seeded_sample(load_records(options.check_data), options.max_check_samples, seed=0) if options.check_data else []
    prompts = [prompt_tokenizer.encode_inference(split_last_answer(e.conversation)[0]) for e in examples[:4]]
    probe = prompts[0] if prompts else tokenizer("你好，请介绍一下你自己。")["input_ids"]

    original = load_model(reference, device=device, trust_remote_code=options.trust_remote_code)
    parameters = original.num_parameters()  # 4-bit storage packs two to a byte: count them before
    before = _measure(original, parameters, weights_size(Path(reference)), probe, options)
    greedy_before = greedy_tokens(original, prompts, 16)
    if examples:
        before.perplexity = response_loss(original, prompt_tokenizer, examples).overall.perplexity
    del original

    quantized = load_quantized(reference, options, device)
    with model_directory(options.output, replace=options.force) as tmp:
        quantized.save_pretrained(tmp)
        save_model_format(tmp, tokenizer, template)
        del quantized  # the report measures the checkpoint as written and reloaded: what users get
        written = load_model(str(tmp), device=device, trust_remote_code=options.trust_remote_code)
        after = _measure(written, parameters, weights_size(tmp), probe, options)
        greedy_after = greedy_tokens(written, prompts, 16)
        if examples:
            after.perplexity = response_loss(written, prompt_tokenizer, examples).overall.perplexity
        report = QuantizeReport(
            options, template.name, before, after, 0.0,
            agreement(greedy_before, greedy_after) if prompts else None, len(examples),
        )
        _check_gate(report, options)  # raising here leaves nothing behind
        report.seconds = time.perf_counter() - started
        (tmp / REPORT_FILE).write_text(json.dumps(report.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return report


def load_quantized(reference: str, options: QuantizeOptions, device: str) -> Any:
    """The model quantized while it loads, in the precision it was saved in (its unquantized layers too)."""
    from yayi_cli.models.weights import load_model, saved_precision

    try:
        return load_model(reference, device=device, dtype=saved_precision(reference),
                          quantization=quantization_config(options), trust_remote_code=options.trust_remote_code)
    except (RuntimeError, NotImplementedError) as error:  # what bitsandbytes raises for a layer it cannot convert
        raise UsageError(f"bitsandbytes cannot quantize {options.model}: {str(error).splitlines()[0]}") from None


def _check_gate(report: QuantizeReport, options: QuantizeOptions) -> None:
    """--max-ppl-increase: a DataError when the perplexity rose too much or cannot be measured."""
    increase = report.perplexity_increase_percent
    if options.max_ppl_increase is None:
        return
    if increase is None:
        raise DataError(
            "--max-ppl-increase: perplexity is undefined (no --check-data, or no answer token left in it within the "
            "model's context), so the gate cannot pass; nothing was written"
        )
    if increase > options.max_ppl_increase:
        raise DataError(
            f"perplexity rose {increase:.2f}% ({report.before.perplexity:.4g} -> {report.after.perplexity:.4g}), more "
            f"than --max-ppl-increase {options.max_ppl_increase:g}%; nothing was written"
        )


def print_report(report: QuantizeReport, console: Any) -> None:
    from rich.table import Table

    document = report.to_json()
    table = Table(title=f"{document['method']}: {report.options.model} -> {report.options.output}", title_justify="left")
    for column in ("", "before", "after", "after/before"):
        table.add_column(column, justify="right" if column else "left")

    def row(name: str, before: float | None, after: float | None) -> None:
        ratio = f"{after / before:.3f}x" if before and after is not None else ""
        table.add_row(name, *("" if value is None else f"{value:,.2f}" for value in (before, after)), ratio)

    row("parameters (millions)", report.before.parameters / 1e6, report.after.parameters / 1e6)
    row("memory footprint (MiB)", report.before.footprint_bytes / 2**20, report.after.footprint_bytes / 2**20)
    disk = (report.before.disk_bytes, report.after.disk_bytes)
    row("weights on disk (MiB)", disk[0] / 2**20 if disk[0] else None, disk[1] / 2**20 if disk[1] else None)
    row("decode tokens/s (batch 1)", report.before.decode_tokens_per_s, report.after.decode_tokens_per_s)
    row("answer perplexity", report.before.perplexity, report.after.perplexity)
    console.print(table)
    if report.greedy_agreement is not None:
        console.print(f"greedy tokens unchanged: {report.greedy_agreement:.1%} (16 tokens on {min(report.check_records, 4)} prompts)")
    console.print(
        "[yellow]note:[/] bitsandbytes int8 and NF4 decode several times slower than bf16 at batch 1; "
        "quantize to fit a smaller GPU, not to go faster.", highlight=False,
    )
    console.print(f"[dim]took {report.seconds:.1f} s; report in {report.options.output / REPORT_FILE}[/]", highlight=False)

