"""`yayi export gguf` against llama.cpp's own `convert_hf_to_gguf.py` on the same model, side by side.

For a tiny Llama and BLOOM and a random-weight Llama of about 1B parameters (bf16 on disk, as YaYi
ships), each --type is exported by both, alternating who goes first; the report gives wall time, file
size and whether the two files hold the same tensors (names, types, shapes and bytes, read back with the
gguf package's reader). The converter comes from llama-cpp-python's source archive
(`vendor/llama.cpp/`, pass its folder with --llama-cpp); it runs only here, never from yayi. It refuses a
tokenizer whose pre-tokenizer hash it has not seen, which a tokenizer trained on the spot always is, so
this script tells it the answer yayi finds ("gpt-2") and changes nothing else.

    pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all: -d /tmp/src && tar xzf /tmp/src/*.tar.gz -C /tmp/src
    .venv/bin/python benchmarks/gguf_export.py --llama-cpp /tmp/src/llama_cpp_python-0.3.36/vendor/llama.cpp
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
TYPES = ("f32", "f16", "bf16", "q8_0")
RUN_CONVERTER = """
import sys
llama_cpp = sys.argv.pop(1)
sys.path[:0] = [llama_cpp, llama_cpp + "/gguf-py"]  # the converter and the gguf-py it ships with
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"  # the tiny tokenizer's hash is new to it
sys.argv[0] = "convert_hf_to_gguf.py"
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""


def build_models(root: Path) -> dict[str, Path]:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    sys.path.insert(0, str(REPO))
    from yayi_cli.core.prompt import TEMPLATES, save_model_format
    from yayi_cli.models.tiny import TinySpec, build_tiny, training_texts

    texts = list(training_texts([REPO / "examples" / "sample.jsonl"], TEMPLATES["yayi"]))
    models = {f"tiny {arch}": build_tiny(root / arch, texts, TinySpec(arch=arch)) for arch in ("llama", "bloom")}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models["tiny llama"])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=5632, num_hidden_layers=20,
                         num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, dtype="bfloat16")
    torch.manual_seed(0)
    big = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    name = f"llama {big.num_parameters() / 1e9:.2f}B"
    big.save_pretrained(root / "big")
    save_model_format(root / "big", tokenizer, TEMPLATES["yayi-llama2"])
    models[name] = root / "big"
    return models


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def same_tensors(first: Path, second: Path) -> str:
    import gguf

    ours, theirs = gguf.GGUFReader(first), gguf.GGUFReader(second)
    if [t.name for t in ours.tensors] != [t.name for t in theirs.tensors]:
        return "different names"
    for a, b in zip(ours.tensors, theirs.tensors):
        if a.tensor_type != b.tensor_type or list(a.shape) != list(b.shape) or a.data.tobytes() != b.data.tobytes():
            return f"differ at {a.name}"
    return f"equal ({len(ours.tensors)} tensors)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-cpp", type=Path, required=True, help="vendor/llama.cpp of llama-cpp-python's sdist")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        models = build_models(root)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        print("| model | --type | yayi s | convert_hf_to_gguf.py s | time ratio | yayi MiB | converter MiB | tensors |")
        print("|---|---|---|---|---|---|---|---|")
        for label, directory in models.items():
            for index, file_type in enumerate(TYPES):
                ours, theirs = root / f"yayi-{file_type}.gguf", root / f"llama-{file_type}.gguf"
                yayi = [str(Path(sys.executable).parent / "yayi"), "-q", "export", "gguf", "-m", str(directory),
                        "-o", str(ours), "--type", file_type, "--force"]
                converter = [sys.executable, "-c", RUN_CONVERTER, str(args.llama_cpp), str(directory), "--outfile",
                             str(theirs), "--outtype", file_type]
                runs = [(yayi, converter), (converter, yayi)][index % 2]  # alternate who goes first
                seconds = {id(argv): timed(argv) for argv in runs}
                ours_s, theirs_s = seconds[id(yayi)], seconds[id(converter)]
                print(f"| {label} | {file_type} | {ours_s:.2f} | {theirs_s:.2f} | {ours_s / theirs_s:.2f}x | "
                      f"{ours.stat().st_size / 2**20:,.1f} | {theirs.stat().st_size / 2**20:,.1f} | "
                      f"{same_tensors(ours, theirs)} |", flush=True)
                ours.unlink()
                theirs.unlink()


if __name__ == "__main__":
    main()
