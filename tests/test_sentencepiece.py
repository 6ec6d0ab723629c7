"""Llama 2 checkpoints as they ship: a SentencePiece tokenizer.model with byte fallback, `<pad>` and the markers in
added_tokens.json, no tokenizer.json; and as a fine-tune leaves them once transformers 5 has saved them again
(tokenizer.json beside tokenizer.model, the markers in tokenizer_config.json, no added_tokens.json, or one that
lists only `<pad>`). Each loads, renders and exports through the real paths; a damaged one is one error line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import SAMPLE_DATA, one_error_line, yayi
from yayi_cli.core.prompt import MARKERS, TEMPLATES
from yayi_cli.models.tiny import TinySpec, build_tiny, training_texts


LAYOUTS = ("as shipped", "saved again", "pad only in added_tokens.json")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """The same tiny Llama in each tokenizer layout."""
    root = tmp_path_factory.mktemp("sentencepiece")
    texts = list(training_texts([SAMPLE_DATA], TEMPLATES["yayi"]))
    shipped = build_tiny(root / "shipped", texts, TinySpec(tokenizer="sentencepiece"))
    saved_again = _saved_again(shipped, root / "saved-again")
    pad_only = Path(shutil.copytree(shipped, root / "pad-only"))
    (pad_only / "added_tokens.json").write_text(json.dumps({"<pad>": _base_size(shipped)}), encoding="utf-8")
    for directory in (shipped, saved_again, pad_only):  # the published repositories hold no yayi_template.json
        (directory / "yayi_template.json").unlink(missing_ok=True)
    return dict(zip(LAYOUTS, (shipped, saved_again, pad_only)))


def _base_size(directory: Path) -> int:
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model")).get_piece_size()


def _saved_again(shipped: Path, directory: Path) -> Path:
    """What a fine-tune leaves: transformers' save_pretrained of the loaded tokenizer and model, with the
    tokenizer.model it was read from (transformers 5 keeps the markers in tokenizer_config.json)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(shipped).save_pretrained(directory)
    AutoTokenizer.from_pretrained(shipped).save_pretrained(directory)
    shutil.copy(shipped / "tokenizer.model", directory / "tokenizer.model")
    (directory / "added_tokens.json").unlink(missing_ok=True)
    return directory


def test_the_shipped_layout_is_what_the_checkpoints_hold(layouts):
    shipped = layouts["as shipped"]
    assert not (shipped / "tokenizer.json").exists()
    added = json.loads((shipped / "added_tokens.json").read_text(encoding="utf-8"))
    assert added == {token: _base_size(shipped) + index for index, token in enumerate(("<pad>", *MARKERS))}
    assert json.loads((shipped / "tokenizer_config.json").read_text(encoding="utf-8"))["tokenizer_class"] == "LlamaTokenizer"
    assert "<|End|>" in json.loads((layouts["saved again"] / "tokenizer_config.json").read_text(encoding="utf-8")).__repr__()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_loads_with_its_markers_and_bos(layouts, layout):
    from yayi_cli.core.prompt import marker_token_ids
    from yayi_cli.models.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(str(layouts[layout]))
    markers = marker_token_ids(tokenizer)
    assert sorted(markers.values()) == list(range(_base_size(layouts["as shipped"]) + 1, _base_size(layouts["as shipped"]) + 5))
    result = yayi("data", "preview", str(SAMPLE_DATA), "--model", str(layouts[layout]), "-n", "1", "--json")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_exports_to_gguf_with_the_markers_as_control_tokens(layouts, layout, tmp_path):
    import gguf

    output = tmp_path / "model.gguf"
    result = yayi("export", "gguf", "--model", str(layouts[layout]), "-o", str(output))
    assert result.exit_code == 0, result.output
    reader = gguf.GGUFReader(output)
    tokens = [bytes(reader.fields["tokenizer.ggml.tokens"].parts[index]).decode() for index in reader.fields["tokenizer.ggml.tokens"].data]
    types = [int(reader.fields["tokenizer.ggml.token_type"].parts[index][0]) for index in reader.fields["tokenizer.ggml.token_type"].data]
    base = _base_size(layouts["as shipped"])
    assert tokens[base:base + 5] == ["<pad>", *MARKERS]
    assert all(types[base + 1 + index] == gguf.TokenType.CONTROL for index in range(len(MARKERS)))


@pytest.fixture
def damaged(layouts, tmp_path) -> Path:
    """The shipped layout with its tokenizer.model cut short, as an interrupted download leaves it."""
    copy = Path(shutil.copytree(layouts["as shipped"], tmp_path / "damaged"))
    (copy / "tokenizer.model").write_bytes((layouts["as shipped"] / "tokenizer.model").read_bytes()[:300])
    return copy


