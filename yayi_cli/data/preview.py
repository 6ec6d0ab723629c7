"""`yayi data preview`: exactly what the model will be trained on, for the first records of a file.

The text is rendered by the prompt core and the parts that carry loss are highlighted; with a
tokenizer it also shows the token count and the tokens that carry loss, through the same
tokenization the trainer uses. A preference record shows its prompt once, then each answer (chosen
and rejected, or the completion with its label) as it follows the prompt, with the answer's
tokens as the preference trainers get them (`preference.encode_preferences`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.text import Text

from yayi_cli.core.preference_tokens import encode_preferences
from yayi_cli.core.prompt import (
    IGNORE_INDEX,
    MARKERS,
    PromptTokenizer,
    RenderedText,
    Template,
    render_inference,
    render_training,
    resolve_template,
)
from yayi_cli.core.reader import SourceRecord, read_records
from yayi_cli.core.record_files import Problem, check_record
from yayi_cli.core.records import COMPLETION, PAIRED, PAIRED_KEYS, UNPAIRED, ParsedRecord, Record, answered, domain_of
from yayi_cli.data.options import PreviewOptions
from yayi_cli.runtime.errors import DataError


TRAINED_STYLE = "bold green underline"
MARKER_STYLE = "magenta"
PLAIN_OPEN, PLAIN_CLOSE = "⟦", "⟧"


@dataclass(frozen=True)
class TokenView:
    """Token counts of one example and its loss tokens, decoded into readable pieces."""

    num_tokens: int
    num_loss_tokens: int
    loss_pieces: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"num_tokens": self.num_tokens, "num_loss_tokens": self.num_loss_tokens, "loss_pieces": self.loss_pieces}


def _text_json(rendered: RenderedText, tokens: TokenView | None) -> dict[str, Any]:
    """`text`, its loss `spans`, and with a tokenizer the token counts and loss pieces."""
    body = {"text": rendered.text, "spans": [list(span) for span in rendered.spans]}
    return {**body, **tokens.to_json()} if tokens is not None else body


@dataclass(frozen=True)
class AnswerView:
    """One answer of a preference record: the text that follows the prompt, its loss span, and with
    a tokenizer its tokens (`num_tokens` counts the prompt's too: the sequence the answer ends)."""

    field: str
    rendered: RenderedText
    tokens: TokenView | None = None

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, **_text_json(self.rendered, self.tokens)}


@dataclass(frozen=True)
class PreviewItem:
    """One record as trained: its whole text (SFT), or its prompt (`rendered`, no loss) and answers."""

    source: SourceRecord
    shape: str | None = None
    domain: str | None = None
    rendered: RenderedText | None = None
    tokens: TokenView | None = None
    error: str | None = None
    kind: str | None = None
    answers: tuple[AnswerView, ...] = ()
    label: bool | None = None

    def to_json(self) -> dict[str, Any]:
        head = {"file": self.source.path, "line": self.source.line, "index": self.source.index}
        if self.error is not None:
            return {**head, "error": self.error}
        assert self.rendered is not None
        body = {"shape": self.shape, "kind": self.kind, "domain": self.domain}
        if not self.answers:
            return {**head, **body, **_text_json(self.rendered, self.tokens)}
        prompt = {"prompt": self.rendered.text}
        if self.tokens is not None:
            prompt["prompt_tokens"] = self.tokens.num_tokens
        return {**head, **body, **prompt, "answers": [answer.to_json() for answer in self.answers], "label": self.label}


@dataclass
class PreviewReport:
    template: Template
    template_source: str
    model: str | None
    items: list[PreviewItem] = field(default_factory=list)

    @property
    def num_errors(self) -> int:
        return sum(item.error is not None for item in self.items)

    def to_json(self) -> dict[str, Any]:
        return {
            "template": self.template.name,
            "template_source": self.template_source,
            "model": self.model,
            "records": [item.to_json() for item in self.items],
            "errors": self.num_errors,
        }


def readable_pieces(tokenizer: Any, token_ids: list[int]) -> list[str]:
    """Decode tokens one by one, joining the byte-level pieces of a character that was split."""
    pieces, pending = [], []
    for token_id in token_ids:
        pending.append(token_id)
        text = tokenizer.decode(pending)
        if "\ufffd" not in text or len(pending) >= 4:
            pieces.append(text)
            pending = []
    if pending:
        pieces.append(tokenizer.decode(pending))
    return pieces


def _token_view(prompt_tokenizer: PromptTokenizer, conversation: Any) -> TokenView:
    encoded = prompt_tokenizer.encode_training(conversation)
    loss_ids = [label for label in encoded.labels if label != IGNORE_INDEX]
    return TokenView(len(encoded.input_ids), len(loss_ids), readable_pieces(prompt_tokenizer.tokenizer, loss_ids))


ANSWER_FIELDS = {PAIRED: PAIRED_KEYS, UNPAIRED: (COMPLETION,)}


def _after_prompt(rendered: RenderedText, prompt: str) -> RenderedText:
    """An answer's rendering without the prompt before it; its span (the last) carries loss: the
    answers in the prompt's history do not."""
    start, end = rendered.spans[-1]
    return RenderedText(rendered.text[len(prompt):], ((start - len(prompt), end - len(prompt)),))


