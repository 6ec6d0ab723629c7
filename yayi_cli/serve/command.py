"""`yayi serve`: an OpenAI-compatible endpoint from an existing engine (`transformers serve`, or vLLM).

yayi only prepares the model and watches the engine: a model that lacks the chat template or the
stop ids is served from a staged folder that links to the user's files and holds corrected copies
of the few files that change (the user's directory is never modified); the engine runs as an
argument list in its own process group, so Ctrl-C stops all of it and nothing is left behind; the
kernel kills it when yayi ends without a chance to stop it (SIGKILL): it holds nothing to save.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from yayi_cli.runtime.atomic import scratch_folder
from yayi_cli.runtime.errors import UsageError
from yayi_cli.runtime.listening import answers, require_free_port
from yayi_cli.runtime.packages import install_hint, require_packages
from yayi_cli.runtime.processes import Stopped, dies_with_parent, stop_group, stop_signals_raise
from yayi_cli.serve.app import EngineSettings
from yayi_cli.serve.options import ServeOptions


ENGINE_PACKAGES = {
    "transformers": (("fastapi", "uvicorn", "openai"), install_hint("serve")),
    "vllm": (("vllm",), "pip install vllm (Linux with a GPU)"),
}


def require_engine(engine: str) -> None:
    """One line naming what to install when the engine's packages are missing (ServeOptions has
    refused an engine that is not one of ENGINE_PACKAGES)."""
    packages, hint = ENGINE_PACKAGES[engine]
    require_packages(packages, f"--engine {engine}", hint)


CPU_KV_CACHE_SHARE = 0.1
"""The share of free memory transformers' batched KV cache takes on a machine without a GPU, unless --kv-cache-memory
says otherwise. The engine's own default there is 0.6: a tiny model's engine took 14 GB here, and a second one was
killed for memory."""


def engine_command(options: ServeOptions, name: str, *, batching: bool, on_gpu: bool = True) -> list[str]:
    """The engine's argv, batching or not: transformers serve's app in yayi's host process (serve/app.py), or
    vLLM's OpenAI server."""
    tokens = options.max_batch_tokens
    memory = options.kv_cache_memory or (None if on_gpu or options.engine == "vllm" else CPU_KV_CACHE_SHARE)
    if options.engine == "vllm":
        settings = [*(["--max-num-batched-tokens", str(tokens)] if tokens else []),
                    *(["--gpu-memory-utilization", f"{memory:g}"] if memory else []),
                    *([] if batching else ["--max-num-seqs", "1"]),
                    *(["--max-num-seqs", str(options.max_requests)] if batching and options.max_requests else [])]
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", name, "--served-model-name",
                name, "--host", options.host, "--port", str(options.port), *settings,
                *(["--trust-remote-code"] if options.trust_remote_code else [])]
    settings = EngineSettings(name=name, host=options.host, port=options.port, batching=batching,
                              template=options.template, trust_remote_code=options.trust_remote_code,
                              max_batch_tokens=tokens if batching else None, kv_cache_memory=memory if batching else None,
                              max_requests=options.max_requests)
    return [sys.executable, "-m", "yayi_cli.serve.app", settings.to_argument()]


def gpu_present() -> bool:
    import torch

    return torch.cuda.is_available()


