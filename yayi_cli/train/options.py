"""Every `yayi train` option as data, resolved in one place: defaults < config file < command-line flags.

A config file (YAML or JSON) holds a mapping of option names: the field names below, with `_` or
`-`, or the upstream YaYi training flags' names (`data_path`, `input_model`, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yayi_cli.data import DEFAULT_SEED
from yayi_cli.errors import UsageError

ZERO_STAGES = (0, 1, 2, 3)
OFFLOADS = ("none", "cpu", "nvme")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OVERLONG = ("truncate", "skip")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")

UPSTREAM_ALIASES = {
    "data_path": "data",
    "input_model": "model",
    "local_output_dir": "output",
    "per_device_train_batch_size": "micro_batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "num_train_epochs": "epochs",
    "learning_rate": "lr",
    "num_gpus": "gpus",
}
"""Names the upstream training command (and Hugging Face) use for our options."""

FULL_FINE_TUNE_LR = 5e-6
ADAPTER_LR = 1e-4
"""LoRA trains a few new weights from zero, so it needs a learning rate about 20x a full fine-tune's."""
DIST_TIMEOUT = 300
"""Seconds a rank waits for the others (to join, or in a collective) before the run ends as failed."""
INTERFACE_NAME = re.compile(r"^[\w.:@-]+(,[\w.:@-]+)*$")
"""A network interface, or several separated by commas (as Gloo and NCCL read them)."""


@dataclass
class TrainOptions:
    """What one training run does. Paths are kept as given; `launch` makes them absolute."""

    data: list[str] = field(default_factory=list)
    model: str = ""
    output: str = ""
    eval_data: list[str] = field(default_factory=list)
    test_size: int | float | None = None
    template: str | None = None
    max_length: int | None = None
    overlong: str = "truncate"
    packing: bool = False
    epochs: float = 2.0
    max_steps: int = -1
    micro_batch_size: int = 8
    eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    global_batch_size: int | None = None
    lr: float | None = None  # None: FULL_FINE_TUNE_LR, or ADAPTER_LR with --lora/--qlora
    lr_scheduler: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = DEFAULT_SEED
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 3
    eval_steps: int | None = None
    gradient_checkpointing: bool = False
    report_to: str = "none"
    gpus: int | None = None
    num_nodes: int | None = None
    hostfile: str | None = None
    include: str | None = None
    master_addr: str | None = None
    master_port: int | None = None
    network_interface: str | None = None
    dist_timeout: int = DIST_TIMEOUT
    cpu: bool = False
    zero: int = 2
    offload: str = "none"
    nvme_path: str | None = None
    precision: str = "auto"
    deepspeed: str | None = None
    resume: str | None = None
    cache_dir: str | None = None
    trust_remote_code: bool = False
    force: bool = False
    lora: bool = False
    qlora: bool = False
    lora_r: int = 16
    lora_alpha: int | None = None  # None: 2 x lora_r
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=list)  # empty: the architecture's attention and MLP projections

    def __post_init__(self) -> None:
        """Defaults that depend on other options are resolved here, so every reader sees the same values."""
        if self.lr is None:
            self.lr = ADAPTER_LR if self.adapter else FULL_FINE_TUNE_LR
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r

    @property
    def adapter(self) -> str | None:
        """"lora", "qlora" (LoRA on a 4-bit base), or None for a full fine-tune."""
        return "qlora" if self.qlora else "lora" if self.lora else None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {item.name: item for item in dataclasses.fields(TrainOptions)}


@functools.cache
def field_types() -> dict[str, Any]:
    """The fields' types, resolved on first use (not on every `--help` and TAB press)."""
    return typing.get_type_hints(TrainOptions)


def _canonical(key: str) -> str:
    name = key.replace("-", "_")
    return UPSTREAM_ALIASES.get(name, name)


