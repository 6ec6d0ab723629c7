"""`train(options)`: plan a run, write its run files, run the `deepspeed` launcher on the worker, and
return how it ended; what the CLI calls, and what Python users and tests can call.

Only this module writes, and only after planning (train/plan.py) passed.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli.models.run_files import DS_CONFIG_FILE, METRICS_FILE, NODE_ENV_FILE, SUMMARY_FILE, TRAIN_LOG
from yayi_cli.runtime.atomic import write_json_atomic, write_text_atomic
from yayi_cli.runtime.errors import UsageError
from yayi_cli.train.checkpoints import convert_to_universal, interrupted_note
from yayi_cli.train.environment import child_environment
from yayi_cli.train.options import TrainOptions
from yayi_cli.train.plan import LaunchPlan, plan_launch
from yayi_cli.train.runs import record_launch
from yayi_cli.train.summary import closing_summary
from yayi_cli.train.supervise import run_launcher


INTERRUPTED = 130


def set_aside(output: Path) -> Path:
    """Move a previous run's output beside it (never deleted: it may hold the only copy of a checkpoint)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    kept = output.with_name(f"{output.name}.replaced-{stamp}")
    output.rename(kept)
    return kept


def write_run_files(plan: LaunchPlan) -> Path | None:
    """OUTPUT/ds_config.json (the user's file copied as it is) and this launch's record (OUTPUT/run.json and
    OUTPUT/runs/run-N.json); returns what was set aside."""
    output, kept = plan.output, None
    if plan.options.force and not plan.options.resume and output.is_dir() and any(output.iterdir()):
        kept = set_aside(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--output {output}: cannot create it ({error.strerror or error})") from None
    if plan.options.deepspeed:  # copied as it is, byte for byte: it is the user's file
        write_text_atomic(output / DS_CONFIG_FILE, Path(plan.options.deepspeed).read_text(encoding="utf-8"))
    else:
        write_json_atomic(output / DS_CONFIG_FILE, plan.deepspeed_config)
    record_launch(output, plan.manifest())
    if plan.node_environment is not None:
        lines = [f"{name}={value}\n" for name, value in plan.node_environment.items()]
        write_text_atomic(output / NODE_ENV_FILE, "".join(lines))
    return kept


@dataclass(frozen=True)
class TrainResult:
    """A planned run and, unless it was a dry run, how it ended and where its outputs are."""

    plan: LaunchPlan
    status: int | None = None
    """The launcher's exit status (130: interrupted); None for a dry run, which ran nothing."""
    kept: Path | None = None
    """Where a previous run's contents were moved by --force."""

    def notes(self) -> list[str]:
        """What a person should know about how the run ended, beyond its status."""
        notes = [f"moved the previous contents of {self.plan.output} to {self.kept}"] if self.kept else []
        if self.status == INTERRUPTED:
            notes.append(f"interrupted: {interrupted_note(self.plan.output)}")
        return notes

    def to_json(self) -> dict[str, Any]:
        """A dry run's plan; a run's status, outputs and plan."""
        if self.status is None:
            return self.plan.to_json()
        summary = self.plan.output / SUMMARY_FILE
        return {
            "status": self.status,
            "output": str(self.plan.output),
            "summary": json.loads(summary.read_text(encoding="utf-8")) if self.status == 0 and summary.is_file() else None,
            "closing": closing_summary(self.plan.output) if self.status == 0 else None,
            "log": str(self.plan.output / TRAIN_LOG),
            "metrics": str(self.plan.output / METRICS_FILE),
            "moved_previous_to": str(self.kept) if self.kept else None,
            "plan": self.plan.to_json(),
        }


def run_training(plan: LaunchPlan, *, verbose: bool = False) -> TrainResult:
    """Write the run files, run the launcher with the console reading its output, report the end."""
    from yayi_cli.train.console import RunConsole

    kept = write_run_files(plan)
    if plan.universal_from:
        convert_to_universal(plan.resume_from)
    console = RunConsole(plan.output, verbose=verbose)
    node_env_file = plan.output / NODE_ENV_FILE if plan.node_environment is not None else None
    try:
        status = run_launcher(plan.command, child_environment(plan.options, node_env_file), console.line)
    except BaseException:
        console.close()  # the error says what happened; the ranks' last lines would not
        raise
    console.finish(status)
    return TrainResult(plan, status, kept)


def train(options: TrainOptions, *, dry_run: bool = False, verbose: bool = False,
          before_launch: Callable[[LaunchPlan], None] | None = None) -> TrainResult:
    """Plan the run and, unless `dry_run`, write its files and run it; `before_launch(plan)` is called
    between the two (the CLI shows the plan there). `verbose` shows the libraries' output too."""
    options.check()
    plan = plan_launch(options, dry_run=dry_run)
    if dry_run:
        return TrainResult(plan)
    if before_launch is not None:
        before_launch(plan)
    return run_training(plan, verbose=verbose)
