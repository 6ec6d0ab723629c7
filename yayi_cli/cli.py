"""The `yayi` command line: parses options and calls library functions. No logic lives here.

Importing this module must stay cheap (it runs on every `--help` and TAB press): torch,
transformers, deepspeed, datasets and bitsandbytes are imported inside the commands' modules.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape

from yayi_cli import __version__
from yayi_cli.data import DEFAULT_SEED
from yayi_cli.errors import YayiError
from yayi_cli.models import DTYPES
from yayi_cli.options import finite_float, ChatOptions, EvalOptions, GenerationSettings, MergeOptions, QuantizeOptions, ServeOptions
from yayi_cli.prompt import TEMPLATES
from yayi_cli.train.options import OFFLOADS, OVERLONG, PRECISIONS, SCHEDULERS, ZERO_STAGES, TrainOptions

EXIT_CODES = (
    "Exit codes: 0 success; 1 the work ran and found a problem (invalid data, failed check, training failed); "
    "2 usage or environment error (bad option, missing file, model not loadable, no GPU); 130 interrupted."
)

app = typer.Typer(
    name="yayi",
    help="Check, fine-tune, chat with, quantize and evaluate YaYi language models.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(
    help="Check, split and preview instruction data.", epilog=EXIT_CODES, no_args_is_help=True
)
app.add_typer(data_app, name="data")
template_app = typer.Typer(
    help="Give a model the YaYi chat template and stop ids that other engines use.", epilog=EXIT_CODES,
    no_args_is_help=True,
)
app.add_typer(template_app, name="template")

def complete_directories(incomplete: str) -> list[str]:
    """TAB candidates for model and output options: directories only (files complete as usual)."""
    folder, slash, start = incomplete.rpartition("/")
    try:
        names = [entry.name for entry in os.scandir(folder + slash or ".") if entry.is_dir() and entry.name.startswith(start)]
    except OSError:
        return []
    show_hidden = start.startswith(".")
    return sorted(f"{folder}{slash}{name}/" for name in names if show_hidden or not name.startswith("."))


TemplateName = Literal[tuple(TEMPLATES)]  # type: ignore[valid-type]  # choices come from the data
ZeroStage = Literal[ZERO_STAGES]  # type: ignore[valid-type]
Offload = Literal[OFFLOADS]  # type: ignore[valid-type]
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]
Overlong = Literal[OVERLONG]  # type: ignore[valid-type]
Scheduler = Literal[SCHEDULERS]  # type: ignore[valid-type]
TemplateOption = typer.Option(
    None, "--template",
    help="Prompt template (default: saved with the model, else detected from its name or config).",
)
ModelOption = typer.Option(
    None, "--model", "-m", metavar="DIR|HUB_ID", help="Model directory or hub id (its tokenizer is used).",
    autocompletion=complete_directories,
)
TrustRemoteCodeOption = typer.Option(
    False, "--trust-remote-code", help="Allow the model's own Python code to run when loading it."
)
JsonOption = typer.Option(False, "--json", help="Print one JSON document on stdout instead of text.")
BaseOption = typer.Option(
    None, "--base", metavar="DIR|HUB_ID", autocompletion=complete_directories,
    help="With a LoRA adapter directory as --model: the base model to load it on [default: the one in its adapter_config.json].",
)


def number(text: str | float) -> float:
    """The parser of every float option: `nan` and `inf`, which float() accepts, are usage errors."""
    try:
        return finite_float(text)
    except (TypeError, ValueError):
        raise typer.BadParameter(f"{text!r} is not a finite number") from None


def non_negative_number(text: str | float) -> float:
    value = number(text)
    if value < 0:
        raise typer.BadParameter(f"{text!r} is below 0")
    return value


def default_of(option: str) -> str:
    """A train option's default for its help, read from TrainOptions so the two cannot drift."""
    return f"[default: {getattr(TrainOptions(), option)}]"


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a user error into one `error:` line on stderr and its exit code, never a traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except YayiError as error:
            Console(stderr=True).print(f"[red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return run


@dataclass
class Output:
    """Where results go, set once by the top-level options and handed to every command."""

    quiet: bool = False
    """`yayi -q`: human reports are left out; --json, answers, errors and exit codes stay."""
    verbose: bool = False
    """`yayi -v`: library output (logs, warnings, progress bars) is shown, and all of every training rank's."""

    def console(self, *, stderr: bool = False) -> Console:
        """Where a command's human-readable report goes (nowhere under -q)."""
        return Console(stderr=stderr, quiet=self.quiet)

    def finish(self, json_output: bool, document: Callable[[], Any], print_human: Callable[[Console], None]) -> None:
        """How every command ends: one strict JSON document on stdout, or the human report."""
        if json_output:
            print_json(document())
        else:
            print_human(self.console())


def output_of(ctx: typer.Context) -> Output:
    return ctx.find_object(Output) or Output()


def print_json(document: Any) -> None:
    """Strict JSON (an undefined number is null, never NaN), so every parser reads it."""
    from yayi_cli.atomic import json_text

    sys.stdout.write(json_text(document))


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"yayi {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Print no human-readable report (errors, --json and answers still print)."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also show what the libraries print (progress bars, info and warning logs)."
    ),
) -> None:
    ctx.obj = Output(quiet=quiet, verbose=verbose)
    if not verbose:
        from yayi_cli.terminal import quiet_libraries

        quiet_libraries()


