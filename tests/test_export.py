"""`yayi export gguf|ollama`: files that Transformers reads back as the same model, with the YaYi format
inside, an Ollama template that Go renders as the core does, and one-line refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ANSWER, QUESTION, REPO, SYSTEM, memorize, yayi
from yayi_cli.convert.export.command import export_gguf
from yayi_cli.convert.export.ollama import go_template
from yayi_cli.convert.export.options import GgufOptions
from yayi_cli.core.prompt import (
    ASSISTANT,
    END_MARKER,
    HUMAN,
    MARKERS,
    TEMPLATES,
    Conversation,
    Turn,
    chat_template,
    prompt_prefix,
    render_inference,
    reserved_tokens,
)


PROMPTS = ["<|Human|>:\n你好 hello world\n\n<|YaYi|>:\n", "Beijing Wenge 雅意 123 !?"]
F32_TOLERANCE = 1e-5
F16_TOLERANCE = 1e-2
"""f16 rounds each weight by up to 2^-11 of itself; on these tiny models the logits move by about 3e-4."""


def one_error_line(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


@pytest.fixture(scope="module")
def exported(tiny_model_dirs, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Each tiny model at f32, f16 and q8_0."""
    root = tmp_path_factory.mktemp("gguf")
    files = {}
    for arch, directory in tiny_model_dirs.items():
        for file_type in ("f32", "f16", "q8_0"):
            files[arch, file_type] = root / f"{arch}-{file_type}.gguf"
            export_gguf(GgufOptions(model=str(directory), output=files[arch, file_type], type=file_type))
    return files


@pytest.fixture(scope="module")
def memorized(tiny_model_dirs, tmp_path_factory) -> dict[str, Path]:
    """Each tiny model trained to answer QUESTION with ANSWER, and its q8_0 export beside it."""
    root = tmp_path_factory.mktemp("memorized")
    models = {}
    for arch, directory in tiny_model_dirs.items():
        models[arch] = Path(shutil.copytree(directory, root / arch))
        memorize(models[arch], SYSTEM, QUESTION, ANSWER)
        export_gguf(GgufOptions(model=str(models[arch]), output=root / f"{arch}.gguf", type="q8_0"))
    return models


def logits(model, tokenizer, text: str):
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokenizer(text)["input_ids"]])).logits[0]


def load_back(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()


@pytest.mark.parametrize("file_type, tolerance", [("f32", F32_TOLERANCE), ("f16", F16_TOLERANCE)])
def test_transformers_reads_the_file_back_as_the_same_model(exported, tiny_model_dirs, tiny_tokenizers, arch, file_type, tolerance):
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch]).eval()
    loaded = load_back(exported[arch, file_type])
    for text in PROMPTS:
        expected, got = logits(original, tiny_tokenizers[arch], text), logits(loaded, tiny_tokenizers[arch], text)
        assert (got - expected).abs().max().item() <= tolerance


def greedy(model, tokenizer, text: str) -> list[int]:
    import torch

    ids = torch.tensor([tokenizer(text)["input_ids"]])
    output = model.generate(input_ids=ids, max_new_tokens=24, do_sample=False,
                            eos_token_id=tokenizer.convert_tokens_to_ids(END_MARKER), pad_token_id=tokenizer.pad_token_id)
    return output[0, ids.shape[1]:].tolist()


def test_q8_0_gives_the_same_greedy_answer(memorized, tiny_tokenizers, arch):
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizers[arch]
    template = TEMPLATES["yayi-llama2" if arch == "llama" else "yayi"]
    prompt = render_inference(Conversation((Turn(HUMAN, QUESTION),), SYSTEM), template)
    original = greedy(AutoModelForCausalLM.from_pretrained(memorized[arch]).eval(), tokenizer, prompt)
    assert tokenizer.decode(original, skip_special_tokens=True).strip() == ANSWER  # the model really learned it
    assert greedy(load_back(memorized[arch].parent / f"{arch}.gguf"), tokenizer, prompt) == original


