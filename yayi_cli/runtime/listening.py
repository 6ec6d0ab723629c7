"""Addresses yayi listens on or waits for: a busy port refused up front, a server asked whether it answers yet."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

from yayi_cli.runtime.errors import UsageError


def require_free_port(host: str, port: int, flag: str = "--port") -> None:
    """Bind the address as a server will (SO_REUSEADDR, like uvicorn) to refuse a busy port up front."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, OverflowError) as error:
        raise UsageError(f"--host {host} {flag} {port}: not an address to listen on ({error})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error}; choose another {flag}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a server only yayi talks to (the engine behind `yayi web`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    """Whether a GET of `url` answers 200 within 2 seconds."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
