"""Typer parameters made from an options table (options/fields.py), so flags are declared only once.

`command(app, name, OptionsClass)` turns a function `(options, ...) -> None` into a Typer command
whose signature holds one parameter per field (plus `--config FILE` where the class takes one) and
the function's own other parameters (`ctx`, `--json`, ...). Every flag defaults to None, "not
typed", so a config file's value holds unless a flag is typed.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Optional

import typer
from typer._click import Context
from typer._click.exceptions import ClickException, UsageError  # typer vendors Click: these are the ones it raises
from typer.core import TyperGroup
from typer.models import ArgumentInfo

from yayi_cli.options.fields import Entry, Flag, scalar_kind, table
from yayi_cli.runtime.errors import YayiError


EXIT_CODES = (
    "Exit codes: 0 success; 1 the work ran and found a problem (invalid data, failed check, training failed); "
    "2 usage or environment error (bad option, missing file, model not loadable, no GPU); 130 interrupted."
)
CONFIG = "config"
CONFIG_OPTION = typer.Option(None, "--config", metavar="FILE", help="YAML or JSON file of options (flags override it).")


def number_parser(flag: Flag, kind: type) -> Callable[[str], float]:
    """The parser of a number flag: text that is no number, `nan` and `inf` (which float() accepts) are usage
    errors; bounds are the options class's checks, so a library call gets the same message."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise typer.BadParameter(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if not math.isfinite(value):
            raise typer.BadParameter(f"{text!r} is not a finite number")
        if flag.clamp and flag.at_most is not None:  # a count typed too large means "all"; too small is refused
            value = min(value, kind(flag.at_most))
        return value

    parse.__name__ = "int" if kind is int else "number"  # Typer shows it as the metavar: <int>, <number>
    return parse


def default_help(entry: Entry) -> str:
    """`[default: ...]` from the dataclass's default (or `[required]`), so the help cannot drift from it."""
    flag, default = entry.flag, entry.default
    if flag.required:
        return "  [required]"
    if flag.default_text is not None:
        return f"  [default: {flag.default_text}]"
    if default is True:
        return f"  [default: {flag.name}]"
    if default is None or default is False or default is dataclasses.MISSING or default in ([], ()):
        return ""
    shown = ", ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
    return f"  [default: {shown}]"


def flag_names(entry: Entry, with_config: bool) -> tuple[str, ...]:
    """A true/false option also gets `--no-NAME` where a config file could have turned it on."""
    names = entry.flag.names
    if entry.hint is bool and with_config and not any("/" in name for name in names):
        return (f"{names[0]}/--no-{names[0][2:]}", *names[1:])
    return names


def parameter(entry: Entry, with_config: bool) -> inspect.Parameter:
    """The Typer parameter of one field."""
    flag = entry.flag
    container, kind = scalar_kind(entry.hint)
    if flag.choices is not None:
        kind = Literal[flag.choices]  # type: ignore[valid-type]  # choices come from the table
    elif flag.parse is not None:
        kind = str
    annotation = list[kind] if container else kind  # type: ignore[valid-type]
    settings: dict[str, Any] = {"metavar": flag.metavar, "help": flag.help + default_help(entry),
                                "show_default": False, "autocompletion": flag.complete}
    if flag.argument:
        return inspect.Parameter(entry.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                 default=typer.Argument(..., **settings))
    if kind in (int, float):
        settings["parser"] = number_parser(flag, kind)
    return inspect.Parameter(entry.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[annotation],  # noqa: UP045 - Typer needs a real Optional
                             default=typer.Option(None, *flag_names(entry, with_config), **settings))


def say_on_stderr(text: str, *, label: str | None = None) -> None:
    """One line on stderr, `label:` in red; Rich markup in `text` is shown as it is. Rich is imported
    here, when something is printed: `--help` and TAB never need it."""
    from rich.console import Console
    from rich.markup import escape

    prefix = f"[red]{label}:[/] " if label else ""
    Console(stderr=True).print(prefix + escape(text), highlight=False, soft_wrap=True)


def reports_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a user error into one `error:` line on stderr and its exit code, never a traceback."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except YayiError as error:
            say_on_stderr(str(error), label="error")
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return run


def command(app: typer.Typer, name: str, kind: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `body(options, **rest)` as `yayi ... NAME`, its options resolved from `kind`'s table."""

    def register(body: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(body, eval_str=True).parameters.values() if p.name != "options"]
        fields = [parameter(entry, kind.CONFIG_FILE) for entry in table(kind)]
        config = [inspect.Parameter(CONFIG, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],  # noqa: UP045
                                    default=CONFIG_OPTION)] if kind.CONFIG_FILE else []
        params = fields + config + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        params.sort(key=lambda p: p.name != "ctx" and not isinstance(p.default, ArgumentInfo))  # stable: ctx, arguments first

        @functools.wraps(body)
        def run(**values: Any) -> Any:
            flags = {entry.name: values.pop(entry.name) for entry in table(kind)}
            return body(options=kind.resolve(values.pop(CONFIG, None), flags), **values)

        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return app.command(name, epilog=EXIT_CODES)(reports_errors(run))

    return register


class OneLineUsageError(ClickException):
    """A usage error Click found (an unknown option, a value outside its choices), shown as yayi shows its own:
    one `error:` line that says where to read more, instead of Click's usage block."""

    exit_code = 2

    def __init__(self, error: UsageError) -> None:
        super().__init__(error.format_message())
        self.command_path = error.ctx.command_path if error.ctx is not None else "yayi"

    def show(self, file: Any = None) -> None:
        typer.echo(f"error: {self.message.rstrip('.')}; see {self.command_path} --help", err=True)


class YayiGroup(TyperGroup):
    """The top-level group: Click's usage errors, in any sub-command, become `OneLineUsageError`s."""

    def make_context(self, *args: Any, **kwargs: Any) -> Context:
        try:
            return super().make_context(*args, **kwargs)
        except UsageError as error:
            raise _one_line(error) from None

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as error:
            raise _one_line(error) from None


def _one_line(error: UsageError) -> ClickException:
    """`error` as one line, except "no arguments: here is the help", which Click shows as the help itself."""
    return error if type(error).__name__ == "NoArgsIsHelpError" else OneLineUsageError(error)
