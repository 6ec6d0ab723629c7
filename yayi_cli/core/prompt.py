"""The YaYi prompt format: the only module that knows the markers or builds text for the model.

Training text of one exchange (byte for byte the upstream YaYi training format):

    <|System|>:\\n{system}\\n\\n<|Human|>:\\n{instruction}\\n\\n<|YaYi|>:\\n{response}\\n\\n<|End|>

Later exchanges follow after another separator (yayi-llama2 drops the whitespace beside every marker,
as the tokenizer that trained those models did). The inference prompt is everything up to and
including the last `<|YaYi|>:\\n`. Separators and headers live in a `Template` (data), so a
variant format is a new `Template`, not new code.

Loss is taken on every assistant response and its closing `\\n\\n<|End|>`, and on nothing else.
Text that contains a marker (or any other special token of the tokenizer) is refused: the
tokenizer would read it as a control token and silently corrupt the example.

Nothing here imports torch or transformers; tokenizers are passed in.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from yayi_cli.runtime.atomic import write_text_atomic
from yayi_cli.runtime.errors import DataError, UsageError
from yayi_cli.runtime.hub import read_model_json


SYSTEM_MARKER = "<|System|>"
HUMAN_MARKER = "<|Human|>"
ASSISTANT_MARKER = "<|YaYi|>"
END_MARKER = "<|End|>"
MARKERS = (SYSTEM_MARKER, HUMAN_MARKER, ASSISTANT_MARKER, END_MARKER)
MARKER_SET = frozenset(MARKERS)

HUMAN = "human"
ASSISTANT = "assistant"

IGNORE_INDEX = -100
"""Label value that PyTorch's cross-entropy (and so the HF models) leaves out of the loss."""

TEMPLATE_FILE = "yayi_template.json"
"""Saved beside every checkpoint yayi writes, so a model is prompted as it was trained."""


class PromptFormatError(DataError):
    """A conversation that cannot be rendered as it is (wrong turn order, marker inside text)."""


class MarkerInjectionError(PromptFormatError):
    """Text contains a string the tokenizer would read as a control token."""


class MissingMarkersError(UsageError):
    """The tokenizer does not have the YaYi markers as single tokens."""


