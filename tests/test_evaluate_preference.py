"""`yayi eval --task preference`: each answer's log-prob is what plain transformers computes on the ids
training scores, the implicit reward compares the policy with its reference, and the reference is the
model the policy was trained from (its run.json), or an adapter's base on the same weights."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import PAIRS, REPO, SAMPLE_DATA, load_for_scoring, make_random_lora
from yayi_cli.cli.app import app
from yayi_cli.core.preference_tokens import encode_preferences
from yayi_cli.core.prompt import TEMPLATES
from yayi_cli.core.record_files import load_records
from yayi_cli.core.records import answered
from yayi_cli.models.tiny import TinySpec, build_tiny, training_texts


runner = CliRunner()
BETA_IN_RUN = 0.5


def cli(*args):
    return runner.invoke(app, ["eval", *args], prog_name="yayi")


def preference_run(model, data, *args):
    """`yayi eval --model MODEL --data DATA --task preference --json ARGS...`."""
    return cli("--model", str(model), "--data", str(data), "--task", "preference", "--json", *args)


def report_of(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def predictions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def one_error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def plain_logprob(model, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """log p(answer | prompt) = sum over the answer's positions t of log_softmax(logits[t - 1])[ids[t]]:
    one unpadded sequence through plain transformers."""
    import torch

    ids = prompt_ids + answer_ids
    with torch.no_grad():
        logprobs = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    return sum(logprobs[t - 1, ids[t]].item() for t in range(len(prompt_ids), len(ids)))


def plain_scores(directory, path: Path) -> list[tuple[tuple[float, int], tuple[float, int]]]:
    """(summed log-prob, tokens) of each pair's chosen and rejected answer, computed by plain transformers."""
    model, prompt_tokenizer = load_for_scoring(directory)
    records = load_records([path])
    return [tuple((plain_logprob(model, pair.prompt_ids, answer), len(answer)) for answer in pair.answer_ids)
            for pair in encode_preferences(records, prompt_tokenizer)]


