"""Loading models and tokenizers by local directory or hub id, with one-line errors."""

from __future__ import annotations

import contextlib
import functools
import os
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli.atomic import atomic_directory
from yayi_cli.errors import UsageError, first_line
from yayi_cli.model_files import CONFIG_FILE, model_json, read_model_json
from yayi_cli.packages import require_package
from yayi_cli.terminal import deepspeed_logs_to_stderr


def resolve_model_reference(model: str) -> str:
    """A local directory (with `~` expanded) or a hub id.

    Hub ids are `name` or `owner/name`; a missing path that cannot be a hub id is refused at
    once instead of being looked up on the hub.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / ADAPTER_CONFIG_FILE).is_file() and not (path / CONFIG_FILE).is_file():
            raise UsageError(f"{model}: is a LoRA adapter, not a full model here; make one with `yayi merge {model} -o DIR`")
        if not (path / CONFIG_FILE).is_file():
            raise UsageError(f"{model}: no config.json in this directory; give a saved model's directory or a hub id")
        _check_config(path)
        return str(path)
    if path.exists():
        raise UsageError(f"{model}: is a file; give the model's directory")
    first_part = model.split("/", 1)[0]
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or (first_part != model and Path(first_part).is_dir()):
        raise UsageError(f"{model}: no such model directory")
    check_hub_model(model)
    return model


@functools.lru_cache(maxsize=None)
def check_hub_model(repo: str) -> None:
    """A name that is no local directory must be a hub model: found in the cache, or asked of the hub once (no
    retries), so a mistyped path is one line at once, not a minute of download retries ending in a hub error."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    if isinstance(huggingface_hub.try_to_load_from_cache(repo, CONFIG_FILE), str):
        return
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise UsageError(f"{repo}: no such local directory, and HF_HUB_OFFLINE is set while the Hugging Face cache "
                         "has no model of that name")
    try:
        huggingface_hub.model_info(repo, timeout=15)
    except RepositoryNotFoundError:
        raise UsageError(f"{repo}: no such local directory, and no model of that name on the Hugging Face hub "
                         "(or it is private: log in with `hf auth login`)") from None
    except huggingface_hub.errors.HfHubHTTPError:
        return  # there, but gated or refused to this user: loading says what the hub says
    except Exception as error:  # noqa: BLE001 - no network, DNS, proxy, timeout: the hub cannot be asked
        raise UsageError(f"{repo}: no such local directory, and the Hugging Face hub cannot be reached "
                         f"to look for a model of that name ({first_line(error)})") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt")
"""One of these is in every saved tokenizer (a fast tokenizer's, SentencePiece's, or a vocabulary)."""


def require_saved_tokenizer(model: str) -> None:
    """A local model directory without a tokenizer is refused now, not seconds later in every rank."""
    path = Path(resolve_model_reference(model))
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(f"{model}: no tokenizer in this directory (none of {', '.join(TOKENIZER_FILES)}); "
                         "save the model's tokenizer beside it")


SENTENCEPIECE_MODEL = "tokenizer.model"


def check_sentencepiece_model(path: Path) -> None:
    """A SentencePiece tokenizer.model (Llama 2 checkpoints ship one) must parse before transformers reads it:
    without protobuf, transformers falls back to a tiktoken reader and says so, and a damaged file can load as a
    cut-down vocabulary that tokenizes silently wrong."""
    try:
        import google.protobuf  # noqa: F401 - transformers converts tokenizer.model with it
        import sentencepiece
    except ImportError as error:
        raise UsageError(f"reading {path} needs {error.name.split('.')[0]}: pip install protobuf sentencepiece") from None
    try:
        sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as error:
        raise UsageError(f"{path}: not a SentencePiece model that can be read ({first_line(error)}); the file is "
                         "damaged or cut short: copy or download it again") from None


def _check_config(directory: Path) -> None:
    """config.json must be a JSON object naming its architecture, or transformers fails with a traceback
    (or, without a model_type, guesses)."""
    if not isinstance((read_model_json(directory) or {}).get("model_type"), str):
        raise UsageError(f"{directory / CONFIG_FILE}: not a model config (a JSON object with a model_type); "
                         "is this a model directory?")


def loading_errors() -> tuple[type[BaseException], ...]:
    """What loading a broken local model raises: a bad config (TypeError, KeyError), unreadable weights
    (SafetensorError), missing files (OSError), or anything transformers rejects (ValueError)."""
    from safetensors import SafetensorError

    return OSError, ValueError, TypeError, KeyError, SafetensorError


ADAPTER_CONFIG_FILE = "adapter_config.json"


