"""Tiny BLOOM- and Llama-shaped models built offline, for tests and the demo.

A tokenizer is trained on the spot from the given texts and carries the YaYi markers as special
tokens: a byte-level BPE (as yayi-7b's BLOOM tokenizer is), or for Llama a SentencePiece BPE with
byte fallback laid out as the Llama 2 checkpoints ship (tokenizer.model, the markers in
added_tokens.json, no tokenizer.json). The model has a few hundred thousand random parameters. Both
are saved in Hugging Face format with the template file, so every `from_pretrained` path in yayi
loads them exactly as it loads a real YaYi checkpoint.

    python -m yayi_cli.models.tiny OUT_DIR --arch llama --data examples/sample.jsonl [--tokenizer sentencepiece]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli.core.prompt import (
    MARKERS,
    Template,
    detect_template,
    render_training,
    save_model_format,
    save_template,
    stop_token_ids,
)
from yayi_cli.core.reader import read_records
from yayi_cli.core.record_files import skip_problem, valid_records
from yayi_cli.core.records import answered
from yayi_cli.models.tokenizers import tokenizer_files
from yayi_cli.models.weights import model_directory
from yayi_cli.runtime.atomic import refuse_existing
from yayi_cli.runtime.errors import UsageError, YayiError
from yayi_cli.runtime.terminal import quiet_libraries


ARCHITECTURES = ("llama", "bloom")
TOKENIZERS = ("bpe", "sentencepiece")
UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"


@dataclass(frozen=True)
class TinySpec:
    """The shape of a tiny model; the defaults give about 200k parameters."""

    arch: str = "llama"
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    vocab_size: int = 1024
    max_positions: int = 1024
    seed: int = 0
    markers: bool = True
    """False: a tokenizer without the YaYi markers, like a base model's (training then adds them)."""
    tokenizer: str = "bpe"
    """"sentencepiece": a Llama 2 style tokenizer.model (Llama only)."""


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, prepend_bos: bool, max_length: int,
                    markers: bool = True) -> Any:
    """A byte-level BPE tokenizer; Llama-style ones prepend BOS to every encoding, like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, BOS, EOS, PAD, *(MARKERS if markers else ())],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    if prepend_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, backend.token_to_id(BOS))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=UNK, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        model_max_length=max_length,
    )


def write_sentencepiece(directory: Path, texts: Iterable[str], *, vocab_size: int, max_length: int,
                        markers: bool = True) -> None:
    """A SentencePiece BPE with byte fallback (unk, bos, eos = 0, 1, 2), saved as mid-2023 Llama 2 checkpoints
    are: tokenizer.model, a tokenizer_config.json naming LlamaTokenizer, `<pad>` and the markers in
    added_tokens.json after the base vocabulary, and no tokenizer.json."""
    import io
    import json

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        hard_vocab_limit=False, minloglevel=2,
    )
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    size = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    extra = [PAD, *(MARKERS if markers else ())]
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD}
    if markers:
        special["additional_special_tokens"] = list(MARKERS)
    files = {
        "added_tokens.json": {token: size + index for index, token in enumerate(extra)},
        "special_tokens_map.json": special,
        "tokenizer_config.json": {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                                  "model_max_length": max_length, **special},
    }
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, ensure_ascii=False, indent=2), encoding="utf-8")


def build_model(tokenizer: Any, spec: TinySpec) -> Any:
    """A randomly initialised causal LM of the given shape, seeded for reproducibility."""
    import torch
    from transformers import AutoModelForCausalLM, BloomConfig, LlamaConfig

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if spec.arch == "llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=2 * spec.hidden_size,
            num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=max(1, spec.heads // 2),
            max_position_embeddings=spec.max_positions, tie_word_embeddings=False, **ids,
        )
    elif spec.arch == "bloom":
        config = BloomConfig(
            vocab_size=len(tokenizer), hidden_size=spec.hidden_size, n_layer=spec.layers, n_head=spec.heads, **ids
        )
    else:
        raise UsageError(f"unknown tiny architecture {spec.arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = stop_token_ids(tokenizer) if spec.markers else tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_tiny(
    out_dir: Path, texts: Iterable[str], spec: TinySpec = TinySpec(), template: Template | None = None,
    *, replace: bool = False,
) -> Path:
    """Train the tokenizer, build the model and save both (all or nothing) into `out_dir`."""
    out_dir = Path(out_dir)
    refuse_existing(out_dir, replace)
    if spec.tokenizer not in TOKENIZERS or (spec.tokenizer == "sentencepiece" and spec.arch != "llama"):
        raise UsageError(f"a tiny {spec.arch} takes a {' or '.join(TOKENIZERS[:1 + (spec.arch == 'llama')])} tokenizer, "
                         f"not {spec.tokenizer!r}")
    if spec.tokenizer == "sentencepiece":
        return _build_sentencepiece_tiny(out_dir, texts, spec, template, replace=replace)
    tokenizer = train_tokenizer(
        texts, vocab_size=spec.vocab_size, prepend_bos=spec.arch == "llama", max_length=spec.max_positions,
        markers=spec.markers,
    )
    model = build_model(tokenizer, spec)
    with model_directory(out_dir, replace=replace) as tmp:
        model.save_pretrained(tmp)
        template = template or detect_template("", {"model_type": spec.arch})
        if spec.markers:
            save_model_format(tmp, tokenizer, template)
        else:  # a base model's tokenizer: no chat format to save with it
            tokenizer.save_pretrained(tmp)
            save_template(tmp, template)
    return out_dir


def _build_sentencepiece_tiny(out_dir: Path, texts: Iterable[str], spec: TinySpec, template: Template | None, *,
                              replace: bool) -> Path:
    """The tokenizer files written as the checkpoint ships them (not as transformers would save them again): a
    tokenizer_config.json from before transformers 4.31, without `legacy`."""
    with model_directory(out_dir, replace=replace) as tmp:
        write_sentencepiece(tmp, texts, vocab_size=spec.vocab_size, max_length=spec.max_positions, markers=spec.markers)
        tokenizer = tokenizer_files(str(tmp), str(out_dir))
        model = build_model(tokenizer, spec)
        model.save_pretrained(tmp)
        save_template(tmp, template or detect_template("", {"model_type": spec.arch}))
    return out_dir


def training_texts(paths: Sequence[Path], template: Template) -> Iterator[str]:
    """The rendered training text of every valid record in the files (invalid ones skipped); a preference
    record's prompt with each of its answers."""
    for path in paths:
        for _, record in valid_records(read_records(path), skip_problem):
            conversations = [answered(record.conversation, answer) for answer in record.answers] or [record.conversation]
            yield from (render_training(conversation, template).text for conversation in conversations)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_libraries()
    parser = argparse.ArgumentParser(prog="python -m yayi_cli.models.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--arch", choices=ARCHITECTURES, default="llama")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="records to train the tokenizer on")
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="bpe",
                        help="bpe: byte-level BPE (as BLOOM's); sentencepiece: tokenizer.model as Llama 2 checkpoints ship")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    args = parser.parse_args(argv)
    spec = TinySpec(arch=args.arch, seed=args.seed, tokenizer=args.tokenizer)
    template = detect_template("", {"model_type": spec.arch})
    try:
        texts = list(training_texts(args.data, template))
        if not texts:
            raise UsageError("no valid records in --data to train the tokenizer on")
        build_tiny(args.out_dir, texts, spec, template, replace=args.force)
    except YayiError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"tiny {spec.arch} model written to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
