"""The names of the files and folders a training run writes, shared by the launcher, its console and the ranks.

A leaf module (it imports nothing from yayi_cli): every side names the same files without importing
another side, and a rank imports nothing of the launcher's to find them.
"""

from __future__ import annotations

import re


WORKER_MODULE = "yayi_cli.train.worker"
"""What the `deepspeed` launcher starts on every rank (`--module`)."""
DS_CONFIG_FILE = "ds_config.json"
RUN_FILE = "run.json"
"""OUTPUT/run.json: the latest launch's record, which its ranks read; CHECKPOINT/run.json: the saving launch's."""
RUNS_DIR = "runs"
RUN_RECORD = re.compile(r"^run-(\d+)\.json$")
"""OUTPUT/runs/run-N.json: every launch's record, numbered from 1."""
SUMMARY_FILE = "train_summary.json"
TENSORBOARD_DIR = "tensorboard"
"""OUTPUT/tensorboard: --report-to tensorboard's event files (the Trainer's default, OUTPUT/runs, holds yayi's records)."""
TRAIN_LOG = "train.log"
METRICS_FILE = "metrics.jsonl"
NODE_ENV_FILE = "deepspeed_env"
"""OUTPUT/deepspeed_env: the variables DeepSpeed's runner exports to every machine (it reads the file
that DS_ENV_FILE names, in place of ~/.deepspeed_env)."""
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_PATTERN = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
COMPLETE_MARKER = "trainer_state.json"
"""The Trainer writes this last into a checkpoint, so a checkpoint without it was cut short."""
UNIVERSAL_LATEST = "latest_universal"
"""Names the universal checkpoint in a checkpoint directory, as DeepSpeed's `latest` names the usual one."""


def checkpoint_name(step: int) -> str:
    """The Trainer's folder for the checkpoint saved at `step`."""
    return f"{CHECKPOINT_PREFIX}{step}"
