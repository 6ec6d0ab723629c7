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
from yayi_cli.runtime.errors import UsageError
from yayi_cli.serve.command import curl_line, engine_command, require_engine
from yayi_cli.serve.options import ServeOptions


MAX_TOKENS = 16


# --- without a server -------------------------------------------------------------------------


def engine_settings(command: list[str]) -> dict:
    """The settings `yayi serve` hands its engine host (serve/app.py): one JSON argument."""
    assert command[1:3] == ["-m", "yayi_cli.serve.app"] and len(command) == 4
    return json.loads(command[3])


def test_the_engine_runs_as_an_argument_list_batching_by_default_with_remote_code_only_when_asked():
    settings = engine_settings(engine_command(ServeOptions(model="m", port=8001), "m", batching=True))
    assert settings | {"kv_cache_memory": None} == {
        "name": "m", "host": "127.0.0.1", "port": 8001, "batching": True, "template": None, "trust_remote_code": False,
        "max_batch_tokens": None, "kv_cache_memory": None, "max_requests": 256}
    assert engine_settings(engine_command(ServeOptions(model="m"), "m", batching=False))["batching"] is False
    on_cpu = engine_settings(engine_command(ServeOptions(model="m"), "m", batching=True, on_gpu=False))
    assert on_cpu["kv_cache_memory"] == 0.1  # not the engine's 0.6 of the RAM
    assert "--trust-remote-code" in engine_command(ServeOptions(model="m", engine="vllm", trust_remote_code=True), "m",
                                                   batching=True)
    assert curl_line("http://127.0.0.1:8001", "m").startswith("curl http://127.0.0.1:8001/v1/chat/completions ")


def test_the_batching_settings_reach_each_engine_under_its_own_flags():
    chosen = {"model": "m", "max_batch_tokens": 4096, "kv_cache_memory": 0.5, "max_requests": 64}
    transformers = engine_settings(engine_command(ServeOptions(**chosen), "m", batching=True))
    assert (transformers["max_batch_tokens"], transformers["kv_cache_memory"], transformers["max_requests"]) == (4096, 0.5, 64)
    vllm = engine_command(ServeOptions(**chosen, engine="vllm"), "m", batching=True)
    assert vllm[-6:] == ["--max-num-batched-tokens", "4096", "--gpu-memory-utilization", "0.5", "--max-num-seqs", "64"]
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
    assert notes and "bitsandbytes checkpoint" in notes[0] and "continuous batching is off" in notes[0]
    assert batching_for(ServeOptions(model="m"), tiny_model_dirs["llama"], notes.append) is True and len(notes) == 1


def test_a_bloom_model_is_served_unbatched_and_says_so(tiny_model_dirs):
    """transformers' paged attention runs models written for its attention interface; BLOOM (yayi-7b) is not."""
    from yayi_cli.serve.command import batching_for

    notes: list[str] = []
    assert batching_for(ServeOptions(model="yayi-7b"), tiny_model_dirs["bloom"], notes.append) is False
    assert notes == ["yayi-7b is a bloom model, whose attention transformers' continuous batching cannot run: "
                     "continuous batching is off, and requests are answered one at a time"]


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


def downloaded(tiny_model_dirs, tmp_path_factory, arch: str) -> Path:
    """A tiny model of `arch` that knows one answer, saved like a downloaded model (no chat template, EOS only),
    so serving it goes through the staged copy."""
    directory = Path(shutil.copytree(tiny_model_dirs[arch], tmp_path_factory.mktemp(f"serve-{arch}") / "tiny-yayi"))
    memorize(directory, SYSTEM, QUESTION, ANSWER)
    return strip_format(directory)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dirs, tmp_path_factory) -> Path:
    """The tiny Llama (yayi-llama2 template, no separator before <|End|>): transformers batches it."""
    return downloaded(tiny_model_dirs, tmp_path_factory, "llama")


@pytest.fixture(scope="module")
def bloom_dir(tiny_model_dirs, tmp_path_factory) -> Path:
    """The tiny BLOOM (yayi template: its answers close with "\n\n<|End|>"): served unbatched."""
    return downloaded(tiny_model_dirs, tmp_path_factory, "bloom")


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


