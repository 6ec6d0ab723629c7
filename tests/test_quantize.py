"""`yayi quantize` on tiny BLOOM- and Llama-shaped models with real bitsandbytes on the CPU."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import SAMPLE_DATA
from yayi_cli.cli.app import app
from yayi_cli.convert.options import QuantizeOptions
from yayi_cli.convert.quantize import quantize
from yayi_cli.core.prompt import PromptTokenizer, resolve_template, stop_token_ids
from yayi_cli.core.record_files import load_records
from yayi_cli.core.sampling import seeded_sample
from yayi_cli.models.inference import generate_answers, pad_id, response_loss, split_last_answer
from yayi_cli.models.tokenizers import load_tokenizer
from yayi_cli.models.weights import load_model
from yayi_cli.runtime.errors import DataError, UsageError
from yayi_cli.serve.template_install import format_problems


runner = CliRunner()


@pytest.mark.parametrize("bits", [8, 4])
def test_a_quantized_checkpoint_reloads_and_answers_through_the_prompt_core(tiny_model_dirs, arch, tmp_path, bits):
    out = tmp_path / f"q{bits}"
    report = quantize(QuantizeOptions(str(tiny_model_dirs[arch]), out, bits=bits, check_data=[SAMPLE_DATA], max_check_samples=8))
    document = json.loads((out / "quantize.json").read_text())
    assert document["method"] == ("LLM.int8" if bits == 8 else "NF4")
    assert document["after"]["footprint_bytes"] < document["before"]["footprint_bytes"]
    assert document["after"]["disk_bytes"] < document["before"]["disk_bytes"]
    assert document["after"]["parameters"] == document["before"]["parameters"] == report.before.parameters

    model = load_model(str(out), device="cpu")
    layer = type(next(m for name, m in model.named_modules() if name.endswith(("mlp.down_proj", "mlp.dense_4h_to_h"))))
    assert layer.__name__ == ("Linear8bitLt" if bits == 8 else "Linear4bit")
    template, source = resolve_template(None, str(out))
    assert source == "saved with the model"
    prompt_tokenizer = PromptTokenizer(template, load_tokenizer(str(out)))
    assert format_problems(out, prompt_tokenizer.tokenizer, template) == []  # chat template and stop ids for other engines
    examples = seeded_sample(load_records([SAMPLE_DATA]), 8, seed=0)
    perplexity = response_loss(model, prompt_tokenizer, examples).overall.to_json()["perplexity"]
    # The report measures the written checkpoint as eval loads it: the same bytes through the same code,
    # so only the order of float sums could differ, far below 1e-9 of the value.
    assert perplexity == pytest.approx(report.after.perplexity, rel=1e-9)
    questions = [split_last_answer(e.conversation)[0] for e in examples[:2]]
    answers = generate_answers(model, prompt_tokenizer, questions, max_new_tokens=5, batch_size=1)
    for question, answer in zip(questions, answers, strict=True):  # our batched path == plain generate on the int8 model
        ids = prompt_tokenizer.encode_inference(question)
        plain = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False,
                               eos_token_id=stop_token_ids(prompt_tokenizer.tokenizer), pad_token_id=pad_id(prompt_tokenizer.tokenizer))
        assert answer == prompt_tokenizer.decode_answer(plain[0, len(ids):].tolist())


def test_the_nf4_checkpoint_holds_the_scales_of_a_fresh_quantization(tiny_model_dirs, tmp_path):
    """bitsandbytes repacks NF4 weights for its CPU kernel on the first forward pass where the CPU has
    AVX512-BF16, and a model saved after that carries its scales transposed and rounded to bf16. The
    checkpoint must be written before the model runs: its scales equal those of a fresh quantization."""
    from yayi_cli.convert.quantize import load_quantized

    options = QuantizeOptions(str(tiny_model_dirs["llama"]), tmp_path / "q4", bits=4, check_data=[SAMPLE_DATA], max_check_samples=2)
    quantize(options)
    fresh = load_quantized(str(tiny_model_dirs["llama"]), options, "cpu")
    written = load_model(str(options.output), device="cpu")
    layers = {name: module for name, module in written.named_modules() if type(module).__name__ == "Linear4bit"}
    assert layers
    for name, module in fresh.named_modules():
        if name in layers:
            assert torch.equal(layers[name].weight.quant_state.absmax, module.weight.quant_state.absmax), name
            assert torch.equal(layers[name].weight.data, module.weight.data), name


def test_the_perplexity_gate_fails_and_writes_nothing(tiny_model_dirs, tmp_path):
    options = QuantizeOptions(str(tiny_model_dirs["bloom"]), tmp_path / "q", check_data=[SAMPLE_DATA], max_check_samples=4, max_ppl_increase=-100)
    with pytest.raises(DataError, match="more than --max-ppl-increase -100%; nothing was written"):
        quantize(options)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force_and_force_swaps_in_a_complete_one(tiny_model_dirs, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists; use --force"):
        quantize(QuantizeOptions(str(tiny_model_dirs["bloom"]), out))
    assert (out / "keep.txt").read_text() == "mine"
    quantize(QuantizeOptions(str(tiny_model_dirs["bloom"]), out, force=True))
    assert (out / "model.safetensors").exists() and not (out / "keep.txt").exists()


def test_cli_json_report_and_usage_errors(tiny_model_dirs, tmp_path):
    result = runner.invoke(app, ["quantize", "-m", str(tiny_model_dirs["llama"]), "-o", str(tmp_path / "q"), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["footprint_ratio"] < 1 and document["perplexity_increase_percent"] is None
    again = runner.invoke(app, ["quantize", "-m", str(tiny_model_dirs["llama"]), "-o", str(tmp_path / "q")])
    assert again.exit_code == 2 and "already exists" in again.stderr
    model_files = sorted(path.name for path in tiny_model_dirs["llama"].iterdir())
    over_model = runner.invoke(app, ["quantize", "-m", str(tiny_model_dirs["llama"]), "-o", str(tiny_model_dirs["llama"]), "--force"])
    assert over_model.exit_code == 2 and "would replace --model" in over_model.stderr
    assert sorted(path.name for path in tiny_model_dirs["llama"].iterdir()) == model_files
    bad_bits = runner.invoke(app, ["quantize", "-m", str(tiny_model_dirs["llama"]), "-o", str(tmp_path / "r"), "--bits", "3"])
    assert bad_bits.exit_code == 2


@pytest.mark.launch
def test_json_on_stdout_stays_clean_when_deepspeed_is_installed(tiny_model_dirs, tmp_path):
    """accelerate imports DeepSpeed for int8 loading, and DeepSpeed logs to stdout unless told otherwise."""
    import os
    import subprocess
    import sys

    out = tmp_path / "int8"
    for command in (["quantize", "--model", str(tiny_model_dirs["llama"]), "-o", str(out)],
                    ["eval", "--model", str(out), "--data", str(SAMPLE_DATA), "--max-samples", "2"]):
        result = subprocess.run([sys.executable, "-m", "yayi_cli", *command, "--json"], capture_output=True,
                                text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        assert result.returncode == 0, result.stderr[-2000:]
        json.loads(result.stdout)
