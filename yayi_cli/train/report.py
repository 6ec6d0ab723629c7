"""What `yayi train` tells a person before launching (and all that `--dry-run` prints)."""

from __future__ import annotations

import json
import shlex
from typing import Any

from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from yayi_cli.models.run_files import DS_CONFIG_FILE, NODE_ENV_FILE
from yayi_cli.train.options import DPO, SFT, TrainOptions
from yayi_cli.train.plan import LaunchPlan
from yayi_cli.train.zero import AUTO


def _count(number: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if number >= scale:
            return f"{number / scale:.3g}{unit}"
    return str(number)


def _size(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 2**10:.1f} KiB"


def print_node_environment(plan: LaunchPlan, console: Any) -> None:
    """Every variable DeepSpeed's runner exports to the machines, as OUTPUT/deepspeed_env will hold it."""
    if plan.node_environment is None:
        return
    console.print(f"\n{NODE_ENV_FILE} (exported to every machine, ranks on this one included):")
    for name, value in plan.node_environment.items():
        console.print(f"  {escape(name)}={escape(value)}", highlight=False, soft_wrap=True)


def method_summary(options: TrainOptions) -> str:
    """`dpo: beta 0.1, loss sigmoid + 0.5 x sft, ...` for the plan's table."""
    summary = f"{options.method}: beta {options.beta:g}"
    if options.method == DPO:
        summary += f", loss {options.dpo_loss}" + (f" + {options.sft_weight:g} x sft" if options.sft_weight else "")
    return summary + (", reference log-probs computed before training" if options.precompute_ref else "")


def print_plan(plan: LaunchPlan, console: Any, *, dry_run: bool) -> None:
    options, ranks = plan.options, plan.ranks
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("model", escape(options.model))
    table.add_row("data", escape(", ".join(options.data)))
    table.add_row("output", escape(options.output))
    table.add_row("ranks", f"{ranks.world_size} ({ranks.num_nodes} machine(s), {ranks.gpus_per_node} per machine"
                  f"{', CPU' if options.cpu else ''})")
    table.add_row("batch", f"micro {options.micro_batch_size} x accumulation {plan.gradient_accumulation_steps} "
                  f"x {ranks.world_size} rank(s) = {plan.global_batch_size} per optimizer step")
    zero = f"your config {options.deepspeed}" if options.deepspeed else f"stage {options.zero}, offload {options.offload}"
    table.add_row("ZeRO", escape(zero))
    if options.network_interface:
        table.add_row("network", f"interface {escape(options.network_interface)} on every machine")
    precision = "decided on each machine (bf16 where the GPU has it, else fp16)" if plan.precision == AUTO else plan.precision
    table.add_row("precision", precision)
    table.add_row("max length", f"{plan.max_length} tokens")
    table.add_row("resume", escape(str(plan.resume_from)) if plan.resume_from else "no (starts from the model)")
    if options.method != SFT:
        table.add_row("method", method_summary(options))
    memory = plan.memory
    per_rank = "per CPU rank" if options.cpu else "per GPU"
    if options.adapter:
        table.add_row(options.adapter, f"r {options.lora_r}, alpha {options.lora_alpha}, dropout {options.lora_dropout}, "
                      f"on {escape(', '.join(options.lora_targets))}; {_count(memory.trainable_parameters)} of "
                      f"{_count(memory.parameters)} parameters train")
        table.add_row("memory", f"about {_size(memory.gpu_bytes_per_rank)} {per_rank}: {escape(memory.covers)}")
    elif memory is None or memory.gpu_bytes_per_rank is None:
        counted = f"{_count(memory.parameters)} parameters; " if memory else ""
        table.add_row("memory", f"{counted}yayi train --dry-run estimates the memory {per_rank}")
    else:
        table.add_row("memory", f"{_count(memory.parameters)} parameters: about {_size(memory.gpu_bytes_per_rank)} {per_rank} "
                      f"and {_size(memory.cpu_bytes_per_node)} of CPU memory per machine: {escape(memory.covers)}")
    console.print(table)
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if dry_run:
        console.print(f"\n{DS_CONFIG_FILE}:")
        console.print(Syntax(json.dumps(plan.deepspeed_config, indent=2), "json", background_color="default"))
        print_node_environment(plan, console)
        console.print("\ncommand (dry run: nothing was run or written):")
    console.print(escape(shlex.join(plan.command)), highlight=False, soft_wrap=True)
