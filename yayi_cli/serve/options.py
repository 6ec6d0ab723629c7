"""What `yayi serve` and `yayi template install` are asked to do, as data."""

from __future__ import annotations

from dataclasses import dataclass

from yayi_cli.options.fields import CommandOptions, complete_directories, option
from yayi_cli.options.shared import model_option, template_option, trust_remote_code_option


@dataclass
class ServeOptions(CommandOptions):
    """Everything `yayi serve` is asked to do."""

    COMMAND = "serve"
    CONFIG_FILE = True

    model: str = model_option()
    host: str = option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 opens it to the network).")
    port: int = option("--port", default=8000, at_least=1, at_most=65535, help="Port to listen on.")
    engine: str = option("--engine", default="transformers", choices=("transformers", "vllm"),
                         help="transformers serve, or vLLM where installed.")
    template: str | None = template_option()
    trust_remote_code: bool = trust_remote_code_option()


@dataclass
class TemplateInstallOptions(CommandOptions):
    """Everything `yayi template install` is asked to do."""

    COMMAND = "template install"

    model: str = option("MODEL_DIR", argument=True, metavar="MODEL_DIR", complete=complete_directories,
                        help="A local model directory.")
    template: str | None = template_option()
    check_only: bool = option("--check", default=False,
                         help="Only report whether the model agrees with the yayi core; exit 1 if not.")
    trust_remote_code: bool = trust_remote_code_option()
