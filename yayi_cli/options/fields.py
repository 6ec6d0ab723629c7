"""Options declared once: each command's dataclass field carries its flags, help and value checks.

`option(...)` declares a field. The Typer parameters (cli/parameters.py), the config-file keys (every
long flag, so upstream names such as `data_path` work too), the `[default: ...]` in the help and the
checks a library call runs all read that one declaration. Every `yayi --help` and TAB press imports
this module: nothing heavy here, and field types are resolved on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from yayi_cli.runtime.errors import UsageError


@dataclass(frozen=True)
class Flag:
    """How one field appears on the command line and in config files, and the values it accepts."""

    names: tuple[str, ...]
    help: str
    metavar: str | None = None
    choices: tuple[Any, ...] | None = None
    complete: Callable[[str], list[str]] | None = None
    at_least: float | None = None
    at_most: float | None = None
    above: float | None = None
    parse: Callable[[Any], Any] | None = None
    """Turns the flag's text or a config value into the field's value (and refuses bad ones)."""
    required: bool = False
    argument: bool = False
    clamp: bool = False
    """A typed number above at_most is moved to it instead of refused (below at_least is refused as ever)."""
    default_text: str | None = None
    """What `[default: ...]` says when the field's default is decided elsewhere (None: the default itself)."""

    @property
    def long_names(self) -> list[str]:
        """`--sample/--greedy` -> `--sample`: the names that set the field (not the one that clears it)."""
        return [name.split("/")[0] for name in self.names if name.startswith("--")]

    @property
    def name(self) -> str:
        """The flag messages name."""
        return self.long_names[0] if self.long_names else self.names[0]

    def config_keys(self) -> list[str]:
        return [name[2:].replace("-", "_") for name in self.long_names]


