"""`yayi eval`: honest numbers for a fine-tuned model, fit for a CI gate.

- loss and perplexity on answer tokens only, with exactly the labels training uses
  (`PromptTokenizer.encode_training_batch`), batched by length, per domain;
- with `generate`, greedy (or sampled) answers to each record's last question, scored against
  the reference by exact match and character-level ROUGE-L and BLEU-4;
- `task="choice"`: multiple-choice accuracy (C-Eval / CMMLU CSV layout, or JSON lines) by
  comparing the log-likelihood of each option letter as the answer.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yayi_cli import metrics
from yayi_cli.data.reader import open_data_file, read_records, sha256_of
from yayi_cli.data.validate import Problem, check_record
from yayi_cli.errors import DataError, UsageError
from yayi_cli.prompt import ASSISTANT, HUMAN, IGNORE_INDEX, Conversation, Encoded, PromptTokenizer, Turn, stop_token_ids
from yayi_cli.records import domain_of

LOWER_IS_BETTER = frozenset({"loss", "perplexity"})
METRIC_ALIASES = {"ppl": "perplexity", "em": "exact_match", "acc": "accuracy", "rouge": "rouge_l", "bleu": "bleu4"}
NO_DOMAIN = "(none)"
CHOICE_LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Example:
    """A conversation to score, where it came from, and the group it is reported under."""

    location: str
    group: str
    conversation: Conversation


def _sample(examples: list[Example], max_samples: int | None, seed: int) -> list[Example]:
    """A seeded subset, kept in file order, when there are more than `max_samples`."""
    if max_samples is None or len(examples) <= max_samples:
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), max_samples))
    return [examples[i] for i in keep]


def load_examples(paths: Sequence[Path], max_samples: int | None = None, seed: int = 0) -> list[Example]:
    """The records of `paths` as examples; any invalid record stops the run as `data validate` says."""
    examples, problems = [], []
    for path in paths:
        for source in read_records(path):
            checked = check_record(source)
            if isinstance(checked, Problem):
                problems.append(checked)
                continue
            domain = domain_of(checked.turns[0].text) or NO_DOMAIN
            examples.append(Example(source.location, domain, checked.conversation))
    if problems:
        raise DataError(
            f"{len(problems)} invalid record(s), the first at {problems[0]}; `yayi data validate` lists them all"
        )
    if not examples:
        raise DataError("no records to evaluate in " + ", ".join(str(p) for p in paths))
    return _sample(examples, max_samples, seed)


# --- loss ---------------------------------------------------------------------------------------


@dataclass
class LossTotals:
    """Summed negative log-likelihood over the answer tokens, and how many there were."""

    nll: float = 0.0
    tokens: int = 0

    def add(self, nll: float, tokens: int) -> None:
        self.nll += nll
        self.tokens += tokens

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"loss": self.loss, "perplexity": math.exp(self.loss) if self.tokens else float("nan"), "tokens": self.tokens}


def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indexes grouped into batches of similar length (longest first), so little is padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def sequence_nll(model: Any, encoded: Sequence[Encoded], padding: int) -> list[tuple[float, int]]:
    """(summed NLL, token count) of the labelled tokens of each sequence, in one padded forward pass.

    Only the logits that predict an answer token are turned into losses (in float32), so the
    prompt positions, most of a batch, cost nothing beyond the forward pass.
    """
    import torch
    import torch.nn.functional as F

    width = max(len(e.input_ids) for e in encoded)
    ids = torch.tensor([e.input_ids + [padding] * (width - len(e.input_ids)) for e in encoded])
    labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in encoded])
    mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in encoded])
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        targets = labels[:, 1:].to(logits.device)
        rows, positions = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
        losses = F.cross_entropy(logits[rows, positions].float(), targets[rows, positions], reduction="none")
        totals = torch.zeros(len(encoded), dtype=torch.float64, device=logits.device)
        totals.index_add_(0, rows, losses.double())
    counts = torch.bincount(rows.cpu(), minlength=len(encoded)).tolist()
    return list(zip(totals.tolist(), counts))


def truncate(encoded: Encoded, max_length: int | None) -> Encoded:
    if max_length is None or len(encoded.input_ids) <= max_length:
        return encoded
    return Encoded(encoded.input_ids[:max_length], encoded.labels[:max_length])


@dataclass
class LossResult:
    overall: LossTotals = field(default_factory=LossTotals)
    groups: dict[str, LossTotals] = field(default_factory=lambda: defaultdict(LossTotals))
    truncated: int = 0
    no_answer_tokens: int = 0


def response_loss(
    model: Any, prompt_tokenizer: PromptTokenizer, examples: Sequence[Example], *,
    batch_size: int = 8, max_length: int | None = None,
) -> LossResult:
    """Answer-only loss over `examples`, overall and per group (domain or subject)."""
    result = LossResult()
    encoded = prompt_tokenizer.encode_training_batch([e.conversation for e in examples])
    result.truncated = sum(max_length is not None and len(e.input_ids) > max_length for e in encoded)
    encoded = [truncate(e, max_length) for e in encoded]
    padding = pad_id(prompt_tokenizer.tokenizer)
    for batch in length_batches([len(e.input_ids) for e in encoded], batch_size):
        for index, (nll, tokens) in zip(batch, sequence_nll(model, [encoded[i] for i in batch], padding)):
            result.no_answer_tokens += tokens == 0
            result.overall.add(nll, tokens)
            result.groups[examples[index].group].add(nll, tokens)
    return result


# --- generation ---------------------------------------------------------------------------------


def generate_answers(
    model: Any, prompt_tokenizer: PromptTokenizer, questions: Sequence[Conversation], *,
    batch_size: int = 8, max_new_tokens: int = 256, sample: bool = False, seed: int = 0,
) -> list[str]:
    """The model's answer to each conversation (which ends with a human turn), batched.

    Prompts are left-padded so every row's answer starts right after its own prompt; each
    answer is cut at its first stop token (<|End|>, a new <|Human|> turn, or EOS).
    """
    import torch

    tokenizer = prompt_tokenizer.tokenizer
    prompts = [prompt_tokenizer.encode_inference(question) for question in questions]
    stops, padding = stop_token_ids(tokenizer), pad_id(tokenizer)
    device = next(model.parameters()).device
    answers: list[str] = [""] * len(prompts)
    torch.manual_seed(seed)
    for batch in length_batches([len(p) for p in prompts], batch_size):
        width = max(len(prompts[i]) for i in batch)
        ids = torch.tensor([[padding] * (width - len(prompts[i])) + prompts[i] for i in batch], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch], device=device)
        with torch.inference_mode():
            output = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=sample,
                eos_token_id=stops, pad_token_id=padding,
            )
        for row, index in enumerate(batch):
            answers[index] = prompt_tokenizer.decode_answer(output[row, width:].tolist())
    return answers


@dataclass
class GenerationResult:
    predictions: list[str]
    references: list[str]

    def to_json(self) -> dict[str, Any]:
        count = max(len(self.predictions), 1)
        pairs = list(zip(self.predictions, self.references))
        return {
            "exact_match": sum(metrics.exact_match(p, r) for p, r in pairs) / count,
            "rouge_l": sum(metrics.rouge_l(p, r) for p, r in pairs) / count,
            "bleu4": metrics.corpus_bleu4(self.predictions, self.references),
        }


def split_last_answer(conversation: Conversation) -> tuple[Conversation, str]:
    """The conversation up to its last question, and the reference answer to it."""
    return Conversation(conversation.turns[:-1], conversation.system), conversation.turns[-1].text


# --- multiple choice ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChoiceItem:
    location: str
    subject: str
    question: str
    options: tuple[str, ...]
    answer: str

    def conversation(self, letter: str) -> Conversation:
        lines = [self.question] + [f"{key}. {text}" for key, text in zip(CHOICE_LETTERS, self.options)]
        return Conversation((Turn(HUMAN, "\n".join(lines) + "\n答案："), Turn(ASSISTANT, letter)))


def _subject_of(path: Path) -> str:
    """C-Eval names files `<subject>_val.csv`; CMMLU `<subject>.csv`."""
    return re.sub(r"_(val|dev|test)$", "", path.stem)


def _choice_item(row: dict[str, Any], location: str, subject: str) -> ChoiceItem:
    fields = {str(key).strip().lower(): value for key, value in row.items() if key is not None}
    missing = [name for name in ("question", "a", "b", "c", "d", "answer") if not str(fields.get(name) or "").strip()]
    if missing:
        raise DataError(f"{location}: missing {', '.join(missing)}; a choice item needs question, A, B, C, D and answer")
    answer = str(fields["answer"]).strip().upper()
    if answer not in CHOICE_LETTERS:
        raise DataError(f"{location}: answer {fields['answer']!r} is not one of A, B, C, D")
    options = tuple(str(fields[letter.lower()]) for letter in CHOICE_LETTERS)
    return ChoiceItem(location, str(fields.get("subject") or subject), str(fields["question"]), options, answer)


def read_choice_items(paths: Sequence[Path]) -> list[ChoiceItem]:
    """Items from C-Eval/CMMLU-style CSV files (question, A, B, C, D, answer) or JSON lines."""
    items = []
    for path in paths:
        subject = _subject_of(Path(path))
        if Path(path).suffix.lower() == ".csv":
            open_data_file(path).close()  # one clear error for a missing file or a directory
            try:
                with open(path, encoding="utf-8-sig", newline="") as handle:
                    reader = csv.DictReader(handle)
                    items.extend(_choice_item(row, f"{path}:{reader.line_num}", subject) for row in reader)
            except UnicodeDecodeError:
                raise DataError(f"{path}: not UTF-8 text; save the CSV as UTF-8") from None
            continue
        for source in read_records(path):
            if source.error is not None or not isinstance(source.value, dict):
                raise DataError(f"{source.location}: {source.error or 'expected a JSON object'}")
            items.append(_choice_item(source.value, source.location, subject))
    if not items:
        raise DataError("no choice items in " + ", ".join(str(p) for p in paths))
    return items


@dataclass
class ChoiceResult:
    correct: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    chosen: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": sum(self.correct.values()) / max(sum(self.total.values()), 1),
            "per_subject": {s: {"accuracy": self.correct[s] / self.total[s], "items": self.total[s]} for s in sorted(self.total)},
        }


def choice_accuracy(model: Any, prompt_tokenizer: PromptTokenizer, items: Sequence[ChoiceItem], *, batch_size: int = 8) -> ChoiceResult:
    """Pick, for each item, the letter whose answer the model finds most likely."""
    conversations = [item.conversation(letter) for item in items for letter in CHOICE_LETTERS]
    encoded = prompt_tokenizer.encode_training_batch(conversations)
    scores = [0.0] * len(encoded)
    padding = pad_id(prompt_tokenizer.tokenizer)
    for batch in length_batches([len(e.input_ids) for e in encoded], batch_size):
        for index, (nll, _) in zip(batch, sequence_nll(model, [encoded[i] for i in batch], padding)):
            scores[index] = nll
    result = ChoiceResult()
    for number, item in enumerate(items):
        options = scores[number * 4 : number * 4 + 4]
        letter = CHOICE_LETTERS[options.index(min(options))]
        result.chosen.append(letter)
        result.total[item.subject] += 1
        result.correct[item.subject] += letter == item.answer
    return result


# --- gates --------------------------------------------------------------------------------------


_GATE = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Gate:
    """`metric op value`: the run fails when the comparison holds, as in `--fail-if "ppl>12.5"`."""

    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Gate:
        match = _GATE.match(text.lower())
        if match is None:
            raise UsageError(f"--fail-if {text!r}: write METRIC OP NUMBER, for example \"ppl>12.5\" or \"rouge_l<0.3\"")
        name, op, value = match.groups()
        try:
            return cls(METRIC_ALIASES.get(name, name), op, float(value))
        except ValueError:
            raise UsageError(f"--fail-if {text!r}: {value!r} is not a number") from None

    def fails(self, metrics_found: dict[str, float]) -> str | None:
        if self.metric not in metrics_found:
            raise UsageError(f"--fail-if: this run has no metric {self.metric!r} (it has {', '.join(metrics_found)})")
        actual = metrics_found[self.metric]
        holds = {"<": actual < self.value, ">": actual > self.value, "<=": actual <= self.value, ">=": actual >= self.value}[self.op]
        return f"{self.metric} = {actual:.6g}, which is {self.op} {self.value:g}" if holds else None


def baseline_metrics(path: Path) -> dict[str, float]:
    """The metrics of a report that `yayi eval --output` wrote."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return {name: float(value) for name, value in document["metrics"].items()}
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UsageError(f"{path}: not a yayi eval report ({error})") from None


