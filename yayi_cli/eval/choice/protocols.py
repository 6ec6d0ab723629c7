"""How a question is put to the model: its prompt text and the token ids of each choice.

- `harness`: lm-evaluation-harness's prompt (the subject's description, K dev examples each answered
  " X" and followed by a blank line, then the question) and its choices " A".." D", tokenized as the
  harness does: the context alone, and each choice as what the whole text adds after the context.
- `chat`: the same text as one human turn of the model's template, the answer letter as the first
  thing the assistant says (how chat models are scored by LLaMA-Factory).
- `answer`: the same turn, each choice the whole answer the model would be trained on: the letter, then
  the template's close (`\n\n<|End|>`, or `<|End|>` for yayi-llama2), so the model must also end there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from yayi_cli.core.prompt import (
    ASSISTANT,
    HUMAN,
    Conversation,
    PromptTokenizer,
    Turn,
    render_inference,
    render_training,
)
from yayi_cli.eval.choice.files import LETTERS, Question
from yayi_cli.eval.choice.subjects import Benchmark


@dataclass(frozen=True)
class ChoiceRequest:
    """One question as token ids: a context, and the ids each choice continues it with."""

    context: list[int]
    choices: tuple[list[int], ...]

    @property
    def single_token(self) -> bool:
        """Whether every choice is one token, so one forward pass of the context scores them all."""
        return all(len(choice) == 1 for choice in self.choices)


def question_text(question: Question, benchmark: Benchmark) -> str:
    options = "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, question.options))
    return f"{question.question.strip()}{options}\n{benchmark.answer_prompt}"


def harness_text(question: Question, shots: Sequence[Question], benchmark: Benchmark) -> str:
    """The description, the answered examples, then the question (it ends at the answer prompt)."""
    examples = "".join(f"{question_text(shot, benchmark)} {shot.answer}\n\n" for shot in shots)
    return benchmark.description(question.subject) + examples + question_text(question, benchmark)


def _split_choices(tokenizer: Any, context: str, choices: Sequence[str]) -> ChoiceRequest:
    """The harness's tokenization: each choice is the ids of context + choice beyond the context's own ids."""
    encodings = tokenizer([context, *(context + choice for choice in choices)])["input_ids"]
    context_ids = list(encodings[0])
    return ChoiceRequest(context_ids, tuple(list(whole[len(context_ids):]) for whole in encodings[1:]))


def build_requests(protocol: str, questions: Sequence[Question], shots: Sequence[Question], benchmark: Benchmark,
                   prompt_tokenizer: PromptTokenizer) -> list[ChoiceRequest]:
    """The requests of one subject's questions, all with the same examples."""
    tokenizer = prompt_tokenizer.tokenizer
    requests = []
    for question in questions:
        text = harness_text(question, shots, benchmark)
        if protocol == "harness":
            requests.append(_split_choices(tokenizer, text, [f" {letter}" for letter in LETTERS]))
            continue
        conversation = Conversation((Turn(HUMAN, text),))
        conversation.refuse(prompt_tokenizer.reserved)
        context = render_inference(conversation, prompt_tokenizer.template)
        if protocol == "chat":
            requests.append(_split_choices(tokenizer, context, LETTERS))
            continue
        answers = [render_training(Conversation((*conversation.turns, Turn(ASSISTANT, letter))), prompt_tokenizer.template).text
                   for letter in LETTERS]
        requests.append(_split_choices(tokenizer, context, [answer[len(context):] for answer in answers]))
    return requests
