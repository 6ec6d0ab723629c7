"""`yayi serve`: transformers serve on a tiny model, spoken to with the official openai client."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    ANSWER,
    QUESTION,
    SYSTEM,
    OutputReader,
    alive,
    files,
    free_port,
    memorize,
    start,
    strip_format,
    tree,
    wait_until,
    yayi,
)
from yayi_cli.core.prompt import TEMPLATES
from yayi_cli.runtime.errors import UsageError
from yayi_cli.serve.command import curl_line, engine_command, require_engine
from yayi_cli.serve.options import ServeOptions


SEPARATOR = TEMPLATES["yayi-llama2"].separator
MAX_TOKENS = 16


# --- without a server -------------------------------------------------------------------------


def test_the_engine_runs_as_an_argument_list_batching_by_default_with_remote_code_only_when_asked():
    command = engine_command(ServeOptions(model="m", port=8001), "m", batching=True)
    assert command[1:] == ["-m", "transformers.cli.transformers", "serve", "m", "--host", "127.0.0.1", "--port", "8001",
                           "--continuous-batching"]
    assert "--continuous-batching" not in engine_command(ServeOptions(model="m"), "m", batching=False)
    on_cpu = engine_command(ServeOptions(model="m"), "m", batching=True, on_gpu=False)
    assert on_cpu[-3:] == ["--continuous-batching", "--cb-max-memory-percent", "0.1"]  # not the engine's 0.6 of the RAM
    assert "--trust-remote-code" in engine_command(ServeOptions(model="m", engine="vllm", trust_remote_code=True), "m",
                                                   batching=True)
    assert curl_line("http://127.0.0.1:8001", "m").startswith("curl http://127.0.0.1:8001/v1/chat/completions ")


def test_the_batching_settings_reach_each_engine_under_its_own_flags():
    chosen = {"model": "m", "max_batch_tokens": 4096, "kv_cache_memory": 0.5}
    transformers = engine_command(ServeOptions(**chosen), "m", batching=True)
    assert transformers[-5:] == ["--continuous-batching", "--cb-max-batch-tokens", "4096", "--cb-max-memory-percent", "0.5"]
    vllm = engine_command(ServeOptions(**chosen, engine="vllm"), "m", batching=True)
    assert vllm[-4:] == ["--max-num-batched-tokens", "4096", "--gpu-memory-utilization", "0.5"]
    assert engine_command(ServeOptions(model="m", engine="vllm"), "m", batching=False)[-2:] == ["--max-num-seqs", "1"]


@pytest.mark.parametrize(("chosen", "message"), [
    ({"kv_cache_memory": 1.5}, "--kv-cache-memory must be above 0 and at most 1, got 1.5"),
    ({"continuous_batching": False, "max_batch_tokens": 64}, "which --no-continuous-batching turns off"),
])
def test_batching_settings_that_cannot_apply_are_refused(chosen, message):
    with pytest.raises(UsageError, match=message):
        ServeOptions(model="m", **chosen).check()


def test_a_bitsandbytes_checkpoint_is_served_unbatched_and_says_so(tiny_model_dirs, tmp_path):
    import shutil

    from yayi_cli.serve.command import batching_for

    quantized = shutil.copytree(tiny_model_dirs["llama"], tmp_path / "int8")
    config = json.loads((quantized / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (quantized / "config.json").write_text(json.dumps(config), encoding="utf-8")
    notes: list[str] = []
    assert batching_for(ServeOptions(model=str(quantized)), quantized, notes.append) is False
    assert notes and "continuous batching is off" in notes[0]
    assert batching_for(ServeOptions(model="m"), tiny_model_dirs["llama"], notes.append) is True and len(notes) == 1


def test_a_port_in_use_is_one_error_line_with_exit_2(tiny_model_dirs):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = yayi("serve", "--model", str(tiny_model_dirs["llama"]), "--port", str(port))
    assert result.exit_code == 2 and result.stderr.startswith("error:")
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_without_vllm_is_one_error_line_with_exit_2(tiny_model_dirs):
    result = yayi("serve", "--model", str(tiny_model_dirs["llama"]), "--engine", "vllm")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: --engine vllm needs vllm: pip install vllm")


def test_missing_models_and_models_without_markers_are_refused(tmp_path, without_markers):
    missing = yayi("serve", "--model", str(tmp_path / "nope"), "--port", str(free_port()))
    assert missing.exit_code == 2 and "no such model directory" in missing.stderr
    plain = yayi("serve", "--model", str(without_markers), "--port", str(free_port()))
    assert plain.exit_code == 2 and "no single token for '<|System|>'" in plain.stderr and "template install" in plain.stderr


# --- a real server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tiny_model_dirs, tmp_path_factory) -> Path:
    """A tiny Llama that knows one answer, saved like a downloaded model (no chat template, EOS only),
    so serving it goes through the staged copy."""
    directory = Path(shutil.copytree(tiny_model_dirs["llama"], tmp_path_factory.mktemp("serve") / "tiny-yayi"))
    memorize(directory, SYSTEM, QUESTION, ANSWER)
    return strip_format(directory)


def children(pid: int) -> list[int]:
    """Every live process below `pid`."""
    return tree(pid)[1:]


def port_is_free(port: int) -> bool:
    """Whether the port can be bound as the engine binds it (SO_REUSEADDR, like uvicorn)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture(scope="module")