def regressions(current: dict[str, float], baseline: dict[str, float], max_percent: float) -> list[str]:
    """Metrics more than `max_percent` worse than the baseline, in each metric's own direction."""
    failures = []
    for name, value in current.items():
        before = baseline.get(name)
        if before is None or not before:
            continue
        change = (value - before) / abs(before) * 100
        worse = change if name in LOWER_IS_BETTER else -change
        if worse > max_percent:
            failures.append(f"{name} = {value:.6g} is {worse:.2f}% worse than the baseline {before:.6g} (allowed {max_percent:g}%)")
    return failures


# --- the whole run ------------------------------------------------------------------------------


@dataclass
class EvalOptions:
    """Everything `yayi eval` is asked to do, resolved in one place."""

    model: str
    data: list[Path]
    task: str = "lm"
    generate: bool = False
    sample: bool = False
    max_new_tokens: int = 256
    batch_size: int = 8
    max_samples: int | None = None
    max_length: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    load_in_8bit: bool = False
    template: str | None = None
    trust_remote_code: bool = False
    base: str | None = None
    """With an adapter directory as `model`: its base (default: the one it names)."""


@dataclass
class EvalReport:
    options: EvalOptions
    template: str
    counts: dict[str, int]
    metrics: dict[str, float]
    groups: dict[str, dict[str, Any]]
    timings: dict[str, float]
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.options.model,
            "template": self.template,
            "task": self.options.task,
            "data": [{"path": str(p), "sha256": sha256_of(p)} for p in self.options.data],
            "counts": self.counts,
            "metrics": self.metrics,
            "groups": self.groups,
            "timings": self.timings,
            "options": {k: v for k, v in vars(self.options).items() if k not in ("model", "data")},
        }


