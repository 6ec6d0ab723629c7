"""What a `yayi eval --benchmark` run will score, decided and read before any model loads.

The options are checked against the benchmark (its splits, C-Eval's withheld test answers), then every
subject file is read and checked, so bad data stops the run in one line before minutes of loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli.eval.choice.files import BenchmarkFiles, Question, open_benchmark, read_questions
from yayi_cli.eval.choice.subjects import BENCHMARKS, OTHER, Benchmark
from yayi_cli.runtime.errors import UsageError


DEFAULT_SHOTS = 5
DEFAULT_PROTOCOL = "harness"


def check_benchmark_options(options: Any) -> None:
    """Refuse what a benchmark run cannot do, naming what it can (EvalOptions.check_values calls this)."""
    benchmark = BENCHMARKS[options.benchmark]
    conflicting = [flag for flag, used in (("--task", options.task != "lm"), ("--generate", options.generate),
                                           ("--sample", options.sample), ("--max-samples", options.max_samples is not None),
                                           ("--reference", options.reference is not None)) if used]
    if conflicting:
        raise UsageError(f"{conflicting[0]} does not go with --benchmark, which scores multiple-choice questions its own "
                         "way; use --subjects to run fewer")
    if len(options.data) != 1:
        raise UsageError(f"--benchmark reads one --data: the {benchmark.title} folder or zip as downloaded")
    split = options.split or benchmark.default_split
    if split not in benchmark.splits:
        raise UsageError(f"{benchmark.title} has no {split} split to score; it has {' and '.join(benchmark.splits)} "
                         "(dev gives the examples)")
    withheld = split == benchmark.withheld_split
    if withheld and options.submission is None:
        raise UsageError("C-Eval's test answers are withheld, so no accuracy can be computed here: give --submission "
                         "FILE.json to write the predictions for its site, or score --split val")
    if options.submission is not None and not withheld:
        raise UsageError("--submission is for --benchmark ceval --split test, whose answers are withheld")
    if withheld and (options.fail_if or options.baseline is not None):
        raise UsageError("C-Eval's test split has no answers here, so --fail-if and --baseline have nothing to compare")


@dataclass(frozen=True)
class SubjectPlan:
    subject: str
    questions: list[Question]
    shots: list[Question]
    categories: tuple[str, ...]


@dataclass(frozen=True)
class BenchmarkPlan:
    """Everything a benchmark run scores, with how it asks."""

    benchmark: Benchmark
    split: str
    protocol: str
    shots: int
    subjects: list[SubjectPlan]
    files: BenchmarkFiles
    warnings: list[str]

    @property
    def answers_withheld(self) -> bool:
        return self.split == self.benchmark.withheld_split

    def data_entry(self) -> dict[str, str]:
        keys = [(self.split, plan.subject) for plan in self.subjects]
        keys += [("dev", plan.subject) for plan in self.subjects if self.shots]
        return {"path": str(self.files.source), "files_sha256": self.files.fingerprint(keys)}


def plan_benchmark(options: Any) -> BenchmarkPlan:
    """Read and check the subjects' questions and their dev examples."""
    benchmark = BENCHMARKS[options.benchmark]
    split = options.split or benchmark.default_split
    shots = DEFAULT_SHOTS if options.shots is None else options.shots
    files = open_benchmark(Path(options.data[0]), benchmark)
    available = files.subjects(split)
    if not available:
        raise UsageError(f"{files.source}: no {split} files ({split}/...csv); it has "
                         f"{', '.join(sorted({kind for kind, _ in files.paths}))}")
    subjects = _chosen_subjects(options.subjects, available, files.source, split)
    warnings, plans = [], []
    for subject in subjects:
        categories = benchmark.categories_of(subject)
        if categories == (OTHER,) and subject not in benchmark.categories.get(OTHER, ()):
            warnings.append(f"{subject} is not a {benchmark.title} subject; it is counted under {OTHER}")
        plans.append(SubjectPlan(subject, read_questions(files, split, subject, benchmark),
                                 _examples(files, subject, shots, benchmark), categories))
    return BenchmarkPlan(benchmark, split, options.protocol or DEFAULT_PROTOCOL, shots, plans, files, warnings)


def _chosen_subjects(wanted: str | None, available: list[str], source: Path, split: str) -> list[str]:
    if wanted is None:
        return available
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        shown = ", ".join(available[:8]) + (", ..." if len(available) > 8 else "")
        raise UsageError(f"--subjects: {', '.join(unknown) or 'no subject named'} not in {source} ({split}); it has {shown}")
    return list(dict.fromkeys(names))


def _examples(files: BenchmarkFiles, subject: str, shots: int, benchmark: Benchmark) -> list[Question]:
    """The first `shots` dev questions of a subject, as the harness's first_n sampler takes them."""
    if shots == 0:
        return []
    if ("dev", subject) not in files.paths:
        raise UsageError(f"{files.source}: no dev file for {subject}, which --shots {shots} takes examples from; "
                         "add it or use --shots 0")
    examples = read_questions(files, "dev", subject, benchmark)
    if len(examples) < shots:
        raise UsageError(f"{files.location('dev', subject)}: {len(examples)} dev rows, fewer than --shots {shots}; "
                         f"use --shots {len(examples)} or fewer")
    return examples[:shots]
