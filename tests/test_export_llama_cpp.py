"""Exported files in the real llama.cpp (through llama-cpp-python): it loads them, tokenizes a YaYi prompt
as the Hugging Face tokenizer does, answers as `yayi chat --greedy` does and stops at <|End|>, and its
chat completion renders the embedded template into the core's prompt."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import ANSWER, QUESTION, SYSTEM, memorize, yayi
from yayi_cli.convert.export.command import export_gguf
from yayi_cli.convert.export.options import GgufOptions
from yayi_cli.core.prompt import (
    ASSISTANT,
    HUMAN,
    MARKERS,
    TEMPLATES,
    Conversation,
    Turn,
    prompt_prefix,
    render_inference,
    resolve_template,
)


pytestmark = pytest.mark.reference
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the dev extras")


def load(path: Path):
    return llama_cpp.Llama(str(path), n_ctx=1024, verbose=False, seed=0)


@pytest.fixture(scope="module")
def files(tiny_model_dirs, tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("llama-cpp")
    exported = {}
    for arch, directory in tiny_model_dirs.items():
        for file_type in ("f32", "f16", "q8_0", "q4_k_m"):
            exported[arch, file_type] = root / f"{arch}-{file_type}.gguf"
            export_gguf(GgufOptions(model=str(directory), output=exported[arch, file_type], type=file_type))
    return exported


@pytest.fixture(scope="module")
def answering(tiny_model_dirs, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Each tiny model trained to answer QUESTION, and its f32 export."""
    root = tmp_path_factory.mktemp("answering")
    models = {}
    for arch, directory in tiny_model_dirs.items():
        model = Path(shutil.copytree(directory, root / arch))
        memorize(model, SYSTEM, QUESTION, ANSWER)
        export_gguf(GgufOptions(model=str(model), output=root / f"{arch}.gguf", type="f32"))
        models[arch] = (model, root / f"{arch}.gguf")
    return models


def test_a_rendered_prompt_becomes_the_same_token_ids_with_each_marker_one_token(files, tiny_tokenizers, arch):
    tokenizer = tiny_tokenizers[arch]
    conversation = Conversation((Turn(HUMAN, "你好，雅意 hello  world!"), Turn(ASSISTANT, "答：123\n\nok"),
                                 Turn(HUMAN, "再见 (bye) …")), SYSTEM)
    text = render_inference(conversation, TEMPLATES["yayi"])
    expected = tokenizer(text)["input_ids"]
    for file_type in ("f32", "f16", "q8_0", "q4_k_m"):
        model = load(files[arch, file_type])
        ids = model.tokenize(text.encode(), add_bos=model.metadata["tokenizer.ggml.add_bos_token"] == "true", special=True)
        assert ids == expected, file_type
        for marker in MARKERS:
            assert model.tokenize(marker.encode(), add_bos=False, special=True) == [tokenizer.convert_tokens_to_ids(marker)]


def test_greedy_answers_equal_yayi_chat_and_stop_at_the_end_marker(answering, arch):
    directory, path = answering[arch]
    chat = yayi("chat", "-m", str(directory), "--greedy", "--system", SYSTEM, "--prompt", QUESTION)
    assert chat.exit_code == 0 and chat.stdout.strip() == ANSWER, chat.output
    template, _ = resolve_template(None, str(directory))
    prompt = render_inference(Conversation((Turn(HUMAN, QUESTION),), SYSTEM), template)
    completion = load(path).create_completion(prompt, max_tokens=48, temperature=0.0)["choices"][0]
    assert completion["finish_reason"] == "stop"  # at <|End|>, the end-of-turn token, well before max_tokens
    assert completion["text"].strip() == ANSWER and not any(marker in completion["text"] for marker in MARKERS)


def test_chat_completion_renders_the_embedded_template_as_the_core_does(answering, tiny_tokenizers, arch):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    directory, path = answering[arch]
    model = load(path)
    template, _ = resolve_template(None, str(directory))
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "第一问"},
                {"role": "assistant", "content": "答一"}, {"role": "user", "content": QUESTION}]
    formatter = Jinja2ChatFormatter(model.metadata["tokenizer.chat_template"], eos_token="</s>", bos_token="<s>")
    conversation = Conversation((Turn(HUMAN, "第一问"), Turn(ASSISTANT, "答一"), Turn(HUMAN, QUESTION)), SYSTEM)
    expected = prompt_prefix(tiny_tokenizers[arch]) + render_inference(conversation, template)
    assert formatter(messages=messages).prompt == expected
    reply = model.create_chat_completion(messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
                                         max_tokens=48, temperature=0.0)["choices"][0]
    assert reply["message"]["content"].strip() == ANSWER and reply["finish_reason"] == "stop"


def test_k_quants_keep_the_format_metadata(files, arch):
    model = load(files[arch, "q4_k_m"])
    assert model.metadata["general.file_type"] == "15"  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert model.metadata["tokenizer.chat_template"] == load(files[arch, "f16"]).metadata["tokenizer.chat_template"]
    assert model.metadata["tokenizer.ggml.eot_token_id"] == load(files[arch, "f16"]).metadata["tokenizer.ggml.eot_token_id"]
