"""`yayi eval --benchmark`: the official layouts read as downloaded, the harness's predictions per
question (lm-evaluation-harness itself run on the same files), the two means, gates and bad input."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.benchmark_files import file_text, make_rows, relative_path, write_benchmark, zip_folder
from tests.harness_tasks import HARNESS_TASKS, harness_results
from yayi_cli.cli.app import app
from yayi_cli.core.prompt import HUMAN, Conversation, Turn
from yayi_cli.eval.choice.files import open_benchmark, read_questions
from yayi_cli.eval.choice.plan import plan_benchmark
from yayi_cli.eval.choice.protocols import build_requests, harness_text
from yayi_cli.eval.choice.report import SubjectScore, benchmark_metrics, chosen_letter
from yayi_cli.eval.choice.subjects import BENCHMARKS, CEVAL, CMMLU, MMLU
from yayi_cli.eval.command import evaluate
from yayi_cli.eval.options import EvalOptions
from yayi_cli.models.loading import load_for_task
from yayi_cli.models.tiny import TinySpec, build_tiny
from yayi_cli.runtime.errors import DataError, UsageError


runner = CliRunner()
SUBJECTS = {
    "ceval": {"accountant": 8, "college_physics": 6, "logic": 5},
    "cmmlu": {"agronomy": 7, "ancient_chinese": 6, "arts": 5},
    "mmlu": {"anatomy": 7, "philosophy": 6, "sociology": 5},
}


@pytest.fixture(scope="session")
def benchmark_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("benchmarks")
    for name, subjects in SUBJECTS.items():
        write_benchmark(root / name, name, subjects)
    return {name: root / name for name in SUBJECTS}


@pytest.fixture(scope="session")
def benchmark_models(benchmark_dirs, tmp_path_factory) -> dict[str, Path]:
    """Tiny models whose tokenizers learned the benchmarks' text, so the letters are single tokens as in
    real vocabularies."""
    texts = []
    for name, folder in benchmark_dirs.items():
        plan = plan_benchmark(EvalOptions(model="-", data=[folder], benchmark=name))
        texts += [harness_text(q, s.shots, plan.benchmark) + f" {q.answer}" for s in plan.subjects for q in s.questions]
    root = tmp_path_factory.mktemp("benchmark-models")
    return {arch: build_tiny(root / arch, texts * 2, TinySpec(arch=arch)) for arch in ("llama", "bloom")}


def run(model: Path, name: str, data: Path, tmp_path: Path, **options):
    predictions = tmp_path / f"{name}-predictions.jsonl"
    outcome = evaluate(EvalOptions(model=str(model), data=[data], benchmark=name, device="cpu", predictions=predictions,
                                   force=True, **options))
    return outcome, [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]


# --- the harness's numbers ----------------------------------------------------------------------


@pytest.mark.reference
@pytest.mark.parametrize("name", list(SUBJECTS))
@pytest.mark.parametrize("arch", ["llama", "bloom"])
def test_harness_protocol_predicts_what_lm_evaluation_harness_predicts_per_question(
        name, arch, benchmark_dirs, benchmark_models, tmp_path):
    subjects = list(SUBJECTS[name])
    reference = harness_results(benchmark_models[arch], name, benchmark_dirs[name], subjects, tmp_path / "tasks")
    outcome, lines = run(benchmark_models[arch], name, benchmark_dirs[name], tmp_path, batch_size=3)
    for subject in subjects:
        ours = [line for line in lines if line["subject"] == subject]
        theirs = reference[subject]
        assert [line["id"] for line in ours] == [str(k) for k in range(len(theirs))]
        for line, (_, loglikelihoods, _) in zip(ours, theirs):
            ordered = sorted(loglikelihoods, reverse=True)
            assert ordered[0] - ordered[1] > 1e-4, "a near tie: the comparison needs a clear winner per question"
            assert line["prediction"] == chosen_letter(loglikelihoods)
            assert line["loglikelihoods"] == pytest.approx(loglikelihoods, abs=1e-4)
    plan = plan_benchmark(EvalOptions(model="-", data=[benchmark_dirs[name]], benchmark=name))
    contexts = {subject: [context for context, _, _ in reference[subject]] for subject in subjects}
    assert contexts == {s.subject: [harness_text(q, s.shots, plan.benchmark) for q in s.questions] for s in plan.subjects}
    harness_acc = {subject: sum(acc for _, _, acc in reference[subject]) / len(reference[subject]) for subject in subjects}
    assert {subject: values["accuracy"] for subject, values in outcome.report.groups.items()} == harness_acc
    assert outcome.report.metrics[f"{name}.acc"] == sum(acc for s in subjects for _, _, acc in reference[s]) / len(lines)


@pytest.mark.reference
def test_cut_contexts_are_cut_on_the_left_as_the_harness_cuts_them(benchmark_dirs, benchmark_models, tmp_path):
    subjects = list(SUBJECTS["cmmlu"])
    model = benchmark_models["llama"]
    reference = harness_results(model, "cmmlu", benchmark_dirs["cmmlu"], subjects, tmp_path / "tasks", max_length=96)
    outcome, lines = run(model, "cmmlu", benchmark_dirs["cmmlu"], tmp_path, max_length=96, batch_size=4)
    assert outcome.report.counts["truncated"] == len(lines)
    theirs = [ll for subject in subjects for _, ll, _ in reference[subject]]
    assert [line["prediction"] for line in lines] == [chosen_letter(ll) for ll in theirs]
    assert [line["loglikelihoods"] for line in lines] == [pytest.approx(ll, abs=1e-4) for ll in theirs]


def test_every_subject_has_the_harness_description_and_mmlu_its_categories():
    import lm_eval.tasks
    import yaml

    root = Path(lm_eval.tasks.__file__).parent
    for name, benchmark in BENCHMARKS.items():
        for subject in benchmark.names:
            task = yaml.safe_load((root / HARNESS_TASKS[name].format(subject)).read_text(encoding="utf-8"))
            assert benchmark.description(subject) == task["description"], subject
            if name == "mmlu":
                tag = task["tag"].removeprefix("mmlu_").removesuffix("_tasks").replace("_", " ")
                assert [c.lower() for c in benchmark.categories_of(subject)] == [tag], subject


# --- faster, same numbers -----------------------------------------------------------------------


def full_pass_loglikelihoods(model, request):
    """Each choice scored alone, from a full forward pass of context + choice: the plain definition."""
    import torch

    found = []
    for choice in request.choices:
        ids = torch.tensor([request.context + choice])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
        found.append(sum(logprobs[len(request.context) - 1 + k, token].item() for k, token in enumerate(choice)))
    return found


@pytest.mark.parametrize("protocol", ["harness", "chat"])
def test_one_pass_per_question_and_the_shared_prefix_give_the_full_pass_numbers(protocol, benchmark_dirs, benchmark_models):
    from yayi_cli.eval.choice.scoring import score_requests

    loaded = load_for_task(str(benchmark_models["llama"]), device="cpu")
    plan = plan_benchmark(EvalOptions(model="-", data=[benchmark_dirs["ceval"]], benchmark="ceval"))
    subject = plan.subjects[0]
    requests = build_requests(protocol, subject.questions, subject.shots, CEVAL, loaded.prompt_tokenizer)
    assert all(request.single_token for request in requests)
    expected = [full_pass_loglikelihoods(loaded.model, request) for request in requests]
    for batch_size in (1, 3, 8):
        scores, counts = score_requests(loaded.model, requests, batch_size=batch_size, max_length=1024, padding=0)
        assert counts.prefix_tokens > 0 and counts.one_pass == len(requests)
        assert scores == [pytest.approx(values, abs=1e-4) for values in expected]


def test_choices_of_several_tokens_are_scored_one_pass_each(benchmark_models):
    from yayi_cli.eval.choice.protocols import ChoiceRequest
    from yayi_cli.eval.choice.scoring import score_requests

    loaded = load_for_task(str(benchmark_models["bloom"]), device="cpu")
    encode = loaded.tokenizer.encode
    prefix = encode("以下是关于农学的单项选择题。\n\n")
    requests = [ChoiceRequest(prefix + encode(f"问题{k}：山水？\n答案："), tuple(encode(t) for t in (" 山水", " 光", " 风雨云", " alpha beta")))
                for k in range(4)]
    assert not any(request.single_token for request in requests)
    scores, counts = score_requests(loaded.model, requests, batch_size=3, max_length=1024, padding=0)
    assert counts.per_choice == 4 and counts.prefix_tokens >= len(prefix)
    assert scores == [pytest.approx(full_pass_loglikelihoods(loaded.model, r), abs=1e-4) for r in requests]


def first_cmmlu_question(protocol: str, benchmark_dirs, benchmark_models, shots: int):
    """The first CMMLU question asked of the tiny Llama by `protocol`: the prompt core, its request, and the
    conversation that asks it."""
    loaded = load_for_task(str(benchmark_models["llama"]), device="cpu")
    subject = plan_benchmark(EvalOptions(model="-", data=[benchmark_dirs["cmmlu"]], benchmark="cmmlu", shots=shots)).subjects[0]
    request = build_requests(protocol, subject.questions[:1], subject.shots, CMMLU, loaded.prompt_tokenizer)[0]
    conversation = Conversation((Turn(HUMAN, harness_text(subject.questions[0], subject.shots, CMMLU)),))
    return loaded.prompt_tokenizer, request, conversation


def test_chat_protocol_asks_in_one_human_turn_and_scores_the_first_answer_token(benchmark_dirs, benchmark_models):
    prompts, request, conversation = first_cmmlu_question("chat", benchmark_dirs, benchmark_models, shots=2)
    assert request.context == prompts.encode_inference(conversation)
    answered = prompts.encode_training(Conversation((*conversation.turns, Turn("assistant", "B"))))
    assert answered.input_ids[len(request.context)] == request.choices[1][0]


def test_answer_protocol_scores_the_letter_as_the_whole_trained_answer(benchmark_dirs, benchmark_models):
    prompts, request, conversation = first_cmmlu_question("answer", benchmark_dirs, benchmark_models, shots=1)
    assert request.context == prompts.encode_inference(conversation)
    for letter, choice in zip("ABCD", request.choices):  # the ids that carry loss when training on that answer
        answered = prompts.encode_training(Conversation((*conversation.turns, Turn("assistant", letter))))
        assert request.context + choice == answered.input_ids
        assert choice == [label for label in answered.labels if label != -100]


# --- the report ---------------------------------------------------------------------------------


def test_the_two_means_differ_where_subjects_differ_in_size_and_categories_overlap():
    scores = [SubjectScore("college_physics", CEVAL.categories_of("college_physics"), 1, 1),
              SubjectScore("computer_network", CEVAL.categories_of("computer_network"), 1, 3),
              SubjectScore("logic", CEVAL.categories_of("logic"), 0, 4)]
    found = benchmark_metrics(CEVAL, scores)
    assert found["ceval.avg"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert found["ceval.acc"] == pytest.approx(2 / 8)
    assert found["ceval.stem.avg"] == pytest.approx((1 + 1 / 3) / 2) and found["ceval.stem.acc"] == pytest.approx(2 / 4)
    assert found["ceval.hard.avg"] == 1.0 and found["ceval.hard.acc"] == 1.0
    assert found["ceval.humanities.acc"] == 0.0
    assert found["ceval.social_science.avg"] is None and found["ceval.other.acc"] is None
    assert CMMLU.categories_of("ancient_chinese") == ("Social Science", "China specific")
    assert MMLU.categories_of("sociology") == ("Social Sciences",)


def test_a_model_trained_on_a_subject_scores_far_above_an_untrained_one(tmp_path):
    import torch

    data = tmp_path / "cmmlu"
    write_benchmark(data, "cmmlu", {"agronomy": 16})
    plan = plan_benchmark(EvalOptions(model="-", data=[data], benchmark="cmmlu", shots=1))
    subject = plan.subjects[0]
    texts = [harness_text(q, subject.shots, CMMLU) + f" {q.answer}" for q in subject.questions]
    model_dir = build_tiny(tmp_path / "model", texts * 4, TinySpec(arch="llama"))
    untrained, _ = run(model_dir, "cmmlu", data, tmp_path, shots=1)
    loaded = load_for_task(str(model_dir), device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    model.train()
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for _ in range(120):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    model.save_pretrained(model_dir)
    trained, _ = run(model_dir, "cmmlu", data, tmp_path, shots=1)
    assert untrained.report.metrics["cmmlu.acc"] <= 0.5
    assert trained.report.metrics["cmmlu.acc"] >= 0.9


# --- layouts, archives and the C-Eval submission ------------------------------------------------


def test_zip_with_a_top_folder_and_mmlu_tar_read_like_the_folders(benchmark_dirs, tmp_path):
    for name, top in (("ceval", ""), ("cmmlu", "cmmlu_v1_0_1/")):
        archive = zip_folder(benchmark_dirs[name], tmp_path / f"{name}.zip", top=top)
        folder_plan = plan_benchmark(EvalOptions(model="-", data=[benchmark_dirs[name]], benchmark=name))
        zip_plan = plan_benchmark(EvalOptions(model="-", data=[archive], benchmark=name))
        assert [(s.subject, [q.question for q in s.questions], [q.options for q in s.shots]) for s in zip_plan.subjects] == \
            [(s.subject, [q.question for q in s.questions], [q.options for q in s.shots]) for s in folder_plan.subjects]
        assert zip_plan.subjects[0].questions[0].location.startswith(f"{archive}:{top}")
    with tarfile.open(tmp_path / "data.tar", "w") as tar:
        tar.add(benchmark_dirs["mmlu"], arcname="data")
    plan = plan_benchmark(EvalOptions(model="-", data=[tmp_path / "data.tar"], benchmark="mmlu", subjects="sociology,anatomy"))
    assert [s.subject for s in plan.subjects] == ["sociology", "anatomy"]
    assert len(plan.subjects[1].questions) == SUBJECTS["mmlu"]["anatomy"] and len(plan.subjects[1].shots) == 5


def test_ceval_test_split_writes_the_submission_file_its_site_takes(benchmark_models, tmp_path):
    data = tmp_path / "ceval"
    rows = write_benchmark(data, "ceval", {"accountant": 5, "logic": 3}, split="test", withheld=True)
    submission = tmp_path / "submission.json"
    result = runner.invoke(app, ["eval", "--model", str(benchmark_models["llama"]), "--benchmark", "ceval", "--data", str(data),
                                 "--split", "test", "--submission", str(submission), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    written = json.loads(submission.read_text(encoding="utf-8"))
    assert list(written) == ["accountant", "logic"]
    assert {subject: list(answers) for subject, answers in written.items()} == \
        {subject: [str(k) for k in range(len(split["test"]))] for subject, split in rows.items()}
    assert all(letter in "ABCD" and len(letter) == 1 for answers in written.values() for letter in answers.values())
    assert "no accuracy" in " ".join(result.output.split())


# --- gates --------------------------------------------------------------------------------------


def test_gates_and_baselines_work_on_benchmark_metrics(benchmark_dirs, benchmark_models, tmp_path):
    base = ["eval", "--model", str(benchmark_models["llama"]), "--benchmark", "mmlu", "--data", str(benchmark_dirs["mmlu"]),
            "--device", "cpu", "--shots", "2"]
    report = tmp_path / "report.json"
    assert runner.invoke(app, [*base, "-o", str(report)]).exit_code == 0
    metrics = json.loads(report.read_text(encoding="utf-8"))["metrics"]
    failing = runner.invoke(app, [*base, "--fail-if", f"mmlu.avg<{metrics['mmlu.avg'] + 0.01}"])
    assert failing.exit_code == 1 and "mmlu.avg" in failing.output
    assert runner.invoke(app, [*base, "--fail-if", f"mmlu.stem.acc<{metrics['mmlu.stem.acc'] - 0.01}"]).exit_code == 0
    refused = runner.invoke(app, [*base, "--fail-if", "ceval.avg<0.4"])
    assert refused.exit_code == 2 and "does not measure ceval.avg" in refused.output
    worse = json.loads(report.read_text(encoding="utf-8"))
    worse["metrics"]["mmlu.humanities.acc"] = metrics["mmlu.humanities.acc"] + 0.5
    (tmp_path / "better.json").write_text(json.dumps(worse), encoding="utf-8")
    regressed = runner.invoke(app, [*base, "--baseline", str(tmp_path / "better.json"), "--max-regression", "1"])
    assert regressed.exit_code == 1 and "mmlu.humanities.acc" in regressed.output
    assert "mmlu.stem.acc" not in " ".join(line for line in regressed.output.splitlines() if "worse" in line)


# --- bad input ----------------------------------------------------------------------------------


def one_line_error(arguments, code):
    result = runner.invoke(app, arguments)
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    return " ".join(result.output.split())


@pytest.fixture
def cmmlu_copy(tmp_path):
    write_benchmark(tmp_path / "cmmlu", "cmmlu", {"agronomy": 4, "arts": 4})
    return tmp_path / "cmmlu"


def bench_args(data, name="cmmlu", *extra):
    return ["eval", "--model", "tiny-unused", "--benchmark", name, "--data", str(data), *extra]


def test_bad_benchmark_input_gets_one_line_and_the_right_exit_code(cmmlu_copy, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no CMMLU subject files; expected {dev,test}/{subject}.csv" in one_line_error(bench_args(tmp_path / "empty"), 2)
    agronomy = cmmlu_copy / "test" / "agronomy.csv"
    original = agronomy.read_text(encoding="utf-8")
    agronomy.write_text(original.replace(",Question,", ",Query,", 1), encoding="utf-8")
    assert "are not CMMLU's; it needs Question,A,B,C,D,Answer (missing Question)" in one_line_error(bench_args(cmmlu_copy), 2)
    lines = original.splitlines()
    lines[2] = lines[2][: lines[2].rindex(",")] + ",E"
    agronomy.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert f"{agronomy}:3: answer 'E' is not one of A, B, C, D" in one_line_error(bench_args(cmmlu_copy), 1)
    agronomy.write_text(original, encoding="utf-8")
    assert "agronomy.csv: 5 dev rows, fewer than --shots 6; use --shots 5 or fewer" in \
        one_line_error(bench_args(cmmlu_copy, "cmmlu", "--shots", "6"), 2)
    assert "CMMLU has no val split to score; it has test" in one_line_error(bench_args(cmmlu_copy, "cmmlu", "--split", "val"), 2)
    assert "--subjects: physics not in" in one_line_error(bench_args(cmmlu_copy, "cmmlu", "--subjects", "physics"), 2)
    assert "no C-Eval subject files; expected {dev,val,test}/{subject}_{split}.csv" in one_line_error(bench_args(cmmlu_copy, "ceval"), 2)


def test_options_that_need_a_benchmark_or_conflict_with_one_are_refused(cmmlu_copy, tmp_path):
    assert "--shots is for --benchmark" in one_line_error(["eval", "--model", "m", "--data", str(cmmlu_copy), "--shots", "2"], 2)
    assert "--generate does not go with --benchmark" in one_line_error(bench_args(cmmlu_copy, "cmmlu", "--generate"), 2)
    assert "C-Eval's test answers are withheld" in one_line_error(bench_args(cmmlu_copy, "ceval", "--split", "test"), 2)
    assert "--submission is for --benchmark ceval --split test" in \
        one_line_error(bench_args(cmmlu_copy, "cmmlu", "--submission", str(tmp_path / "s.json")), 2)


def test_a_subject_outside_the_category_map_counts_under_other_with_a_warning(tmp_path):
    data = tmp_path / "mmlu"
    write_benchmark(data, "mmlu", {"anatomy": 3, "klingon_poetry": 3})
    plan = plan_benchmark(EvalOptions(model="-", data=[data], benchmark="mmlu"))
    assert plan.warnings == ["klingon_poetry is not a MMLU subject; it is counted under Other"]
    assert [s.categories for s in plan.subjects] == [("STEM",), ("Other",)]


def test_cells_are_read_as_written(tmp_path):
    rows = make_rows("agronomy", 2, 0)
    path = tmp_path / relative_path("mmlu", "test", "anatomy")
    path.parent.mkdir(parents=True)
    path.write_text(file_text("mmlu", "test", rows).replace(rows[0].options[0], "0.50", 1).replace(rows[1].options[1], "", 1),
                    encoding="utf-8")
    questions = read_questions(open_benchmark(tmp_path, MMLU), "test", "anatomy", MMLU)
    assert questions[0].options[0] == "0.50" and questions[1].options[1] == ""
    with pytest.raises(DataError):
        path.write_text("q,a,b,c,d,\n", encoding="utf-8")
        read_questions(open_benchmark(tmp_path, MMLU), "test", "anatomy", MMLU)
    with pytest.raises(UsageError, match="6 fields|5 fields"):
        path.write_text("q,a,b,c,d\n", encoding="utf-8")
        read_questions(open_benchmark(tmp_path, MMLU), "test", "anatomy", MMLU)


# --- the models the rest of yayi eval takes -----------------------------------------------------


def test_an_adapter_is_scored_as_its_merged_model_and_int8_runs_the_same_path(benchmark_dirs, benchmark_models, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from yayi_cli.core.prompt import TEMPLATES, save_template
    from yayi_cli.models.weights import peft_quietly

    base = benchmark_models["llama"]
    with peft_quietly():
        adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
            r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False))
    adapter = tmp_path / "adapter"
    adapted.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    save_template(adapter, TEMPLATES["yayi"])
    _, lines = run(adapter, "ceval", benchmark_dirs["ceval"], tmp_path, subjects="logic", shots=2)
    merged = adapted.merge_and_unload().eval()
    loaded = load_for_task(str(base), device="cpu")
    plan = plan_benchmark(EvalOptions(model="-", data=[benchmark_dirs["ceval"]], benchmark="ceval", subjects="logic", shots=2))
    requests = build_requests("harness", plan.subjects[0].questions, plan.subjects[0].shots, CEVAL, loaded.prompt_tokenizer)
    assert [line["loglikelihoods"] for line in lines] == [pytest.approx(full_pass_loglikelihoods(merged, r), abs=1e-4)
                                                          for r in requests]
    full, full_lines = run(base, "ceval", benchmark_dirs["ceval"], tmp_path, subjects="logic", shots=2)
    int8, int8_lines = run(base, "ceval", benchmark_dirs["ceval"], tmp_path, subjects="logic", shots=2, load_in_8bit=True)
    assert int8.report.to_json()["options"]["load_in_8bit"] is True and len(int8_lines) == len(full_lines)
    for ours, reference in zip(int8_lines, full_lines):
        assert ours["loglikelihoods"] != reference["loglikelihoods"]
        assert ours["loglikelihoods"] == pytest.approx(reference["loglikelihoods"], abs=0.5)
