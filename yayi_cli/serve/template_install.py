"""`yayi template install` and `--check`: the YaYi chat template, markers and stop ids for a model
yayi did not write (a downloaded wenge-research/yayi-7b, say), so that other engines prompt it and
stop as `yayi chat` does.

The user's directory changes all at once or not at all, and every file it replaces (or moves aside,
such as old weights) goes into a backup folder beside it, with a list of what was added.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yayi_cli.core.prompt import (
    ASSISTANT,
    END_MARKER,
    GENERATION_CONFIG_FILE,
    HUMAN,
    MARKERS,
    TEMPLATE_FILE,
    Conversation,
    Template,
    Turn,
    chat_messages,
    prompt_prefix,
    render_inference,
    render_training,
    resolve_template,
    save_model_format,
    stop_token_ids,
)
from yayi_cli.models.reference import resolve_model_reference
from yayi_cli.models.tokenizers import load_tokenizer
from yayi_cli.models.weights import load_model, saved_precision
from yayi_cli.runtime.atomic import scratch_folder
from yayi_cli.runtime.errors import UsageError
from yayi_cli.runtime.hub import WEIGHT_SUFFIXES, model_json
from yayi_cli.serve.options import TemplateInstallOptions


BACKUP_LIST = "yayi-backup.json"

PROBES = (
    Conversation((Turn(HUMAN, "你好，请介绍一下你自己。"),)),
    Conversation((Turn(HUMAN, "Q1"), Turn(ASSISTANT, "A1"), Turn(HUMAN, "第二个问题")), system=""),
    Conversation((Turn(HUMAN, "Translate.", input="Good morning"), Turn(ASSISTANT, "早上好")), system="S"),
)
"""Conversations the model's own chat template must render exactly as the core does."""


def local_model_dir(model: str) -> Path:
    """A saved model's local directory; hub ids are refused, since their files are not the user's to change."""
    if not Path(model).expanduser().is_dir():  # not looked up on the hub: its files are not the user's to change
        raise UsageError(f"{model}: no such model directory (give a local directory; download hub models first)")
    path = Path(resolve_model_reference(model))
    if not path.is_dir():
        raise UsageError(f"{model}: no such model directory (give a local directory; download hub models first)")
    return path


def template_problems(tokenizer: Any, template: Template) -> list[str]:
    """How the tokenizer's own chat template disagrees with the core (empty: it agrees)."""
    if not tokenizer.chat_template:
        return ["the tokenizer has no chat template"]
    prefix = prompt_prefix(tokenizer)
    for conversation in PROBES:
        for finished in (False, True):
            if finished != conversation.ends_with_answer:
                continue
            expected = prefix + (render_training(conversation, template).text if finished else render_inference(conversation, template))
            try:
                rendered = tokenizer.apply_chat_template(
                    chat_messages(conversation, template), tokenize=False, add_generation_prompt=not finished
                )
            except Exception as error:  # noqa: BLE001 - any template error means it disagrees
                return [f"its chat template fails on a plain conversation ({str(error).strip()[:120]})"]
            if rendered != expected:
                at = next((k for k, (a, b) in enumerate(zip(rendered, expected)) if a != b), min(len(rendered), len(expected)))
                return [
                    f"its chat template differs from the yayi core's (template {template.name}) at character {at}: "
                    f"{rendered[at:at + 30]!r} where the core has {expected[at:at + 30]!r}"
                ]
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": END_MARKER}], tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - refusing is what we want
        return []
    return [f"its chat template lets a message hold {END_MARKER} (the model would read it as a control token)"]


def format_problems(directory: Path, tokenizer: Any, template: Template) -> list[str]:
    """What the model directory lacks for other engines to use it as `yayi chat` does (empty: nothing)."""
    problems = template_problems(tokenizer, template)
    missing = [marker for marker in MARKERS if marker not in tokenizer.get_vocab()]
    eos = model_json(directory, GENERATION_CONFIG_FILE).get("eos_token_id")
    eos = set(eos) if isinstance(eos, list) else {eos}
    if missing:
        problems.insert(0, f"the tokenizer lacks the markers {' '.join(missing)}")
    if missing or not set(stop_token_ids(tokenizer)) <= eos:
        problems.append(f"{GENERATION_CONFIG_FILE} does not stop at {END_MARKER}, <|Human|> and EOS")
    legacy = getattr(tokenizer, "legacy", None)
    if isinstance(legacy, bool) and model_json(directory, "tokenizer_config.json").get("legacy") != legacy:
        problems.append(f'tokenizer_config.json does not say "legacy": {str(legacy).lower()}, so other engines would '
                        "tokenize the text after each marker differently")
    if model_json(directory, TEMPLATE_FILE) != template.to_dict():
        problems.append(f"{TEMPLATE_FILE} is missing or names another template")
    return problems


@dataclass
class InstallReport:
    directory: Path
    template: Template
    template_source: str
    problems: list[str]
    added_markers: int = 0
    resized_to: int | None = None
    backup: Path | None = None
    changed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.directory), "template": self.template.name, "template_source": self.template_source,
            "problems": self.problems, "added_markers": self.added_markers, "resized_to": self.resized_to,
            "backup": None if self.backup is None else str(self.backup), "changed": self.changed,
        }


