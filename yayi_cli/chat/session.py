"""The chat engine without a terminal: settings, the conversation, its context window, streamed replies.

The REPL and the pipe modes of `yayi chat` drive a `ChatSession`, and so do the tests. Text for
the model comes only from the prompt core (`PromptTokenizer`); answers are streamed through its
`AnswerStream`, so markers and the closing separator are never shown.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yayi_cli.chat.options import ChatOptions
from yayi_cli.core.prompt import (
    ASSISTANT,
    HUMAN,
    AnswerStream,
    Conversation,
    PromptTokenizer,
    Turn,
    human_text,
)
from yayi_cli.core.records import CONVERSATIONS, RecordError, parse_record
from yayi_cli.options.shared import GenerationSettings
from yayi_cli.runtime.errors import DataError, UsageError


ROLE_NAMES = {HUMAN: "human", ASSISTANT: "yayi"}
"""Roles as the `conversations` record shape writes them."""


@dataclass(frozen=True)
class Reply:
    """One generated answer and what it cost."""

    text: str
    prompt_tokens: int
    new_tokens: int
    stop_reason: str
    """"end" (<|End|>, EOS or a new human turn), "length" (max_new_tokens or the context) or "interrupted"."""
    seconds: float
    notice: str | None = None
    """Set on the first reply whose prompt had to leave out old exchanges."""

    @property
    def ended_empty(self) -> bool:
        """The model ended its answer before saying anything (a model trained only briefly often does)."""
        return self.stop_reason == "end" and not self.text.strip()

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.text, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.new_tokens,
            "stop_reason": self.stop_reason, "seconds": round(self.seconds, 4),
        }


EMPTY_ANSWER_NOTE = ("the answer is empty: the model ended it at once, as a model trained only briefly often does; "
                     "yayi eval shows how much it has learned")


class _Streamer:
    """The streamer protocol of `generate`: it gets the prompt ids first, then each new token."""

    def __init__(self, stream: AnswerStream, on_text: Callable[[str], None]) -> None:
        self.stream, self.on_text = stream, on_text
        self.prompt_seen = False
        self.new_tokens = 0

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.new_tokens += 1
            text = self.stream.push(token)
            if text:
                self.on_text(text)

    def end(self) -> None:
        text = self.stream.finish()
        if text:
            self.on_text(text)


def _stop_criteria(event: threading.Event) -> Any:
    """A StoppingCriteriaList that ends generation at the next token once `event` is set (Ctrl-C)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnEvent(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

        def __deepcopy__(self, memo: dict[int, Any]) -> StopOnEvent:  # an Event's lock cannot be copied
            return self

    return StoppingCriteriaList([StopOnEvent()])


class ChatSession:
    """A multi-turn conversation with a loaded model.

    `turns` holds the whole conversation (what /save writes); the prompt covers only
    `turns[window_start:]`, which moves on an exchange at a time when the prompt plus
    `max_new_tokens` would outgrow `max_context_tokens`. The system prompt is always kept.
    """

    def __init__(
        self, model: Any, prompt_tokenizer: PromptTokenizer, settings: GenerationSettings | None = None, *,
        system: str | None = None, max_context_tokens: int | None = None, model_name: str = "",
    ) -> None:
        from yayi_cli.core.prompt import stop_token_ids
        from yayi_cli.models.inference import pad_id

        self.model, self.prompt_tokenizer = model, prompt_tokenizer
        self.model_name = model_name
        self.system = system
        self.max_context_tokens = max_context_tokens
        self.turns: list[Turn] = []
        self.window_start = 0
        self.truncation_reported = False
        self.last_reply: Reply | None = None
        self.warmup_seconds: float | None = None
        self._stop_ids = stop_token_ids(prompt_tokenizer.tokenizer)
        self._pad_id = pad_id(prompt_tokenizer.tokenizer)
        self._settings = GenerationSettings()
        self.settings = settings or GenerationSettings()

    @property
    def settings(self) -> GenerationSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: GenerationSettings) -> None:
        """New settings; a seed given here seeds the sampler once, so later answers still differ."""
        if settings.seed is not None:
            import torch

            torch.manual_seed(settings.seed)
        self._settings = settings

    @property
    def exchanges(self) -> int:
        return len(self.turns) // 2

    # --- the conversation ---------------------------------------------------------------------

    def clear(self) -> None:
        """Start a new conversation (the system prompt and settings stay)."""
        self.turns, self.window_start, self.truncation_reported = [], 0, False

    def undo(self) -> tuple[Turn, ...]:
        """Drop the last exchange and return it (empty when there is none)."""
        dropped = tuple(self.turns[-2:])
        del self.turns[-2:]
        self.window_start = min(self.window_start, len(self.turns))
        return dropped

    def to_record(self) -> dict[str, Any]:
        """The conversation as a `conversations` record that `yayi data validate` accepts."""
        if not self.turns:
            raise UsageError("nothing to save yet: the conversation is empty")
        record: dict[str, Any] = {"system": self.system} if self.system is not None else {}
        template = self.prompt_tokenizer.template
        record[CONVERSATIONS] = [{"from": ROLE_NAMES[turn.role], "value": human_text(turn, template)} for turn in self.turns]
        return record

    def load_record(self, value: Any) -> None:
        """Continue the conversation of a record of any shape (it must end with an answer)."""
        try:
            parsed = parse_record(value)
        except RecordError as error:
            raise DataError(str(error)) from None
        self.clear()
        self.turns, self.system = list(parsed.turns), parsed.system

    # --- generation ---------------------------------------------------------------------------

    def reply(
        self, message: str, on_text: Callable[[str], None] | None = None, stop_event: threading.Event | None = None,
    ) -> Reply:
        """Answer `message`, streaming text to `on_text`; the exchange is kept unless interrupted."""
        return self._reply_to(Turn(HUMAN, message), on_text, stop_event)

    def _reply_to(
        self, question: Turn, on_text: Callable[[str], None] | None, stop_event: threading.Event | None,
    ) -> Reply:
        """`reply` for a whole human turn, so a retried question keeps a loaded record's `input`."""
        turns = [*self.turns, question]
        reply, start = self._answer(turns, self.window_start, on_text, stop_event)
        if reply.stop_reason == "interrupted":
            self.last_reply = reply
            return reply
        self.turns = [*turns, Turn(ASSISTANT, reply.text)]
        self.window_start = start
        if start > 0 and not self.truncation_reported:
            self.truncation_reported = True
            reply = dataclasses.replace(reply, notice=self._truncation_notice(start))
        self.last_reply = reply
        return reply

    def retry(self, on_text: Callable[[str], None] | None = None, stop_event: threading.Event | None = None) -> Reply:
        """Answer the last message again; an interrupted retry keeps the previous answer."""
        if not self.turns:
            raise UsageError("nothing to retry yet")
        previous = self.undo()
        reply = self._reply_to(previous[0], on_text, stop_event)
        if reply.stop_reason == "interrupted":
            self.turns.extend(previous)
        return reply

    def answer(self, conversation: Conversation, on_text: Callable[[str], None] | None = None) -> Reply:
        """Answer the last human message of `conversation` without keeping anything (batch use);
        its own system text, where it has one, replaces the session's for this answer."""
        session_system = self.system
        if conversation.system is not None:
            self.system = conversation.system
        try:
            return self._answer(list(conversation.turns), 0, on_text, None)[0]
        finally:
            self.system = session_system

    def fit(self, turns: list[Turn], start: int = 0) -> tuple[list[int], int]:
        """The prompt ids of `turns[start:]`, starting an exchange later while the prompt leaves less
        than `max_new_tokens` (at most half the context) for the answer."""
        limit = self.max_context_tokens
        room = min(self.settings.max_new_tokens, limit // 2) if limit is not None else 0
        while True:
            ids = self.prompt_tokenizer.encode_inference(Conversation(tuple(turns[start:]), self.system))
            if limit is None or len(ids) + room <= limit or start + 1 >= len(turns):
                break
            start += 2
        if limit is not None and len(ids) >= limit:
            raise UsageError(
                f"the message makes a prompt of {len(ids)} tokens, and the context holds {limit}; the system text "
                f"alone takes {self.system_tokens()}: shorten the message, or the system text (/system TEXT, "
                "--system TEXT) or pick another template (--template)"
            )
        return ids, start

    def system_tokens(self) -> int:
        """Tokens of the system text every prompt starts with (this session's, else the template's)."""
        text = self.prompt_tokenizer.template.system if self.system is None else self.system
        return len(self.prompt_tokenizer.tokenizer(text, add_special_tokens=False)["input_ids"])

    def context_tokens(self) -> int:
        """Tokens the kept part of the conversation takes in the next prompt (without a new message)."""
        window = tuple(self.turns[self.window_start :])
        if not window:
            return 0
        return len(self.prompt_tokenizer.encode_training(Conversation(window, self.system)).input_ids)

    def _truncation_notice(self, start: int) -> str:
        return (
            f"the conversation outgrew the context ({self.max_context_tokens} tokens): the oldest exchanges "
            f"are left out of the prompt from now on ({start // 2} so far; the system prompt is kept, /save keeps all)"
        )

    def _answer(
        self, turns: list[Turn], start: int, on_text: Callable[[str], None] | None, stop_event: threading.Event | None,
    ) -> tuple[Reply, int]:
        import torch

        ids, start = self.fit(turns, start)
        budget = self.settings.max_new_tokens
        if self.max_context_tokens is not None:
            budget = min(budget, self.max_context_tokens - len(ids))
        stream = self.prompt_tokenizer.answer_stream()
        pieces: list[str] = []

        def collect(text: str) -> None:
            pieces.append(text)
            if on_text is not None:
                on_text(text)

        streamer = _Streamer(stream, collect)
        event = stop_event or threading.Event()
        input_ids = torch.tensor([ids], device=self.model.device)
        started = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=budget,
                eos_token_id=self._stop_ids, pad_token_id=self._pad_id, streamer=streamer,
                stopping_criteria=_stop_criteria(event), **self.settings.generate_kwargs(),
            )
        seconds = time.perf_counter() - started
        reason = "interrupted" if event.is_set() else "end" if stream.stopped else "length"
        return Reply("".join(pieces), len(ids), streamer.new_tokens, reason, seconds), start


