"""Writing one GGUF file with the gguf package, a tensor at a time.

The plan (every tensor's GGUF name, type and size) is made from the checkpoint's shapes alone; the
header, metadata and tensor table are written from it, then each tensor is read, reordered for
llama.cpp, converted and appended, so memory holds one tensor, not the model. Tensor types follow
llama.cpp's converter: norms and other one-dimensional tensors stay f32, the rest take the asked type,
and a q8_0 tensor whose rows are not a multiple of 32 falls back to f16.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli.convert.export.checkpoint import Checkpoint, StoredTensor
from yayi_cli.convert.export.layouts import SKIPPED_SUFFIXES, Layout, gguf_name
from yayi_cli.convert.export.vocab import GgufVocab, add_vocab
from yayi_cli.core.prompt import Template


FILE_TYPES = {"f32": ("ALL_F32", "F32"), "f16": ("MOSTLY_F16", "F16"), "bf16": ("MOSTLY_BF16", "BF16"),
              "q8_0": ("MOSTLY_Q8_0", "Q8_0")}
"""--type -> (gguf.LlamaFileType member, gguf.GGMLQuantizationType member of the large tensors)."""


@dataclass(frozen=True)
class PlannedTensor:
    stored: StoredTensor
    name: str
    qtype: Any
    """gguf.GGMLQuantizationType."""

    @property
    def nbytes(self) -> int:
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        count = 1
        for dimension in self.stored.shape:
            count *= dimension
        return count // block * size


@dataclass(frozen=True)
class ModelFile:
    """Everything that goes into one GGUF file."""

    name: str
    layout: Layout
    config: dict[str, Any]
    context_length: int
    vocab: GgufVocab
    template: Template
    file_type: str
    """One of FILE_TYPES."""


def tensor_type(name: str, shape: tuple[int, ...], file_type: str) -> Any:
    import gguf

    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    qtype = gguf.GGMLQuantizationType[FILE_TYPES[file_type][1]]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def plan_tensors(checkpoint: Checkpoint, model: ModelFile) -> list[PlannedTensor]:
    import gguf

    arch = gguf.MODEL_ARCH[model.layout.gguf_arch]
    blocks = model.config.get("num_hidden_layers") or model.config.get("n_layer")
    name_map = gguf.get_tensor_name_map(arch, blocks)
    planned = []
    for stored in checkpoint.tensors():
        if stored.name.endswith(SKIPPED_SUFFIXES):
            continue
        name = gguf_name(name_map, model.layout, stored.name, model.name)
        planned.append(PlannedTensor(stored, name, tensor_type(name, stored.shape, model.file_type)))
    return planned


def _add_metadata(writer: Any, model: ModelFile) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(model.name)
    model.layout.add_hyperparameters(writer, model.config, model.context_length)
    writer.add_file_type(gguf.LlamaFileType[FILE_TYPES[model.file_type][0]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(writer, model.vocab, model.template)


def tensor_data(checkpoint: Checkpoint, tensor: PlannedTensor, model: ModelFile) -> Any:
    """One tensor as it is stored in the file: reordered for llama.cpp, then converted by the gguf package."""
    import gguf

    data = model.layout.reorder(tensor.stored.name, checkpoint.read(tensor.stored), model.config).numpy()
    return gguf.quants.quantize(data, tensor.qtype)


def write_gguf(path: Path, checkpoint: Checkpoint, model: ModelFile, planned: list[PlannedTensor],
               advance: Callable[[int], None]) -> None:
    """Write the whole file at `path`; `advance(bytes)` is called after each tensor."""
    import gguf
    import numpy

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[model.layout.gguf_arch]])
    try:
        _add_metadata(writer, model)
        for tensor in planned:
            writer.add_tensor_info(tensor.name, tensor.stored.shape, numpy.dtype(numpy.float32), tensor.nbytes,
                                   raw_dtype=tensor.qtype)
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in planned:
            _write_tensor(writer, tensor_data(checkpoint, tensor, model), path)
            advance(tensor.nbytes)
    finally:
        writer.close()


def _write_tensor(writer: Any, data: Any, path: Path) -> None:
    """numpy reports a short write without its cause; on a disk with no room left, that cause is named."""
    try:
        writer.write_tensor_data(data)
    except OSError as error:
        if error.errno is None and shutil.disk_usage(path.parent).free < data.nbytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
        raise
