"""Rewards for answers a program can check: built-ins for the YaYi tasks, or a function in the user's file.

A reward is named on the command line as `exact`, `label[:A,B,...]`, `format`, `length:N`, or `path.py:function`,
optionally with a weight after `@` (`format@0.5`). It scores answers as `yayi chat` shows them: the text up to
<|End|>, without the separator before it and without markers. A user's function is called as

    def check(completions: list[str], **fields) -> list[float]

with one answer per completion and, by name, the prompt records' other fields (`label`, `answer`, ...), one value
per completion; it may also ask for `ended` (whether each answer ended at <|End|>). The file is imported by path,
and checked before a run starts: a missing file, function or field is one line.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import traceback
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli.core.prompt import find_markers
from yayi_cli.runtime.errors import DataError, UsageError


ANSWERS, ENDED = "completions", "ended"
BUILT_INS = ("exact", "label", "format", "length")


class RewardError(DataError):
    """A reward function failed while scoring: the run stops, naming the file and line."""


def normalized(text: str) -> str:
    """`exact`'s comparison form: Unicode NFKC (full-width to half-width), case folded, whitespace runs as one space,
    none at the ends."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def exact(completions: Sequence[str], answer: Sequence[Any], **_: Any) -> list[float]:
    """1 when the answer equals the record's `answer` field after `normalized`, else 0."""
    return [float(normalized(text) == normalized(str(expected))) for text, expected in zip(completions, answer)]


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def label_reward(labels: tuple[str, ...]) -> Callable[..., list[float]]:
    """1 when the answer's first line equals the record's `label` field (and, when `labels` are given, is one of
    them), else 0."""

    def label(completions: Sequence[str], label: Sequence[Any], **_: Any) -> list[float]:
        return [float(first_line(text) == str(expected) and (not labels or first_line(text) in labels))
                for text, expected in zip(completions, label)]

    return label


def format_reward(completions: Sequence[str], ended: Sequence[bool], **_: Any) -> list[float]:
    """1 when the answer ended at <|End|> and holds no marker, else 0."""
    return [float(done and not find_markers(text)) for text, done in zip(completions, ended)]


def length_reward(limit: int) -> Callable[..., list[float]]:
    """0 up to `limit` characters, then minus the share beyond it (-1 at twice the limit and below)."""

    def length(completions: Sequence[str], **_: Any) -> list[float]:
        return [-min(1.0, max(0, len(text) - limit) / limit) for text in completions]

    return length


@dataclass(frozen=True)
class RewardSpec:
    """One --reward: what it names, its argument (a built-in's), and its weight."""

    name: str
    argument: str = ""
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> RewardSpec:
        body, at, weight_text = text.rpartition("@") if "@" in text else (text, "", "")
        weight = 1.0
        if at:
            try:
                weight = float(weight_text)
            except ValueError:
                raise UsageError(f"--reward {text}: the weight after @ must be a number") from None
            if not math.isfinite(weight):
                raise UsageError(f"--reward {text}: the weight after @ must be a finite number")
        if ".py:" in body:
            return cls(body, "", weight)
        name, _, argument = body.partition(":")
        if name not in BUILT_INS:
            raise UsageError(f"--reward {text}: name a built-in ({', '.join(BUILT_INS)}) or a function as path.py:function")
        if name == "length" and not (argument.isdigit() and int(argument) > 0):
            raise UsageError(f"--reward {text}: length needs its limit in characters, as length:200")
        if name in ("exact", "format") and argument:
            raise UsageError(f"--reward {text}: {name} takes no argument")
        return cls(name, argument, weight)

    @property
    def is_file(self) -> bool:
        return ".py:" in self.name

    @property
    def label(self) -> str:
        """How logs and reports name it: the function's name, or the built-in's."""
        return self.name.rsplit(":", 1)[-1]