@pytest.fixture(scope="module")
def prefers_chosen(tiny_model_dirs, pairs_file, tmp_path_factory) -> Path:
    """A copy of the tiny Llama after 30 seeded steps of plain SFT (a bare PyTorch loop) on the chosen answers."""
    import torch

    directory = shutil.copytree(tiny_model_dirs["llama"], tmp_path_factory.mktemp("policy") / "prefers-chosen")
    model, prompt_tokenizer = load_for_scoring(directory)
    records = load_records([pairs_file])
    batch = prompt_tokenizer.encode_training_batch([answered(r.conversation, r.answers[0]) for r in records])
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        for encoded in batch:
            model(input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(directory)
    return directory


# --- the numbers ----------------------------------------------------------------------------------


def test_a_policy_scored_against_itself_has_no_margin_and_wins_no_pair(tiny_model_dirs, arch, tmp_path, pairs_file):
    model = tiny_model_dirs[arch]
    written = tmp_path / "pairs.jsonl"
    report = report_of(preference_run(model, pairs_file, "--reference", str(model), "--predictions", str(written)))
    assert report["metrics"]["margin"] == 0.0 and report["metrics"]["pref_acc"] == 0.0  # a tie is not a win
    assert (report["reference"], report["reference_from"], report["beta"]) == (str(model), "--reference", 0.1)
    # policy_pref_acc: the share of pairs where chosen's mean log-prob per token beats rejected's
    plain = plain_scores(model, pairs_file)
    expected = sum(c_logp / c_tokens > r_logp / r_tokens for (c_logp, c_tokens), (r_logp, r_tokens) in plain) / len(plain)
    assert report["metrics"]["policy_pref_acc"] == pytest.approx(expected)
    assert 0 < expected < 1  # the untrained model prefers some chosen answers and not others: the check can fail
    assert all(row["reference_chosen_logp"] == row["chosen_logp"] for row in predictions(written))


@pytest.mark.parametrize("batch_size", ["1", "3"])
def test_each_answers_logprob_is_plain_transformers_on_the_training_ids(tiny_model_dirs, arch, tmp_path, pairs_file, batch_size):
    model = tiny_model_dirs[arch]
    written = tmp_path / "pairs.jsonl"
    report = report_of(preference_run(model, pairs_file, "--reference", str(model), "--batch-size", batch_size, "--predictions", str(written)))
    rows = predictions(written)
    for row, ((chosen, chosen_tokens), (rejected, rejected_tokens)) in zip(rows, plain_scores(model, pairs_file)):
        assert row["chosen_logp"] == pytest.approx(chosen, abs=1e-4)
        assert row["rejected_logp"] == pytest.approx(rejected, abs=1e-4)
        assert (row["chosen_tokens"], row["rejected_tokens"]) == (chosen_tokens, rejected_tokens)
    assert report["counts"]["answer_tokens"] == sum(row["chosen_tokens"] + row["rejected_tokens"] for row in rows)
    assert [row["location"] for row in rows] == [f"{pairs_file}:{line}" for line in range(1, len(PAIRS) + 1)]


def test_a_model_taught_the_chosen_answers_wins_every_pair_and_the_gates_see_it(prefers_chosen, tiny_model_dirs, tmp_path, pairs_file):
    original = str(tiny_model_dirs["llama"])
    written, saved = tmp_path / "pairs.jsonl", tmp_path / "report.json"
    result = preference_run(prefers_chosen, pairs_file, "--reference", original, "--predictions", str(written), "--output", str(saved),
                            "--fail-if", "pref_acc<0.8")
    report = report_of(result)
    assert report["metrics"]["pref_acc"] == 1.0 and report["metrics"]["policy_pref_acc"] == 1.0
    rows = predictions(written)
    assert all(row["margin"] > 1.0 for row in rows)  # every pair won by over 10 nats: no luck in it
    assert report["metrics"]["margin"] == pytest.approx(sum(row["margin"] for row in rows) / len(rows))
    for row in rows:  # margin = beta x ((policy - reference) on chosen - (policy - reference) on rejected)
        gap = (row["chosen_logp"] - row["reference_chosen_logp"]) - (row["rejected_logp"] - row["reference_rejected_logp"])
        assert row["margin"] == pytest.approx(0.1 * gap)
    assert report["gate"] == {"passed": True, "failures": []}

    failing = preference_run(prefers_chosen, pairs_file, "--reference", original, "--fail-if", "pref_acc<1.01")
    assert failing.exit_code == 1
    assert json.loads(failing.stdout)["gate"]["failures"] == ["pref_acc = 1, which is < 1.01"]

    # every preference metric is higher-is-better: the original against itself regresses on pref_acc and margin
    same = preference_run(original, pairs_file, "--reference", original, "--baseline", str(saved), "--max-regression", "10")
    assert same.exit_code == 1
    failures = json.loads(same.stdout)["gate"]["failures"]
    assert [failure.split(" ")[0] for failure in failures][:2] == ["pref_acc", "margin"]
    again = preference_run(prefers_chosen, pairs_file, "--reference", original, "--baseline", str(saved), "--max-regression", "0")
    assert again.exit_code == 0, again.output


# --- the reference ----------------------------------------------------------------------------------


def test_the_default_reference_and_beta_come_from_the_run_that_trained_the_model(prefers_chosen, tiny_model_dirs, tmp_path, pairs_file):
    original = str(tiny_model_dirs["llama"])
    trained = shutil.copytree(prefers_chosen, tmp_path / "dpo-output")
    run = {"options": {"method": "dpo", "model": original, "beta": BETA_IN_RUN}}
    (trained / "run.json").write_text(json.dumps(run), encoding="utf-8")
    report = report_of(preference_run(trained, pairs_file))
    assert (report["reference"], report["reference_from"]) == (original, f"{trained / 'run.json'} options.model")
    assert (report["beta"], report["beta_from"]) == (BETA_IN_RUN, f"{trained / 'run.json'} options.beta")
    explicit = report_of(preference_run(prefers_chosen, pairs_file, "--reference", original))  # no run.json: beta 0.1
    assert explicit["beta_from"] == "default"
    assert report["metrics"]["margin"] == pytest.approx(explicit["metrics"]["margin"] * BETA_IN_RUN / 0.1)
    assert report["metrics"]["pref_acc"] == explicit["metrics"]["pref_acc"] == 1.0


@pytest.fixture(scope="module")
def random_lora(tiny_model_dirs, tmp_path_factory) -> Path:
    return make_random_lora(tiny_model_dirs["llama"], tmp_path_factory.mktemp("lora") / "adapter", TEMPLATES["yayi-llama2"])


def count_loads(monkeypatch) -> list[str]:
    """The models `load_for_task` loads weights for, in order."""
    import yayi_cli.models.loading

    loads, real = [], yayi_cli.models.loading.load_model

    def counted(model, **kwargs):
        loads.append(model)
        return real(model, **kwargs)

    monkeypatch.setattr(yayi_cli.models.loading, "load_model", counted)
    return loads


def test_an_adapters_reference_is_its_base_with_the_adapter_disabled_loaded_once(random_lora, tiny_model_dirs, tmp_path, pairs_file, monkeypatch):
    base = str(tiny_model_dirs["llama"])
    on_base, on_adapter = tmp_path / "base.jsonl", tmp_path / "adapter.jsonl"
    report_of(preference_run(base, pairs_file, "--reference", base, "--predictions", str(on_base)))
    loads = count_loads(monkeypatch)
    report = report_of(preference_run(random_lora, pairs_file, "--predictions", str(on_adapter)))
    assert (report["reference"], report["reference_from"]) == (base, "the adapter's base")
    assert loads == [str(random_lora)]  # one model in memory: the base, with the adapter on top
    for plain, adapted in zip(predictions(on_base), predictions(on_adapter)):
        assert adapted["reference_chosen_logp"] == pytest.approx(plain["chosen_logp"], abs=1e-5)
        assert adapted["reference_rejected_logp"] == pytest.approx(plain["rejected_logp"], abs=1e-5)
        assert abs(adapted["chosen_logp"] - plain["chosen_logp"]) > 1e-3  # the policy is the adapter, on

    # a LoRA run's run.json names the base it trained from, spelled as it was typed then: still one load
    trained = shutil.copytree(random_lora, tmp_path / "lora-run")
    relative = os.path.relpath(base)
    (trained / "run.json").write_text(json.dumps({"options": {"model": relative, "beta": 0.1}}), encoding="utf-8")
    loads.clear()
    assert report_of(preference_run(trained, pairs_file))["reference"] == relative
    assert loads == [str(trained)]


def test_without_a_run_or_an_adapter_the_reference_must_be_given(tiny_model_dirs, pairs_file, monkeypatch):
    loads = count_loads(monkeypatch)
    line = one_error_line(preference_run(tiny_model_dirs["llama"], pairs_file), 2)
    assert line == (f"error: --task preference needs a reference model: {tiny_model_dirs['llama']} has no run.json naming "
                    "the model it was trained from and is not an adapter; give --reference MODEL")
    assert loads == []  # refused before any model loads


def test_a_reference_that_cannot_score_the_policys_ids_is_refused(tiny_model_dirs, pairs_file, without_markers, tmp_path):
    policy = tiny_model_dirs["llama"]
    line = one_error_line(preference_run(policy, pairs_file, "--reference", str(without_markers)), 2)
    assert line.startswith("error: the reference model (--reference): ") and "<|" in line
    other = build_tiny(tmp_path / "other-vocabulary", training_texts([SAMPLE_DATA], TEMPLATES["yayi"]), TinySpec(vocab_size=600))
    line = one_error_line(preference_run(policy, pairs_file, "--reference", str(other)), 2)
    assert line == (f"error: the reference {other} has another tokenizer than {policy}: rewards compare the same token "
                    "ids under both models, so give a --reference with the policy's tokenizer")


# --- records and options that do not fit --------------------------------------------------------


@pytest.fixture
def unpaired_file(tmp_path) -> Path:
    path = tmp_path / "kto.jsonl"
    path.write_text('{"instruction": "你好", "completion": "你好！", "label": true}\n', encoding="utf-8")
    return path


@pytest.mark.parametrize("data, args, message", [
    ("sft", ["--task", "preference", "--reference", "{model}"], "--task preference scores preference pairs (chosen/rejected), and {data}:1 holds "
                                      "SFT records (with their answers); use --task lm"),
    ("unpaired", ["--task", "preference", "--reference", "{model}"], "--task preference scores preference pairs (chosen/rejected), and {data}:1 "
                                           "holds unpaired preference records (completion/label); no eval task scores "
                                           "them: --task preference needs pairs (chosen/rejected) of one prompt"),
    ("pairs", ["--task", "lm"], "--task lm scores SFT records (with their answers), and {data}:1 holds preference pairs "
                                "(chosen/rejected); use --task preference"),
    ("pairs", ["--task", "choice"], "{data}:1: a preference pair (chosen/rejected), not a choice item; score pairs with "
                                    "--task preference"),
    ("pairs", ["--task", "lm", "--reference", "x"], "--reference is for --task preference"),
    ("pairs", ["--task", "preference", "--generate"], "--generate answers SFT records' last question; --task preference "
                                                      "scores the answers the pairs give"),
    ("sft", ["--fail-if", "pref_acc<0.8"], "--fail-if 'pref_acc<0.8': this run does not measure pref_acc (it needs "
                                           "--task preference); it measures loss, perplexity"),
])
def test_records_and_options_that_do_not_fit_the_task_are_one_error_line(tiny_model_dirs, pairs_file, unpaired_file, monkeypatch, data, args, message):
    loads = count_loads(monkeypatch)
    path = {"sft": SAMPLE_DATA, "unpaired": unpaired_file, "pairs": pairs_file}[data]
    model = str(tiny_model_dirs["llama"])
    result = cli("--model", model, "--data", str(path), *(arg.format(model=model) for arg in args))
    assert one_error_line(result, 2) == "error: " + message.format(data=path)
    assert loads == []


def test_the_human_report_shows_the_metrics_the_reference_and_each_domain(tiny_model_dirs):
    model = str(tiny_model_dirs["bloom"])
    result = cli("--model", model, "--data", str(REPO / "examples" / "preference.jsonl"), "--task", "preference",
                 "--reference", model)
    assert result.exit_code == 0, result.output
    shown = " ".join(result.stdout.split())  # Rich wraps long lines at the console's width
    for part in ("pref_acc", "margin", "policy_pref_acc", "(--reference), beta 0.1 (default)", "Per domain", "安全",
                 "5 pairs, 5 scored"):
        assert part in shown
