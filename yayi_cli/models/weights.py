"""Models at a device and precision: loading (int8 / NF4, adapters on top), embeddings that fit the
tokenizer, saving a model folder all at once."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from yayi_cli.models.reference import ModelSource, loading_errors, resolve_model
from yayi_cli.models.tokenizers import load_tokenizer
from yayi_cli.runtime.atomic import atomic_directory
from yayi_cli.runtime.errors import UsageError, first_line
from yayi_cli.runtime.hub import model_json
from yayi_cli.runtime.packages import require_package
from yayi_cli.runtime.terminal import deepspeed_logs_to_stderr


def fit_embeddings(model: Any, vocabulary: int, *, mean_resizing: bool = True) -> None:
    """Grow the embeddings to a tokenizer that has more tokens (the markers added); never shrink them.

    New rows start near the old rows' mean for training; an adapter that is loaded replaces them anyway.
    """
    if vocabulary > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocabulary, mean_resizing=mean_resizing)


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """PEFT asks transformers 5.2x a deprecated question on every wrap; keep that warning off the console."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def attach_saved_adapter(model: Any, source: ModelSource, *, trust_remote_code: bool = False, trainable: bool = False) -> Any:
    """The loaded base with the adapter on top (PEFT), after making room for the tokens it was trained with;
    `trainable`: to train on from its weights (the files stay as they are)."""
    deepspeed_logs_to_stderr()  # peft imports DeepSpeed when it is installed
    require_package("peft", f"{source.adapter} is a LoRA adapter; loading it", extra="lora")
    from peft import PeftModel

    if source.tokenizer == source.adapter:
        tokenizer = load_tokenizer(source.adapter, trust_remote_code=trust_remote_code, base=source.base)
        fit_embeddings(model, len(tokenizer), mean_resizing=False)  # the adapter's token rows replace them
    try:
        with peft_quietly():
            return PeftModel.from_pretrained(model, source.adapter, is_trainable=trainable)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise UsageError(f"cannot load the adapter {source.adapter} onto {source.base}: {first_line(error)}") from None


class _DropRepeatedCastWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast" not in record.getMessage()


_DROP_CAST_WARNING = _DropRepeatedCastWarning()


def quiet_int8_warnings() -> None:
    """bitsandbytes logs on every int8 matmul that it casts inputs to float16: drop that line."""
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if _DROP_CAST_WARNING not in logger.filters:
        logger.addFilter(_DROP_CAST_WARNING)


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


def is_quantized(reference: str | Path) -> bool:
    """Whether a checkpoint was saved quantized (by `yayi quantize`, for one)."""
    return "quantization_config" in model_json(reference)


PRECISION_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def saved_precision(reference: str | Path) -> str:
    """The precision a checkpoint was saved in, as bf16/fp16/fp32 (fp32 when its config does not say)."""
    config = model_json(reference)
    return PRECISION_NAMES.get(str(config.get("dtype") or config.get("torch_dtype")), "fp32")


def nf4_config(compute_dtype: Any, *, double_quant: bool, skip_modules: Sequence[str] | None = None) -> Any:
    """bitsandbytes' 4-bit NF4 settings; `double_quant` also quantizes the scales (QLoRA's base uses it,
    a `yayi quantize` checkpoint does not); `skip_modules` None lets transformers choose (the output head)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=None if skip_modules is None else list(skip_modules),
    )


def follow_quiet_progress() -> None:
    """Transformers' loading bars off when `quiet_libraries` asked (it reads that setting only when first
    imported, which may have happened before)."""
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def load_model(
    model: str, *, device: str = "auto", dtype: str = "auto", load_in_8bit: bool = False,
    trust_remote_code: bool = False, base: str | None = None, quantization: Any = None,
) -> Any:
    """A causal LM in eval mode on `device`; int8 (LLM.int8, bitsandbytes) when asked, or quantized while
    loading by `quantization` (a BitsAndBytesConfig, for `yayi quantize`).

    A checkpoint that `yayi quantize` wrote is int8 already and loads as it is. An adapter directory
    loads its base (`base` if given), then the adapter on top.
    """
    source = resolve_model(model, base)
    reference = source.base
    device = resolve_device(device)
    if load_in_8bit:
        require_package("bitsandbytes", "--load-in-8bit", extra="quant")
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_8bit=True)
    if quantization is not None or is_quantized(reference):
        deepspeed_logs_to_stderr()  # int8 loading goes through accelerate, which imports DeepSpeed when installed
    quiet_int8_warnings()  # also for checkpoints `yayi quantize` wrote
    follow_quiet_progress()
    from transformers import AutoModelForCausalLM

    options: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": resolve_dtype(dtype, device)}
    if quantization is not None:
        options.update(quantization_config=quantization, device_map=device)
    try:
        loaded, info = AutoModelForCausalLM.from_pretrained(reference, output_loading_info=True, **options)
    except loading_errors() as error:
        what = f"the base {reference!r} of the adapter {model!r}" if source.adapter else repr(model)
        raise UsageError(f"cannot load a model from {what}: {first_line(error)}") from None
    if info["missing_keys"]:  # transformers would go on with random weights in their place
        missing = sorted(info["missing_keys"])
        raise UsageError(f"{reference}: {len(missing)} weights the config asks for are not in the checkpoint (such as "
                         f"{missing[0]}); the config.json and the weights are from different models")
    if source.adapter:
        loaded = attach_saved_adapter(loaded, source, trust_remote_code=trust_remote_code)
    if quantization is None:  # quantized weights were placed on the device while loading
        loaded.to(device)
    return loaded.eval()
