"""`yayi eval`: the loss it reports is the loss plain transformers computes on the same masks,
generation goes through the prompt core, choice accuracy and CI gates behave."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from tests.helpers import SAMPLE_DATA, load_for_scoring, plain_transformers_loss
from yayi_cli.cli.app import app
from yayi_cli.core.record_files import load_records
from yayi_cli.eval.gates import Gate, baseline_metrics, planned_metrics, regressions
from yayi_cli.eval.options import EvalOptions
from yayi_cli.models.inference import generate_answers, response_loss, split_last_answer
from yayi_cli.runtime.errors import DataError, UsageError


runner = CliRunner()
MULTI_TURN = [
    {"conversations": [{"from": "human", "value": "你好"}, {"from": "yayi", "value": "你好！"}, {"from": "human", "value": "你是谁？"}, {"from": "yayi", "value": "我是雅意。"}]},
    {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
]


@pytest.fixture
def multi_turn_file(tmp_path):
    path = tmp_path / "multi.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in MULTI_TURN), encoding="utf-8")
    return path


def test_reported_loss_equals_plain_transformers_on_the_same_masks(tiny_model_dirs, arch, multi_turn_file):
    model, prompt_tokenizer = load_for_scoring(tiny_model_dirs[arch])
    examples = load_records([SAMPLE_DATA, multi_turn_file])
    expected = plain_transformers_loss(model, prompt_tokenizer, [e.conversation for e in examples])
    for batch_size in (1, 8):
        result = response_loss(model, prompt_tokenizer, examples, batch_size=batch_size)
        assert result.overall.loss == pytest.approx(expected, abs=1e-5)
    multi = [e for e in examples if e.location.startswith(str(multi_turn_file))]
    multi_loss = response_loss(model, prompt_tokenizer, multi, batch_size=2).overall.loss
    assert multi_loss == pytest.approx(plain_transformers_loss(model, prompt_tokenizer, [e.conversation for e in multi]), abs=1e-5)


def test_losses_per_domain_add_up_to_the_whole(tiny_model_dirs):
    model, prompt_tokenizer = load_for_scoring(tiny_model_dirs["bloom"])
    records = load_records([SAMPLE_DATA])
    result = response_loss(model, prompt_tokenizer, records, batch_size=4)
    assert set(result.groups) == {record.domain for record in records}  # the five YaYi domains and "no domain"
    assert sum(g.tokens for g in result.groups.values()) == result.overall.tokens
    assert sum(g.nll for g in result.groups.values()) == pytest.approx(result.overall.nll)


MARGIN = 3.0
"""Logit lead of every answer token over its runner-up before a test relies on greedy decoding.