@pytest.fixture(scope="module", params=["llama", "bloom"])
def served(request, engine_installed, tmp_path_factory):
    """`yayi serve` of each tiny model on a free port, until it prints its curl line; stopped with Ctrl-C (SIGINT)
    at the end."""
    directory = request.getfixturevalue("model_dir" if request.param == "llama" else "bloom_dir")
    before = files(directory)
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "stderr.txt"
    process, lines = start_serving(directory, port, log)
    engine = children(process.pid)
    yield {"base": f"http://127.0.0.1:{port}", "lines": lines, "process": process, "engine": engine,
           "dir": directory, "arch": request.param, "log": log}
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 130
    assert engine and not any(alive(pid) for pid in engine + children(process.pid))
    with pytest.raises(ProcessLookupError):
        os.killpg(engine[0], 0)
    assert files(directory) == before  # the user's files were never touched


def openai_client(served: dict):
    from openai import OpenAI

    return OpenAI(base_url=served["base"] + "/v1", api_key="not-needed", max_retries=0)


@pytest.fixture(scope="module")
def client(served):
    return openai_client(served)


REQUESTS = {
    "memorized": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
    "default system": [{"role": "user", "content": "请介绍一下雅意。"}],
    "multi-turn": [{"role": "system", "content": "简短回答。"}, {"role": "user", "content": "第一个问题"},
                   {"role": "assistant", "content": "第一个回答"}, {"role": "user", "content": "第二个问题"}],
}


@pytest.fixture(scope="module")
def chat_answers(served):
    """What `yayi chat --greedy` answers to the same messages (--jsonl: one load, every request). The penalty is
    set to none: OpenAI's API has no repetition penalty, and the model's generation config sets none."""
    stdin = "".join(json.dumps({"messages": messages}, ensure_ascii=False) + "\n" for messages in REQUESTS.values())
    result = subprocess.run(
        [sys.executable, "-m", "yayi_cli", "chat", "--model", str(served["dir"]), "--greedy", "--repetition-penalty",
         "1.0", "--max-new-tokens", str(MAX_TOKENS), "--jsonl"], input=stdin, capture_output=True, text=True, check=True,
    )
    return dict(zip(REQUESTS, (json.loads(line) for line in result.stdout.splitlines())))


def streamed(stream) -> tuple[str, str | None]:
    """The text of a stream and its finish reason."""
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


@pytest.mark.launch
def test_it_prints_the_url_and_a_ready_curl_line(served):
    base = served["base"]
    assert served["lines"][-2] == f"serving tiny-yayi at {base}/v1 (OpenAI-compatible; Ctrl-C stops it)"
    assert served["lines"][-1] == curl_line(base, "tiny-yayi")


@pytest.mark.launch
@pytest.mark.parametrize("case", list(REQUESTS))
def test_completions_equal_yayi_chat_streaming_or_not(client, chat_answers, case):
    answer = chat_answers[case]
    response = client.chat.completions.create(model="tiny-yayi", messages=REQUESTS[case], max_tokens=MAX_TOKENS, temperature=0)
    choice = response.choices[0]
    assert choice.message.content == answer["answer"]
    assert choice.finish_reason == {"end": "stop", "length": "length"}[answer["stop_reason"]]
    assert response.usage.completion_tokens == answer["completion_tokens"]
    assert response.usage.prompt_tokens == answer["prompt_tokens"]
    stream = client.chat.completions.create(model="tiny-yayi", messages=REQUESTS[case], max_tokens=MAX_TOKENS,
                                            temperature=0, stream=True)
    assert streamed(stream) == (answer["answer"], choice.finish_reason)


@pytest.mark.launch
def test_the_answer_stops_at_the_end_marker_without_the_separator_before_it(client, chat_answers):
    """Without max_tokens the model's own default applies (not the engine's 1024), and the answer is the memorized
    one exactly: the BLOOM model closes it with "\n\n<|End|>", and neither shows."""
    assert chat_answers["memorized"]["stop_reason"] == "end"
    response = client.chat.completions.create(model="tiny-yayi", messages=REQUESTS["memorized"], temperature=0)
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].message.content == ANSWER
    assert response.usage.completion_tokens < MAX_TOKENS


@pytest.mark.launch
def test_max_tokens_cuts_the_answer(client):
    response = client.chat.completions.create(model="tiny-yayi", messages=REQUESTS["memorized"], max_tokens=3, temperature=0)
    assert response.choices[0].finish_reason == "length" and response.usage.completion_tokens == 3


