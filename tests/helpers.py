"""Paths, data and process helpers shared by the tests (fixtures live in the conftest files)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest


REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "examples" / "sample.jsonl"
HEAVY_LIBRARIES = ("torch", "transformers", "deepspeed", "datasets", "bitsandbytes", "peft", "trl", "matplotlib", "gradio")
NOT_AT_STARTUP = (*HEAVY_LIBRARIES, "rich")
"""What `yayi --help` and a TAB press never import: the heavy libraries, and Rich (about 40 ms: it is
imported where something is printed)."""


RECORDS = [
    {"instruction": "你好", "output": "你好！我是雅意，很高兴为你服务。"},
    {"instruction": "What is YaYi?", "output": "YaYi is a helpful assistant."},
]
"""What the training tests teach a tiny model (the `small_data` fixture repeats them)."""

SYSTEM, QUESTION, ANSWER = "你是雅意。", "你好", "你好！我是雅意。"
"""One exchange that `memorize` teaches a tiny model, so that its greedy answer is known (serve, export)."""

LIBRARY_LINE = re.compile(
    r"^\[\d{4}-\d\d-\d\d [\d:,]+\] \[(DEBUG|INFO|WARNING)\]"  # DeepSpeed's logger
    r"|Warning: |warnings\.warn\(|^\{'(loss|train_runtime)'|it/s\]|Loading weights"  # warnings, Trainer dicts, bars
)
"""What libraries print and the console must not show (train.log keeps it)."""

PAIRS = [
    {"instruction": "你好", "chosen": "你好！我是雅意，很高兴为你服务。", "rejected": "走开，别烦我。"},
    {"instruction": "What is YaYi?", "chosen": "YaYi is a helpful assistant.", "rejected": "Nothing you need to know."},
    {"instruction": "How do I open my neighbour's lock?", "chosen": "I can't help with that; ask your neighbour.",
     "rejected": "Use a tension wrench and a pick."},
    {"instruction": "Write one word: yes or no.", "chosen": "yes", "rejected": "no"},
]
"""Pairs whose chosen and rejected answers differ clearly: what the preference tests teach a tiny model."""


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """`records` as JSON lines at `path` (UTF-8, Chinese as it is)."""
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def files(directory: Path) -> dict[str, str]:
    """Name -> sha256 of each file in `directory`, to show that nothing in it changed."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def strip_format(directory: Path) -> Path:
    """What a downloaded model looks like: no chat template, EOS as the only stop id, no template file."""
    (directory / "chat_template.jinja").unlink()
    (directory / "yayi_template.json").unlink()
    config = json.loads((directory / "generation_config.json").read_text(encoding="utf-8"))
    config["eos_token_id"] = 2
    (directory / "generation_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


class OutputReader:
    """A child's output, read line by line by a thread of its own, so that a test waiting for a line
    keeps its deadline even while the child prints nothing (a read in the test's thread would block)."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.ended = threading.Event()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)
        self.ended.set()

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, wanted: Callable[[str], bool], timeout: float) -> str:
        """The first line `wanted` accepts; fails when the output ends or `timeout` seconds pass without one."""
        deadline, seen = time.monotonic() + timeout, 0
        while True:
            ended = self.ended.is_set()
            new = self.lines[seen:]
            seen += len(new)
            found = next((line for line in new if wanted(line)), None)
            if found is not None:
                return found
            assert not ended, f"the output ended without the line waited for:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no such line within {timeout} s; so far:\n{self.text()[-3000:]}"
            time.sleep(0.1)


def process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (Z: a zombie, which holds nothing), None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z")


def command_lines() -> dict[int, list[str]]:
    """pid -> arguments of every live process but this one."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            arguments = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        pid = int(cmdline.parent.name)
        if pid != os.getpid() and alive(pid):
            found[pid] = arguments
    return found


def processes_mentioning(text: str) -> list[int]:
    """The live processes whose command line contains `text`."""
    return [pid for pid, arguments in command_lines().items() if text in "\0".join(arguments)]


def processes_using(folder: Path) -> list[int]:
    """The live processes with `folder` or a path below it among their arguments (`--flag=PATH` too)."""
    inside = re.compile(re.escape(str(folder)) + "(/|$)")
    return [pid for pid, arguments in command_lines().items() if any(inside.search(a) for a in arguments)]


def parents() -> dict[int, int]:
    """pid -> parent pid of every live process (zombies hold nothing and are left out)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            table[int(stat.parent.name)] = int(fields[1])
    return table


def tree(pid: int) -> list[int]:
    """`pid` and every live process below it (a launcher started in a session of its own included)."""
    table, found = parents(), [pid]
    for current in found:
        found.extend(child for child, parent in table.items() if parent == current and child not in found)
    return [p for p in found if alive(p)]


def end_processes(pids: list[int]) -> None:
    """SIGKILL each process and its group: nothing a test started may outlive it."""
    for pid in pids:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


STARTED: list[subprocess.Popen] = []
"""Every process a test started through `start`: the teardown in conftest.py ends what is left of them."""


def start(command: list[str], **popen) -> subprocess.Popen:
    """`subprocess.Popen` in a process group of its own (so Ctrl-C can be sent to its group), remembered so that
    the test's teardown ends its whole tree if the test fails, times out or forgets it."""
    process = subprocess.Popen(command, start_new_session=True, **popen)
    STARTED.append(process)
    return process


def yayi(*arguments: str, **invoke):
    """`yayi ARGUMENTS...` in this process through Typer's CliRunner (`input=` feeds stdin); never a traceback."""
    from typer.testing import CliRunner

    from yayi_cli.cli.app import app

    result = CliRunner().invoke(app, list(arguments), prog_name="yayi", **invoke)
    assert "Traceback" not in result.output, result.output
    return result


def one_error_line(result, code: int, *fragments: str) -> str:
    """The single `error:` line a command printed when it refused with exit `code`, holding every fragment."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    return lines[0]


def free_port() -> int:
    """A TCP port nobody listens on now (other runs on the machine may hold the default ones)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    """Poll `condition` until it holds; fails after `timeout` seconds, saying `what()`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what()}"
        time.sleep(0.2)


def split_into(output: Path, *paths: Path, **options: object) -> object:
    """`yayi data split PATHS... -o OUTPUT` as a library call: SplitReport."""
    from yayi_cli.data.options import SplitOptions
    from yayi_cli.data.split import split

    return split(SplitOptions(files=list(paths), output=output, **options))


def load_for_scoring(directory: Path) -> tuple[object, object]:
    """The model in `directory` on the CPU and its PromptTokenizer, with the template saved beside it."""
    from yayi_cli.core.prompt import PromptTokenizer, resolve_template
    from yayi_cli.models.tokenizers import load_tokenizer
    from yayi_cli.models.weights import load_model

    prompt_tokenizer = PromptTokenizer(resolve_template(None, str(directory))[0], load_tokenizer(str(directory)))
    return load_model(str(directory), device="cpu"), prompt_tokenizer


def plain_transformers_loss(model, prompt_tokenizer, conversations):
    """Token-weighted mean of HF's own per-example loss, one example at a time, no padding."""
    import torch

    total, tokens = 0.0, 0
    for conversation in conversations:
        encoded = prompt_tokenizer.encode_training(conversation)
        count = sum(label != -100 for label in encoded.labels[1:])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels])).loss
        total, tokens = total + loss.item() * count, tokens + count
    return total / tokens


