"""`yayi train --hostfile` across two machines, made on this one: two network namespaces joined by a
veth pair (addresses from the benchmarking range 198.18.0.0/15, which exist only inside them), an sshd
in each with its own config and host key, key-based root login, and pdsh as DeepSpeed's runner.

Everything lives in a temporary directory: keys, sshd configs, an ssh config that a wrapper named
`ssh` (first on PATH) hands to every ssh the runner starts. The user's own ~/.ssh is never read or
written. The fixture stops every sshd and deletes the namespaces (and with them the veth pair).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from yayi_cli.data.checked import load_records
from yayi_cli.inference import generate_answers
from yayi_cli.models import load_model, load_tokenizer
from yayi_cli.prompt import Conversation, PromptTokenizer, resolve_template
from yayi_cli.train.launch import latest_complete_checkpoint

pytestmark = pytest.mark.slow

INTERFACE = "yayi0"
"""The veth end's name in both namespaces: --network-interface names one interface for every machine."""
ADDRESSES = ("198.18.0.1", "198.18.0.2")
UNREACHABLE = "198.18.0.3"
"""In the namespaces' subnet, but nothing answers there: a machine that cannot join."""
RECORDS = [
    {"instruction": "你好", "output": "你好！我是雅意，很高兴为你服务。"},
    {"instruction": "What is YaYi?", "output": "YaYi is a helpful assistant."},
]
SSHD_CONFIG = """\
ListenAddress {address}
HostKey {folder}/host_key
PidFile {folder}/sshd-{address}.pid
AuthorizedKeysFile {folder}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
"""
SSH_CONFIG = """\
Host *
  User root
  IdentityFile {folder}/client_key
  IdentitiesOnly yes
  UserKnownHostsFile {folder}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5
  LogLevel ERROR
"""


