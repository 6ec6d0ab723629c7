"""What `yayi web` is asked to do, as data."""

from __future__ import annotations

from dataclasses import dataclass

from yayi_cli.options.fields import CommandOptions, option
from yayi_cli.options.shared import model_option, template_option, trust_remote_code_option
from yayi_cli.runtime.errors import UsageError


@dataclass
class WebOptions(CommandOptions):
    """Everything `yayi web` is asked to do: which server to chat with, where the page listens, and the sliders'
    starting values."""

    COMMAND = "web"

    model: str | None = model_option("Model to chat with: yayi starts `yayi serve`'s engine for it on a free local "
                                     "port.", required=False)
    api: str | None = option("--api", default=None, metavar="URL", help=(
        "Chat with a server already running instead (yayi serve, vLLM): http://HOST:PORT or .../v1."))
    host: str = option("--host", default="127.0.0.1", help=(
        "Address the page listens on. 0.0.0.0 opens it to the network: anyone who reaches the port can chat with the "
        "model and use your machine's compute, with no login."))
    port: int = option("--port", default=7860, at_least=1, at_most=65535, help="Port the page listens on.")
    template: str | None = template_option()
    temperature: float = option("--temperature", default=0.3, at_least=0, help=(
        "The temperature slider's starting value (0 answers greedily)."))
    top_p: float = option("--top-p", default=1.0, above=0, at_most=1, help="The top-p slider's starting value.")
    max_new_tokens: int = option("--max-new-tokens", default=512, at_least=1, metavar="N",
                                 help="The longest-answer slider's starting value, in tokens.")
    trust_remote_code: bool = trust_remote_code_option()

    def check_values(self) -> None:
        super().check_values()
        if (self.model is None) == (self.api is None):
            raise UsageError("give --model (yayi starts the engine) or --api URL (a server already running), not both"
                             if self.model else "give --model MODEL to chat with, or --api URL of a running server")
        if self.api is not None and not self.api.startswith(("http://", "https://")):
            raise UsageError(f"--api {self.api}: expected an http:// or https:// address, like http://127.0.0.1:8000")
        if self.api is not None and self.trust_remote_code:
            raise UsageError("--trust-remote-code only matters with --model (the server given by --api loads its own)")
