"""`yayi web`: a chat page in the browser, on `yayi serve`'s engine or on a server already running.

With --model, `yayi serve` runs as a child on a free local port (its own process group, ended with yayi even on
SIGKILL), and the page talks to it; with --api the page talks to that server. Ctrl-C, SIGTERM or the engine ending
closes the page and stops the engine, so no port stays held.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from yayi_cli.runtime.errors import UsageError, YayiError
from yayi_cli.runtime.listening import answers, free_port, require_free_port
from yayi_cli.runtime.packages import install_hint, require_packages
from yayi_cli.runtime.processes import Stopped, dies_with_parent, stop_group, stop_signals_raise
from yayi_cli.web.client import ChatClient, PageError, Sampling, api_base
from yayi_cli.web.options import WebOptions
from yayi_cli.web.page import PageSettings


QUIET_GRADIO = {"GRADIO_ANALYTICS_ENABLED": "False"}
"""No usage reports to Gradio's servers from a page that may hold private data (and no waiting on them offline)."""
LOCAL_HOSTS = ("127.0.0.1", "localhost")


def local_without_proxy() -> None:
    """The engine, the page's own start-up check and the page's client all speak to 127.0.0.1: never through an
    HTTP(S)_PROXY the environment sets (an unreachable proxy stopped Gradio's launch)."""
    for name in ("NO_PROXY", "no_proxy"):
        present = [host for host in os.environ.get(name, "").split(",") if host]
        os.environ[name] = ",".join([*present, *(host for host in LOCAL_HOSTS if host not in present)])


def web(options: WebOptions, say: Callable[[str], None], note: Callable[[str], None]) -> int:
    """Serve the page until Ctrl-C (130), SIGTERM/SIGHUP (128 + the signal), or the engine's end (its status)."""
    options.check()
    require_packages(("gradio", "openai"), "yayi web", install_hint("web"))
    require_free_port(options.host, options.port)
    os.environ.update(QUIET_GRADIO)
    local_without_proxy()
    with stop_signals_raise():
        try:
            with server_for(options, note) as (base, engine, name):
                client = ChatClient(base, name)
                page, i18n = page_for(options, client)
                # run_history off: no record of the chats in the browser, nor an offer to upload them
                page.queue().launch(server_name=options.host, server_port=options.port, i18n=i18n,
                                    prevent_thread_lock=True, quiet=True, show_error=False, run_history=False)
                try:
                    say(f"chat page for {name or base} at http://{_url_host(options.host)}:{options.port} "
                        "(Ctrl-C stops it" + (" and the engine)" if engine else ")"))
                    return _wait(engine)
                finally:
                    page.close()
        except KeyboardInterrupt:
            return 130
        except Stopped as stopped:
            return stopped.exit_code


def page_for(options: WebOptions, client: ChatClient) -> tuple[object, object]:
    from yayi_cli.core.prompt import resolve_template
    from yayi_cli.web.page import build_page

    template, _ = resolve_template(options.template, options.model or client.model_id)
    sampling = Sampling(options.temperature, options.top_p, options.max_new_tokens)
    title = f"yayi · {client.model_id}" if client.model_id else f"yayi · {client.base_url}"
    return build_page(client, PageSettings(title, template.system, sampling))


@contextmanager
def server_for(options: WebOptions, note: Callable[[str], None]) -> Iterator[tuple[str, subprocess.Popen | None, str | None]]:
    """The server's address, the engine yayi started (None with --api) and the model id if known."""
    if options.api is not None:
        base = api_base(options.api)
        name = _served_model(base)
        if name is None:
            note(f"{base} does not answer yet; the page says so until it does")
        yield base, None, name
        return
    base = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "yayi_cli", "serve", "--model", options.model, "--host", "127.0.0.1",
               "--port", base.rsplit(":", 1)[1], *(["--template", options.template] if options.template else []),
               *(["--trust-remote-code"] if options.trust_remote_code else [])]
    engine = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
                              preexec_fn=dies_with_parent(signal.SIGKILL))  # noqa: PLW1509 - fork-safe
    try:
        while not answers(f"{base}/health"):
            if engine.poll() is not None:
                raise UsageError(f"the engine stopped before it was ready (exit {engine.returncode}); its output is above")
            time.sleep(0.25)
        yield api_base(base), engine, _served_model(api_base(base))
    finally:
        stop_group(engine)


def _served_model(base: str) -> str | None:
    """The model id a server serves, or None when it does not answer."""
    try:
        return ChatClient(base).model
    except PageError:
        return None


def _wait(engine: subprocess.Popen | None) -> int:
    """Block until the engine ends (its status, said as an error), or forever with --api (until a signal)."""
    if engine is None:
        while True:
            time.sleep(3600)
    code = engine.wait()
    raise YayiError(f"the engine stopped (exit {code}); its output is above")


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
