"""The `yayi` command line: parses options and calls library functions. No logic lives here.

Each command's options are declared once, in its options dataclass; cli/parameters.py makes the
Typer parameters from it. Importing this module must stay cheap (it runs on every `--help` and TAB
press): torch, transformers, deepspeed, datasets and bitsandbytes are imported inside the commands' modules.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer

from yayi_cli import __version__
from yayi_cli.chat.options import ChatOptions
from yayi_cli.cli.parameters import EXIT_CODES, YayiGroup, command, say_on_stderr
from yayi_cli.convert.export.options import GgufOptions, OllamaOptions
from yayi_cli.convert.options import MergeOptions, QuantizeOptions
from yayi_cli.data.options import PreviewOptions, SplitOptions, ValidateOptions
from yayi_cli.eval.options import EvalOptions
from yayi_cli.serve.options import ServeOptions, TemplateInstallOptions
from yayi_cli.train.options import PlotOptions, TrainOptions
from yayi_cli.web.options import WebOptions


if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    name="yayi",
    cls=YayiGroup,
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
export_app = typer.Typer(
    help="Write a model as one GGUF file for llama.cpp, Ollama and LM Studio, with the YaYi format and stops.",
    epilog=EXIT_CODES, no_args_is_help=True,
)
app.add_typer(export_app, name="export")

JsonOption = typer.Option(False, "--json", help="Print one JSON document on stdout instead of text.")


@dataclass
class Output:
    """Where results go, set once by the top-level options and handed to every command."""

    quiet: bool = False
    """`yayi -q`: human reports are left out; --json, answers, errors and exit codes stay."""
    verbose: bool = False
    """`yayi -v`: library output (logs, warnings, progress bars) is shown, and all of every training rank's."""

    def console(self, *, stderr: bool = False) -> Console:
        """Where a command's human-readable report goes (nowhere under -q)."""
        from rich.console import Console

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
    from yayi_cli.runtime.atomic import json_text

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
        from yayi_cli.runtime.terminal import quiet_libraries

        quiet_libraries()


@command(data_app, "preview", PreviewOptions)
def data_preview(ctx: typer.Context, options: PreviewOptions, json_output: bool = JsonOption) -> None:
    """Show exactly what the model is trained on: the text, with the parts that carry loss marked.

    With --model, also the token count and the tokens that carry loss. Exits 1 if a shown record is invalid.
    """
    from yayi_cli.data.preview import preview, print_report

    report = preview(options)
    output_of(ctx).finish(json_output, report.to_json, functools.partial(print_report, report))
    if report.num_errors:
        raise typer.Exit(1)


@command(data_app, "validate", ValidateOptions)
def data_validate(ctx: typer.Context, options: ValidateOptions, json_output: bool = JsonOption) -> None:
    """Report every invalid record as file:line: reason, and statistics about the data.

    Errors: invalid JSON or UTF-8, unknown shapes, missing or empty fields, bad turn order, markers inside text. Warnings: duplicates, one prompt with different answers, unknown keys, control characters, leading or trailing whitespace, and with --model records longer than --max-length. Exits 1 on any error (or warning with --strict).
    """
    from yayi_cli.data.validate import print_report, validate
    from yayi_cli.runtime.terminal import byte_progress

    total = sum(path.stat().st_size for path in options.files if path.is_file())
    with byte_progress("validating", total) as advance:
        report = validate(options, progress=advance)
    output_of(ctx).finish(json_output, report.to_json, functools.partial(print_report, report))
    if not report.ok:
        raise typer.Exit(1)


@command(data_app, "split", SplitOptions)
def data_split(ctx: typer.Context, options: SplitOptions, json_output: bool = JsonOption) -> None:
    """Split data into train and test: the same inputs and seed give byte-identical outputs anywhere.

    Records are written exactly as they were in their input. All three outputs appear together or not at all; inputs are never modified. Refuses invalid input (exit 1) unless --skip-invalid.
    """
    from yayi_cli.data.split import print_report, split

    report = split(options)
    output_of(ctx).finish(json_output, report.to_json, functools.partial(print_report, report, options.output))