def _answer_views(source: SourceRecord, parsed: ParsedRecord, template: Template, prompt_tokenizer: PromptTokenizer | None
                  ) -> tuple[RenderedText, TokenView | None, tuple[AnswerView, ...]]:
    """A preference record's prompt (no loss), its token count, and each answer as it follows the prompt."""
    prompt = render_inference(parsed.conversation, template)
    renderings = [_after_prompt(render_training(answered(parsed.conversation, answer), template), prompt)
                  for answer in parsed.answers]
    if prompt_tokenizer is None:
        return RenderedText(prompt, ()), None, tuple(map(AnswerView, ANSWER_FIELDS[parsed.kind], renderings))
    encoded = encode_preferences([Record.of(source, parsed)], prompt_tokenizer)[0]
    prompt_length = len(encoded.prompt_ids)
    answer_tokens = [TokenView(prompt_length + len(ids), len(ids), readable_pieces(prompt_tokenizer.tokenizer, ids))
                     for ids in encoded.answer_ids]
    views = tuple(map(AnswerView, ANSWER_FIELDS[parsed.kind], renderings, answer_tokens))
    return RenderedText(prompt, ()), TokenView(prompt_length, 0, []), views


def preview_record(source: SourceRecord, template: Template, prompt_tokenizer: PromptTokenizer | None) -> PreviewItem:
    parsed = check_record(source)
    if isinstance(parsed, Problem):
        return PreviewItem(source, error=parsed.message)
    answers: tuple[AnswerView, ...] = ()
    try:
        if parsed.answers:
            rendered, tokens, answers = _answer_views(source, parsed, template, prompt_tokenizer)
        else:
            rendered = render_training(parsed.conversation, template)
            tokens = _token_view(prompt_tokenizer, parsed.conversation) if prompt_tokenizer else None
    except DataError as error:
        return PreviewItem(source, error=str(error))
    return PreviewItem(source, parsed.shape, domain_of(parsed.turns[0].text), rendered, tokens,
                       kind=parsed.kind, answers=answers, label=parsed.label)


def preview(options: PreviewOptions) -> PreviewReport:
    """Render the first `options.num_records` records of `options.file`; with a model, tokenize them
    with its tokenizer (a tokenizer without the YaYi markers gets them added, as training would do)."""
    options.check()
    if options.model is None:
        template, source = resolve_template(options.template, None)
        prompt_tokenizer = None
    else:
        from yayi_cli.models.loading import load_for_task

        loaded = load_for_task(options.model, template=options.template, trust_remote_code=options.trust_remote_code,
                               add_markers=True, model_weights=False)
        template, source, prompt_tokenizer = loaded.template, loaded.template_source, loaded.prompt_tokenizer
    report = PreviewReport(template, source, options.model)
    for record in itertools.islice(read_records(options.file), options.num_records):
        report.items.append(preview_record(record, template, prompt_tokenizer))
    return report


def highlighted(rendered: RenderedText, *, plain: bool) -> Text:
    """The text with trained spans styled; in plain output they are wrapped in ⟦ ⟧ instead."""
    text, cursor = Text(), 0
    for start, end in rendered.spans:
        text.append(rendered.text[cursor:start])
        if plain:
            text.append(PLAIN_OPEN + rendered.text[start:end] + PLAIN_CLOSE)
        else:
            text.append(rendered.text[start:end], style=TRAINED_STYLE)
        cursor = end
    text.append(rendered.text[cursor:])
    if not plain:
        for marker in MARKERS:
            text.highlight_words([marker], style=MARKER_STYLE)
    return text


def print_report(report: PreviewReport, console: Console) -> None:
    plain = console.no_color or console.color_system is None
    legend = f"{PLAIN_OPEN}…{PLAIN_CLOSE}" if plain else f"[{TRAINED_STYLE}]this style[/]"
    console.print(
        f"template [bold]{report.template.name}[/] ({report.template_source}); "
        f"text in {legend} carries loss", highlight=False,
    )
    for item in report.items:
        title = escape(item.source.location)
        if item.error is not None:
            console.print(Rule(title, style="red"))
            console.print(f"[red]error:[/] {escape(item.error)}", highlight=False, soft_wrap=True)
            continue
        kind = item.kind if item.answers else None  # SFT records, the common case, say no more than before
        details = " · ".join(escape(part) for part in (item.shape, item.domain, kind) if part)
        console.print(Rule(f"{title} · {details}"))
        console.print(highlighted(item.rendered, plain=plain), highlight=False, soft_wrap=True)
        if not item.answers:
            _print_tokens(item.tokens, console)
        elif item.tokens is not None:
            console.print(f"[dim]prompt: {item.tokens.num_tokens} tokens, none with loss[/]", highlight=False)
        for answer in item.answers:
            label = f" · label {str(item.label).lower()}" if item.label is not None else ""
            console.print(f"[bold]── {answer.field}{label}[/] [dim](follows the prompt above)[/]", highlight=False)
            console.print(highlighted(answer.rendered, plain=plain), highlight=False, soft_wrap=True)
            _print_tokens(answer.tokens, console)
    if not report.items:
        console.print("[yellow]no records in this file[/]")
    if report.num_errors:
        console.print(f"[red]{report.num_errors} of {len(report.items)} records are invalid[/]", highlight=False)


def _print_tokens(tokens: TokenView | None, console: Console) -> None:
    """The token counts and the loss tokens, one readable piece each."""
    if tokens is None:
        return
    share = tokens.num_loss_tokens / max(tokens.num_tokens, 1)
    joined = len(tokens.loss_pieces) < tokens.num_loss_tokens
    shown = f", shown as {len(tokens.loss_pieces)} pieces (byte tokens of one character joined)" if joined else ""
    console.print(
        f"[dim]{tokens.num_tokens} tokens, {tokens.num_loss_tokens} with loss "
        f"({share:.0%}){shown}:[/] " + "[dim]|[/]".join(_escape(p) for p in tokens.loss_pieces),
        highlight=False, soft_wrap=True,
    )


def _escape(piece: str) -> str:
    return escape(piece.replace("\n", "\\n"))