@dataclass(frozen=True)
class Template:
    """Everything that decides the text around the messages."""

    name: str
    system: str
    system_header: str = SYSTEM_MARKER + ":\n"
    human_header: str = HUMAN_MARKER + ":\n"
    assistant_header: str = ASSISTANT_MARKER + ":\n"
    end: str = END_MARKER
    separator: str = "\n\n"
    input_separator: str = "\n"
    strip_at_markers: bool = False
    """Drop the whitespace on both sides of every marker, as the slow tokenizers of transformers before 4.34 did
    with special tokens added as strings: the text a model trained through them actually saw (docs/formats.md,
    "Tokens, not just text")."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Template:
        """Build from saved data; unknown keys are ignored so newer files still load."""
        fields = {key: value for key, value in data.items() if key in cls.__dataclass_fields__}
        if not all(isinstance(value, bool if cls.__dataclass_fields__[key].type == "bool" else str)
                   for key, value in fields.items()):
            raise UsageError("a saved template holds strings, and true or false for strip_at_markers")
        try:
            return cls(**fields)
        except TypeError:
            raise UsageError("a saved template needs at least 'name' and 'system'") from None


YAYI_SYSTEM = (
    "A chat between a human and an AI assistant named YaYi.\n"
    "YaYi is a helpful and harmless language model developed by Beijing Wenge Technology Co.,Ltd."
)
YAYI_LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant named YaYi developed by Beijing Wenge "
    "Technology Co.,Ltd. Always answer as helpfully as possible, while being safe. Your answers "
    "should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal "
    "content. Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of "
    "answering something not correct. If you don't know the answer to a question, please don't "
    "share false information."
)

TEMPLATES: dict[str, Template] = {
    "yayi": Template(name="yayi", system=YAYI_SYSTEM),
    "yayi-llama2": Template(name="yayi-llama2", system=YAYI_LLAMA2_SYSTEM, separator="", strip_at_markers=True),
}
"""yayi-llama2 renders what the published Llama 2 YaYi models were trained on: no whitespace next to a marker."""
DEFAULT_TEMPLATE = "yayi"


class Turn(NamedTuple):
    """One message. A human turn may carry an upstream-style `input` after its instruction."""

    role: str
    text: str
    input: str = ""


_ROLE_ORDER = (HUMAN, ASSISTANT)


@dataclass(frozen=True)
class Conversation:
    """A system prompt (None: the template's) and turns alternating human, assistant, ...

    Construction refuses marker strings anywhere in the text, so no code path can render one.
    """

    turns: tuple[Turn, ...]
    system: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.turns, tuple):
            object.__setattr__(self, "turns", tuple(self.turns))
        for index, turn in enumerate(self.turns):
            if turn.role != _ROLE_ORDER[index % 2]:
                raise PromptFormatError(
                    f"turn {index + 1} is from {turn.role!r} but {_ROLE_ORDER[index % 2]!r} was expected: "
                    "turns start with the human and alternate"
                )
        self.refuse(MARKER_SET)

    def refuse(self, reserved: frozenset[str]) -> None:
        """Raise `MarkerInjectionError` naming the first text that holds one of `reserved`."""
        texts = [turn.text for turn in self.turns] + [turn.input for turn in self.turns]
        if self.system is not None:
            texts.append(self.system)
        if marker_pattern(reserved).search("\x00".join(texts)) is None:  # one scan in the common case
            return
        for where, text in self.text_fields():
            _refuse_reserved(text, reserved, where)

    def text_fields(self) -> list[tuple[str, str]]:
        """(where, text) for every piece of free text, for error messages that point at it."""
        texts = [("system prompt", self.system)] if self.system is not None else []
        for index, turn in enumerate(self.turns, start=1):
            texts.append((f"turn {index} ({turn.role})", turn.text))
            if turn.input:
                texts.append((f"turn {index} ({turn.role}) input", turn.input))
        return texts

    @property
    def ends_with_answer(self) -> bool:
        return bool(self.turns) and self.turns[-1].role == ASSISTANT


@functools.lru_cache(maxsize=32)
def marker_pattern(markers: frozenset[str] = MARKER_SET) -> re.Pattern[str]:
    """One regular expression matching any of `markers` (longest first)."""
    return re.compile("|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True)))


def find_markers(text: str, markers: frozenset[str] = MARKER_SET) -> list[tuple[int, str]]:
    """Every (character offset, marker) of `markers` found inside `text`, in order."""
    if not markers:
        return []
    pattern = marker_pattern(markers)
    if pattern.search(text) is None:  # the common case, without building match objects
        return []
    return [(match.start(), match.group()) for match in pattern.finditer(text)]


def _refuse_reserved(text: str, reserved: frozenset[str], where: str) -> None:
    found = find_markers(text, reserved)
    if found:
        offset, marker = found[0]
        raise MarkerInjectionError(
            f"{where} contains {marker!r} at character {offset}; the tokenizer would read it as a "
            "control token and corrupt the example: remove it or write it differently"
        )


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text; `trained` pieces carry loss."""

    text: str
    trained: bool


@dataclass(frozen=True)
class RenderedText:
    """Training text and the [start, end) character spans that carry loss."""

    text: str
    spans: tuple[tuple[int, int], ...]


def human_text(turn: Turn, template: Template) -> str:
    """A human turn's text with its upstream-style `input` joined on, as the model sees it."""
    return turn.text + template.input_separator + turn.input if turn.input else turn.text


def render_segments(conversation: Conversation, template: Template) -> list[Segment]:
    """The conversation as alternating prompt and answer pieces; answers end with the end marker."""
    system = template.system if conversation.system is None else conversation.system
    prompt = template.system_header + system
    pieces: list[Segment] = []
    for turn in conversation.turns:
        if turn.role == HUMAN:
            prompt += (
                template.separator + template.human_header + human_text(turn, template)
                + template.separator + template.assistant_header
            )
        else:
            pieces.append(Segment(prompt, trained=False))
            pieces.append(Segment(turn.text + template.separator + template.end, trained=True))
            prompt = ""
    if prompt:
        pieces.append(Segment(prompt, trained=False))
    return pieces


def strip_at_markers(rendered: RenderedText) -> RenderedText:
    """`rendered` without the whitespace on either side of each marker; the spans move with the text."""
    cuts: list[tuple[int, int]] = []
    text = rendered.text
    for match in marker_pattern().finditer(text):
        before, after = match.start(), match.end()
        while before > 0 and text[before - 1].isspace():
            before -= 1
        while after < len(text) and text[after].isspace():
            after += 1
        cuts += [cut for cut in ((before, match.start()), (match.end(), after)) if cut[0] < cut[1] and cut not in cuts]

    def moved(position: int) -> int:
        return position - sum(min(end, position) - start for start, end in cuts if start < position)

    kept = "".join(text[start:end] for start, end in zip([0] + [end for _, end in cuts], [start for start, _ in cuts] + [len(text)]))
    return RenderedText(kept, tuple((moved(start), moved(end)) for start, end in rendered.spans))


def render_training(conversation: Conversation, template: Template) -> RenderedText:
    """Full text of a finished conversation and the spans of every assistant answer."""
    if not conversation.ends_with_answer:
        raise PromptFormatError("a training conversation must end with the assistant's answer")
    text, spans = "", []
    for piece in render_segments(conversation, template):
        if piece.trained:
            spans.append((len(text), len(text) + len(piece.text)))
        text += piece.text
    rendered = RenderedText(text, tuple(spans))
    return strip_at_markers(rendered) if template.strip_at_markers else rendered


def render_inference(conversation: Conversation, template: Template) -> str:
    """The prompt that asks the model for the next answer: it ends with the assistant header."""
    if not conversation.turns or conversation.ends_with_answer:
        raise PromptFormatError("an inference conversation must end with a human message")
    text = "".join(piece.text for piece in render_segments(conversation, template))
    return strip_at_markers(RenderedText(text, ())).text if template.strip_at_markers else text


# --- tokenizers -------------------------------------------------------------------------------


def add_markers(tokenizer: Any) -> int:
    """Add any missing marker to the tokenizer as a special token; returns how many were added.

    Callers that own a model must resize its embeddings when this returns more than 0.
    """
    from tokenizers import AddedToken

    missing = [m for m in MARKERS if m not in tokenizer.get_vocab()]
    if not missing:
        return 0
    return tokenizer.add_tokens(
        [AddedToken(m, special=True, normalized=False) for m in missing], special_tokens=True
    )


def marker_token_ids(tokenizer: Any) -> dict[str, int]:
    """Each marker's own token id.

    Looked up as a token, never as `tokenizer(marker).input_ids[0]`, which is the BOS id for
    tokenizers that prepend one (the Llama ones).
    """
    ids = {}
    for marker in MARKERS:
        token_id = tokenizer.convert_tokens_to_ids(marker)
        if token_id is None or token_id == tokenizer.unk_token_id or tokenizer.encode(
            marker, add_special_tokens=False
        ) != [token_id]:
            raise MissingMarkersError(
                f"the tokenizer has no single token for {marker!r}; it was not prepared for the YaYi format: "
                "fine-tune it with yayi train, which adds the markers, or add them with `yayi template install DIR` "
                "(their embeddings start untrained)"
            )
        ids[marker] = token_id
    return ids


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Generation ends at <|End|>, at EOS, and if the model starts a new human turn."""
    markers = marker_token_ids(tokenizer)
    ids = [markers[END_MARKER], markers[HUMAN_MARKER]]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@dataclass(frozen=True)
class Encoded:
    """Token ids and labels (IGNORE_INDEX outside assistant answers) of one training example."""

    input_ids: list[int]
    labels: list[int] = field(repr=False)

    @property
    def num_loss_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def _answer_labels(ids: list[int], offsets: list[Any], spans: tuple[tuple[int, int], ...]) -> list[int]:
    """Each token's id if it starts inside a span, else IGNORE_INDEX (empty offsets, e.g. BOS, never do).

    Token starts never decrease, so each span's tokens are found by bisection.
    """
    labels = [IGNORE_INDEX] * len(ids)
    starts = [start for start, _ in offsets]
    for span_start, span_end in spans:
        for index in range(bisect.bisect_left(starts, span_start), bisect.bisect_left(starts, span_end)):
            if offsets[index][0] < offsets[index][1]:
                labels[index] = ids[index]
    return labels


def reserved_tokens(tokenizer: Any) -> frozenset[str]:
    """Strings the tokenizer reads as control tokens (the markers, EOS, ...): never allowed in text."""
    return frozenset(tokenizer.all_special_tokens) | frozenset(
        token.content for token in tokenizer.added_tokens_decoder.values() if token.special
    )


class PromptTokenizer:
    """A template bound to a tokenizer: the one way conversations become token ids.

    Training and inference tokenize the same rendered text, so a prompt at inference is exactly
    the prefix the model saw during training. The tokenizer must be a fast (Rust) tokenizer,
    whose character offsets map loss spans onto tokens.
    """

    def __init__(self, template: Template, tokenizer: Any) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise UsageError(
                f"{type(tokenizer).__name__} is not a fast tokenizer; yayi needs one "
                "(a tokenizer.json beside the model) to map answers onto tokens"
            )
        self.template = template
        self.tokenizer = tokenizer
        self.marker_ids = marker_token_ids(tokenizer)
        self.reserved = reserved_tokens(tokenizer)

    def encode_training(self, conversation: Conversation) -> Encoded:
        return self.encode_training_batch([conversation])[0]

    def encode_training_batch(self, conversations: list[Conversation]) -> list[Encoded]:
        """Encode many conversations in one tokenizer call (the Rust tokenizer runs them in parallel)."""
        for conversation in conversations:
            conversation.refuse(self.reserved)
        rendered = [render_training(conversation, self.template) for conversation in conversations]
        encodings = self.tokenizer([r.text for r in rendered], return_offsets_mapping=True)
        encoded = []
        for ids, offsets, text in zip(encodings["input_ids"], encodings["offset_mapping"], rendered):
            encoded.append(Encoded(list(ids), _answer_labels(ids, offsets, text.spans)))
        return encoded

    def decode_answer(self, generated: list[int]) -> str:
        """The answer in tokens generated after an inference prompt: up to the first stop token,
        without the separator the format puts before <|End|>."""
        stops = set(stop_token_ids(self.tokenizer))
        end = next((k for k, token in enumerate(generated) if token in stops), len(generated))
        text = self.tokenizer.decode(generated[:end], skip_special_tokens=True)
        return text.removesuffix(self.template.separator).rstrip(INCOMPLETE)

    def encode_inference(self, conversation: Conversation) -> list[int]:
        conversation.refuse(self.reserved)
        return list(self.tokenizer(render_inference(conversation, self.template))["input_ids"])

    def answer_stream(self) -> AnswerStream:
        """An incremental `decode_answer`, for printing an answer while it is generated."""
        return AnswerStream(self.tokenizer, frozenset(stop_token_ids(self.tokenizer)), self.template.separator)


INCOMPLETE = "\ufffd"
"""What decoding shows for a character whose bytes were cut off (generation stopped inside it): left out of answers."""


class AnswerStream:
    """Token by token, the text `decode_answer` gives in one go, released once it cannot change.

    An incomplete UTF-8 character waits for its next token; a tail that may be the separator
    before <|End|> waits to see whether the answer ends there; nothing after a stop token (or
    any marker) is ever released. Each token costs two short decodes, not the whole answer's.
    """

    def __init__(self, tokenizer: Any, stops: frozenset[int], separator: str) -> None:
        self._tokenizer, self._stops, self._separator = tokenizer, stops, separator
        self._ids: list[int] = []
        self._prefix = self._read = 0  # ids[_prefix:_read] give context to decode the new ids with
        self._held = ""
        self.stopped = False

    def _decode(self, start: int, end: int | None = None) -> str:
        return self._tokenizer.decode(self._ids[start:end], skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """The text that `token_id` completes (often "", never a marker)."""
        if self.stopped or token_id in self._stops:
            self.stopped = True
            return ""
        self._ids.append(token_id)
        before, text = self._decode(self._prefix, self._read), self._decode(self._prefix)
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return self._release(self._held + text[len(before):])

    def _release(self, pending: str) -> str:
        held = held_length(pending, self._separator, whole=True)
        self._held = pending[len(pending) - held:]
        return pending[: len(pending) - held]

    def finish(self) -> str:
        """What is left once generation is over: the held tail, unless it is the separator."""
        rest = self._held + self._decode(self._prefix)[len(self._decode(self._prefix, self._read)):]
        self._held = ""
        self._prefix = self._read = len(self._ids)
        return rest.removesuffix(self._separator).rstrip(INCOMPLETE)


def held_length(text: str, ahead: str, *, whole: bool) -> int:
    """How many characters at the end of `text` may be the start of `ahead` (all of it too when `whole`): text
    that must wait for the next piece before it can be released."""
    longest = min(len(text), len(ahead) if whole else len(ahead) - 1)
    return next((k for k in range(longest, 0, -1) if ahead.startswith(text[-k:])), 0)


class AnswerText:
    """`AnswerStream` for an answer that arrives as text (from an engine): the separator before <|End|> is left
    out at the end, as is a character cut off at the end (non-streamed decoding shows it as U+FFFD), and the answer
    ends before the first of `stops` (OpenAI's `stop`), which never shows."""

    def __init__(self, separator: str, stops: tuple[str, ...] = ()) -> None:
        self._separator, self._stops = separator, tuple(stop for stop in stops if stop)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """The part of `text` (after what was held) that can no longer change."""
        if self.stopped:
            return ""
        pending = self._held + text
        cut = min((at for at in (pending.find(stop) for stop in self._stops) if at >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return pending[:cut]
        held = max([held_length(pending, self._separator, whole=True), len(pending) - len(pending.rstrip(INCOMPLETE)),
                    *(held_length(pending, stop, whole=False) for stop in self._stops)])
        self._held = pending[len(pending) - held:]
        return pending[: len(pending) - held]

    def finish(self) -> str:
        """What is left once the engine is done: the held tail, unless it is the separator."""
        rest, self._held = self._held, ""
        return rest.removesuffix(self._separator).rstrip(INCOMPLETE)


# --- the format outside yayi: a Hugging Face chat template and stop ids -----------------------

GENERATION_CONFIG_FILE = "generation_config.json"


def _jinja_string(text: str) -> str:
    """`text` as a Jinja string literal: Jinja reads the escapes of Python's string literals."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def chat_template(template: Template, prefix: str = "", reserved: frozenset[str] = MARKER_SET) -> str:
    """`template` as a Jinja chat template that renders exactly what `render_inference` and
    `render_training` do, so engines outside yayi (transformers serve, vLLM, `apply_chat_template`)
    prompt the model as it was trained.

    `prefix` is what the tokenizer puts before text (`prompt_prefix`): engines tokenize the rendered
    text without adding special tokens. A message holding a `reserved` string (the markers, the
    tokenizer's special tokens), roles out of order, or a prompt that does not end with the user make
    the template itself raise, so every engine refuses them instead of passing control tokens on.
    """
    q = _jinja_string
    markers = ", ".join(q(marker) for marker in sorted(reserved | MARKER_SET))
    checks = "".join((
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}",
        "{%- else -%}",
        f"{{%- set system = {q(template.system)} -%}}{{%- set turns = messages -%}}",
        "{%- endif -%}\n",
        "{%- for text in [system] + turns | map(attribute='content') | list -%}",
        f"{{%- for marker in [{markers}] -%}}{{%- if marker in text -%}}",
        "{{- raise_exception('a message contains ' + marker + ', which the model would read as a control "
        "token: remove it or write it differently') -}}",
        "{%- endif -%}{%- endfor -%}{%- endfor -%}\n",
        "{%- for message in turns -%}{%- if message['role'] != ['user', 'assistant'][loop.index0 % 2] -%}",
        "{{- raise_exception('messages must alternate user and assistant, starting with the user; a system message "
        "may only come first') -}}",
        "{%- endif -%}{%- endfor -%}\n",
        "{%- if add_generation_prompt and (not turns or turns[-1]['role'] != 'user') -%}",
        "{{- raise_exception('the last message must be from the user') -}}",
        "{%- endif -%}\n",
    ))
    rendering = "".join((
        f"{{{{- {q(prefix + template.system_header)} + system -}}}}\n",
        "{%- for message in turns -%}{%- if message['role'] == 'user' -%}",
        f"{{{{- {q(template.separator + template.human_header)} + message['content'] + {q(template.separator)} -}}}}",
        "{%- else -%}",
        f"{{{{- {q(template.assistant_header)} + message['content'] + {q(template.separator + template.end)} -}}}}",
        "{%- endif -%}{%- endfor -%}\n",
        f"{{%- if add_generation_prompt -%}}{{{{- {q(template.assistant_header)} -}}}}{{%- endif -%}}\n",
    ))
    return checks + (_stripped_at_markers(rendering) if template.strip_at_markers else rendering)


def _stripped_at_markers(rendering: str) -> str:
    """Jinja that renders `rendering` into a variable, then drops the whitespace next to each marker in it, as
    `strip_at_markers` does: split at the marker, strip the pieces' facing ends, join."""
    markers = ", ".join(_jinja_string(marker) for marker in MARKERS)
    return "".join((
        "{%- set rendered -%}\n", rendering, "{%- endset -%}\n",
        "{%- set state = namespace(text=rendered) -%}\n",
        f"{{%- for marker in [{markers}] -%}}{{%- set joined = namespace(text='') -%}}",
        "{%- for piece in state.text.split(marker) -%}",
        "{%- set piece = piece if loop.first else piece.lstrip() -%}",
        "{%- set joined.text = joined.text + (piece if loop.last else piece.rstrip() + marker) -%}",
        "{%- endfor -%}{%- set state.text = joined.text -%}{%- endfor -%}\n",
        "{{- state.text -}}\n",
    ))


def chat_messages(conversation: Conversation, template: Template) -> list[dict[str, str]]:
    """The conversation as the OpenAI-style messages a chat template takes (a system message only
    when the conversation has its own system prompt)."""
    messages = [] if conversation.system is None else [{"role": "system", "content": conversation.system}]
    for turn in conversation.turns:
        role, text = ("user", human_text(turn, template)) if turn.role == HUMAN else ("assistant", turn.text)
        messages.append({"role": role, "content": text})
    return messages


def prompt_prefix(tokenizer: Any) -> str:
    """The special tokens the tokenizer adds before any text (a Llama BOS), as text."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a")
    start = next((k for k in range(len(full) - len(plain) + 1) if full[k : k + len(plain)] == plain), 0)
    return "".join(tokenizer.convert_ids_to_tokens(full[:start]))


def save_model_format(directory: Path, tokenizer: Any, template: Template) -> None:
    """Save the tokenizer with the chat template, `yayi_template.json`, and stop ids (<|End|>, <|Human|>,
    EOS) in `generation_config.json`: every model directory yayi writes goes through here, so every
    engine prompts it and stops where `yayi chat` does. Call it after the model itself is saved."""
    directory = Path(directory)
    tokenizer.chat_template = chat_template(template, prompt_prefix(tokenizer), reserved_tokens(tokenizer))
    tokenizer.save_pretrained(str(directory))
    record_legacy(directory, tokenizer)
    save_template(directory, template)
    path = directory / GENERATION_CONFIG_FILE
    config = read_model_json(directory, GENERATION_CONFIG_FILE) or {}
    previous, stops = config.get("eos_token_id"), stop_token_ids(tokenizer)
    previous = previous if isinstance(previous, list) else [] if previous is None else [previous]
    config["eos_token_id"] = stops + [token_id for token_id in previous if token_id not in stops]
    config.pop("_from_model_config", None)  # else generate() may rebuild it from config.json, losing the stop ids
    if config.get("pad_token_id") is None and tokenizer.pad_token_id is not None:
        config["pad_token_id"] = tokenizer.pad_token_id
    write_text_atomic(path, json.dumps(config, indent=2) + "\n")


def record_legacy(directory: Path, tokenizer: Any) -> None:
    """Write the tokenizer's `legacy` setting into its saved config, which transformers 5 leaves out: without it,
    a Llama SentencePiece tokenizer read again (by yayi, transformers serve or vLLM) could put the `▁` after the
    markers differently from the way this one did."""
    legacy = getattr(tokenizer, "legacy", None)
    config = read_model_json(directory, "tokenizer_config.json")
    if isinstance(legacy, bool) and config is not None and config.get("legacy") != legacy:
        config["legacy"] = legacy
        write_text_atomic(Path(directory) / "tokenizer_config.json", json.dumps(config, ensure_ascii=False, indent=2) + "\n")


# --- choosing the template --------------------------------------------------------------------


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UsageError(f"unknown template {name!r}; choose one of: {', '.join(TEMPLATES)}") from None


def detect_template(model_name: str, config: dict[str, Any] | None = None) -> Template:
    """Guess from the model's name or config: Llama models get the Llama-2 YaYi system prompt."""
    model_type = str((config or {}).get("model_type", "")).lower()
    if model_type == "llama" or (not model_type and "llama" in model_name.lower()):
        return TEMPLATES["yayi-llama2"]
    return TEMPLATES[DEFAULT_TEMPLATE]


def save_template(directory: Path, template: Template) -> Path:
    """Record the template beside a checkpoint; `resolve_template` reads it back."""
    path = Path(directory) / TEMPLATE_FILE
    write_text_atomic(path, json.dumps(template.to_dict(), ensure_ascii=False, indent=2) + "\n")
    return path


def resolve_template(requested: str | None, model: str | None) -> tuple[Template, str]:
    """The template to use and why: --template, else the model's saved one, else a guess."""
    if requested:
        return get_template(requested), "--template"
    if model is None:
        return TEMPLATES[DEFAULT_TEMPLATE], "default"
    directory = Path(model)
    if directory.is_dir():
        saved = read_model_json(directory, TEMPLATE_FILE)
        if saved is not None:
            try:
                return Template.from_dict(saved), "saved with the model"
            except UsageError as error:
                raise UsageError(f"{directory / TEMPLATE_FILE}: {error}") from None
        config = read_model_json(directory)
        return detect_template(model, config), "detected from the model config"
    return detect_template(model), "detected from the model name"