@command(app, "train", TrainOptions)
def train_command(
    ctx: typer.Context,
    options: TrainOptions,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the launch command, ZeRO config and memory estimate; run and write nothing."),
    json_output: bool = JsonOption,
) -> None:
    """Fine-tune with DeepSpeed ZeRO: writes OUTPUT/ds_config.json and OUTPUT/run.json, then runs the deepspeed launcher.

    Loss is on every assistant answer and nothing else. The final model, tokenizer and template are saved in OUTPUT, ready for yayi chat, eval and quantize; with --lora/--qlora the adapter, which they load too (yayi merge makes a plain model of it). Exits with the launcher's status (1 when training failed, 130 when interrupted).
    """
    from yayi_cli.train.launch import train
    from yayi_cli.train.report import print_plan
    from yayi_cli.train.summary import closing_summary, print_closing_summary

    output = output_of(ctx)
    show_plan = None if json_output else functools.partial(print_plan, console=output.console(stderr=True), dry_run=False)
    result = train(options, dry_run=dry_run, verbose=output.verbose,
                   before_launch=show_plan)
    if dry_run:
        output.finish(json_output, result.to_json, functools.partial(print_plan, result.plan, dry_run=True))
        return
    for note in result.notes():
        say_on_stderr(note)
    if json_output:
        print_json(result.to_json())
    elif result.status == 0 and (closing := closing_summary(result.plan.output)):
        print_closing_summary(closing, output.console(stderr=True))
    raise typer.Exit(result.status)


@command(app, "plot", PlotOptions)
def plot_command(ctx: typer.Context, options: PlotOptions, json_output: bool = JsonOption) -> None:
    """Draw the training curves of one or more runs (loss, learning rate, gradient norm, tokens/s; rewards for DPO/KTO).

    Several runs are overlaid and labelled by folder, so two settings can be compared; a run that is still going is read as far as it has logged. Each run also keeps its own OUTPUT/curves.png, redrawn at every checkpoint.
    """
    from yayi_cli.train.plot import plot, print_report

    report = plot(options)
    output_of(ctx).finish(json_output, report.to_json, functools.partial(print_report, report))


@command(app, "eval", EvalOptions)
def eval_command(ctx: typer.Context, options: EvalOptions, json_output: bool = JsonOption) -> None:
    """Measure a model on held-out data, with gates for CI.

    Answer-only loss and perplexity (the masking training uses), per domain; with --generate, exact match, ROUGE-L and BLEU-4; with --task choice, accuracy per subject; with --task preference, how often chosen answers out-reward rejected ones against --reference. Exits 1 when a --fail-if gate holds or --max-regression is exceeded.
    """
    from yayi_cli.eval.command import evaluate
    from yayi_cli.eval.report import print_report

    outcome = evaluate(options)
    output_of(ctx).finish(json_output, outcome.to_json, functools.partial(print_report, outcome))
    for failure in outcome.failures:
        say_on_stderr(failure, label="gate failed")
    if outcome.failures:
        raise typer.Exit(1)


@command(app, "chat", ChatOptions)
def chat_command(options: ChatOptions) -> None:
    """Chat with a model: a REPL on a terminal (/help lists its commands); when piped, only the answer.

    `echo 你好 | yayi chat -m M` answers stdin as one message; --prompt TEXT does the same without stdin; --jsonl answers one JSON object per line. Exits 1 if a --jsonl line could not be answered.
    """
    from yayi_cli.chat.command import chat

    code = chat(options)
    if code:
        raise typer.Exit(code)


@command(app, "quantize", QuantizeOptions)
def quantize_command(ctx: typer.Context, options: QuantizeOptions, json_output: bool = JsonOption) -> None:
    """Quantize a model to int8 (or NF4) with bitsandbytes, with a size and quality report.

    The checkpoint loads directly in yayi chat, yayi eval and from_pretrained. int8 decodes several times slower than bf16 at batch 1: it saves memory, not time.
    """
    from yayi_cli.convert.quantize import print_report, quantize

    report = quantize(options)
    output_of(ctx).finish(json_output, report.to_json, functools.partial(print_report, report))


