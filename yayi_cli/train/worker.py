"""One training rank, started by the `deepspeed` launcher: `--module yayi_cli.train.worker --run-config RUN`.

Everything it does is decided in run.json, written by `yayi train`. It picks the recipe of the run's method and
runs its steps: setup, train, save, cleanup (train/recipe.py). It checkpoints into OUTPUT/checkpoint-N and saves
the final model, tokenizer and template into OUTPUT itself, so `yayi chat --model OUTPUT` works directly.
"""

from __future__ import annotations

import argparse
import atexit
import faulthandler
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from yayi_cli.runtime.errors import YayiError
from yayi_cli.runtime.processes import end_when_unread
from yayi_cli.train.grpo import GRPORecipe
from yayi_cli.train.options import DPO, GRPO, KTO, SFT, TrainOptions
from yayi_cli.train.preference import PreferenceRecipe
from yayi_cli.train.progress import tag_output
from yayi_cli.train.recipe import Recipe
from yayi_cli.train.sft import SFTRecipe


RECIPES: dict[str, type[Recipe]] = {SFT: SFTRecipe, DPO: PreferenceRecipe, KTO: PreferenceRecipe, GRPO: GRPORecipe}
"""The recipe of each --method: a new method is a new recipe class, its options and its data kind."""


def train(run: dict[str, Any]) -> dict[str, Any]:
    """The run's recipe, step by step; its summary."""
    options = TrainOptions(**run["options"])
    recipe = RECIPES[options.method](options, run)
    try:
        recipe.setup()
        return recipe.save(recipe.train())
    finally:
        recipe.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yayi_cli.train.worker")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    parser.add_argument("--run-config", type=Path, required=True)
    arguments = parser.parse_args(argv)
    end_when_unread()  # yayi reads this pipe: killed outright, it leaves no rank behind
    faulthandler.enable()  # a crash in native code (torch, gloo, DeepSpeed's ops) says where, as a traceback would
    tag_output(int(os.environ.get("RANK", arguments.local_rank or 0)))
    run = json.loads(arguments.run_config.read_text(encoding="utf-8"))
    try:
        train(run)
    except YayiError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted; the last complete checkpoint is usable with --resume auto", file=sys.stderr)
        return 130
    return 0


def exit_without_teardown(status: int) -> NoReturn:
    """End a rank whose work is saved without the interpreter's teardown of torch, gloo and DeepSpeed:
    it takes seconds per rank, and in CI it once ended a rank that had finished with a failing status
    and no message, failing a run whose model was saved. atexit handlers run and output is flushed."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    exit_without_teardown(main())