def _scalar(value: Any, kind: type, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{where}: expected true or false, got {value!r}")
    if kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UsageError(f"{where}: expected text, got {value!r}")
    if kind in (int, float) and isinstance(value, str):  # YAML reads 1e-5 as text
        try:
            value = float(value)
        except ValueError:
            pass
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    raise UsageError(f"{where}: expected {'a whole number' if kind is int else 'a number'}, got {value!r}")


def _coerce(name: str, value: Any, where: str) -> Any:
    """A config-file value as the field's type, or one clear error."""
    if name == "test_size":
        from yayi_cli.sampling import parse_test_size

        return None if value is None else parse_test_size(str(value))
    hint = field_types()[name]
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in kinds:
            return None
        raise UsageError(f"{where}: a value is required")
    if typing.get_origin(hint) is list:
        items = value if isinstance(value, list) else [value]
        return [_scalar(item, str, where) for item in items]
    kind = next(k for k in kinds if k is not type(None))
    return _scalar(value, kind, where)


def read_config_file(path: Path) -> dict[str, Any]:
    """The options in a YAML or JSON config file, by field name and with their types checked."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--config {path}: cannot read it ({error.__class__.__name__}: {error})") from None
    try:
        if path.suffix.lower() == ".json":
            loaded = json.loads(text)
        else:
            import yaml

            loaded = yaml.safe_load(text)
    except ValueError as error:  # json.JSONDecodeError and yaml.YAMLError's line info are in str()
        raise UsageError(f"--config {path}: not valid JSON: {error}") from None
    except Exception as error:  # yaml.YAMLError; yaml is imported lazily so it cannot be named here
        raise UsageError(f"--config {path}: not valid YAML: {' '.join(str(error).split())}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UsageError(f"--config {path}: expected a mapping of option names to values")
    options = {}
    for key, value in loaded.items():
        name = _canonical(str(key))
        if name not in FIELDS:
            raise UsageError(f"--config {path}: unknown option {key!r}; see `yayi train --help` for the names")
        options[name] = _coerce(name, value, f"--config {path}: {key}")
    return options


def check_options(options: TrainOptions) -> None:
    """Refuse values no run can use, before anything is written or launched."""
    required = {"data": "--data FILE", "model": "--model DIR|HUB_ID", "output": "--output DIR"}
    for name, flag in required.items():
        if not getattr(options, name):
            raise UsageError(f"missing {flag} (give it as a flag or in --config)")
    choices = {"zero": ZERO_STAGES, "offload": OFFLOADS, "precision": PRECISIONS, "overlong": OVERLONG,
               "lr_scheduler": SCHEDULERS}
    for name, allowed in choices.items():
        if getattr(options, name) not in allowed:
            raise UsageError(f"{name} {getattr(options, name)!r}: choose one of {', '.join(map(str, allowed))}")
    at_least = {name: 1 for name in ("micro_batch_size", "eval_batch_size", "gradient_accumulation_steps",
                                     "logging_steps", "save_steps", "gpus", "num_nodes", "global_batch_size",
                                     "max_length", "eval_steps", "save_total_limit", "master_port",
                                     "dist_timeout")}
    at_least |= {"warmup_steps": 0, "weight_decay": 0}
    for name, value in vars(options).items():  # a config file can say .nan or .inf
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{name.replace('_', '-')} {value}: give a finite number")
    for name, lowest in at_least.items():
        value = getattr(options, name)
        if value is not None and value < lowest:
            raise UsageError(f"--{name.replace('_', '-')} must be at least {lowest}, got {value}")
    if options.master_port is not None and options.master_port > 65535:
        raise UsageError(f"--master-port {options.master_port}: a port is at most 65535")
    for name in ("lr", "max_grad_norm") + (("epochs",) if options.max_steps <= 0 else ()):
        if getattr(options, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be above 0, got {getattr(options, name)}")
    if options.network_interface is not None and not INTERFACE_NAME.match(options.network_interface):
        raise UsageError(f"--network-interface {options.network_interface!r}: give an interface name such as eth0 "
                         "(several separated by commas)")
    if options.eval_data and options.test_size is not None:
        raise UsageError("give --eval-data or --test-size, not both")
    if options.global_batch_size and options.gradient_accumulation_steps != 1:
        raise UsageError("give --global-batch-size or --gradient-accumulation-steps, not both (one sets the other)")
    if options.adapter:
        from yayi_cli.train.adapters import check_adapter_options

        check_adapter_options(options)


def flag_values(flags: dict[str, Any]) -> dict[str, Any]:
    """Command-line values as option values: paths as text, --test-size as a count or fraction."""
    values = {}
    for name, value in flags.items():
        if isinstance(value, list):
            value = [str(item) for item in value]
        elif isinstance(value, Path):
            value = str(value)
        values[name] = value
    if values.get("test_size") is not None:
        values["test_size"] = _coerce("test_size", values["test_size"], "--test-size")
    return values


def resolve_options(config_file: Path | None, flags: dict[str, Any]) -> TrainOptions:
    """Defaults, then the config file, then the flags the user typed (None means not typed)."""
    values = read_config_file(config_file) if config_file is not None else {}
    values.update({name: value for name, value in flags.items() if value is not None and value != []})
    if values.get("deepspeed"):
        clashing = sorted(name for name in ("zero", "offload", "nvme_path", "precision") if name in values)
        if clashing:
            names = ", ".join(f"--{name.replace('_', '-')}" for name in clashing)
            raise UsageError(f"{names}: these come from --deepspeed FILE, which is used as it is; drop them")
    options = TrainOptions(**values)
    check_options(options)
    return options