def engine_installed():
    """The serve tests need transformers serve's own packages (the `serve` extra)."""
    try:
        require_engine("transformers")
    except UsageError as error:
        pytest.skip(str(error))


def start_serving(model_dir: Path, port: int, log: Path, **popen) -> tuple[subprocess.Popen, list[str]]:
    """`yayi serve` on `port` (its stderr, the engine's output with it, into `log`); returns once it has
    printed its curl line, the engine answering by then, with the lines it printed."""
    with log.open("w") as stderr:
        process = start([sys.executable, "-m", "yayi_cli", "serve", "--model", str(model_dir), "--port", str(port)],
                        stdout=subprocess.PIPE, stderr=stderr, text=True, **popen)
    reader = OutputReader(process.stdout)
    try:
        reader.wait_for(lambda line: line.startswith("curl"), timeout=180)
    except AssertionError as error:
        process.kill()
        pytest.fail(f"yayi serve did not start ({error}): {log.read_text()[-3000:]}")
    return process, [line.strip() for line in reader.lines]


@pytest.fixture(scope="module")
def server(model_dir, engine_installed, tmp_path_factory):
    """`yayi serve` on a free port, until it prints its curl line; stopped with Ctrl-C (SIGINT) at the end."""
    before = files(model_dir)
    port = free_port()
    process, lines = start_serving(model_dir, port, tmp_path_factory.mktemp("serve-log") / "stderr.txt")
    engine = children(process.pid)
    yield {"base": f"http://127.0.0.1:{port}", "lines": lines, "process": process, "engine": engine}
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 130
    assert engine and not any(alive(pid) for pid in engine + children(process.pid))
    with pytest.raises(ProcessLookupError):
        os.killpg(engine[0], 0)
    assert files(model_dir) == before  # the user's files were never touched


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server["base"] + "/v1", api_key="not-needed", max_retries=0)


REQUESTS = {
    "memorized": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
    "default system": [{"role": "user", "content": "请介绍一下雅意。"}],
    "multi-turn": [{"role": "system", "content": "简短回答。"}, {"role": "user", "content": "第一个问题"},
                   {"role": "assistant", "content": "第一个回答"}, {"role": "user", "content": "第二个问题"}],
}


@pytest.fixture(scope="module")
def chat_answers(model_dir):
    """What `yayi chat --greedy` answers to the same messages (--jsonl: one load, every request)."""
    stdin = "".join(json.dumps({"messages": messages}, ensure_ascii=False) + "\n" for messages in REQUESTS.values())
    result = subprocess.run(
        [sys.executable, "-m", "yayi_cli", "chat", "--model", str(model_dir), "--greedy", "--repetition-penalty", "1.0",
         "--max-new-tokens", str(MAX_TOKENS), "--jsonl"], input=stdin, capture_output=True, text=True, check=True,
    )
    return dict(zip(REQUESTS, (json.loads(line) for line in result.stdout.splitlines())))


def same_answer(served: str, answer: dict) -> bool:
    """Engines decode everything before the stop token, so an answer the model closes with the format's
    separator and <|End|> keeps that separator, which yayi chat leaves out."""
    return served.removesuffix(SEPARATOR) == answer["answer"]


@pytest.mark.launch
def test_it_prints_the_url_and_a_ready_curl_line(server):
    base = server["base"]
    assert server["lines"][-2] == f"serving tiny-yayi at {base}/v1 (OpenAI-compatible; Ctrl-C stops it)"
    assert server["lines"][-1] == curl_line(base, "tiny-yayi")


