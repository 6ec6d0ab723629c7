"""Loading models and tokenizers by local directory or hub id, with one-line errors."""

from __future__ import annotations

import contextlib
import json
import os
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from yayi_cli.atomic import atomic_directory
from yayi_cli.errors import UsageError
from yayi_cli.terminal import deepspeed_logs_to_stderr


def resolve_model_reference(model: str) -> str:
    """A local directory (with `~` expanded) or a hub id.

    Hub ids are `name` or `owner/name`; a missing path that cannot be a hub id is refused at
    once instead of being looked up on the hub.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"{model}: no config.json in this directory; give a saved model's directory or a hub id")
        return str(path)
    if path.exists():
        raise UsageError(f"{model}: is a file; give the model's directory")
    first_part = model.split("/", 1)[0]
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or (first_part != model and Path(first_part).is_dir()):
        raise UsageError(f"{model}: no such model directory")
    return model


class _DropRepeatedCastWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast" not in record.getMessage()


_DROP_CAST_WARNING = _DropRepeatedCastWarning()


def quiet_int8_warnings() -> None:
    """bitsandbytes logs on every int8 matmul that it casts inputs to float16: drop that line."""
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if _DROP_CAST_WARNING not in logger.filters:
        logger.addFilter(_DROP_CAST_WARNING)


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


_OS_MESSAGE = re.compile(r'message: "([^"]+)"')


@contextlib.contextmanager
def model_directory(path: Path, *, replace: bool = False) -> Iterator[Path]:
    """`atomic_directory` for saving a model: safetensors reports a full disk as its own error type,
    which becomes the same one line (path and cause) as any other failed write."""
    from safetensors import SafetensorError

    try:
        with atomic_directory(path, replace=replace) as tmp:
            yield tmp
    except SafetensorError as error:
        cause = _OS_MESSAGE.search(str(error))
        raise UsageError(f"cannot write {path}: {cause.group(1) if cause else first_line(error)}; "
                         "nothing was changed") from None


def load_tokenizer(model: str, *, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer via `AutoTokenizer`; remote code only when the user asks."""
    reference = resolve_model_reference(model)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(reference, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load a tokenizer from {model!r}: {first_line(error)}") from None


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length")
UNSET_MAX_LENGTH = 10**7
"""Tokenizers without a known limit report a huge `model_max_length`; anything above this is unset."""


def context_length(model: str, tokenizer: Any) -> int | None:
    """The model's context length: the tokenizer's limit, else the config's, else None."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < UNSET_MAX_LENGTH:
        return limit
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(resolve_model_reference(model))
    except (OSError, ValueError):
        return None
    return next((config[key] for key in CONTEXT_KEYS if isinstance(config.get(key), int)), None)


DTYPES = ("auto", "bf16", "fp16", "fp32")


def resolve_device(device: str) -> str:
    """`auto` -> the first GPU if there is one, else the CPU; `cuda[:N]` is checked to exist."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        number = device.partition(":")[2] or "0"
        if not number.isdigit():
            raise UsageError(f"--device {device!r}: use cuda or cuda:N with N a GPU number")
        index = int(number)
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) here")
    elif device != "cpu":
        raise UsageError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")
    return device


def best_precision(on_gpu: bool) -> str:
    """The precision to run in when none is asked for: bf16 on GPUs that have it, fp16 on older
    GPUs, fp32 on the CPU (training and inference alike)."""
    if not on_gpu:
        return "fp32"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def torch_dtype(precision: str) -> Any:
    """bf16 / fp16 / fp32 as a torch dtype."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def resolve_dtype(dtype: str, device: str) -> Any:
    """`--dtype`: `auto` follows `best_precision` for the device."""
    if dtype == "auto":
        dtype = best_precision(device.startswith("cuda"))
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return torch_dtype(dtype)


def is_quantized(reference: str) -> bool:
    """Whether a local checkpoint was saved quantized (by `yayi quantize`, for one)."""
    config = Path(reference) / "config.json"
    try:
        return "quantization_config" in json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def load_model(
    model: str, *, device: str = "auto", dtype: str = "auto", load_in_8bit: bool = False,
    trust_remote_code: bool = False,
) -> Any:
    """A causal LM in eval mode on `device`; int8 (LLM.int8, bitsandbytes) when asked.

    A checkpoint that `yayi quantize` wrote is int8 already and loads as it is.
    """
    reference = resolve_model_reference(model)
    device = resolve_device(device)
    if load_in_8bit or is_quantized(reference):
        deepspeed_logs_to_stderr()  # int8 loading goes through accelerate, which imports DeepSpeed when installed
    quiet_int8_warnings()  # also for checkpoints `yayi quantize` wrote
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":  # set by `quiet_libraries`; read by transformers
        from transformers.utils import logging as transformers_logging  # only when first imported, so say it again

        transformers_logging.disable_progress_bar()
    from transformers import AutoModelForCausalLM

    options: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": resolve_dtype(dtype, device)}
    if load_in_8bit:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UsageError("--load-in-8bit needs bitsandbytes: pip install 'yayi-cli[quant]'") from None
        from transformers import BitsAndBytesConfig

        options.update(quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map=device)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(reference, **options)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load a model from {model!r}: {first_line(error)}") from None
    if not load_in_8bit:
        loaded.to(device)
    return loaded.eval()
