"""Every `--json` document is strict JSON: a program can parse it, and an undefined number is null
(with the reason beside it), never NaN; an undefined metric never passes a gate."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import SAMPLE_DATA, yayi
from yayi_cli.runtime.atomic import json_text


def strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def commands(model: str, folder: str) -> list[list[str]]:
    data = str(SAMPLE_DATA)
    return [
        ["data", "validate", data, "--json"],
        ["data", "validate", data, "--model", model, "--json"],
        ["data", "preview", data, "--model", model, "--json"],
        ["data", "split", data, "--test-size", "4", "-o", f"{folder}/split", "--json"],
        ["train", "--dry-run", "--json", "--data", data, "--model", model, "-o", f"{folder}/run", "--cpu", "--gpus", "2"],
        ["eval", "--model", model, "--data", data, "--generate", "--max-new-tokens", "4", "--json"],
        ["eval", "--model", model, "--data", data, "--task", "choice", "--json"],
        ["quantize", "--model", model, "-o", f"{folder}/int8", "--check-data", data, "--json"],
    ]


def choice_file(folder) -> str:
    path = folder / "choice.jsonl"
    rows = [{"question": f"{i}+{i}=?", "A": str(2 * i), "B": "1", "C": "3", "D": "5", "answer": "A"} for i in range(4)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("index", range(8), ids=["validate", "validate-model", "preview", "split", "train-dry-run",
                                                 "eval", "eval-choice", "quantize"])
def test_every_command_prints_strict_json(index, tiny_model_dirs, tmp_path):
    arguments = commands(str(tiny_model_dirs["llama"]), str(tmp_path))[index]
    if "choice" in arguments:
        arguments[arguments.index("--data") + 1] = choice_file(tmp_path)
    if arguments[0] == "quantize":
        pytest.importorskip("bitsandbytes")
    result = yayi(*arguments)
    assert result.exit_code == 0, result.output
    assert isinstance(strict_json(result.stdout), dict)


def test_eval_with_no_answer_token_in_the_context_is_an_error_not_nan(tiny_model_dirs):
    result = yayi("eval", "--model", str(tiny_model_dirs["llama"]), "--data", str(SAMPLE_DATA), "--max-length", "8",
                  "--fail-if", "ppl>12.5", "--json")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("error: no answer token to score") and "8-token" in result.stderr


def test_a_gate_on_an_undefined_metric_fails_and_says_so():
    from yayi_cli.eval.gates import Gate, regressions

    assert "undefined" in Gate.parse("ppl>12.5").fails({"perplexity": None})
    assert "undefined" in Gate.parse("rouge_l<0.3").fails({"rouge_l": None})
    assert regressions({"perplexity": None}, {"perplexity": 10.0}, 2) == [
        "perplexity is undefined in this run (the baseline has 10)"
    ]


def test_yayis_json_writer_turns_undefined_numbers_into_null():
    document = {"perplexity": math.nan, "loss": math.inf, "groups": [{"loss": -math.inf, "tokens": 3}]}
    assert strict_json(json_text(document)) == {"perplexity": None, "loss": None, "groups": [{"loss": None, "tokens": 3}]}
