"""Loading a model for a task: the one sequence every command that reads a model goes through.

A model reference (a directory, a hub id, or a LoRA adapter directory on its base) becomes the template,
the tokenizer, the `PromptTokenizer` that binds them, and when the task needs one the model itself at a
device and precision. The steps are the functions of `models` and `prompt`; this module only orders them.

Markers are added to the tokenizer only for the training view (`add_markers=True`: `data validate`,
`data preview` and the training worker, which count what training will see after it adds them). A
model loaded to run is never given markers here: its embeddings have no rows for them, so the tokenizer
must already have them, and `PromptTokenizer` refuses it in one line when it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from yayi_cli.core import prompt
from yayi_cli.core.prompt import PromptTokenizer, Template, resolve_template
from yayi_cli.models.reference import ModelSource, resolve_model
from yayi_cli.models.tokenizers import context_length, load_tokenizer
from yayi_cli.models.weights import load_model


@dataclass(frozen=True)
class LoadedModel:
    """What a task gets from `load_for_task`."""

    reference: str
    """The model as the user named it (an adapter directory stays one)."""
    base: str | None
    """--base as given: replaces the base an adapter names."""
    source: ModelSource
    template: Template
    template_source: str
    """Why this template: --template, saved with the model, or detected."""
    prompt_tokenizer: PromptTokenizer
    added_markers: int = 0
    """How many markers the tokenizer gained (only with add_markers=True)."""
    model: Any = None
    """The causal LM in eval mode, or None for a tokenizer-only load."""

    @property
    def tokenizer(self) -> Any:
        return self.prompt_tokenizer.tokenizer

    def context_length(self) -> int | None:
        """The model's context length (`models.tokenizers.context_from`), None when neither config nor tokenizer says."""
        return context_length(self.reference, self.tokenizer, self.base)


def load_for_task(
    model: str, *, base: str | None = None, template: str | None = None, trust_remote_code: bool = False,
    add_markers: bool = False, model_weights: bool = True, device: str = "auto", dtype: str = "auto",
    load_in_8bit: bool = False,
) -> LoadedModel:
    """Template, tokenizer and `PromptTokenizer` for `model`, and with `model_weights` the model.

    `model_weights=False` reads the tokenizer alone (no model class is imported or built), and an
    adapter's base is then needed only when the adapter carries no tokenizer of its own.
    """
    source = resolve_model(model, base, check_base=model_weights)
    chosen, why = resolve_template(template, model)
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code, base=base)
    added = prompt.add_markers(tokenizer) if add_markers else 0
    prompt_tokenizer = PromptTokenizer(chosen, tokenizer)
    loaded = None
    if model_weights:
        loaded = load_model(model, device=device, dtype=dtype, load_in_8bit=load_in_8bit,
                            trust_remote_code=trust_remote_code, base=base)
    return LoadedModel(model, base, source, chosen, why, prompt_tokenizer, added, loaded)
