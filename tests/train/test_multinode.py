"""`yayi train --hostfile` across two machines made on this one (tests/two_hosts.py: two network
namespaces, an sshd in each, pdsh as DeepSpeed's runner), one CPU rank on each."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ctrl_c_after_two_checkpoints, yayi
from tests.two_hosts import ADDRESSES, INTERFACE, UNREACHABLE, TwoHosts, Unavailable
from tests.two_hosts import two_hosts as make_two_hosts
from yayi_cli.train.checkpoints import latest_complete_checkpoint

pytestmark = [pytest.mark.system, pytest.mark.launch]

@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory) -> TwoHosts:
    try:
        with make_two_hosts(tmp_path_factory.mktemp("two-hosts")) as hosts:
            yield hosts
    except Unavailable as reason:
        pytest.skip(str(reason))


def yayi_train(hosts: TwoHosts, *args: str) -> subprocess.Popen:
    return hosts.yayi_train(*args, cwd=hosts.folder)


def processes_of(run_file: Path) -> list[str]:
    """Every process on either host that belongs to the run (the namespaces share one process table)."""
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=False).stdout
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
              "--micro-batch-size", "1", "--save-steps", "2", "--save-total-limit", "2", "--logging-steps", "1", "--lr", "1e-2"]
    process = yayi_train(two_hosts, *common, "--max-steps", "100000")
    text = ctrl_c_after_two_checkpoints(process, output)
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

    # What the two hosts trained together is what was saved, and it learned: at --lr 1e-2 a few steps take the loss
    # on the training records far below the starting model's.
    def loss(model: Path) -> float:
        result = yayi("eval", "--model", str(model), "--data", str(small_data), "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["metrics"]["loss"]

    assert loss(output) < loss(tiny_model_dirs["llama"]) - 1.0


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
