"""The tensors of a saved checkpoint, one at a time, so exporting a 13B model never holds all of it.

safetensors files (one or sharded) are opened lazily; older `pytorch_model*.bin` files (as yayi-7b
ships) are memory-mapped. Tied output weights are not stored, and llama.cpp reuses the embedding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli.runtime.errors import UsageError


@dataclass(frozen=True)
class StoredTensor:
    name: str
    shape: tuple[int, ...]
    file: Path


def _weight_files(directory: Path) -> list[Path]:
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(directory.glob(pattern))
        if files:
            return files
    raise UsageError(f"{directory}: no weights (*.safetensors or pytorch_model*.bin) in this directory")


class Checkpoint:
    """The weight files of one model directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.files = _weight_files(self.directory)
        self._open: dict[Path, Any] = {}

    def _handle(self, file: Path) -> Any:
        """An open safetensors file, or a .bin file's tensors memory-mapped."""
        if file not in self._open:
            try:
                if file.suffix == ".safetensors":
                    from safetensors import safe_open

                    self._open[file] = safe_open(str(file), framework="pt")
                else:
                    import torch

                    self._open[file] = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            except Exception as error:  # a truncated or foreign file: safetensors and torch raise many kinds
                raise UsageError(f"{file}: cannot read the weights ({str(error).splitlines()[0]})") from None
        return self._open[file]

    def tensors(self) -> Iterator[StoredTensor]:
        """Every stored tensor's name and shape, without reading its data."""
        for file in self.files:
            handle = self._handle(file)
            if file.suffix == ".safetensors":
                for name in handle.keys():
                    yield StoredTensor(name, tuple(handle.get_slice(name).get_shape()), file)
            else:
                for name, tensor in handle.items():
                    yield StoredTensor(name, tuple(tensor.shape), file)

    def read(self, stored: StoredTensor) -> Any:
        """The tensor's data as float32 (what the gguf package quantizes from)."""
        import torch

        handle = self._handle(stored.file)
        tensor = handle.get_tensor(stored.name) if stored.file.suffix == ".safetensors" else handle[stored.name]
        return tensor.to(torch.float32)