Float noise between CPUs, library versions and left padding moves logits by well under 0.01, so a
lead of 3 keeps every greedy choice the same wherever the suite runs."""


def answer_margin(model, batch) -> float:
    """The smallest lead of the right token over the best wrong one, over every answer position."""
    import torch

    margins = []
    with torch.inference_mode():
        for encoded in batch:
            logits = model(input_ids=torch.tensor([encoded.input_ids])).logits[0, :-1]
            targets = torch.tensor(encoded.labels[1:])
            scored = logits[targets != -100]
            right = targets[targets != -100]
            chosen = scored.gather(1, right[:, None])[:, 0]
            others = scored.scatter(1, right[:, None], float("-inf")).max(dim=1).values
            margins.append((chosen - others).min().item())
    return min(margins)


def overfit(source_dir, target_dir, conversations, max_steps=600):
    """Teach a tiny model these exact answers with a bare PyTorch loop until every answer token leads
    by MARGIN (checked every 25 steps), and save it; fail loudly if it never gets there."""
    import torch

    shutil.copytree(source_dir, target_dir)
    model, prompt_tokenizer = load_for_scoring(target_dir)
    batch = prompt_tokenizer.encode_training_batch(conversations)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    margin = float("-inf")
    for step in range(1, max_steps + 1):
        model.train()
        for encoded in batch:
            model(input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 25 == 0:
            margin = answer_margin(model.eval(), batch)
            if margin >= MARGIN:
                break
    assert margin >= MARGIN, f"the tiny model did not learn the answers in {max_steps} steps (margin {margin:.2f})"
    model.save_pretrained(target_dir)
    return target_dir


def test_generation_through_the_prompt_core_reproduces_learned_answers(tiny_model_dirs, multi_turn_file, tmp_path):
    examples = load_records([multi_turn_file])
    trained = overfit(tiny_model_dirs["llama"], tmp_path / "trained", [e.conversation for e in examples])
    model, prompt_tokenizer = load_for_scoring(trained)
    questions, references = zip(*(split_last_answer(e.conversation) for e in examples))
    for batch_size in (1, 2):  # left padding must not change the answers
        answers = generate_answers(model, prompt_tokenizer, questions, batch_size=batch_size, max_new_tokens=20)
        assert answers == list(references) == ["我是雅意。", "4"]


CHOICE_ROWS = [("math", "1+1=?", ("1", "2", "3", "4"), "B"), ("math", "2+2=?", ("4", "5", "6", "7"), "A"),
               ("geo", "中国的首都是？", ("上海", "广州", "深圳", "北京"), "D")]


def choice_file(path):
    """CHOICE_ROWS as --task choice reads them: JSON lines with a subject."""
    rows = [{"subject": subject, "question": question, **dict(zip("ABCD", options)), "answer": answer}
            for subject, question, options, answer in CHOICE_ROWS]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def asked(question: str, options, answer: str):
    """A question as --task choice asks it, answered: the question, the options, 答案：, then the letter."""
    from yayi_cli.core.prompt import ASSISTANT, HUMAN, Conversation, Turn

    text = question + "".join(f"\n{letter}. {option}" for letter, option in zip("ABCD", options)) + "\n答案："
    return Conversation((Turn(HUMAN, text), Turn(ASSISTANT, answer)))


def test_every_protocol_picks_the_letters_the_model_learned(tiny_model_dirs, tmp_path):
    trained = overfit(tiny_model_dirs["llama"], tmp_path / "trained", [asked(q, o, a) for _, q, o, a in CHOICE_ROWS])
    data = choice_file(tmp_path / "choice.jsonl")
    for protocol in ("answer", "chat"):  # the letter as the whole answer, and as its first token
        predictions = tmp_path / f"{protocol}.jsonl"
        result = cli("--model", str(trained), "--data", str(data), "--task", "choice", "--protocol", protocol,
                     "--predictions", str(predictions), "--json")
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        assert document["metrics"] == {"accuracy": 1.0}
        assert document["groups"] == {"geo": {"accuracy": 1.0, "items": 1}, "math": {"accuracy": 1.0, "items": 2}}
        lines = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
        assert [line["prediction"] for line in lines] == ["B", "A", "D"] and all(line["correct"] for line in lines)


def test_the_answer_protocol_scores_each_letter_as_the_answer_loss_does(tiny_model_dirs, arch, tmp_path):
    """Choice scoring (the benchmarks' scorer) and `yayi eval`'s answer loss are two paths to one number."""
    from yayi_cli.core.records import Record
    from yayi_cli.eval.choice.files import read_choice_files
    from yayi_cli.eval.choice.task import choice_scores
    from yayi_cli.models.loading import load_for_task

    loaded = load_for_task(str(tiny_model_dirs[arch]), device="cpu")
    lines = choice_scores(loaded, read_choice_files([choice_file(tmp_path / "choice.jsonl")]), "answer", batch_size=4,
                          max_length=None)
    for line, (_, question, options, _) in zip(lines, CHOICE_ROWS):
        for letter, loglikelihood in zip("ABCD", line["loglikelihoods"]):
            record = Record("t:1", "", asked(question, options, letter), (), None)
            loss = response_loss(loaded.model, loaded.prompt_tokenizer, [record], batch_size=1).overall
            assert loglikelihood == pytest.approx(-loss.nll, rel=1e-5)


@pytest.mark.parametrize(
    "text, metrics, failed",
    [
        ("ppl>12.5", {"perplexity": 13.0}, True),
        ("ppl>12.5", {"perplexity": 12.0}, False),
        ("rouge_l < 0.3", {"rouge_l": 0.29}, True),
        ("accuracy>=0.5", {"accuracy": 0.4}, False),
    ],
)
def test_gates(text, metrics, failed):
    assert (Gate.parse(text).fails(metrics) is not None) == failed


def test_bad_gates_are_usage_errors():
    with pytest.raises(UsageError, match="write METRIC OP NUMBER"):
        Gate.parse("ppl is high")
    with pytest.raises(UsageError, match="unknown metric 'perplexty'; known: loss, perplexity \\(ppl\\), .*accuracy \\(acc\\)"):
        Gate.parse("perplexty>3")


def test_a_gate_on_a_metric_the_run_did_not_report_fails():
    assert "undefined" in Gate.parse("acc<0.5").fails({"loss": 1.0})


@pytest.mark.parametrize(
    "gate, options, message",
    [
        ("perplexty>3", [], "unknown metric 'perplexty'; known: loss, perplexity (ppl), exact_match (em)"),
        ("rouge<0.3", [], "this run does not measure rouge_l (it needs --generate); it measures loss, perplexity"),
        ("acc<0.5", ["--generate"], "this run does not measure accuracy (it needs --task choice)"),
    ],
)
def test_a_fail_if_metric_the_run_cannot_measure_is_refused_before_the_model_loads(tiny_model_dirs, monkeypatch, gate, options, message):
    runs = []
    monkeypatch.setattr("yayi_cli.eval.command.run_eval", runs.append)
    result = cli("--model", str(tiny_model_dirs["llama"]), "--data", str(SAMPLE_DATA), *options, "--fail-if", gate)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: --fail-if {gate!r}: {message}")
    assert len(result.stderr.strip().splitlines()) == 1 and runs == []


def test_regressions_follow_each_metrics_direction():
    baseline = {"loss": 2.0, "perplexity": 7.39, "rouge_l": 0.5}
    assert regressions({"loss": 2.02, "perplexity": 7.4, "rouge_l": 0.49}, baseline, 2.5) == []
    failures = regressions({"loss": 2.2, "perplexity": 7.0, "rouge_l": 0.4}, baseline, 5)
    assert [f.split(" ")[0] for f in failures] == ["loss", "rouge_l"]


def test_a_baseline_metric_this_run_did_not_measure_is_a_regression():
    failures = regressions({"loss": 2.0, "perplexity": 7.39}, {"loss": 2.0, "perplexity": 7.39, "rouge_l": 0.5, "bleu4": None}, 5)
    assert [f.split(" ")[0] for f in failures] == ["rouge_l", "bleu4"]
    assert "not measured by this run" in failures[0]


def test_a_zero_baseline_still_gates_in_each_direction():
    failures = regressions({"loss": 0.1, "exact_match": 0.2}, {"loss": 0.0, "exact_match": 0.0}, 50)
    assert [f.split(" ")[0] for f in failures] == ["loss"]  # loss rose from 0; exact match cannot fall below 0


@pytest.mark.parametrize("value", ["NaN", "true", '"2.0"', "Infinity"])
def test_a_baseline_whose_metrics_are_not_numbers_is_refused(tmp_path, value):
    path = tmp_path / "report.json"
    path.write_text('{"metrics": {"loss": %s}}' % value, encoding="utf-8")
    with pytest.raises(UsageError, match="metric 'loss' is .*not a finite number or null"):
        baseline_metrics(path)


def test_invalid_data_stops_the_run_as_validate_reports_it(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "q", "output": "a"}\n{"instruction": "q"}\n')
    with pytest.raises(DataError, match=rf"1 invalid record\(s\), the first at {path}:2: error: field 'output' is missing"):
        load_records([path])


def cli(*args):
    return runner.invoke(app, ["eval", *args], prog_name="yayi")


def test_cli_report_baseline_and_gate_exit_codes(tiny_model_dirs, tmp_path):
    model = str(tiny_model_dirs["bloom"])
    report = tmp_path / "report.json"
    first = cli("--model", model, "--data", str(SAMPLE_DATA), "--output", str(report), "--fail-if", "ppl>1e9")
    assert first.exit_code == 0, first.output
    document = json.loads(report.read_text())
    assert document["gate"] == {"passed": True, "failures": []}
    assert document["counts"]["records"] == 20 and document["data"][0]["sha256"]
    perplexity = document["metrics"]["perplexity"]

    failing = cli("--model", model, "--data", str(SAMPLE_DATA), "--fail-if", f"ppl>{perplexity / 2}", "--json")
    assert failing.exit_code == 1
    assert json.loads(failing.stdout)["gate"]["failures"] == [f"perplexity = {perplexity:.6g}, which is > {perplexity / 2:g}"]

    same = cli("--model", model, "--data", str(SAMPLE_DATA), "--baseline", str(report), "--max-regression", "0.1")
    assert same.exit_code == 0 and "baseline" in same.stdout
    assert cli("--model", model, "--data", str(SAMPLE_DATA), "--output", str(report)).exit_code == 2
    assert cli("--model", model, "--data", str(SAMPLE_DATA), "--max-regression", "1").exit_code == 2
    assert cli("--model", model, "--data", str(SAMPLE_DATA), "--fail-if", "nonsense").exit_code == 2
    (tmp_path / "broken.json").write_text("{}")
    broken = cli("--model", model, "--data", str(SAMPLE_DATA), "--baseline", str(tmp_path / "broken.json"))
    assert broken.exit_code == 2 and "not a yayi eval report" in broken.stderr
    missing = cli("--model", str(tmp_path / "none"), "--data", str(SAMPLE_DATA))
    assert missing.exit_code == 2 and "no such model directory" in missing.stderr


def test_cli_max_regression_fails_when_the_run_lacks_a_metric_of_the_baseline(tiny_model_dirs, tmp_path):
    baseline = tmp_path / "generated.json"  # as `--generate` writes it; far worse loss, so only rouge_l can fail
    baseline.write_text(json.dumps({"metrics": {"loss": 100.0, "perplexity": 1e30, "rouge_l": 0.2}}), encoding="utf-8")
    result = cli("--model", str(tiny_model_dirs["llama"]), "--data", str(SAMPLE_DATA), "--max-samples", "2",
                 "--baseline", str(baseline), "--max-regression", "5", "--json")
    assert result.exit_code == 1, result.output
    [failure] = json.loads(result.stdout)["gate"]["failures"]
    assert failure.startswith("rouge_l ") and "gate failed: rouge_l" in result.stderr


def test_cli_generate_writes_predictions_and_choice_reads_ceval_csv(tiny_model_dirs, tmp_path):
    model = str(tiny_model_dirs["llama"])
    predictions = tmp_path / "predictions.jsonl"
    result = cli("--model", model, "--data", str(SAMPLE_DATA), "--max-samples", "3", "--generate", "--max-new-tokens", "4", "--predictions", str(predictions), "--json")
    assert result.exit_code == 0, result.output
    assert tuple(json.loads(result.stdout)["metrics"]) == ("loss", "perplexity", "exact_match", "rouge_l", "bleu4")
    assert planned_metrics(EvalOptions(model, [SAMPLE_DATA], generate=True)) == ("loss", "perplexity", "exact_match", "rouge_l", "bleu4")
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 3 and {"location", "reference", "prediction", "exact_match", "rouge_l"} <= set(rows[0])

    csv_file = tmp_path / "computer_network_val.csv"
    csv_file.write_text("id,question,A,B,C,D,answer,explanation\n0,1+1=?,1,2,3,4,B,\n1,2+2=?,4,5,6,7,a,\n", encoding="utf-8")
    choice = cli("--model", model, "--data", str(csv_file), "--task", "choice", "--json")
    assert choice.exit_code == 0, choice.output
    document = json.loads(choice.stdout)
    assert list(document["groups"]) == ["computer_network"] and document["counts"] == {"items": 2}
    assert document["options"]["protocol"] == "answer"  # the default, named in the report
    assert tuple(document["metrics"]) == planned_metrics(EvalOptions(model, [csv_file], task="choice")) == ("accuracy",)
    bad = tmp_path / "bad.csv"
    bad.write_text("question,A,B,C,D,answer\nq,1,2,3,4,E\n", encoding="utf-8")
    refused = cli("--model", model, "--data", str(bad), "--task", "choice")
    assert refused.exit_code == 1 and f"{bad}:2: answer 'E' is not one of A, B, C, D" in refused.stderr


def test_a_baseline_is_compared_group_by_group_as_bars_in_the_json_and_in_a_picture(tiny_model_dirs, tmp_path):
    model = str(tiny_model_dirs["llama"])
    baseline = tmp_path / "baseline.json"
    assert cli("--model", model, "--data", str(SAMPLE_DATA), "--output", str(baseline)).exit_code == 0
    groups = json.loads(baseline.read_text())["groups"]
    picture = tmp_path / "compare.png"
    result = cli("--model", model, "--data", str(SAMPLE_DATA), "--baseline", str(baseline), "--plot", str(picture), "--json")
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.stdout)["comparison"]
    assert comparison["metric"] == "loss"
    assert [row["group"] for row in comparison["groups"]] == list(groups)
    assert all(row["baseline"] == row["value"] == groups[row["group"]]["loss"] for row in comparison["groups"])
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = cli("--model", model, "--data", str(SAMPLE_DATA), "--baseline", str(baseline))
    assert "loss per group, against the baseline" in shown.stdout and "━" in shown.stdout
    assert cli("--model", model, "--data", str(SAMPLE_DATA), "--plot", str(tmp_path / "x.png")).exit_code == 2


def test_groups_are_compared_on_accuracy_where_both_have_it_and_only_where_both_have_the_group():
    from yayi_cli.eval.comparison import compare_groups

    compared = compare_groups({"math": {"accuracy": 0.5, "loss": 1.0}, "law": {"accuracy": 0.25}},
                              {"math": {"accuracy": 0.4, "loss": 2.0}, "art": {"accuracy": 1.0}})
    assert (compared.metric, compared.rows) == ("accuracy", [("math", 0.4, 0.5)])
    assert compare_groups({"a": {"tokens": 3}}, {"a": {"tokens": 3}}) is None