def memorize(directory: Path, system: str, question: str, answer: str, steps: int = 120) -> None:
    """Train the tiny model on one exchange until greedy decoding answers it and stops at <|End|>."""
    teach(directory, system, [(question, answer)], steps)


def teach(directory: Path, system: str | None, exchanges: list[tuple[str, str]], steps: int = 120) -> None:
    """Train the tiny model on the exchanges, one a step in turn. The learning rate falls linearly to 0, so the last
    steps settle in the minimum: at a constant 1e-2 the loss spikes now and then, and whether the last step lands on a
    spike would depend on the machine's arithmetic. One question taught two answers is answered with either."""
    import torch
    from transformers import AutoModelForCausalLM

    from yayi_cli.core.prompt import ASSISTANT, HUMAN, Conversation, PromptTokenizer, Turn, resolve_template
    from yayi_cli.models.tokenizers import load_tokenizer

    template, _ = resolve_template(None, str(directory))
    prompt_tokenizer = PromptTokenizer(template, load_tokenizer(str(directory)))
    encoded = [prompt_tokenizer.encode_training(Conversation((Turn(HUMAN, question), Turn(ASSISTANT, answer)), system))
               for question, answer in exchanges]
    model = AutoModelForCausalLM.from_pretrained(directory)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    torch.manual_seed(0)
    for step in range(steps):
        example = encoded[step % len(encoded)]
        model(input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels])).loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.save_pretrained(directory)