def test_the_file_carries_the_tokenizer_and_the_yayi_format(exported, tiny_tokenizers, arch):
    import gguf

    tokenizer = tiny_tokenizers[arch]
    reader = gguf.GGUFReader(exported[arch, "f16"])

    def value(key):
        return reader.fields[key].contents()

    template = TEMPLATES["yayi-llama2" if arch == "llama" else "yayi"]
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    types = value("tokenizer.ggml.token_type")
    for marker in MARKERS:
        assert types[tokenizer.convert_tokens_to_ids(marker)] == gguf.TokenType.CONTROL
    assert value("tokenizer.ggml.eot_token_id") == tokenizer.convert_tokens_to_ids(END_MARKER)
    assert value("tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
    assert value("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert value("tokenizer.ggml.add_bos_token") is (arch == "llama")
    assert value("tokenizer.chat_template") == chat_template(template, prompt_prefix(tokenizer), reserved_tokens(tokenizer))
    assert value("general.yayi.template") == template.name and value("general.yayi.system") == template.system
    assert len(value("tokenizer.ggml.tokens")) == len(tokenizer) and len(value("tokenizer.ggml.merges")) > 0
    assert value("general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    norms = [t for t in reader.tensors if t.name.endswith("_norm.weight")]
    assert norms and all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in norms)


# --- Ollama ---------------------------------------------------------------------------------------

GO_RENDERER = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct{ Role, Content string }

type Input struct {
	Template, System string
	Messages         []Message
}

func main() {
	var input Input
	if err := json.NewDecoder(os.Stdin).Decode(&input); err != nil {
		panic(err)
	}
	if err := template.Must(template.New("t").Parse(input.Template)).Execute(os.Stdout, input); err != nil {
		panic(err)
	}
}
"""


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    """Render an Ollama TEMPLATE with Go's own text/template, as Ollama does."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (.ci/run installs Debian's golang-go)")
    root = tmp_path_factory.mktemp("go")
    (root / "main.go").write_text(GO_RENDERER, encoding="utf-8")
    (root / "go.mod").write_text("module render\n\ngo 1.19\n", encoding="utf-8")
    subprocess.run([go, "build", "-o", "render", "."], cwd=root, check=True, capture_output=True, timeout=300)

    def render(template: str, system: str, messages: list[dict[str, str]]) -> str:
        document = {"Template": template, "System": system,
                    "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
        return subprocess.run([str(root / "render")], input=json.dumps(document), capture_output=True, text=True,
                              check=True, timeout=60).stdout

    return render


CONVERSATIONS = {
    "one question": Conversation((Turn(HUMAN, QUESTION),), SYSTEM),
    "several turns": Conversation((Turn(HUMAN, "第一问"), Turn(ASSISTANT, "答一\n两行"), Turn(HUMAN, "second \"q\""),
                                   Turn(ASSISTANT, "a2 {{ .x }}"), Turn(HUMAN, "三")), SYSTEM),
    "empty system": Conversation((Turn(HUMAN, "hi"),), ""),
}


@pytest.mark.system
@pytest.mark.parametrize("case", CONVERSATIONS)
@pytest.mark.parametrize("name", TEMPLATES)
def test_go_renders_the_ollama_template_exactly_as_the_core(go_render, case, name):
    template, conversation = TEMPLATES[name], CONVERSATIONS[case]
    messages = [{"role": "system", "content": conversation.system}]
    messages += [{"role": "user" if t.role == HUMAN else "assistant", "content": t.text} for t in conversation.turns]
    assert go_render(go_template(template), conversation.system, messages) == render_inference(conversation, template)


@pytest.mark.system
def test_ollama_export_writes_the_gguf_and_a_modelfile_with_the_stops(tiny_model_dirs, tmp_path, go_render):
    result = yayi("export", "ollama", "-m", str(tiny_model_dirs["bloom"]), "-o", str(tmp_path / "YaYi Tiny"), "--type", "q8_0")
    assert result.exit_code == 0, result.output
    assert f"ollama create yayi-tiny -f {tmp_path / 'YaYi Tiny' / 'Modelfile'}" in result.stdout
    modelfile = (tmp_path / "YaYi Tiny" / "Modelfile").read_text(encoding="utf-8")
    assert modelfile.startswith("FROM ./model.gguf\n") and (tmp_path / "YaYi Tiny" / "model.gguf").is_file()
    assert 'PARAMETER stop "<|End|>"' in modelfile and 'PARAMETER stop "<|Human|>"' in modelfile
    assert f'SYSTEM """{TEMPLATES["yayi"].system}"""' in modelfile
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    conversation = Conversation((Turn(HUMAN, QUESTION),))
    rendered = go_render(template, TEMPLATES["yayi"].system, [{"role": "user", "content": QUESTION}])
    assert rendered == render_inference(conversation, TEMPLATES["yayi"])


# --- refusals -------------------------------------------------------------------------------------


def edited_copy(source: Path, target: Path, **config) -> Path:
    shutil.copytree(source, target)
    document = json.loads((target / "config.json").read_text(encoding="utf-8")) | config
    (target / "config.json").write_text(json.dumps(document), encoding="utf-8")
    return target


def test_another_architecture_is_refused_naming_the_supported_ones(tiny_model_dirs, tmp_path):
    other = edited_copy(tiny_model_dirs["llama"], tmp_path / "neox", model_type="gpt_neox")
    result = yayi("export", "gguf", "-m", str(other), "-o", str(tmp_path / "out.gguf"))
    one_error_line(result, "'gpt_neox'", "llama, bloom")
    assert not (tmp_path / "out.gguf").exists()


def test_a_bitsandbytes_checkpoint_is_refused(tiny_model_dirs, tmp_path):
    int8 = edited_copy(tiny_model_dirs["llama"], tmp_path / "int8",
                       quantization_config={"quant_method": "bitsandbytes", "load_in_8bit": True})
    result = yayi("export", "gguf", "-m", str(int8), "-o", str(tmp_path / "out.gguf"))
    one_error_line(result, "bitsandbytes", "export from the 16-bit model, then quantize to GGUF types")


def test_an_existing_file_is_kept_without_force(tiny_model_dirs, tmp_path):
    output = tmp_path / "model.gguf"
    output.write_bytes(b"mine")
    one_error_line(yayi("export", "gguf", "-m", str(tiny_model_dirs["llama"]), "-o", str(output)), "--force")
    assert output.read_bytes() == b"mine"
    assert yayi("export", "gguf", "-m", str(tiny_model_dirs["llama"]), "-o", str(output), "--force").exit_code == 0
    assert output.read_bytes()[:4] == b"GGUF" and sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_k_quants_without_llama_cpp_python_say_what_to_install(tiny_model_dirs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if it were not installed
    result = yayi("export", "gguf", "-m", str(tiny_model_dirs["llama"]), "-o", str(tmp_path / "m.gguf"), "--type", "q4_k_m")
    one_error_line(result, "--type q4_k_m needs llama_cpp", "pip install llama-cpp-python")
    assert list(tmp_path.iterdir()) == []


def test_export_help_does_not_import_the_model_stack():
    code = ("import sys; from yayi_cli.cli.app import main; sys.argv = ['yayi', 'export', 'gguf', '--help']\n"
            "try:\n main()\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'gguf', 'llama_cpp', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr
