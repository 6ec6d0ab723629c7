"""Two machines made on this one, for the multi-machine training test and benchmark: two network
namespaces joined by a veth pair (addresses from the benchmarking range 198.18.0.0/15, which exist only
inside them), an sshd in each with its own config and host key, key-based root login.

Everything lives in one temporary directory: keys, sshd configs, an ssh config that a wrapper named
`ssh` (first on PATH) hands to every ssh that DeepSpeed's runner and pdsh start. The user's own
~/.ssh is never read or written. Leaving the context stops every sshd and deletes the namespaces
(and with them the veth pair).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import start


class Unavailable(Exception):
    """This machine cannot make the two hosts (the message says why)."""


INTERFACE = "yayi0"
"""The veth end's name in both namespaces: --network-interface names one interface for every machine."""
ADDRESSES = ("198.18.0.1", "198.18.0.2")
UNREACHABLE = "198.18.0.3"
"""In the namespaces' subnet, but nothing answers there: a machine that cannot join."""
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
    done = subprocess.run(command, capture_output=True, text=True, check=False)
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

    def yayi_train(self, *args: str, cwd: Path) -> subprocess.Popen:
        """`yayi train --cpu` started on the first host, with its own process group (as a shell gives it)."""
        return start(self.command(sys.executable, "-m", "yayi_cli", "train", "--cpu", *args), stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT, text=True, cwd=cwd, env=self.environment())

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
        done = subprocess.run(hosts.command("ssh", address, "true"), env=hosts.environment(), capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"ssh {address}: {done.stderr.strip()}")
        time.sleep(0.5)


@contextlib.contextmanager
def two_hosts(folder: Path) -> Iterator[TwoHosts]:
    """Two hosts reachable over ssh from each other, for as long as the context lasts."""
    reason = missing_requirement()
    if reason:
        raise Unavailable(reason)
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
                raise Unavailable(f"cannot make network namespaces here: {error}") from None
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
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)
        if made_privilege_folder:
            shutil.rmtree(privilege_folder, ignore_errors=True)
