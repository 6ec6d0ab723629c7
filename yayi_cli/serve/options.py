"""What `yayi serve` and `yayi template install` are asked to do, as data."""

from __future__ import annotations

from dataclasses import dataclass

from yayi_cli.options.fields import CommandOptions, complete_directories, option
from yayi_cli.options.shared import model_option, template_option, trust_remote_code_option
from yayi_cli.runtime.errors import UsageError


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
    continuous_batching: bool = option("--continuous-batching", default=True, help=(
        "Batch the requests in flight together (transformers: continuous batching with paged attention; "
        "vLLM always batches, and --no-continuous-batching runs one request at a time)."))
    max_batch_tokens: int | None = option("--max-batch-tokens", default=None, at_least=1, metavar="N",
                                          help="Most tokens one batched step may hold [default: the engine's].")
    kv_cache_memory: float | None = option("--kv-cache-memory", default=None, metavar="FRACTION", help=(
        "Share of free GPU memory (without a GPU: of free RAM) the batched KV cache may take, above 0 and at most 1 "
        "[default: the engine's on a GPU, 0.1 without one]."))
    max_requests: int = option("--max-requests", default=256, at_least=0, metavar="N", help=(
        "Most chat requests answered at once; more get HTTP 429 to retry (0: no bound) [vLLM: its --max-num-seqs, "
        "beyond which requests wait]."))
    template: str | None = template_option()
    trust_remote_code: bool = trust_remote_code_option()

    def check_values(self) -> None:
        super().check_values()
        if self.kv_cache_memory is not None and not 0 < self.kv_cache_memory <= 1:
            raise UsageError(f"--kv-cache-memory must be above 0 and at most 1, got {self.kv_cache_memory:g}")
        if not self.continuous_batching and self.engine == "transformers" and (
                self.max_batch_tokens is not None or self.kv_cache_memory is not None):
            raise UsageError("--max-batch-tokens and --kv-cache-memory set continuous batching, which "
                             "--no-continuous-batching turns off")


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