def template_install(options: TemplateInstallOptions) -> InstallReport:
    """What the model directory lacks for other engines; unless `options.check_only`, also fix it."""
    options.check()
    directory = local_model_dir(options.model)
    template, source = resolve_template(options.template, str(directory))
    tokenizer = load_tokenizer(str(directory), trust_remote_code=options.trust_remote_code)
    report = InstallReport(directory, template, source, format_problems(directory, tokenizer, template))
    if report.problems and not options.check_only:
        _install(report, tokenizer, options.trust_remote_code)
    return report


def _install(report: InstallReport, tokenizer: Any, trust_remote_code: bool) -> None:
    """Write the chat template, missing markers (resizing the embeddings when they need room) and stop
    ids into the model directory; the files replaced go to a backup folder beside it."""
    from yayi_cli.core.prompt import add_markers

    directory = report.directory
    report.added_markers = add_markers(tokenizer)
    with scratch_folder(directory / "yayi-template") as staging:
        if report.added_markers:
            report.resized_to = _resize_embeddings(directory, tokenizer, staging, trust_remote_code)
        if not (staging / GENERATION_CONFIG_FILE).exists() and (directory / GENERATION_CONFIG_FILE).exists():
            shutil.copy2(directory / GENERATION_CONFIG_FILE, staging / GENERATION_CONFIG_FILE)
        save_model_format(staging, tokenizer, report.template)
        stale = [p.name for p in directory.iterdir() if report.resized_to and _is_weights(p) and not (staging / p.name).exists()]
        report.backup, report.changed = _commit(directory, staging, stale)


def _is_weights(path: Path) -> bool:
    return path.suffix in WEIGHT_SUFFIXES or path.name.endswith(".index.json")


def _resize_embeddings(directory: Path, tokenizer: Any, staging: Path, trust_remote_code: bool) -> int | None:
    """Save the model with room for the new markers (untrained rows); None when it already had room."""
    model = load_model(str(directory), device="cpu", dtype=saved_precision(directory), trust_remote_code=trust_remote_code)
    if len(tokenizer) <= model.get_input_embeddings().num_embeddings:
        return None
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(staging)
    return len(tokenizer)


def _commit(directory: Path, staging: Path, stale: list[str]) -> tuple[Path, list[str]]:
    """Move each staged file into `directory`, the file it replaces (and `stale` ones) into a backup
    folder beside it; on any failure every move is undone."""
    try:
        backup = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f"{directory.name}.yayi-backup-{time.strftime('%Y%m%d-%H%M%S')}-"))
    except OSError as error:
        raise UsageError(f"{directory.parent}: cannot create the backup folder here ({error.strerror or error})") from None
    staged = sorted(p.name for p in staging.iterdir())
    replaced = [name for name in staged if (directory / name).exists() or (directory / name).is_symlink()]
    moves: list[tuple[Path, Path]] = []
    try:
        for name in replaced + stale:
            shutil.move(directory / name, backup / name)
            moves.append((directory / name, backup / name))
        for name in staged:
            os.replace(staging / name, directory / name)
            moves.append((staging / name, directory / name))
    except BaseException as error:
        for source, target in reversed(moves):
            shutil.move(target, source)
        shutil.rmtree(backup, ignore_errors=True)
        if isinstance(error, OSError):
            raise UsageError(f"cannot write {directory}: {error.strerror or error}; nothing was changed") from None
        raise
    added = sorted(set(staged) - set(replaced))
    listing = {"replaced": sorted(replaced), "moved_aside": sorted(stale), "added": added}
    (backup / BACKUP_LIST).write_text(json.dumps(listing, indent=2) + "\n", encoding="utf-8")
    return backup, staged


def print_report(report: InstallReport, console: Any, warnings: Any, *, checked: bool) -> None:
    """What was found, and for an install what changed, where the backup is, and the untrained-markers note."""
    where = f"{report.directory} (template {report.template.name}, {report.template_source})"
    if not report.problems:
        console.print(f"{where}: agrees with the yayi core; nothing to do", markup=False, highlight=False, soft_wrap=True)
        return
    for problem in report.problems:
        console.print(f"{'problem' if checked else 'fixing'}: {problem}", markup=False, highlight=False, soft_wrap=True)
    if checked:
        console.print(f"{where}: does not agree with the yayi core; `yayi template install` fixes it",
                      markup=False, highlight=False, soft_wrap=True)
        return
    console.print(f"{where}: wrote {', '.join(report.changed)}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"backup of the replaced files: {report.backup} ({BACKUP_LIST} lists what was added)",
                  markup=False, highlight=False, soft_wrap=True)
    if report.added_markers:
        grown = f"embeddings resized to {report.resized_to} rows" if report.resized_to else "the embeddings had room"
        warnings.print(
            f"note: {report.added_markers} marker(s) added as new tokens ({grown}); their embeddings are untrained, "
            "so the model will not stop at <|End|> until it is fine-tuned (yayi train)", markup=False, highlight=False, soft_wrap=True,
        )
