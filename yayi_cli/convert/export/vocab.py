"""The tokenizer and the YaYi chat format as GGUF metadata, so llama.cpp prompts and stops like yayi.

Tokens, scores and merges come from the gguf package's vocab readers. On top of what they find, the
four markers and every special token of the tokenizer become control tokens (llama.cpp then reads them
as one token only where the prompt means them), `<|End|>` becomes the end-of-turn token (llama.cpp
stops there), and the chat template is the core's (`prompt.chat_template`), so `create_chat_completion`,
Ollama and LM Studio render exactly what `yayi chat` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli.core.prompt import END_MARKER, Template, chat_template, marker_token_ids, prompt_prefix, reserved_tokens
from yayi_cli.models.reference import SENTENCEPIECE_MODEL
from yayi_cli.runtime.errors import UsageError


GPT2_REGEX = {"type": "ByteLevel", "use_regex": True}
PRE_TOKENIZER_PATTERNS = {
    " ?[^(\\s|[.,!?…。，、।۔،])]+": "bloom",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
    "|\\s+(?!\\S)|\\s+": "llama-bpe",
}
"""The split patterns of Hugging Face byte-level tokenizers and llama.cpp's names for them (tokenizer.ggml.pre)."""

TEMPLATE_NAME_KEY = "general.yayi.template"
TEMPLATE_SYSTEM_KEY = "general.yayi.system"


@dataclass
class GgufVocab:
    """Everything the file's tokenizer.* keys hold."""

    kind: str
    """tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)."""
    pre: str | None
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    special: Any
    """The gguf package's SpecialVocab: merges, special ids, add-BOS, chat template."""
    add_space_prefix: bool | None = None
    """For SentencePiece: whether llama.cpp puts the `▁` dummy prefix on the text after each special token, as a
    `legacy` Llama tokenizer does (the published Llama 2 YaYi models); None for byte-level BPE."""


def _tokenizer_json(directory: Path) -> dict[str, Any]:
    path = directory / "tokenizer.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: cannot read it ({error})") from None


def pre_tokenizer_name(tokenizer_json: dict[str, Any], directory: Path) -> str:
    """llama.cpp's name for how a byte-level tokenizer splits text before BPE; an unknown way is refused,
    since llama.cpp would split differently and the model would see other tokens than it was trained on."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if len(parts) == 1 and all(parts[0].get(key) == value for key, value in GPT2_REGEX.items()):
        return "gpt-2"
    split = parts[0].get("pattern", {}).get("Regex") if parts and parts[0].get("type") == "Split" else None
    if split in PRE_TOKENIZER_PATTERNS and len(parts) == 2 and parts[1].get("use_regex") is False:
        return PRE_TOKENIZER_PATTERNS[split]
    raise UsageError(f"{directory / 'tokenizer.json'}: its pre-tokenizer ({json.dumps(pre)[:120]}) is not one llama.cpp "
                     "knows, so llama.cpp would tokenize differently; yayi export knows GPT-2's, BLOOM's and Llama 3's")


def _scores_from_merges(tokens: list[bytes], merges: list[str]) -> list[float]:
    """SentencePiece-style scores for a byte-fallback BPE: llama.cpp's merge picks the highest score, so a
    token made by an earlier merge scores higher, which is Hugging Face's BPE order exactly."""
    rank = {}
    for position, merge in enumerate(merges):
        rank.setdefault("".join(merge.split(" ")).encode("utf-8"), position)
    return [-float(rank.get(token, 0)) for token in tokens]


def _base_vocab(directory: Path, tokenizer_json: dict[str, Any]) -> tuple[str, str | None, Any]:
    """The gguf package's reader for this tokenizer: BpeVocab, SentencePieceVocab or LlamaHfVocab."""
    from gguf.vocab import BpeVocab, LlamaHfVocab, SentencePieceVocab

    model = tokenizer_json.get("model", {})
    if model.get("type") == "BPE" and not model.get("byte_fallback") and (tokenizer_json.get("decoder") or {}).get("type") == "ByteLevel":
        return "gpt2", pre_tokenizer_name(tokenizer_json, directory), BpeVocab(directory)
    if (directory / SENTENCEPIECE_MODEL).is_file():  # load_tokenizer has checked that it parses
        return "llama", "default", SentencePieceVocab(directory)
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return "llama", "default", LlamaHfVocab(directory)
    raise UsageError(f"{directory}: its tokenizer is neither a byte-level BPE (tokenizer.json) nor SentencePiece "
                     "(tokenizer.model); llama.cpp's tokenizers cannot reproduce it")


def _added_beyond(base: Any, tokenizer: Any) -> list[tuple[bytes, float, int]]:
    """The tokenizer's tokens past what the gguf package's reader found. Its SentencePiece reader takes added
    tokens from added_tokens.json alone, which transformers 5 no longer writes (a fine-tune's tokenizer keeps
    the markers in tokenizer_config.json), or which may list only some of them."""
    import gguf

    found = sum(1 for _ in base.all_tokens())
    return [(tokenizer.convert_ids_to_tokens(token_id).encode("utf-8"), -1000.0, gguf.TokenType.USER_DEFINED)
            for token_id in range(found, len(tokenizer))]


def read_vocab(directory: Path, tokenizer: Any, template: Template, rows: int) -> GgufVocab:
    """The tokenizer saved in `directory` (loaded as `tokenizer`), padded to the model's `rows` embeddings."""
    import gguf

    tokenizer_json = _tokenizer_json(directory)
    markers = marker_token_ids(tokenizer)  # refuses a tokenizer without the YaYi markers, in one line
    kind, pre, base = _base_vocab(directory, tokenizer_json)
    entries = list(base.all_tokens()) + _added_beyond(base, tokenizer)
    if len(entries) > rows:
        raise UsageError(f"{directory}: the tokenizer has {len(entries)} tokens but the model only {rows} embeddings")
    tokens = [text if isinstance(text, bytes) else text.encode("utf-8") for text, _, _ in entries]
    scores = [float(score) for _, score, _ in entries]
    types = [int(token_type) for _, _, token_type in entries]
    control = set(markers.values()) | set(tokenizer.all_special_ids)
    for token_id in control:
        types[token_id] = gguf.TokenType.CONTROL
    for index in range(len(tokens), rows):  # embedding rows the tokenizer never produces
        tokens.append(f"[PAD{index}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)

    special = gguf.SpecialVocab(directory, load_merges=kind == "gpt2", n_vocab=rows)
    if isinstance(base, gguf.LlamaHfVocab):
        scores = _scores_from_merges(tokens, gguf.SpecialVocab(directory, load_merges=True).merges)
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
           "pad": tokenizer.pad_token_id, "eot": markers[END_MARKER]}
    special.special_token_ids = {name: token_id for name, token_id in ids.items() if token_id is not None}
    prefix = prompt_prefix(tokenizer)
    special.add_special_token = {"bos": bool(prefix), "eos": False}
    special.chat_template = chat_template(template, prefix, reserved_tokens(tokenizer))
    space_prefix = getattr(tokenizer, "legacy", True) is not False if kind == "llama" else None
    return GgufVocab(kind, pre, tokens, scores, types, special, space_prefix)


def add_vocab(writer: Any, vocab: GgufVocab, template: Template) -> None:
    """The tokenizer.* keys, and the template's name and default system text under general.yayi.*."""
    writer.add_tokenizer_model(vocab.kind)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    vocab.special.add_to_gguf(writer, quiet=True)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    writer.add_string(TEMPLATE_NAME_KEY, template.name)
    writer.add_string(TEMPLATE_SYSTEM_KEY, template.system)
