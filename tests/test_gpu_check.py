"""benchmarks/gpu_check.sh --cpu-smoke: every step of the GPU check runs on tiny shapes, so the script
cannot rot between the sessions that have a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.launch, pytest.mark.timeout(900)]  # every step of the check, one after another


def test_every_step_of_the_gpu_check_runs_on_the_cpu_and_the_table_has_its_numbers(tmp_path):
    out = tmp_path / "gpu-check"
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(out), "--cpu-smoke"], cwd=REPO, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    states = dict(line.split()[:2] for line in (out / "status.txt").read_text().splitlines())
    assert set(states.values()) == {"ok"}, states
    assert {"train", "bare-train", "lora", "qlora", "quantize-8", "quantize-4", "chat", "eval", "dpo", "bare-dpo"} <= set(states)
    table = result.stdout[result.stdout.index("step "):]
    for row in ("train (ZeRO-2, packing)", "lora", "qlora", "quantize 8-bit", "quantize 4-bit", "yayi chat --jsonl", "eval",
                "LoRA-DPO"):
        line = next(line for line in table.splitlines() if line.startswith(row))
        assert line[29:41].strip() not in ("-", ""), line  # a measured number, not a placeholder
    dpo = next(line for line in table.splitlines() if line.startswith("LoRA-DPO"))
    assert dpo[70:77].strip().endswith("x"), dpo  # against the bare TRL script's pairs/s
