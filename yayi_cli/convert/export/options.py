"""What `yayi export gguf` and `yayi export ollama` are asked to do, declared once (see options/fields.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from yayi_cli.options.fields import CommandOptions, complete_directories, option
from yayi_cli.options.shared import base_option, force_option, model_option


WRITTEN_TYPES = ("f32", "f16", "bf16", "q8_0")
"""Tensor types the gguf package writes itself."""
LLAMA_CPP_TYPES = ("q4_k_m", "q5_k_m", "q6_k")
"""Tensor types only llama.cpp's quantizer makes (through llama-cpp-python)."""
TYPE_HELP = ("Tensor type of the weights: f32, f16, bf16 and q8_0 are written directly; q4_k_m, q5_k_m and q6_k "
             "go through llama.cpp's quantizer (needs llama-cpp-python). Norms and biases stay f32.")


def type_option() -> object:
    return option("--type", default="f16", choices=WRITTEN_TYPES + LLAMA_CPP_TYPES, help=TYPE_HELP)


@dataclass
class GgufOptions(CommandOptions):
    """Everything `yayi export gguf` is asked to do."""

    COMMAND = "export gguf"

    model: str = model_option("Model to export: a BLOOM or Llama checkpoint, or a LoRA adapter directory on one.")
    output: Path = option("--output", "-o", metavar="FILE", required=True, help="The GGUF file to write.")
    type: str = type_option()
    force: bool = force_option("Replace an existing file (only once the new one is complete).")
    base: str | None = base_option()


@dataclass
class OllamaOptions(CommandOptions):
    """Everything `yayi export ollama` is asked to do."""

    COMMAND = "export ollama"

    model: str = model_option("Model to export: a BLOOM or Llama checkpoint, or a LoRA adapter directory on one.")
    output: Path = option("--output", "-o", metavar="DIR", required=True, complete=complete_directories,
                          help="Directory for model.gguf and the Modelfile.")
    type: str = type_option()
    force: bool = force_option("Replace an existing directory (only once the new one is complete).")
    base: str | None = base_option()