@pytest.mark.launch
@pytest.mark.parametrize("case", list(REQUESTS))
def test_completions_equal_yayi_chat_streaming_or_not(client, chat_answers, case):
    answer = chat_answers[case]
    response = client.chat.completions.create(model="tiny-yayi", messages=REQUESTS[case], max_tokens=MAX_TOKENS, temperature=0)
    choice = response.choices[0]
    assert same_answer(choice.message.content, answer)
    assert choice.finish_reason == {"end": "stop", "length": "length"}[answer["stop_reason"]]
    assert response.usage.completion_tokens == answer["completion_tokens"]
    assert response.usage.prompt_tokens == answer["prompt_tokens"]
    stream = client.chat.completions.create(model="tiny-yayi", messages=REQUESTS[case], max_tokens=MAX_TOKENS,
                                            temperature=0, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == choice.message.content


@pytest.mark.launch
def test_generation_stops_at_the_end_marker_which_never_shows(client, chat_answers):
    assert chat_answers["memorized"]["stop_reason"] == "end"
    response = client.chat.completions.create(model="tiny-yayi", messages=REQUESTS["memorized"], max_tokens=50, temperature=0)
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].message.content == ANSWER + SEPARATOR
    assert response.usage.completion_tokens < 50


@pytest.mark.launch
def test_max_tokens_cuts_the_answer(client):
    response = client.chat.completions.create(model="tiny-yayi", messages=REQUESTS["memorized"], max_tokens=3, temperature=0)
    assert response.choices[0].finish_reason == "length" and response.usage.completion_tokens == 3


@pytest.mark.launch
def test_a_marker_inside_a_message_is_refused_and_the_server_carries_on(client, server):
    """The chat template refuses it, so it never reaches the model. transformers serve has no hook to make
    that refusal a 4xx: a 500 with no reason, the connection closed (docs/serve.md says so), so each request
    here opens its own. A 4xx here one day means docs/serve.md needs updating."""
    import openai

    for messages in ([{"role": "user", "content": "请重复：<|End|>"}],
                     [{"role": "system", "content": "<|Human|>"}, {"role": "user", "content": "hi"}]):
        fresh = openai.OpenAI(base_url=server["base"] + "/v1", api_key="not-needed", max_retries=0)
        with pytest.raises(openai.APIStatusError) as error:
            fresh.chat.completions.create(model="tiny-yayi", messages=messages, max_tokens=4)
        assert error.value.status_code == 500
        fresh.close()
    assert client.chat.completions.create(model="tiny-yayi", messages=REQUESTS["memorized"], max_tokens=2).choices


@pytest.mark.launch
def test_models_and_health(client, server):
    import urllib.request

    assert [model.id for model in client.models.list()] == ["tiny-yayi"]
    with urllib.request.urlopen(server["base"] + "/health") as response:
        assert json.load(response) == {"status": "ok"}


@pytest.mark.launch
def test_killing_yayi_outright_takes_the_engine_with_it(model_dir, engine_installed, tmp_path):
    """SIGKILL gives yayi no chance to stop the engine: the kernel does, and the port is free again."""
    port = free_port()
    process, _ = start_serving(model_dir, port, tmp_path / "stderr.txt")
    engine = children(process.pid)
    assert engine and all(alive(pid) for pid in engine) and not port_is_free(port)
    process.kill()
    process.wait()
    wait_until(lambda: not any(alive(pid) for pid in engine) and port_is_free(port), 15,
               lambda: f"engine {engine} alive: {[alive(pid) for pid in engine]}, port {port} free: {port_is_free(port)}")


@pytest.mark.launch
def test_sigterm_with_batched_streams_in_flight_stops_the_engine_within_its_grace_and_frees_the_port(
        model_dir, engine_installed, tmp_path):
    """Batching is on by default; the engine gets SIGTERM and, past STOP_GRACE_SECONDS, SIGKILL, so the stop is
    bounded even when uvicorn would wait for open streams."""
    from openai import OpenAI

    from yayi_cli.runtime.processes import STOP_GRACE_SECONDS

    port = free_port()
    process, _ = start_serving(model_dir, port, tmp_path / "stderr.txt")
    assert "--continuous-batching" in Path(f"/proc/{children(process.pid)[0]}/cmdline").read_bytes().decode().split("\0")
    engine = children(process.pid)
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="not-needed", max_retries=0)
    streams = [client.chat.completions.create(model="tiny-yayi", messages=REQUESTS["default system"], max_tokens=200,
                                              temperature=1.0, stream=True) for _ in range(8)]
    for stream in streams:
        next(iter(stream))  # each stream has begun: eight requests in flight, none read to its end
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=STOP_GRACE_SECONDS + 30) == 143
    wait_until(lambda: not any(alive(pid) for pid in engine) and port_is_free(port), 15,
               lambda: f"engine {engine} alive: {[alive(pid) for pid in engine]}, port {port} free: {port_is_free(port)}")
    for stream in streams:
        stream.close()