@dataclass(frozen=True)
class ModelSource:
    """What a --model names: a full model (directory or hub id), or a PEFT adapter directory on its base."""

    base: str
    adapter: str | None = None

    @property
    def tokenizer(self) -> str:
        """Adapters yayi trains carry their tokenizer (with the markers it added); others use the base's."""
        if self.adapter and (Path(self.adapter) / "tokenizer_config.json").is_file():
            return self.adapter
        return self.base


def resolve_model(model: str, base: str | None = None, *, check_base: bool = True) -> ModelSource:
    """The one place an adapter directory (one with adapter_config.json) becomes base + adapter.

    The base is the one named in adapter_config.json unless `base` (--base DIR|HUB_ID) replaces it.
    `check_base=False` is for reading only the adapter's own files (its tokenizer), which need no base.
    """
    config_file = Path(model).expanduser() / ADAPTER_CONFIG_FILE
    if not config_file.is_file():
        if base is not None:
            raise UsageError(f"--base {base}: only an adapter directory takes a base, and {model} has no {ADAPTER_CONFIG_FILE}")
        return ModelSource(resolve_model_reference(model))
    try:
        named = (read_model_json(config_file.parent, ADAPTER_CONFIG_FILE) or {})["base_model_name_or_path"]
    except KeyError as error:
        raise UsageError(f"{config_file}: not a readable PEFT adapter config ({first_line(error)})") from None
    chosen = base or named
    if not check_base and (config_file.parent / "tokenizer_config.json").is_file():
        return ModelSource(chosen, str(config_file.parent))
    if not chosen:
        raise UsageError(f"{model}: its {ADAPTER_CONFIG_FILE} names no base model; give one with --base DIR|HUB_ID")
    try:
        return ModelSource(resolve_model_reference(chosen), str(config_file.parent))
    except UsageError as error:
        raise UsageError(f"{model} is an adapter whose base cannot be used: {error}; give the base with --base DIR|HUB_ID") from None


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


LEGACY_SENTENCEPIECE_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")


def sentencepiece_options(reference: str) -> dict[str, Any]:
    """`legacy=True` for a Llama SentencePiece tokenizer whose config predates the option (transformers < 4.31, as
    the published Llama 2 YaYi checkpoints): those releases put the `▁` dummy prefix on the text after every special
    token, and transformers 5 would read such a config as `legacy=False` and leave it out. A config that sets
    `legacy` is followed as it is."""
    config = model_json(reference, "tokenizer_config.json")
    if "legacy" in config or config.get("tokenizer_class") not in LEGACY_SENTENCEPIECE_CLASSES:
        return {}
    return {"legacy": True}


def load_tokenizer(model: str, *, trust_remote_code: bool = False, base: str | None = None) -> Any:
    """The model's tokenizer via `AutoTokenizer`; remote code only when the user asks."""
    return tokenizer_files(resolve_model(model, base, check_base=False).tokenizer, model, trust_remote_code=trust_remote_code)


def tokenizer_files(reference: str, model: str, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved at `reference` (a directory or hub id; `model` names it in errors), with nothing else of a
    model needed beside it."""
    if (Path(reference) / SENTENCEPIECE_MODEL).is_file():
        check_sentencepiece_model(Path(reference) / SENTENCEPIECE_MODEL)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(reference, trust_remote_code=trust_remote_code, **sentencepiece_options(reference))
    except loading_errors() as error:
        raise UsageError(f"cannot load a tokenizer from {model!r}: {first_line(error)}") from None


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length")
UNSET_MAX_LENGTH = 10**7
"""Tokenizers without a known limit report a huge `model_max_length`; anything above this is unset."""


def _set_limit(limit: Any) -> int | None:
    return limit if isinstance(limit, int) and 0 < limit < UNSET_MAX_LENGTH else None


def _config_context(config: dict[str, Any]) -> int | None:
    return next((config[key] for key in CONTEXT_KEYS if isinstance(config.get(key), int)), None)


def context_length(model: str, tokenizer: Any, base: str | None = None) -> int | None:
    """The model's context length: the tokenizer's limit, else the config's (an adapter's base's), else None."""
    limit = _set_limit(getattr(tokenizer, "model_max_length", None))
    if limit:
        return limit
    try:
        reference = resolve_model(model, base).base
    except UsageError:  # no config to read (an adapter's base that is not here)
        return None
    return _config_context(model_json(reference))


def saved_context_length(directory: Path) -> int | None:
    """`context_length` of a saved model directory read from its JSON files (the tokenizer's saved
    limit, else the config's), without importing transformers."""
    return _set_limit(model_json(directory, "tokenizer_config.json").get("model_max_length")) or _config_context(
        model_json(directory))


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