@command(app, "merge", MergeOptions)
def merge_command(ctx: typer.Context, options: MergeOptions, json_output: bool = JsonOption) -> None:
    """Merge a LoRA adapter into its base: a plain model, tokenizer and template that need no peft.

    An adapter trained with --qlora is merged into the 16-bit base (the usual practice). All or nothing: DIR appears complete or not at all.
    """
    from yayi_cli.convert.merge import merge, print_report

    report = merge(options)
    output_of(ctx).finish(json_output, report.to_json, functools.partial(print_report, report))


@command(export_app, "gguf", GgufOptions)
def export_gguf_command(ctx: typer.Context, options: GgufOptions, json_output: bool = JsonOption) -> None:
    """Write a BLOOM or Llama model (or an adapter, merged on the fly) as one GGUF file for llama.cpp.

    The file carries the tokenizer with the markers as control tokens, <|End|> as end of turn and the YaYi chat template, so llama.cpp, Ollama and LM Studio prompt and stop as yayi chat does. All or nothing: FILE appears complete or not at all.
    """
    from yayi_cli.convert.export.command import export_gguf, print_report

    report = export_gguf(options)
    output_of(ctx).finish(json_output, report.to_json, functools.partial(print_report, report))


@command(export_app, "ollama", OllamaOptions)
def export_ollama_command(ctx: typer.Context, options: OllamaOptions, json_output: bool = JsonOption) -> None:
    """Write DIR with model.gguf and a Modelfile (the YaYi template, default system text and stops) for Ollama.

    Then run the `ollama create NAME -f DIR/Modelfile` line it prints. All or nothing: DIR appears complete or not at all.
    """
    from yayi_cli.convert.export.command import export_ollama, print_report

    report = export_ollama(options)
    output_of(ctx).finish(json_output, report.to_json, functools.partial(print_report, report))


@command(template_app, "install", TemplateInstallOptions)
def template_install_command(ctx: typer.Context, options: TemplateInstallOptions, json_output: bool = JsonOption) -> None:
    """Add the chat template, the markers if missing and the stop ids to a model yayi did not write.

    So that transformers serve, vLLM and apply_chat_template prompt it as yayi does and stop at <|End|>. Replaced files go to MODEL_DIR.yayi-backup-*; nothing changes unless everything can.
    """
    from rich.console import Console

    from yayi_cli.serve.template_install import print_report, template_install

    report = template_install(options)
    output_of(ctx).finish(json_output, report.to_json,
                          lambda console: print_report(report, console, Console(stderr=True), checked=options.check_only))
    if options.check_only and report.problems:
        raise typer.Exit(1)


def run_server(run: Callable[..., int], options: Any) -> None:
    """A command that runs until stopped (serve, web): its address lines on stdout, notes on stderr, its exit code."""
    from rich.console import Console

    console, notes = Console(), Console(stderr=True, highlight=False, soft_wrap=True)
    code = run(
        options,
        say=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
        note=lambda line: notes.print(line, markup=False),
    )
    raise typer.Exit(code)


@command(app, "serve", ServeOptions)
def serve_command(options: ServeOptions) -> None:
    """Serve an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health) with an existing engine.

    A model without the YaYi chat template or stop ids is served from a staged copy that has them (your files are not changed). Prints the URL and a curl line once ready; Ctrl-C stops the engine (exit 130).
    """
    from yayi_cli.serve.command import serve

    run_server(serve, options)


@command(app, "web", WebOptions)
def web_command(options: WebOptions) -> None:
    """A chat page in the browser: streaming answers, history, system text and sampling, stop and clear.

    With --model it starts `yayi serve`'s engine on a free local port; with --api URL it uses a server already running (yayi serve, vLLM). Listens on 127.0.0.1 unless --host says otherwise. Needs `pip install 'yayi-cli[web]'`. Ctrl-C stops the page and the engine (exit 130).
    """
    from yayi_cli.web.command import web

    run_server(web, options)


def main() -> None:
    app(prog_name="yayi")