@data_app.command("preview", epilog=EXIT_CODES)
@reports_errors
def data_preview(
    ctx: typer.Context,
    file: Path = typer.Argument(..., metavar="FILE", help="A .jsonl or .json data file.", show_default=False),
    num_records: int = typer.Option(3, "-n", "--num-records", min=1, max=sys.maxsize, clamp=True, help="How many records to show."),
    template: Optional[TemplateName] = TemplateOption,
    model: Optional[str] = ModelOption,
    trust_remote_code: bool = TrustRemoteCodeOption,
    json_output: bool = JsonOption,
) -> None:
    """Show exactly what the model is trained on: the text, with the parts that carry loss marked.

    With --model, also the token count and the tokens that carry loss. Exits 1 if a shown record is invalid.
    """
    from yayi_cli.data.preview import preview, print_report

    report = preview(file, num_records, template, model, trust_remote_code=trust_remote_code)
    output_of(ctx).finish(json_output, report.to_json, functools.partial(print_report, report))
    if report.num_errors:
        raise typer.Exit(1)


@data_app.command("validate", epilog=EXIT_CODES)
@reports_errors
def data_validate(
    ctx: typer.Context,
    files: list[Path] = typer.Argument(..., metavar="FILE...", help="Data files (.jsonl, or .json array or lines).", show_default=False),
    model: Optional[str] = ModelOption,
    max_length: Optional[int] = typer.Option(
        None, "--max-length", min=1, help="Report records longer than this many tokens (default: the model's context)."
    ),
    template: Optional[TemplateName] = TemplateOption,
    strict: bool = typer.Option(False, "--strict", help="Treat warnings as errors."),
    max_errors: int = typer.Option(100, "--max-errors", min=0, help="List at most this many problems (all are counted)."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="Processes for JSON-lines files, at most one per core (default: one per core above 32 MB)."
    ),
    trust_remote_code: bool = TrustRemoteCodeOption,
    json_output: bool = JsonOption,
) -> None:
    """Report every invalid record as file:line: reason, and statistics about the data.

    Errors: invalid JSON or UTF-8, unknown shapes, missing or empty fields, bad turn order, markers inside text. Warnings: duplicates, one prompt with different answers, unknown keys, control characters, leading or trailing whitespace, and with --model records longer than --max-length. Exits 1 on any error (or warning with --strict).
    """
    from yayi_cli.data.validate import print_report, validate
    from yayi_cli.terminal import byte_progress

    total = sum(path.stat().st_size for path in files if path.is_file())
    with byte_progress("validating", total) as advance:
        report = validate(
            files, model=model, template_name=template, max_length=max_length, strict=strict,
            max_listed=max_errors, workers=workers, trust_remote_code=trust_remote_code, progress=advance,
        )
    output_of(ctx).finish(json_output, report.to_json, functools.partial(print_report, report))
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("split", epilog=EXIT_CODES)
@reports_errors
def data_split(
    ctx: typer.Context,
    files: list[Path] = typer.Argument(..., metavar="FILE...", help="Data files to split.", show_default=False),
    test_size: str = typer.Option(..., "--test-size", metavar="N|F", help="Test records: a count (400) or a fraction (0.05).", show_default=False),
    output: Path = typer.Option(..., "--output", "-o", metavar="DIR", help="Directory for train.jsonl, test.jsonl and split.json.", show_default=False, autocompletion=complete_directories),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Seed of the deterministic selection (as upstream)."),
    stratify: Optional[Literal["domain"]] = typer.Option(None, "--stratify", help="Keep each domain's share in test."),
    dedupe: bool = typer.Option(False, "--dedupe", help="Drop later copies of identical records."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Leave invalid records out instead of refusing."),
    force: bool = typer.Option(False, "--force", help="Replace existing outputs."),
    json_output: bool = JsonOption,
) -> None:
    """Split data into train and test: the same inputs and seed give byte-identical outputs anywhere.

    Records are written exactly as they were in their input. All three outputs appear together or not at all; inputs are never modified. Refuses invalid input (exit 1) unless --skip-invalid.
    """
    from yayi_cli.data.split import print_report, split
    from yayi_cli.sampling import parse_test_size

    report = split(
        files, output, test_size=parse_test_size(test_size), seed=seed, stratify=stratify == "domain",
        dedupe=dedupe, skip_invalid=skip_invalid, force=force,
    )
    output_of(ctx).finish(json_output, report.to_json, functools.partial(print_report, report, output))


@app.command("train", epilog=EXIT_CODES)
@reports_errors
def train_command(
    ctx: typer.Context,
    data: Optional[list[Path]] = typer.Option(None, "--data", "--data-path", "-d", metavar="FILE", help="Training data (repeat for several files).", show_default=False),
    model: Optional[str] = typer.Option(None, "--model", "--input-model", "-m", metavar="DIR|HUB_ID", help="The model to fine-tune.", show_default=False, autocompletion=complete_directories),
    output: Optional[Path] = typer.Option(None, "--output", "--local-output-dir", "-o", metavar="DIR", help="Checkpoints, then the final model, go here.", show_default=False, autocompletion=complete_directories),
    config: Optional[Path] = typer.Option(None, "--config", metavar="FILE", help="YAML or JSON file of options (flags override it)."),
    eval_data: Optional[list[Path]] = typer.Option(None, "--eval-data", metavar="FILE", help="Held-out data for evaluation during training."),
    test_size: Optional[str] = typer.Option(None, "--test-size", metavar="N|F", help="Hold out N records (or a fraction) of --data for evaluation."),
    gpus: Optional[int] = typer.Option(None, "--gpus", "--num-gpus", metavar="N", help="GPUs per machine (default: all; with --cpu, CPU ranks)."),
    num_nodes: Optional[int] = typer.Option(None, "--num-nodes", metavar="N", help="Use the first N machines of --hostfile."),
    hostfile: Optional[Path] = typer.Option(None, "--hostfile", metavar="FILE", help="Machines to train on ('host slots=N' lines)."),
    include: Optional[str] = typer.Option(None, "--include", metavar="HOST:I,J@...", help="Exactly which GPUs (DeepSpeed's --include)."),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", help="Address of the first machine."),
    master_port: Optional[int] = typer.Option(None, "--master-port", help="Port for the ranks to meet on."),
    network_interface: Optional[str] = typer.Option(None, "--network-interface", metavar="IFACE", help="Network interface the machines reach each other on (sets GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME on every machine)."),
    dist_timeout: Optional[int] = typer.Option(None, "--dist-timeout", metavar="SECONDS", help="A rank that cannot join, or waits this long for the others, ends the run " + default_of("dist_timeout")),
    cpu: Optional[bool] = typer.Option(None, "--cpu/--no-cpu", help="Train on the CPU with DeepSpeed's CPU accelerator (tests)."),
    zero: Optional[ZeroStage] = typer.Option(None, "--zero", help="ZeRO stage " + default_of("zero")),
    offload: Optional[Offload] = typer.Option(None, "--offload", help="Offload optimizer state (and at ZeRO-3 parameters) " + default_of("offload")),
    nvme_path: Optional[Path] = typer.Option(None, "--nvme-path", metavar="DIR", help="Local NVMe folder for --offload nvme.", autocompletion=complete_directories),
    precision: Optional[Precision] = typer.Option(None, "--precision", help="auto: bf16 where the GPU has it, else fp16; fp32 on the CPU " + default_of("precision")),
    deepspeed: Optional[Path] = typer.Option(None, "--deepspeed", metavar="FILE", help="Your own DeepSpeed config, used as it is."),
    micro_batch_size: Optional[int] = typer.Option(None, "--micro-batch-size", "--per-device-train-batch-size", metavar="N", help="Examples (or packed rows) per rank per step " + default_of("micro_batch_size")),
    eval_batch_size: Optional[int] = typer.Option(None, "--eval-batch-size", "--per-device-eval-batch-size", metavar="N", help=default_of("eval_batch_size")),
    gradient_accumulation_steps: Optional[int] = typer.Option(None, "--gradient-accumulation-steps", metavar="N", help=default_of("gradient_accumulation_steps")),
    global_batch_size: Optional[int] = typer.Option(None, "--global-batch-size", metavar="N", help="Set accumulation so micro x accumulation x ranks = N."),
    max_length: Optional[int] = typer.Option(None, "--max-length", metavar="TOKENS", help="Longest example (default: the model's context)."),
    overlong: Optional[Overlong] = typer.Option(None, "--overlong", help="Longer examples are cut or left out, and counted " + default_of("overlong")),
    packing: Optional[bool] = typer.Option(None, "--packing/--no-packing", help="Pack several examples into each row."),
    epochs: Optional[float] = typer.Option(None, "--epochs", "--num-train-epochs", parser=number, help=default_of("epochs")),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N optimizer steps (overrides --epochs)."),
    lr: Optional[float] = typer.Option(None, "--lr", "--learning-rate", parser=number, help=f"Peak learning rate [default: {TrainOptions().lr:g}; {TrainOptions(lora=True).lr:g} with --lora/--qlora]"),
    lr_scheduler: Optional[Scheduler] = typer.Option(None, "--lr-scheduler", help=default_of("lr_scheduler")),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help=default_of("warmup_steps")),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", parser=number, help=default_of("weight_decay")),
    max_grad_norm: Optional[float] = typer.Option(None, "--max-grad-norm", parser=number, help="Gradient clipping " + default_of("max_grad_norm")),
    seed: Optional[int] = typer.Option(None, "--seed", help=default_of("seed")),
    logging_steps: Optional[int] = typer.Option(None, "--logging-steps", help=default_of("logging_steps")),
    save_steps: Optional[int] = typer.Option(None, "--save-steps", help="Checkpoint every N steps " + default_of("save_steps")),
    save_total_limit: Optional[int] = typer.Option(None, "--save-total-limit", help="Keep the newest N checkpoints " + default_of("save_total_limit")),
    eval_steps: Optional[int] = typer.Option(None, "--eval-steps", help="[default: --save-steps]"),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations to save memory."),
    report_to: Optional[str] = typer.Option(None, "--report-to", metavar="none|tensorboard|wandb|...", help=default_of("report_to")),
    template: Optional[TemplateName] = TemplateOption,
    resume: Optional[str] = typer.Option(None, "--resume", metavar="auto|CHECKPOINT", help="Continue a run: auto = the newest complete checkpoint in --output (refused if the data or model settings differ from its run's).", autocompletion=complete_directories),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", metavar="DIR", help="Tokenized data cache [default: ~/.cache/yayi/tokenized].", autocompletion=complete_directories),
    force: Optional[bool] = typer.Option(None, "--force/--no-force", help="Start over in a non-empty --output (its old contents are moved beside it, not deleted); with --resume, continue although the settings differ."),
    trust_remote_code: Optional[bool] = typer.Option(None, "--trust-remote-code/--no-trust-remote-code", help="Allow the model's own Python code to run."),
    lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="Train a LoRA adapter (PEFT) on the frozen 16-bit model instead of every weight."),
    qlora: Optional[bool] = typer.Option(None, "--qlora/--no-qlora", help="LoRA on the model quantized to 4-bit NF4 (bitsandbytes): a 7B model on one 24 GB GPU."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", metavar="R", help="Adapter rank " + default_of("lora_r")),
    lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha", metavar="ALPHA", help="Adapter scale (the update is multiplied by alpha/r) [default: 2 x --lora-r]"),
    lora_dropout: Optional[float] = typer.Option(None, "--lora-dropout", metavar="P", parser=number, help=default_of("lora_dropout")),
    lora_targets: Optional[list[str]] = typer.Option(None, "--lora-targets", metavar="NAME,...|all-linear", help="Modules that get adapters [default: every linear projection of the attention and MLP blocks]"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the launch command, ZeRO config and memory estimate; run and write nothing."),
    json_output: bool = JsonOption,
) -> None:
    """Fine-tune with DeepSpeed ZeRO: writes OUTPUT/ds_config.json and OUTPUT/run.json, then runs the deepspeed launcher.

    Loss is on every assistant answer and nothing else. The final model, tokenizer and template are saved in OUTPUT, ready for yayi chat, eval and quantize; with --lora/--qlora the adapter, which they load too (yayi merge makes a plain model of it). Exits with the launcher's status (1 when training failed, 130 when interrupted).
    """
    flags = {name: value for name, value in locals().items() if name not in ("ctx", "config", "dry_run", "json_output")}
    from yayi_cli.train.launch import train
    from yayi_cli.train.options import flag_values, resolve_options
    from yayi_cli.train.report import print_plan

    output = output_of(ctx)
    show_plan = None if json_output else functools.partial(print_plan, console=output.console(stderr=True), dry_run=False)
    result = train(resolve_options(config, flag_values(flags)), dry_run=dry_run, verbose=output.verbose,
                   before_launch=show_plan)
    if dry_run:
        output.finish(json_output, result.to_json, functools.partial(print_plan, result.plan, dry_run=True))
        return
    for note in result.notes():
        Console(stderr=True).print(escape(note), highlight=False, soft_wrap=True)
    if json_output:
        print_json(result.to_json())
    raise typer.Exit(result.status)


@app.command("eval", epilog=EXIT_CODES)
@reports_errors
def eval_command(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", "-m", metavar="DIR|HUB_ID", help="Model directory or hub id.", show_default=False, autocompletion=complete_directories),
    data: list[Path] = typer.Option(..., "--data", "-d", metavar="FILE", help="Held-out data (repeat for several files).", show_default=False),
    task: Literal["lm", "choice"] = typer.Option(EvalOptions.task, "--task", help="lm: answer loss and generation; choice: multiple-choice accuracy (CSV question,A,B,C,D,answer or JSON lines)."),
    generate: bool = typer.Option(EvalOptions.generate, "--generate", help="Also generate each last answer and score it (exact match, ROUGE-L, BLEU-4)."),
    sample: bool = typer.Option(EvalOptions.sample, "--sample", help="Sample instead of greedy decoding with --generate."),
    max_new_tokens: int = typer.Option(EvalOptions.max_new_tokens, "--max-new-tokens", min=1),
    predictions: Optional[Path] = typer.Option(None, "--predictions", metavar="FILE.jsonl", help="Write each prediction with its reference and scores."),
    batch_size: int = typer.Option(EvalOptions.batch_size, "--batch-size", min=1),
    max_samples: Optional[int] = typer.Option(None, "--max-samples", min=1, help="Evaluate a seeded sample of this many records."),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=1, help="Truncate longer sequences (default: the model's context)."),
    seed: int = typer.Option(EvalOptions.seed, "--seed", help="Seed of --max-samples and of --sample."),
    device: str = typer.Option(EvalOptions.device, "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: Literal[DTYPES] = typer.Option(EvalOptions.dtype, "--dtype"),
    load_in_8bit: bool = typer.Option(EvalOptions.load_in_8bit, "--load-in-8bit", help="Load the model in int8 (bitsandbytes)."),
    template: Optional[TemplateName] = TemplateOption,
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="REPORT.json", help="Write the JSON report here."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", metavar="REPORT.json", help="A previous report: print changes against it."),
    fail_if: list[str] = typer.Option([], "--fail-if", metavar="EXPR", help='Exit 1 when it holds, e.g. "ppl>12.5" (repeatable).'),
    max_regression: Optional[float] = typer.Option(None, "--max-regression", metavar="PCT", parser=non_negative_number, help="With --baseline: exit 1 when a metric is more than PCT% worse."),
    force: bool = typer.Option(EvalOptions.force, "--force", help="Replace existing --output or --predictions files."),
    base: Optional[str] = BaseOption,
    trust_remote_code: bool = TrustRemoteCodeOption,
    json_output: bool = JsonOption,
) -> None:
    """Measure a model on held-out data, with gates for CI.

    Answer-only loss and perplexity (the masking training uses), per domain; with --generate, exact match, ROUGE-L and BLEU-4; with --task choice, accuracy per subject. Exits 1 when a --fail-if gate holds or --max-regression is exceeded.
    """
    flags = {name: value for name, value in locals().items() if name not in ("ctx", "json_output")}
    from yayi_cli.evaluate import evaluate, print_report

    outcome = evaluate(EvalOptions(**flags))
    output_of(ctx).finish(json_output, outcome.to_json, functools.partial(print_report, outcome))
    for failure in outcome.failures:
        Console(stderr=True).print(f"[red]gate failed:[/] {escape(failure)}", highlight=False, soft_wrap=True)
    if outcome.failures:
        raise typer.Exit(1)


@app.command("chat", epilog=EXIT_CODES)
@reports_errors
def chat_command(
    model: str = typer.Option(..., "--model", "-m", metavar="DIR|HUB_ID", help="Model directory or hub id.", show_default=False, autocompletion=complete_directories),
    template: Optional[TemplateName] = TemplateOption,
    system: Optional[str] = typer.Option(None, "--system", help="System prompt (default: the template's)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Answer this one message, print only the answer, exit."),
    jsonl: bool = typer.Option(False, "--jsonl", help='Read JSON lines on stdin ({"prompt": ...} or any record), write one JSON line per answer.'),
    temperature: float = typer.Option(GenerationSettings.temperature, "--temperature", parser=number),
    top_p: float = typer.Option(GenerationSettings.top_p, "--top-p", parser=number),
    top_k: int = typer.Option(GenerationSettings.top_k, "--top-k", help="0 turns it off."),
    max_new_tokens: int = typer.Option(GenerationSettings.max_new_tokens, "--max-new-tokens"),
    repetition_penalty: float = typer.Option(GenerationSettings.repetition_penalty, "--repetition-penalty", parser=number),
    sample: bool = typer.Option(GenerationSettings.do_sample, "--sample/--greedy", help="Sample (upstream's default) or take the most likely token."),
    seed: Optional[int] = typer.Option(GenerationSettings.seed, "--seed", help="Seed the sampler once, for repeatable answers."),
    max_context_tokens: Optional[int] = typer.Option(
        ChatOptions.max_context_tokens, "--max-context-tokens", min=16, help="Drop the oldest exchanges beyond this (default: the model's context)."
    ),
    history_file: Optional[Path] = typer.Option(None, "--history-file", help="Input history (default: $XDG_STATE_HOME/yayi/chat_history)."),
    no_history: bool = typer.Option(False, "--no-history", help="Keep no input history on disk."),
    compile_: bool = typer.Option(ChatOptions.compile, "--compile", help="Static KV cache compiled by torch.compile: faster decoding after a warm-up."),
    device: str = typer.Option(ChatOptions.device, "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: Literal[DTYPES] = typer.Option(ChatOptions.dtype, "--dtype"),
    load_in_8bit: bool = typer.Option(ChatOptions.load_in_8bit, "--load-in-8bit", help="Load the model in int8 (bitsandbytes)."),
    base: Optional[str] = BaseOption,
    trust_remote_code: bool = TrustRemoteCodeOption,
) -> None:
    """Chat with a model: a REPL on a terminal (/help lists its commands); when piped, only the answer.

    `echo 你好 | yayi chat -m M` answers stdin as one message; --prompt TEXT does the same without stdin; --jsonl answers one JSON object per line. Exits 1 if a --jsonl line could not be answered.
    """
    from yayi_cli.chat.command import run_chat
    from yayi_cli.chat.repl import default_history_file

    settings = GenerationSettings(
        temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
        repetition_penalty=repetition_penalty, do_sample=sample, seed=seed,
    )
    options = ChatOptions(
        model=model, template=template, system=system, settings=settings, device=device, dtype=dtype,
        load_in_8bit=load_in_8bit, trust_remote_code=trust_remote_code, max_context_tokens=max_context_tokens,
        compile=compile_, base=base,
    )
    history = None if no_history else history_file or default_history_file()
    code = run_chat(options, prompt=prompt, jsonl=jsonl, history_file=history)
    if code:
        raise typer.Exit(code)


@app.command("quantize", epilog=EXIT_CODES)
@reports_errors
def quantize_command(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", "-m", metavar="DIR|HUB_ID", help="Model to quantize.", show_default=False, autocompletion=complete_directories),
    output: Path = typer.Option(..., "--output", "-o", metavar="DIR", help="Directory for the quantized checkpoint.", show_default=False, autocompletion=complete_directories),
    bits: Literal[8, 4] = typer.Option(QuantizeOptions.bits, "--bits", help="8: LLM.int8; 4: NF4."),
    threshold: float = typer.Option(QuantizeOptions.threshold, "--threshold", parser=number, help="LLM.int8 outlier threshold."),
    skip_modules: list[str] = typer.Option(list(QuantizeOptions.skip_modules), "--skip-modules", help="Modules kept in full precision (repeatable)."),
    device: str = typer.Option(QuantizeOptions.device, "--device", help="auto, cpu, cuda or cuda:N."),
    check_data: list[Path] = typer.Option([], "--check-data", metavar="FILE", help="Records to measure answer perplexity and greedy agreement on."),
    max_check_samples: int = typer.Option(QuantizeOptions.max_check_samples, "--max-check-samples", min=1),
    max_ppl_increase: Optional[float] = typer.Option(None, "--max-ppl-increase", metavar="PCT", parser=number, help="Exit 1 (and write nothing) if perplexity rises more."),
    force: bool = typer.Option(QuantizeOptions.force, "--force", help="Replace an existing output directory (only once the new one is complete)."),
    base: Optional[str] = BaseOption,
    trust_remote_code: bool = TrustRemoteCodeOption,
    json_output: bool = JsonOption,
) -> None:
    """Quantize a model to int8 (or NF4) with bitsandbytes, with a size and quality report.

    The checkpoint loads directly in yayi chat, yayi eval and from_pretrained. int8 decodes several times slower than bf16 at batch 1: it saves memory, not time.
    """
    from yayi_cli.quantize import print_report, quantize

    report = quantize(QuantizeOptions(
        model=model, output=output, bits=bits, threshold=threshold, skip_modules=tuple(skip_modules), device=device,
        check_data=check_data, max_check_samples=max_check_samples, max_ppl_increase=max_ppl_increase,
        force=force, trust_remote_code=trust_remote_code, base=base,
    ))
    output_of(ctx).finish(json_output, report.to_json, functools.partial(print_report, report))


@app.command("merge", epilog=EXIT_CODES)
@reports_errors
def merge_command(
    ctx: typer.Context,
    adapter: str = typer.Argument(..., metavar="ADAPTER_DIR", help="What yayi train --lora/--qlora wrote.", show_default=False, autocompletion=complete_directories),
    output: Path = typer.Option(..., "--output", "-o", metavar="DIR", help="Directory for the merged model.", show_default=False, autocompletion=complete_directories),
    base: Optional[str] = typer.Option(MergeOptions.base, "--base", metavar="DIR|HUB_ID", help="The base model [default: the one in the adapter's adapter_config.json].", autocompletion=complete_directories),
    dtype: Literal[DTYPES] = typer.Option(MergeOptions.dtype, "--dtype", help="Weights of the merged model (auto: as the base was saved)."),
    force: bool = typer.Option(MergeOptions.force, "--force", help="Replace an existing output directory (only once the new one is complete)."),
    trust_remote_code: bool = TrustRemoteCodeOption,
    json_output: bool = JsonOption,
) -> None:
    """Merge a LoRA adapter into its base: a plain model, tokenizer and template that need no peft.

    An adapter trained with --qlora is merged into the 16-bit base (the usual practice). All or nothing: DIR appears complete or not at all.
    """
    from yayi_cli.merge import merge, print_report

    report = merge(MergeOptions(adapter=adapter, output=output, base=base, dtype=dtype, force=force,
                                trust_remote_code=trust_remote_code))
    output_of(ctx).finish(json_output, report.to_json, functools.partial(print_report, report))


@template_app.command("install", epilog=EXIT_CODES)
@reports_errors
def template_install_command(
    ctx: typer.Context,
    model: str = typer.Argument(..., metavar="MODEL_DIR", help="A local model directory.", show_default=False, autocompletion=complete_directories),
    template: Optional[TemplateName] = TemplateOption,
    check: bool = typer.Option(False, "--check", help="Only report whether the model agrees with the yayi core; exit 1 if not."),
    trust_remote_code: bool = TrustRemoteCodeOption,
    json_output: bool = JsonOption,
) -> None:
    """Add the chat template, the markers if missing and the stop ids to a model yayi did not write.

    So that transformers serve, vLLM and apply_chat_template prompt it as yayi does and stop at <|End|>. Replaced files go to MODEL_DIR.yayi-backup-*; nothing changes unless everything can.
    """
    from yayi_cli.template_install import check as check_format
    from yayi_cli.template_install import install, print_report

    report = (check_format if check else install)(model, template, trust_remote_code=trust_remote_code)
    output_of(ctx).finish(json_output, report.to_json,
                          lambda console: print_report(report, console, Console(stderr=True), checked=check))
    if check and report.problems:
        raise typer.Exit(1)


@app.command("serve", epilog=EXIT_CODES)
@reports_errors
def serve_command(
    model: str = typer.Option(..., "--model", "-m", metavar="DIR|HUB_ID", help="Model directory or hub id.", show_default=False, autocompletion=complete_directories),
    host: str = typer.Option(ServeOptions.host, "--host", help="Address to listen on (0.0.0.0 opens it to the network)."),
    port: int = typer.Option(ServeOptions.port, "--port", min=1, max=65535),
    engine: Literal["transformers", "vllm"] = typer.Option(ServeOptions.engine, "--engine", help="transformers serve, or vLLM where installed."),
    template: Optional[TemplateName] = TemplateOption,
    trust_remote_code: bool = TrustRemoteCodeOption,
) -> None:
    """Serve an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health) with an existing engine.

    A model without the YaYi chat template or stop ids is served from a staged copy that has them (your files are not changed). Prints the URL and a curl line once ready; Ctrl-C stops the engine (exit 130).
    """
    from yayi_cli.serve import serve

    console, notes = Console(), Console(stderr=True, highlight=False, soft_wrap=True)
    code = serve(
        ServeOptions(model=model, host=host, port=port, engine=engine, template=template, trust_remote_code=trust_remote_code),
        say=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
        note=lambda line: notes.print(line, markup=False),
    )
    raise typer.Exit(code)


def main() -> None:
    app(prog_name="yayi")
