"""Optional packages: a missing one is refused in one line that says what to install."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from yayi_cli.runtime.errors import UsageError


def install_hint(extra: str) -> str:
    """The pip command that installs one of yayi's optional extras."""
    return f"pip install 'yayi-cli[{extra}]'"


def missing_packages(names: Sequence[str]) -> list[str]:
    """The packages of `names` not installed here, found without importing them."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def require_packages(names: Sequence[str], needed_by: str, hint: str) -> None:
    """Refuse `needed_by` (a flag, a command, "loading X") when any of `names` is missing."""
    missing = missing_packages(names)
    if missing:
        raise UsageError(f"{needed_by} needs {', '.join(missing)}: {hint}")


def require_package(name: str, needed_by: str, *, extra: str) -> None:
    """`require_packages` for one package that a yayi extra installs."""
    require_packages((name,), needed_by, install_hint(extra))