def run_eval(options: EvalOptions) -> EvalReport:
    """Read the data (refusing invalid records first), load the model once, compute every metric asked for."""
    from yayi_cli.models import context_length, load_model, load_tokenizer
    from yayi_cli.prompt import resolve_template

    started = time.perf_counter()
    if options.task == "choice":
        inputs = read_choice_items(options.data)[: options.max_samples]
    else:
        inputs = load_examples(options.data, options.max_samples, options.seed)
    template, _ = resolve_template(options.template, options.model)
    tokenizer = load_tokenizer(options.model, trust_remote_code=options.trust_remote_code, base=options.base)
    prompt_tokenizer = PromptTokenizer(template, tokenizer)
    model = load_model(
        options.model, device=options.device, dtype=options.dtype, load_in_8bit=options.load_in_8bit,
        trust_remote_code=options.trust_remote_code, base=options.base,
    )
    timings = {"load_s": time.perf_counter() - started}
    if options.task == "choice":
        return _choice_report(options, template.name, model, prompt_tokenizer, inputs, timings)
    max_length = options.max_length or context_length(options.model, tokenizer, options.base)
    return _lm_report(options, template.name, model, prompt_tokenizer, inputs, timings, max_length)


def _lm_report(
    options: EvalOptions, template: str, model: Any, prompt_tokenizer: PromptTokenizer, examples: list[Example],
    timings: dict[str, float], max_length: int | None,
) -> EvalReport:
    started = time.perf_counter()
    loss = response_loss(model, prompt_tokenizer, examples, batch_size=options.batch_size, max_length=max_length)
    timings["loss_s"] = time.perf_counter() - started
    found = {key: value for key, value in loss.overall.to_json().items() if key != "tokens"}
    counts = {"records": len(examples), "answer_tokens": loss.overall.tokens, "truncated": loss.truncated}
    records = Counter(e.group for e in examples)
    groups = {name: totals.to_json() | {"records": records[name]} for name, totals in sorted(loss.groups.items())}
    report = EvalReport(options, template, counts, found, groups, timings)
    if not options.generate:
        return report
    started = time.perf_counter()
    questions, references = zip(*(split_last_answer(e.conversation) for e in examples))
    predicted = generate_answers(
        model, prompt_tokenizer, questions, batch_size=options.batch_size,
        max_new_tokens=options.max_new_tokens, sample=options.sample, seed=options.seed,
    )
    report.metrics.update(GenerationResult(predicted, list(references)).to_json())
    report.timings["generate_s"] = time.perf_counter() - started
    report.predictions = [
        {"location": e.location, "reference": r, "prediction": p, "exact_match": metrics.exact_match(p, r), "rouge_l": metrics.rouge_l(p, r)}
        for e, p, r in zip(examples, predicted, references)
    ]
    return report


