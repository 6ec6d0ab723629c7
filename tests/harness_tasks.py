"""lm-evaluation-harness run on local benchmark files: the reference `--protocol harness` must equal.

Each task file includes the harness's own subject task (its description, prompt text, choices and
few-shot sampler) and changes only where the documents come from: the local CSVs, every cell read as
text as on the hub. MMLU's headerless rows become the hub's shape (choices list, answer index) first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.benchmark_files import relative_path

HARNESS_TASKS = {"ceval": "ceval/ceval-valid_{}.yaml", "cmmlu": "cmmlu/cmmlu_{}.yaml", "mmlu": "mmlu/default/mmlu_{}.yaml"}
EVALUATED = {"ceval": "val", "cmmlu": "test", "mmlu": "test"}
MMLU_DOCS = '''
def process_docs(dataset):
    # a new column, then renamed: map keeps a column's old (text) type when it keeps its name
    with_choices = dataset.map(lambda row: {"choices": [row["A"], row["B"], row["C"], row["D"]],
                                            "label": "ABCD".index(row["answer"].strip())})
    return with_choices.remove_columns(["A", "B", "C", "D", "answer"]).rename_column("label", "answer")
'''


def write_tasks(folder: Path, benchmark: str, data: Path, subjects: list[str]) -> list[str]:
    """One task file per subject in `folder`; returns the task names."""
    import lm_eval.tasks
    import yaml

    tasks_root = Path(lm_eval.tasks.__file__).parent
    split = EVALUATED[benchmark]
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for subject in subjects:
        files = {kind: str(data / relative_path(benchmark, kind, subject)) for kind in ("dev", split)}
        kwargs: dict[str, Any] = {"data_files": files, "keep_default_na": False}  # empty cells stay ""
        config: dict[str, Any] = {"include": str(tasks_root / HARNESS_TASKS[benchmark].format(subject)),
                                  "task": f"local_{benchmark}_{subject}", "dataset_path": "csv", "dataset_name": None,
                                  "dataset_kwargs": kwargs, "tag": None}
        if benchmark == "mmlu":
            kwargs["column_names"] = ["question", "A", "B", "C", "D", "answer"]
            config["process_docs"] = "!function local_docs.process_docs"
        text = yaml.safe_dump(config, allow_unicode=True).replace("'!function local_docs.process_docs'",
                                                                  "!function local_docs.process_docs")
        (folder / f"local_{benchmark}_{subject}.yaml").write_text(text, encoding="utf-8")
        names.append(config["task"])
    (folder / "local_docs.py").write_text(MMLU_DOCS, encoding="utf-8")
    return names


def harness_results(model: Path, benchmark: str, data: Path, subjects: list[str], tasks: Path, *, shots: int = 5,
                    batch_size: int = 1, max_length: int | None = None) -> dict[str, list[tuple[str, list[float], float]]]:
    """subject -> each question's context, four log-likelihoods and accuracy (0 or 1), in file order, from
    the harness itself."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets.config

    datasets.config.HF_HUB_OFFLINE = True  # the variable is read when datasets is first imported, maybe earlier
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    names = write_tasks(tasks, benchmark, data, subjects)
    model_args = f"pretrained={model},dtype=float32" + (f",max_length={max_length}" if max_length else "")
    results = simple_evaluate(model="hf", model_args=model_args, tasks=names,
                              num_fewshot=shots, batch_size=batch_size, device="cpu", log_samples=True,
                              task_manager=TaskManager(include_path=str(tasks)))
    found = {}
    for subject, name in zip(subjects, names):
        samples = sorted(results["samples"][name], key=lambda sample: sample["doc_id"])
        found[subject] = [(sample["arguments"][0][0], [float(response[0]) for response in sample["filtered_resps"]],
                           sample["acc"]) for sample in samples]
    return found
