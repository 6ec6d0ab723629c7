"""The k-quants (q4_k_m, q5_k_m, q6_k) made by llama.cpp's own quantizer, through llama-cpp-python.

These types choose a precision per tensor from llama.cpp's rules; only llama.cpp has them, so yayi
writes a 16-bit GGUF first and hands it to `llama_model_quantize`, which keeps every metadata key
(the tokenizer, the chat template, the stops).
"""

from __future__ import annotations

import os
from pathlib import Path

from yayi_cli.runtime.errors import UsageError
from yayi_cli.runtime.packages import require_packages


INSTALL_HINT = ("pip install llama-cpp-python (it compiles llama.cpp, a few minutes once), or choose a --type that "
                "yayi writes itself: f32, f16, bf16, q8_0")


def require_quantizer(file_type: str) -> None:
    require_packages(("llama_cpp",), f"--type {file_type}", INSTALL_HINT)


def quantize_gguf(source: Path, target: Path, file_type: str) -> None:
    """Quantize the GGUF file `source` into `target` as `file_type` (one of LLAMA_CPP_TYPES)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{file_type.upper()}")
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise UsageError(f"llama.cpp could not quantize {source} to {file_type} (run with -v to see its log)")