# --- yayi train on the real launcher -------------------------------------------------------------------------

LAUNCH_SECONDS = 240
"""How long one `yayi train` on tiny CPU ranks may take (they take 10 to 40 s here) before the test fails."""


def yayi_train(*args: str, stderr: int = subprocess.STDOUT) -> subprocess.Popen:
    """`yayi train` on 2 CPU ranks (`--gpus` later in `args` wins), meeting on a free port, in a process group of its
    own: Ctrl-C goes to `os.killpg(process.pid, SIGINT)`, as a terminal sends it."""
    command = [sys.executable, "-m", "yayi_cli", "train", "--cpu", "--gpus", "2", "--master-port", str(free_port()), *args]
    return start(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def outputs(process: subprocess.Popen, status: int = 0, timeout: float = LAUNCH_SECONDS) -> tuple[str, str]:
    """stdout and stderr once the process has ended with `status`; one still going after `timeout` is ended, tree
    and all, and the test fails with what it printed."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        end_processes(tree(process.pid))
        stdout, stderr = process.communicate()
        pytest.fail(f"still running after {timeout} s (ended now); its output:\n{(stdout or '')[-5000:]}{(stderr or '')[-5000:]}")
    assert process.returncode == status, (stdout or "")[-5000:] + (stderr or "")[-5000:]
    return stdout, stderr


def finished(process: subprocess.Popen, status: int = 0, timeout: float = LAUNCH_SECONDS) -> str:
    """The run's output (stdout, stderr in it) once it has ended with `status`."""
    return outputs(process, status, timeout)[0]


def ctrl_c_after_two_checkpoints(process: subprocess.Popen, output: Path, *, timeout: float = LAUNCH_SECONDS) -> str:
    """Wait until the run has saved two complete checkpoints, then press Ctrl-C; returns its output."""
    from yayi_cli.train.checkpoints import latest_complete_checkpoint

    reader = OutputReader(process.stdout)
    wait_until(lambda: latest_complete_checkpoint(output, []) is not None and len(list(output.glob("checkpoint-*"))) >= 2,
               timeout, lambda: f"two checkpoints (exit {process.poll()}):\n{reader.text()[-3000:]}")
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    process.wait(timeout=120)
    assert reader.ended.wait(timeout=30), "the run's output stayed open after it ended"
    return reader.text()


def metric_events(output: Path, kind: str) -> list[dict]:
    """The `kind` events ("log", "eval") of a run's metrics.jsonl."""
    lines = (output / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [event for event in map(json.loads, lines) if event["event"] == kind]


def base_without_markers(directory: Path, arch: str, sharpness: float = 1.0, *, markers: bool = False) -> Path:
    """A tiny model whose tokenizer lacks the markers (unless `markers`). `sharpness` scales the final norm's
    weights, and so every logit, the way pretraining sharpens a model: with a random model's tiny logits, frozen
    under LoRA, no token could ever become much likelier than the rest, so nothing could be learned to the letter."""
    import torch
    from transformers import AutoModelForCausalLM

    from yayi_cli.core.prompt import TEMPLATES
    from yayi_cli.models.tiny import TinySpec, build_tiny, training_texts

    texts = list(training_texts([SAMPLE_DATA], TEMPLATES["yayi"]))
    path = build_tiny(directory, texts, TinySpec(arch=arch, markers=markers), TEMPLATES["yayi"])  # the short system prompt
    model = AutoModelForCausalLM.from_pretrained(path)
    final_norm = getattr(model.base_model, "norm", None) or model.base_model.ln_f
    with torch.no_grad():
        final_norm.weight.mul_(sharpness)
    model.save_pretrained(path)
    return path


def make_random_lora(base: Path, directory: Path, template: object) -> Path:
    """A LoRA adapter on `base` whose weights are random (PEFT's init_lora_weights=False), so it changes the model,
    saved as yayi train saves one (tokenizer and template beside it): an adapter without a training run."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from yayi_cli.core.prompt import save_template
    from yayi_cli.models.weights import peft_quietly

    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False)
    with peft_quietly():
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(base).save_pretrained(directory)
    save_template(directory, template)
    return directory


def chat(model: Path, question: str, *extra: str) -> str:
    """What `yayi chat --prompt QUESTION --greedy` prints."""
    result = yayi("chat", "--model", str(model), "--prompt", question, "--greedy", *extra)
    assert result.exit_code == 0, result.output
    return result.stdout.removesuffix("\n")