@pytest.mark.parametrize("command", [["data", "preview", str(SAMPLE_DATA)], ["chat", "--prompt", "你好"],
                                     ["eval", "--data", str(SAMPLE_DATA)], ["export", "gguf"]])
def test_a_damaged_tokenizer_model_is_one_error_line(damaged, tmp_path, command):
    extra = ["-o", str(tmp_path / "out.gguf")] if command[0] == "export" else []
    result = yayi(*command, "--model", str(damaged), *extra)
    one_error_line(result, 2, f"{damaged / 'tokenizer.model'}: not a SentencePiece model", "damaged or cut short")
    assert not (tmp_path / "out.gguf").exists()


def test_a_tokenizer_without_the_markers_is_one_error_line(tmp_path):
    texts = list(training_texts([SAMPLE_DATA], TEMPLATES["yayi"]))
    plain = build_tiny(tmp_path / "plain", texts, TinySpec(tokenizer="sentencepiece", markers=False))
    one_error_line(yayi("chat", "--model", str(plain), "--prompt", "你好"), 2, "no single token for '<|System|>'")
    one_error_line(yayi("export", "gguf", "--model", str(plain), "-o", str(tmp_path / "plain.gguf")), 2, "no single token for '<|System|>'")


def test_without_protobuf_the_error_names_what_to_install(layouts, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "google.protobuf", None)
    one_error_line(yayi("data", "preview", str(SAMPLE_DATA), "--model", str(layouts["as shipped"])), 2, "needs google",
                   "pip install protobuf")


# --- the token ids the published Llama 2 YaYi models were trained on ------------------------------------------------

CONVERSATIONS = [
    ("把下面这句话改写得更适合在政务微博上发布。\n明天起地铁二号线延长运营到晚上十一点半。", "好消息！地铁2号线延长至23:30。"),
    ("Translate: good morning  ", "早上好\n"),
    ("第一行\n\n第二行 (two lines)", "  indented answer, then a blank line\n\n"),
]
"""Questions and answers with whitespace where the rules matter: before a marker, inside, at an answer's start."""


def upstream_text(question: str, answer: str | None = None) -> str:
    """One exchange in the upstream training format, written out here rather than taken from yayi's templates."""
    prompt = f"<|System|>:\n{TEMPLATES['yayi-llama2'].system}\n\n<|Human|>:\n{question}\n\n<|YaYi|>:\n"
    return prompt if answer is None else f"{prompt}{answer}\n\n<|End|>"


def reference_ids(directory: Path, text: str) -> list[int]:
    """What transformers 4.28's slow LlamaTokenizer gave for `text` (docs/formats.md, "Tokens, not just text"): <s>;
    the text split at the markers; the whitespace on both sides of each marker stripped; every other piece through
    SentencePiece, which puts its dummy prefix on each; each marker its id after <pad> in added_tokens.json."""
    import re

    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    marker_ids = {marker: _base_size(directory) + 1 + index for index, marker in enumerate(MARKERS)}
    pieces = re.split("(" + "|".join(map(re.escape, MARKERS)) + ")", text)
    for index, piece in enumerate(pieces):
        if piece in marker_ids:
            pieces[index - 1] = pieces[index - 1].rstrip()
            if index + 1 < len(pieces):
                pieces[index + 1] = pieces[index + 1].lstrip()
    ids = [processor.bos_id()]
    for piece in filter(None, pieces):
        ids += [marker_ids[piece]] if piece in marker_ids else processor.encode(piece)
    return ids


def _conversation(question: str, answer: str | None = None, system: str | None = None):
    from yayi_cli.core.prompt import ASSISTANT, HUMAN, Conversation, Turn

    return Conversation((Turn(HUMAN, question),) + (() if answer is None else (Turn(ASSISTANT, answer),)), system)