def _choice_report(options: EvalOptions, template: str, model: Any, prompt_tokenizer: PromptTokenizer, items: list[ChoiceItem], timings: dict[str, float]) -> EvalReport:
    started = time.perf_counter()
    result = choice_accuracy(model, prompt_tokenizer, items, batch_size=options.batch_size)
    timings["choice_s"] = time.perf_counter() - started
    summary = result.to_json()
    report = EvalReport(options, template, {"items": len(items)}, {"accuracy": summary["accuracy"]}, summary["per_subject"], timings)
    report.predictions = [{"location": i.location, "answer": i.answer, "chosen": c} for i, c in zip(items, result.chosen)]
    return report


def write_json_lines(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    from yayi_cli.atomic import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def print_report(report: EvalReport, console: Any, baseline: dict[str, float] | None = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{escape(report.options.model)} (template {report.template})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if baseline is not None:
        table.add_column("baseline", justify="right")
        table.add_column("change", justify="right")
    for name, value in report.metrics.items():
        row = [name, f"{value:.4f}"]
        if baseline is not None:
            before = baseline.get(name)
            change = "" if before is None else f"{value - before:+.4f}"
            row += ["" if before is None else f"{before:.4f}", change]
        table.add_row(*row)
    console.print(table)
    if report.groups:
        kind = "subject" if report.options.task == "choice" else "domain"
        groups = Table(title=f"Per {kind}", title_justify="left")
        columns = list(next(iter(report.groups.values())))
        groups.add_column(kind)
        for column in columns:
            groups.add_column(column, justify="right")
        for name, values in report.groups.items():
            groups.add_row(escape(name), *(f"{values[c]:.4f}" if isinstance(values[c], float) else str(values[c]) for c in columns))
        console.print(groups)
    counts = ", ".join(f"{value} {name.replace('_', ' ')}" for name, value in report.counts.items())
    console.print(f"[dim]{counts}; " + ", ".join(f"{k} {v:.1f}" for k, v in report.timings.items()) + "[/]", highlight=False)
