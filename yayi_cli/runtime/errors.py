"""Errors a user can cause, each carrying the exit code the CLI reports for it.

Exit codes: 0 success; 1 the work ran and found a problem; 2 usage or environment error.
Anything that is not a `YayiError` is a bug and is allowed to show a traceback.
"""


class YayiError(Exception):
    """A problem the user can fix; its message is one line that says what to do."""

    exit_code = 1


class DataError(YayiError):
    """The input was read and is wrong (invalid record, marker inside text, ...): exit 1."""

    exit_code = 1


class UsageError(YayiError):
    """Bad option, missing file, unloadable model or missing dependency: exit 2."""

    exit_code = 2


def first_line(error: Exception) -> str:
    """A library error's message as one line (its first), or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