def import_function(reference: str) -> tuple[Callable[..., Any], Path]:
    """The function `path.py:function` names, its file imported by path; each failure is one line."""
    path_text, _, name = reference.rpartition(":")
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"--reward {reference}: no such file {path_text}")
    spec = importlib.util.spec_from_file_location(f"yayi_reward_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.path.insert(0, str(path.parent))  # the file may import its neighbours
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except SyntaxError as error:
        raise UsageError(f"{path_text}:{error.lineno}: {error.msg}") from None
    except Exception as error:  # noqa: BLE001 - the user's module failed as it loaded: one line, where
        raise UsageError(f"{where_in(error, path) or path_text}: importing it raised {type(error).__name__}: {error}") from None
    finally:
        sys.path.remove(str(path.parent))
    function = getattr(module, name, None)
    if not callable(function):
        raise UsageError(f"--reward {reference}: {path_text} has no function {name!r}")
    return function, path


def where_in(error: BaseException, path: Path) -> str | None:
    """`file:line` of the deepest frame of `error`'s traceback inside `path`."""
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if Path(frame.filename) == path]
    return f"{path}:{lines[-1]}" if lines else None


def check_signature(function: Callable[..., Any], reference: str, fields: set[str]) -> None:
    """The function takes `completions`, and every other argument it requires is `ended` or a field of the data."""
    parameters = inspect.signature(function).parameters.values()
    names = {parameter.name for parameter in parameters}
    if ANSWERS not in names and not any(p.kind == p.VAR_POSITIONAL for p in parameters):
        raise UsageError(f"--reward {reference}: the function must take 'completions' (the answers, a list of strings)")
    required = [p.name for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    missing = [name for name in required if name not in (ANSWERS, ENDED) and name not in fields]
    if missing:
        have = ", ".join(sorted(fields)) or "none"
        raise UsageError(f"--reward {reference}: it takes {', '.join(map(repr, missing))}, which the prompt records "
                         f"lack (their fields: {have})")


class Reward:
    """A loaded reward: scores answers, with the data's fields, and names the user's file and line when it fails."""

    def __init__(self, spec: RewardSpec, function: Callable[..., Any], path: Path | None = None) -> None:
        self.spec, self.function, self.path = spec, function, path
        self.__name__ = spec.label  # TRL names each reward's metrics after its function
        parameters = inspect.signature(function).parameters.values()
        self.takes = None if any(p.kind == p.VAR_KEYWORD for p in parameters) else {p.name for p in parameters}
        """The keyword arguments it takes (None: any)."""

    def score(self, answers: list[str], ended: list[bool], fields: dict[str, list[Any]]) -> list[float]:
        try:
            given = {ENDED: ended, **fields}
            scores = list(self.function(answers, **{k: v for k, v in given.items() if self.takes is None or k in self.takes}))
        except Exception as error:  # noqa: BLE001 - the user's code: one line naming where, the run stops
            where = (self.path and where_in(error, self.path)) or self.spec.name
            raise RewardError(f"{where}: reward {self.spec.label} raised {type(error).__name__}: {error}") from None
        if len(scores) != len(answers) or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
            raise RewardError(f"reward {self.spec.name} must return one number per answer ({len(answers)}); it returned "
                              f"{len(scores)} value(s)")
        return [float(score) for score in scores]


def load_reward(spec: RewardSpec, fields: set[str]) -> Reward:
    """The reward `spec` names, checked against the fields every prompt record has."""
    if spec.is_file:
        function, path = import_function(spec.name)
        check_signature(function, spec.name, fields)
        return Reward(spec, function, path)
    needs = {"exact": "answer", "label": "label"}.get(spec.name)
    if needs and needs not in fields:
        raise UsageError(f"--reward {spec.name} compares with each record's {needs!r} field, which the prompt records "
                         f"lack (their fields: {', '.join(sorted(fields)) or 'none'})")
    built = {"exact": lambda: exact, "format": lambda: format_reward,
             "label": lambda: label_reward(tuple(filter(None, spec.argument.split(",")))),
             "length": lambda: length_reward(int(spec.argument or 0))}[spec.name]()
    return Reward(spec, built)


def load_rewards(texts: Sequence[str], fields: set[str]) -> list[Reward]:
    return [load_reward(RewardSpec.parse(text), fields) for text in texts]