def unbatchable(directory: Path, trust_remote_code: bool) -> str | None:
    """Why transformers cannot batch this model, or None: its paged attention takes plain weights (not a bitsandbytes
    checkpoint) and models written for its attention interface (Llama is; BLOOM, yayi-7b's, is not)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from yayi_cli.models.weights import is_quantized

    if is_quantized(directory):
        return "is a bitsandbytes checkpoint, which transformers cannot batch"
    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_class is not None and not model_class.is_backend_compatible():
        return f"is a {config.model_type} model, whose attention transformers' continuous batching cannot run"
    return None


def batching_for(options: ServeOptions, directory: Path, note: Callable[[str], None]) -> bool:
    """Whether the engine batches this model: as asked, unless transformers cannot batch it, which is said in a line
    and the model is served one request at a time."""
    if not (options.continuous_batching and options.engine == "transformers"):
        return options.continuous_batching
    reason = unbatchable(directory, options.trust_remote_code)
    if reason:
        note(f"{options.model} {reason}: continuous batching is off, and requests are answered one at a time")
    return reason is None


@contextmanager
def served_model(options: ServeOptions, note: Callable[[str], None]) -> Iterator[tuple[Path, str]]:
    """A run folder holding the model under its own name (the id clients send): a link to the user's
    directory when it has the YaYi format, else a staged folder with the format added."""
    from yayi_cli.core.prompt import GENERATION_CONFIG_FILE, save_model_format
    from yayi_cli.models.loading import load_for_task
    from yayi_cli.models.reference import resolve_model_reference
    from yayi_cli.runtime.hub import download_snapshot
    from yayi_cli.serve.template_install import format_problems

    reference = resolve_model_reference(options.model)
    local = Path(reference).is_dir()
    directory = (Path(reference) if local else download_snapshot(reference, remote_code=options.trust_remote_code)).resolve()
    name = directory.name if local else reference.rsplit("/", 1)[-1]  # a hub snapshot's folder is a commit hash
    loaded = load_for_task(str(directory), template=options.template, trust_remote_code=options.trust_remote_code,
                           model_weights=False)  # refuses a tokenizer without the markers, as every command does
    template, tokenizer = loaded.template, loaded.tokenizer
    problems = format_problems(directory, tokenizer, template)
    with scratch_folder(Path(tempfile.gettempdir()) / "yayi-serve") as run:
        served = run / name
        if not problems:
            served.symlink_to(directory, target_is_directory=True)
        else:
            note(f"{options.model}: {'; '.join(problems)}. Serving a staged copy with the template {template.name} "
                 f"and stop ids (your files are unchanged; `yayi template install` adds them for good)")
            served.mkdir()
            if (directory / GENERATION_CONFIG_FILE).is_file():
                (served / GENERATION_CONFIG_FILE).write_bytes((directory / GENERATION_CONFIG_FILE).read_bytes())
            save_model_format(served, tokenizer, template)
            for path in directory.iterdir():  # linked only now, so no write above can go through a link
                if not (served / path.name).exists():
                    (served / path.name).symlink_to(path)
        yield Path(run), name




def curl_line(base: str, name: str) -> str:
    body = json.dumps({"model": name, "messages": [{"role": "user", "content": "你好"}]}, ensure_ascii=False)
    return f"curl {base}/v1/chat/completions -H 'Content-Type: application/json' -d {shlex.quote(body)}"


def serve(options: ServeOptions, say: Callable[[str], None], note: Callable[[str], None]) -> int:
    """Run the engine until it exits (its status), Ctrl-C (130) or SIGTERM/SIGHUP (128 + the signal)."""
    options.check()
    require_engine(options.engine)
    require_free_port(options.host, options.port)
    host = f"[{options.host}]" if ":" in options.host else options.host
    base = f"http://{host}:{options.port}"
    with stop_signals_raise(), served_model(options, note) as (run, name):
        env = dict(os.environ, HF_HUB_DISABLE_UPDATE_CHECK="1")
        command = engine_command(options, name, batching=batching_for(options, (run / name).resolve(), note),
                                 on_gpu=gpu_present())
        note(f"starting {options.engine} serve on {base} (loading the model)")
        process = subprocess.Popen(command, cwd=run, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr,
                                   start_new_session=True,
                                   preexec_fn=dies_with_parent(signal.SIGKILL))  # noqa: PLW1509 - fork-safe
        try:
            return _watch(process, base, name, say)
        except KeyboardInterrupt:
            return 130
        except Stopped as stopped:
            return stopped.exit_code
        finally:
            stop_group(process)


def _watch(process: subprocess.Popen[bytes], base: str, name: str, say: Callable[[str], None]) -> int:
    while not answers(f"{base}/health"):
        if process.poll() is not None:
            raise UsageError(f"the engine stopped before it was ready (exit {process.returncode}); its output is above")
        time.sleep(0.25)
    say(f"serving {name} at {base}/v1 (OpenAI-compatible; Ctrl-C stops it)")
    say(curl_line(base, name))
    return process.wait()