# --- loading --------------------------------------------------------------------------------------


def open_session(options: ChatOptions) -> ChatSession:
    """Load tokenizer and model (one-line errors), pick the template, and warm up --compile."""
    from yayi_cli.models.loading import load_for_task

    loaded = load_for_task(
        options.model, base=options.base, template=options.template, trust_remote_code=options.trust_remote_code,
        device=options.device, dtype=options.dtype, load_in_8bit=options.load_in_8bit,
    )
    session = ChatSession(
        loaded.model, loaded.prompt_tokenizer, options.settings, system=options.system,
        max_context_tokens=options.max_context_tokens or loaded.context_length(), model_name=options.model,
    )
    if options.compile:
        session.warmup_seconds = compile_decoding(session)
    return session


WARMUP_MESSAGE = "warm-up"


def compile_decoding(session: ChatSession) -> float:
    """Static KV cache, with the decode step compiled by transformers itself; returns the warm-up seconds.

    The cache is sized to the whole context once, so later prompts reuse it and its compilation.
    Wrapping `forward` in torch.compile ourselves instead broke on GPUs (CUDA-graph outputs overwritten
    between steps), so compilation is left to transformers.
    """
    from transformers import CompileConfig

    if session.max_context_tokens is None:
        raise UsageError("--compile needs --max-context-tokens: the model does not say its context length")
    config = session.model.generation_config
    config.cache_implementation = "static"
    config.max_cache_len = session.max_context_tokens
    compile_config = CompileConfig()
    compile_config._compile_all_devices = True  # transformers compiles only on GPUs unless told to
    config.compile_config = compile_config
    started = time.perf_counter()
    settings = session.settings
    session.settings = dataclasses.replace(settings, max_new_tokens=4, do_sample=False, seed=None)
    try:
        session.answer(Conversation((Turn(HUMAN, WARMUP_MESSAGE),)))
    except Exception as error:  # noqa: BLE001 - a missing C++ compiler, an unsupported model: one line, not a traceback
        raise UsageError(f"--compile failed while warming up: {str(error).strip().splitlines()[0]}") from None
    finally:
        session.settings = settings  # re-seeds, so a --seed gives the same answers with and without --compile
    return time.perf_counter() - started
