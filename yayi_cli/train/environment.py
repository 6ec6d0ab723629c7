"""The environment every rank runs in, on this machine and on the others: what yayi's flags set, what
decides where code and models come from, the user's .deepspeed_env, and what the launcher itself gets."""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

from yayi_cli.models.run_files import TENSORBOARD_DIR
from yayi_cli.runtime.errors import UsageError
from yayi_cli.runtime.terminal import library_environment
from yayi_cli.train.options import TrainOptions
from yayi_cli.train.ranks import Ranks, visible_gpus


USERS_NODE_ENV_FILE = ".deepspeed_env"
FORWARDED_VARIABLES = ("PYTHONPATH", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                       "TRANSFORMERS_OFFLINE")
"""Set here, they decide how a rank finds code and models: the ranks on other machines get them too."""
UNSAFE_IN_SHELL = re.compile(r'["$`\\\n]')
"""DeepSpeed's runner puts each value into a remote shell command inside double quotes."""
RANK_SETTINGS = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def chosen_environment(options: TrainOptions) -> dict[str, str]:
    """The variables that yayi's own flags set for every rank."""
    env = {"DS_ACCELERATOR": "cpu"} if options.cpu else {}
    if options.report_to == "tensorboard" and not os.environ.get("TENSORBOARD_LOGGING_DIR"):
        env["TENSORBOARD_LOGGING_DIR"] = str(Path(options.output) / TENSORBOARD_DIR)  # not OUTPUT/runs: yayi's records
    if options.network_interface:
        env |= {"GLOO_SOCKET_IFNAME": options.network_interface, "NCCL_SOCKET_IFNAME": options.network_interface}
    return env


def users_node_environment() -> dict[str, str]:
    """What the user's own .deepspeed_env files set (DeepSpeed reads the one in the home directory,
    then the one in the working directory; yayi's file replaces that lookup, so it carries them over)."""
    name = os.environ.get("DS_ENV_FILE", USERS_NODE_ENV_FILE)
    found: dict[str, str] = {}
    for path in (Path.home() / name, Path.cwd() / name):
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                key, equals, value = line.partition("=")
                if equals and key.strip():
                    found[key.strip()] = value.strip()
    return found


def node_environment(options: TrainOptions) -> dict[str, str]:
    """What every rank on every machine gets, so a remote rank runs as a local one would: this Python
    environment first on PATH, the variables that decide where code and models come from, the
    user's .deepspeed_env, and what yayi's flags set (those last, so the flags win)."""
    python_bin = str(Path(sys.executable).parent)
    path = [python_bin] + [part for part in os.environ.get("PATH", "").split(os.pathsep) if part and part != python_bin]
    env = {"PATH": os.pathsep.join(path), **RANK_SETTINGS}
    env |= {name: os.environ[name] for name in FORWARDED_VARIABLES if os.environ.get(name)}
    env |= users_node_environment() | chosen_environment(options)
    for name, value in env.items():
        if UNSAFE_IN_SHELL.search(value):
            raise UsageError(f"{name}={value!r}: DeepSpeed's runner cannot pass a value holding \" $ ` or \\ "
                             "to the other machines; change it")
    return env


def loopback_warning(options: TrainOptions, ranks: Ranks) -> str | None:
    """Gloo and NCCL announce the address this machine's name resolves to, unless told an interface:
    a loopback one leaves the machines unable to reach each other (the run waits, then times out)."""
    if ranks.num_nodes < 2 or options.network_interface:
        return None
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        address = None
    if address and not address.startswith("127."):
        return None
    try:
        interfaces = [interface for _, interface in socket.if_nameindex() if interface != "lo"]
    except OSError:
        interfaces = []
    resolves = f"resolves to {address}, a loopback address" if address else "does not resolve to an address"
    return (f"this machine's name {name!r} {resolves}: each rank would announce it and the machines would not "
            f"connect; give --network-interface IFACE, the interface they reach each other on"
            + (f" (here: {', '.join(interfaces)})" if interfaces else ""))


def child_environment(options: TrainOptions, node_env_file: Path | None = None) -> dict[str, str]:
    """The launcher's environment: ours, less what yayi quieted for itself, plus what every rank needs
    (and, for several machines, the file of what the runner exports to them)."""
    env = library_environment(dict(os.environ, **RANK_SETTINGS)) | chosen_environment(options)
    if node_env_file is not None:
        env["DS_ENV_FILE"] = str(node_env_file)
    visible = visible_gpus(options)
    if visible and options.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[: options.gpus])  # --gpus N: the first N of them
    return env