def missing_requirement() -> str | None:
    """Why two hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces"
    for program in ("ip", "sshd", "ssh", "ssh-keygen", "pdsh"):
        if shutil.which(program) is None and not Path("/usr/sbin", program).exists():
            return f"needs {program} (apt-get install openssh-server pdsh iproute2)"
    return None


def run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class TwoHosts:
    namespaces: tuple[str, str]
    folder: Path
    """Keys, configs, the hostfile and the `ssh` wrapper."""

    def hostfile(self, *addresses: str) -> Path:
        path = self.folder / f"hostfile-{len(addresses)}"
        path.write_text("".join(f"{address} slots=1\n" for address in addresses), encoding="utf-8")
        return path

    def command(self, *args: str) -> list[str]:
        """`args` run inside the first host, where `yayi train` is typed."""
        return ["ip", "netns", "exec", self.namespaces[0], *args]

    def environment(self) -> dict[str, str]:
        path = f"{self.folder / 'bin'}{os.pathsep}{os.environ['PATH']}"
        return dict(os.environ, PATH=path, HF_HUB_OFFLINE="1")


def make_keys(folder: Path) -> None:
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_key"))
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "client_key"))
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    host_key = (folder / "host_key.pub").read_text(encoding="utf-8").split()[:2]
    (folder / "known_hosts").write_text("".join(f"{a} {' '.join(host_key)}\n" for a in ADDRESSES), encoding="utf-8")
    (folder / "ssh_config").write_text(SSH_CONFIG.format(folder=folder), encoding="utf-8")
    wrapper = folder / "bin" / "ssh"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {folder}/ssh_config "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)


def join_namespaces(namespaces: tuple[str, str]) -> None:
    first, second = namespaces
    run("ip", "link", "add", "name", INTERFACE, "netns", first, "type", "veth", "peer", "name", INTERFACE, "netns", second)
    for namespace, address in zip(namespaces, ADDRESSES):
        run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", INTERFACE)
        run("ip", "-n", namespace, "link", "set", INTERFACE, "up")
        run("ip", "-n", namespace, "link", "set", "lo", "up")


def start_sshd(namespace: str, address: str, folder: Path) -> subprocess.Popen:
    config = folder / f"sshd-{address}.conf"
    config.write_text(SSHD_CONFIG.format(address=address, folder=folder), encoding="utf-8")
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    return subprocess.Popen(["ip", "netns", "exec", namespace, sshd, "-D", "-f", str(config),
                             "-E", str(folder / f"sshd-{address}.log")], start_new_session=True)  # sshd signals its group


def wait_for_ssh(hosts: TwoHosts, address: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        done = subprocess.run(hosts.command("ssh", address, "true"), env=hosts.environment(), capture_output=True, text=True)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"ssh {address}: {done.stderr.strip()}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory) -> TwoHosts:
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("two-hosts")
    namespaces = (f"yayi-{os.getpid()}-a", f"yayi-{os.getpid()}-b")
    made: list[str] = []
    daemons: list[subprocess.Popen] = []
    privilege_folder = Path("/run/sshd")  # sshd refuses to start without it; made only if missing, removed after
    made_privilege_folder = not privilege_folder.exists()
    try:
        for namespace in namespaces:
            try:
                run("ip", "netns", "add", namespace)
            except RuntimeError as error:
                pytest.skip(f"cannot make network namespaces here: {error}")
            made.append(namespace)
        join_namespaces(namespaces)
        make_keys(folder)
        privilege_folder.mkdir(mode=0o755, exist_ok=True)
        hosts = TwoHosts(namespaces, folder)
        daemons += [start_sshd(namespace, address, folder) for namespace, address in zip(namespaces, ADDRESSES)]
        for address in ADDRESSES:
            wait_for_ssh(hosts, address)
        yield hosts
    finally:
        for daemon in daemons:
            daemon.terminate()
            daemon.wait(timeout=30)
        for namespace in made:
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)
        if made_privilege_folder:
            shutil.rmtree(privilege_folder, ignore_errors=True)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("multinode-data") / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS * 4), encoding="utf-8")
    return path


def yayi_train(hosts: TwoHosts, *args: str) -> subprocess.Popen:
    """`yayi train --cpu` started on the first host, with its own process group (as a shell gives it)."""
    command = hosts.command(sys.executable, "-m", "yayi_cli", "train", "--cpu", *args)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=hosts.folder,
                            env=hosts.environment(), start_new_session=True)


def processes_of(run_file: Path) -> list[str]:
    """Every process on either host that belongs to the run (the namespaces share one process table)."""
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if str(run_file) in line and "ps -eo" not in line]


def wait_until_gone(run_file: Path, seconds: float = 30) -> list[str]:
    deadline = time.monotonic() + seconds
    while processes_of(run_file) and time.monotonic() < deadline:
        time.sleep(0.5)
    return processes_of(run_file)


def test_a_run_over_two_hosts_trains_a_rank_on_each_stops_on_ctrl_c_and_resumes(two_hosts, tiny_model_dirs,
                                                                                  small_data, tmp_path):
    output = tmp_path / "run"
    common = ["--hostfile", str(two_hosts.hostfile(*ADDRESSES)), "--network-interface", INTERFACE,
              "--data", str(small_data), "--model", str(tiny_model_dirs["llama"]), "-o", str(output),
              "--micro-batch-size", "1", "--save-steps", "2", "--save-total-limit", "2", "--logging-steps", "1"]
    process = yayi_train(two_hosts, *common, "--max-steps", "100000")
    deadline = time.monotonic() + 600
    while latest_complete_checkpoint(output, []) is None or len(list(output.glob("checkpoint-*"))) < 2:
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()[-3000:]
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    text, _ = process.communicate(timeout=120)
    assert process.returncode == 130, text[-3000:]
    assert "interrupted: all ranks stopped;" in text and "Traceback" not in text
    assert wait_until_gone(output / "run.json") == []

    log = (output / "train.log").read_text(encoding="utf-8")
    for address in ADDRESSES:  # pdsh puts the host before each line a machine's ranks print
        assert any(f" {address}: " in line and " rank " in line for line in log.splitlines())
    trainer_logs = [line for line in log.splitlines() if "| {'loss'" in line]
    assert trainer_logs and all(f" {ADDRESSES[0]}: " in line for line in trainer_logs)  # the first rank's only
    node_environment = (output / "deepspeed_env").read_text(encoding="utf-8").splitlines()
    assert f"GLOO_SOCKET_IFNAME={INTERFACE}" in node_environment and "DS_ACCELERATOR=cpu" in node_environment

    step = int(latest_complete_checkpoint(output, []).name.split("-")[1])
    resumed = yayi_train(two_hosts, *common, "--resume", "auto", "--max-steps", str(step + 2))
    text, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, text[-3000:]
    state = json.loads((output / f"checkpoint-{step + 2}" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == step + 2
    assert json.loads((output / "run.json").read_text(encoding="utf-8"))["world_size"] == 2
    assert wait_until_gone(output / "run.json") == []

    model = load_model(str(output), device="cpu")
    template, _ = resolve_template(None, str(output))
    question = Conversation(load_records([small_data])[0].conversation.turns[:1])
    answers = generate_answers(model, PromptTokenizer(template, load_tokenizer(str(output))), [question], max_new_tokens=8)
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_a_host_that_cannot_join_ends_the_whole_run_at_once_naming_it(two_hosts, tiny_model_dirs, small_data, tmp_path):
    """pdsh cannot reach the third machine: the ranks on the other two would wait for it until
    --dist-timeout; yayi ends the run as soon as pdsh says so."""
    output = tmp_path / "run"
    started = time.monotonic()
    process = yayi_train(two_hosts, "--hostfile", str(two_hosts.hostfile(*ADDRESSES, UNREACHABLE)),
                         "--network-interface", INTERFACE, "--dist-timeout", "600", "--data", str(small_data),
                         "--model", str(tiny_model_dirs["llama"]), "-o", str(output), "--max-steps", "2")
    text, _ = process.communicate(timeout=600)
    assert process.returncode == 1, text[-3000:]
    assert time.monotonic() - started < 300, text[-3000:]
    assert f"{UNREACHABLE} failed, ending the run; its last line: ssh: connect to host {UNREACHABLE}" in text, text[-3000:]
    assert "Traceback" not in text
    assert wait_until_gone(output / "run.json") == []