def test_the_reference_rules_differ_from_tokenizing_the_text_in_one_piece(layouts):
    """The reference is not what a plain SentencePiece pass over the whole text gives, so the tests below can fail."""
    import sentencepiece

    shipped = layouts["as shipped"]
    text = upstream_text(*CONVERSATIONS[0])
    assert 1 + sum(len(sentencepiece.SentencePieceProcessor(model_file=str(shipped / "tokenizer.model")).encode(part))
                   for part in text.split("<|")) != len(reference_ids(shipped, text))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_preview_chat_and_eval_give_the_reference_ids(layouts, layout):
    from yayi_cli.models.loading import load_for_task

    for add_markers in (True, False):  # the training view (train, data preview) and the one that runs a model
        loaded = load_for_task(str(layouts[layout]), model_weights=False, add_markers=add_markers)
        assert loaded.template.name == "yayi-llama2"
        for question, answer in CONVERSATIONS:
            encoded = loaded.prompt_tokenizer.encode_training(_conversation(question, answer))
            assert encoded.input_ids == reference_ids(layouts[layout], upstream_text(question, answer))
            trained = [label for label in encoded.labels if label != -100]
            assert trained == encoded.input_ids[-len(trained):]  # the answer's tokens and <|End|>, at the end
            assert loaded.tokenizer.decode(trained).strip() == answer.strip() + "<|End|>"  # (decode drops a leading ▁)
            prompt = loaded.prompt_tokenizer.encode_inference(_conversation(question))
            assert prompt == reference_ids(layouts[layout], upstream_text(question))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_data_preview_counts_the_reference_tokens(layouts, layout, tmp_path):
    from tests.helpers import write_jsonl

    data = write_jsonl(tmp_path / "data.jsonl", [{"instruction": q, "output": a} for q, a in CONVERSATIONS])
    result = yayi("data", "preview", str(data), "--model", str(layouts[layout]), "-n", "3", "--json")
    assert result.exit_code == 0, result.output
    counts = [record["num_tokens"] for record in json.loads(result.stdout)["records"]]
    assert counts == [len(reference_ids(layouts[layout], upstream_text(q, a))) for q, a in CONVERSATIONS]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_an_engine_reading_the_served_files_gives_the_reference_ids(layouts, layout):
    """What `yayi serve` hands transformers serve or vLLM: they load the tokenizer themselves and tokenize the
    chat template's text."""
    from transformers import AutoTokenizer

    from yayi_cli.serve.command import served_model
    from yayi_cli.serve.options import ServeOptions

    with served_model(ServeOptions(model=str(layouts[layout])), lambda line: None) as (run, name):
        engine = AutoTokenizer.from_pretrained(run / name)
        for question, _ in CONVERSATIONS:
            ids = engine.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"]
            assert list(ids) == reference_ids(layouts[layout], upstream_text(question))


@pytest.mark.reference
@pytest.mark.parametrize("layout", LAYOUTS)
def test_llama_cpp_reads_the_exported_file_into_the_reference_ids(layouts, layout, tmp_path):
    """Real llama.cpp on the GGUF: the prompt yayi renders, and the one the file's own chat template renders."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the dev extras")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from yayi_cli.core.prompt import render_inference, resolve_template

    output = tmp_path / "model.gguf"
    assert yayi("export", "gguf", "--model", str(layouts[layout]), "-o", str(output)).exit_code == 0
    model = llama_cpp.Llama(str(output), vocab_only=True, verbose=False)
    assert model.metadata["tokenizer.ggml.add_bos_token"] == "true"
    template, _ = resolve_template(None, str(layouts[layout]))
    formatter = Jinja2ChatFormatter(model.metadata["tokenizer.chat_template"], eos_token="</s>", bos_token="<s>")
    for question, _ in CONVERSATIONS:
        expected = reference_ids(layouts[layout], upstream_text(question))
        assert model.tokenize(render_inference(_conversation(question), template).encode(), add_bos=True, special=True) == expected
        rendered = formatter(messages=[{"role": "user", "content": question}]).prompt
        assert model.tokenize(rendered.encode(), add_bos=False, special=True) == expected


@pytest.mark.reference
def test_llama_cpp_answers_the_shipped_layout_as_yayi_chat_does_and_stops_at_the_end_marker(layouts, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the dev extras")
    from tests.helpers import ANSWER, QUESTION, SYSTEM, memorize
    from yayi_cli.core.prompt import render_inference, resolve_template

    model = Path(shutil.copytree(layouts["as shipped"], tmp_path / "model"))
    memorize(model, SYSTEM, QUESTION, ANSWER)
    chat = yayi("chat", "-m", str(model), "--greedy", "--system", SYSTEM, "--prompt", QUESTION)
    assert chat.exit_code == 0 and chat.stdout.strip() == ANSWER, chat.output
    assert yayi("export", "gguf", "--model", str(model), "-o", str(tmp_path / "model.gguf")).exit_code == 0
    template, _ = resolve_template(None, str(model))
    prompt = render_inference(_conversation(QUESTION, system=SYSTEM), template)
    completion = llama_cpp.Llama(str(tmp_path / "model.gguf"), n_ctx=1024, verbose=False, seed=0).create_completion(
        prompt, max_tokens=48, temperature=0.0)["choices"][0]
    assert completion["finish_reason"] == "stop" and completion["text"].strip() == ANSWER