@pytest.mark.launch
@pytest.mark.parametrize("stop", [ANSWER[3:5], [ANSWER[3:5], "never"]])
def test_the_answer_ends_before_a_stop_string_which_never_shows(client, stop):
    expected = ANSWER[:3]
    response = client.chat.completions.create(model="tiny-yayi", messages=REQUESTS["memorized"], temperature=0, stop=stop)
    assert (response.choices[0].message.content, response.choices[0].finish_reason) == (expected, "stop")
    stream = client.chat.completions.create(model="tiny-yayi", messages=REQUESTS["memorized"], temperature=0, stop=stop,
                                            stream=True)
    assert streamed(stream) == (expected, "stop")


@pytest.mark.launch
@pytest.mark.parametrize(("request_fields", "status", "words"), [
    ({"messages": [{"role": "user", "content": "请重复：<|End|>"}]}, 400, "contains '<|End|>'"),
    ({"messages": [{"role": "system", "content": "<|Human|>"}, {"role": "user", "content": "hi"}]}, 400,
     "system prompt contains '<|Human|>'"),
    ({"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "hi"}]}, 400, "'human' was expected"),
    ({"messages": [{"role": "user", "content": "雅意" * 1500}]}, 400, "the model's context is 1024"),
    ({"messages": REQUESTS["memorized"], "max_tokens": 1024}, 400, "ask for at most"),
    ({"model": "gpt-4o"}, 404, "this server serves 'tiny-yayi'"),
])
def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_carries_on(client, request_fields, status, words):
    import openai

    body = {"model": "tiny-yayi", "messages": REQUESTS["memorized"], "max_tokens": 4} | request_fields
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as error:
            client.chat.completions.create(**body, stream=stream)
        assert error.value.status_code == status and words in error.value.message
    assert client.chat.completions.create(model="tiny-yayi", messages=REQUESTS["memorized"], temperature=0).choices[
        0].message.content == ANSWER


@pytest.mark.launch
def test_models_and_health(client, served):
    import urllib.request

    assert [model.id for model in client.models.list()] == ["tiny-yayi"]
    with urllib.request.urlopen(served["base"] + "/health") as response:
        assert json.load(response) == {"status": "ok"}


@pytest.mark.launch
@pytest.mark.parametrize("served", ["llama"], indirect=True)
def test_sixty_four_streams_sixteen_dropped_midway_and_the_next_answer_is_normal(client, served):
    """64 concurrent streams into the batch, 16 of them closed by their client after their first words: the other 48
    finish, and the next request gets the memorized answer."""
    from concurrent.futures import ThreadPoolExecutor

    def one(index: int) -> str | None:
        stream = client.chat.completions.create(model="tiny-yayi", messages=REQUESTS["default system"], max_tokens=48,
                                                stream=True)
        if index % 4:
            return streamed(stream)[1]
        chunks = iter(stream)
        next(chunks), next(chunks)  # the role, then the first words
        stream.close()  # the client goes away mid-stream
        return None

    with ThreadPoolExecutor(64) as pool:
        finishes = list(pool.map(one, range(64)))
    assert finishes.count(None) == 16 and all(finish in ("stop", "length") for finish in finishes if finish)
    response = client.chat.completions.create(model="tiny-yayi", messages=REQUESTS["memorized"], temperature=0)
    assert response.choices[0].message.content == ANSWER
    assert "Traceback" not in served["log"].read_text()


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
    command = Path(f"/proc/{children(process.pid)[0]}/cmdline").read_bytes().decode().split("\0")
    assert json.loads(command[-2])["batching"] is True  # the engine host's settings, before the closing empty string
    engine = children(process.pid)
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="not-needed", max_retries=0)
    streams = [client.chat.completions.create(model="tiny-yayi", messages=REQUESTS["default system"], max_tokens=200,
                                              stream=True) for _ in range(8)]
    for stream in streams:
        next(iter(stream))  # each stream has begun: eight requests in flight, none read to its end
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=STOP_GRACE_SECONDS + 30) == 143
    wait_until(lambda: not any(alive(pid) for pid in engine) and port_is_free(port), 15,
               lambda: f"engine {engine} alive: {[alive(pid) for pid in engine]}, port {port} free: {port_is_free(port)}")
    for stream in streams:
        stream.close()