def option(*names: str, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING, **flag: Any) -> Any:
    """A dataclass field with its command-line flags (the first long one is named in messages)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"cli": Flag(names, **flag)})


def group(kind: type) -> Any:
    """A field holding another options dataclass whose fields are flags of this command too."""
    return dataclasses.field(default_factory=kind, metadata={"group": kind})


class Entry(NamedTuple):
    """One flag of a command: the field it sets, its type, its declaration, and its group field if nested."""

    name: str
    hint: Any
    flag: Flag
    default: Any
    group: str | None


def _default(item: dataclasses.Field) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return dataclasses.MISSING


@functools.cache
def table(kind: type) -> tuple[Entry, ...]:
    """Every flag of an options class, nested groups flattened, in declaration order."""
    hints = typing.get_type_hints(kind)
    entries = []
    for item in dataclasses.fields(kind):
        if "group" in item.metadata:
            entries += [entry._replace(group=item.name) for entry in table(item.metadata["group"])]
        elif "cli" in item.metadata:
            entries.append(Entry(item.name, hints[item.name], item.metadata["cli"], _default(item), None))
    return tuple(entries)


def scalar_kind(hint: Any) -> tuple[type | None, type]:
    """`list[Path]` -> (list, Path); `int | None` -> (None, int); `tuple[str, ...]` -> (tuple, str)."""
    container = typing.get_origin(hint)
    if container in (list, tuple):
        return container, typing.get_args(hint)[0]
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] if isinstance(hint, types.UnionType) else [hint]
    return None, kinds[0]


def complete_directories(incomplete: str) -> list[str]:
    """TAB candidates for model and output options: directories only (files complete as usual)."""
    folder, slash, start = incomplete.rpartition("/")
    try:
        names = [entry.name for entry in os.scandir(folder + slash or ".") if entry.is_dir() and entry.name.startswith(start)]
    except OSError:
        return []
    show_hidden = start.startswith(".")
    return sorted(f"{folder}{slash}{name}/" for name in names if show_hidden or not name.startswith("."))


def _bound_problem(flag: Flag, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):  # a config file can say .nan or .inf
        return f"{flag.name} {value}: give a finite number"
    if flag.at_least is not None and value < flag.at_least:
        return f"{flag.name} must be at least {flag.at_least:g}, got {value}"
    if flag.at_most is not None and value > flag.at_most:
        return f"{flag.name} must be at most {flag.at_most:g}, got {value}"
    if flag.above is not None and value <= flag.above:
        return f"{flag.name} must be above {flag.above:g}, got {value}"
    return None


def value_problem(flag: Flag, value: Any) -> str | None:
    """Why a value cannot be used for this flag, or None."""
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if item is None:
            continue
        if flag.choices is not None and item not in flag.choices:
            return f"{flag.name} {item!r}: choose one of {', '.join(map(str, flag.choices))}"
        problem = _bound_problem(flag, item)
        if problem:
            return problem
    return None


NOT_GIVEN = (None, "", [], ())
"""What a required option holds when it was not given (0 and False are values)."""


class CommandOptions:
    """What every command's options dataclass shares: checks on construction, --config files, resolving."""

    COMMAND: ClassVar[str]
    """The command's words after `yayi`, for messages."""
    CONFIG_FILE: ClassVar[bool] = False
    """Whether the command takes `--config FILE`."""

    def __post_init__(self) -> None:
        self.check_values()

    def check_values(self) -> None:
        """Refuse values no run can use (the CLI's message, also for a library call); subclasses add relations."""
        for entry in table(type(self)):
            if entry.group is None:
                problem = value_problem(entry.flag, getattr(self, entry.name))
                if problem:
                    raise UsageError(problem)

    def check(self) -> None:
        """Everything a run needs: the required options are given and every value is usable."""
        missing = [entry for entry in table(type(self)) if entry.flag.required and getattr(self, entry.name) in NOT_GIVEN]
        if missing:
            raise UsageError(type(self).missing_message(missing[0]))
        self.check_values()

    @classmethod
    def missing_message(cls, entry: Entry) -> str:
        where = " (give it as a flag or in --config)" if cls.CONFIG_FILE else ""
        return f"missing {entry.flag.name} {entry.flag.metavar or ''}".rstrip() + where

    @classmethod
    def config_keys(cls) -> dict[str, str]:
        """Config-file key -> field name: field names and every long flag's name, with `_` or `-`."""
        keys = {}
        for entry in table(cls):
            keys |= {key: entry.name for key in entry.flag.config_keys()} | {entry.name: entry.name}
        return keys

    @classmethod
    def read_config(cls, path: Path) -> dict[str, Any]:
        """The options in a YAML or JSON config file, by field name and with their types checked."""
        keys, entries = cls.config_keys(), {entry.name: entry for entry in table(cls)}
        values = {}
        for key, value in _load_mapping(path).items():
            name = keys.get(str(key).replace("-", "_"))
            if name is None:
                raise UsageError(f"--config {path}: unknown option {key!r}; see `yayi {cls.COMMAND} --help` for the names")
            values[name] = _coerce(entries[name], value, f"--config {path}: {key}")
        return values

    @classmethod
    def resolve(cls, config_file: Path | None, flags: dict[str, Any]) -> Any:
        """Defaults, then the config file, then the flags typed (None or [] means not typed); checked."""
        values = cls.read_config(config_file) if config_file is not None else {}
        entries = {entry.name: entry for entry in table(cls)}
        values.update({name: _from_flag(entries[name], value) for name, value in flags.items()
                       if value is not None and value != []})
        missing = [entry for entry in entries.values() if entry.name not in values
                   and (entry.flag.required or entry.default is dataclasses.MISSING)]
        if missing:
            raise UsageError(cls.missing_message(missing[0]))
        groups: dict[str, dict[str, Any]] = {}
        for entry in entries.values():
            if entry.group is not None and entry.name in values:
                groups.setdefault(entry.group, {})[entry.name] = values.pop(entry.name)
        kinds = {item.name: item.metadata["group"] for item in dataclasses.fields(cls) if "group" in item.metadata}
        options = cls(**values, **{name: kinds[name](**group_values) for name, group_values in groups.items()})
        options.check()
        return options


def _from_flag(entry: Entry, value: Any) -> Any:
    if entry.flag.parse is not None:
        return entry.flag.parse(value)
    container, _ = scalar_kind(entry.hint)
    return tuple(value) if container is tuple else value


def _load_mapping(path: Path) -> dict[Any, Any]:
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
    return loaded


def _scalar(value: Any, kind: type, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{where}: expected true or false, got {value!r}")
    if kind in (str, Path):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return kind(str(value))
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


def _coerce(entry: Entry, value: Any, where: str) -> Any:
    """A config-file value as the field's type, or one clear error."""
    if value is None:
        if type(None) in typing.get_args(entry.hint):  # `save_total_limit: null`: keep every checkpoint
            return None
        raise UsageError(f"{where}: a value is required")
    if entry.flag.parse is not None:
        return entry.flag.parse(value)
    container, kind = scalar_kind(entry.hint)
    if container is None:
        return _scalar(value, kind, where)
    items = [_scalar(item, kind, where) for item in (value if isinstance(value, list) else [value])]
    return container(items)
