"""What `yayi eval` is asked to do, as data (each field declares its flags, help and checks: options/fields.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from yayi_cli.options.fields import CommandOptions, complete_directories, option
from yayi_cli.options.shared import (
    base_option,
    device_option,
    dtype_option,
    force_option,
    load_in_8bit_option,
    model_option,
    template_option,
    trust_remote_code_option,
)
from yayi_cli.runtime.errors import UsageError


CHOICE_PROTOCOLS = ("harness", "chat", "answer")
"""The ways a multiple-choice question is put to the model (choice/protocols.py builds each)."""


@dataclass
class EvalOptions(CommandOptions):
    """Everything `yayi eval` is asked to do, resolved in one place."""

    COMMAND = "eval"
    CONFIG_FILE = True

    model: str = model_option()
    data: list[Path] = option("--data", "-d", metavar="FILE", required=True, help="Held-out data (repeat for several files); with --benchmark, its folder or zip.")
    task: str = option("--task", default="lm", choices=("lm", "choice", "preference", "reward"), help=(
        "lm: answer loss and generation; choice: multiple-choice accuracy (CSV question,A,B,C,D,answer or JSON lines); "
        "preference: how often held-out chosen answers out-reward rejected ones (DPO's implicit reward); reward: the "
        "--reward functions' mean score of the model's answers to prompt records."))
    reward: list[str] = option("--reward", default_factory=list, metavar="NAME|FILE.py:FUNCTION[@WEIGHT]", help=(
        "With --task reward: a reward as yayi train --method grpo names it (repeat for several)."))
    benchmark: str | None = option("--benchmark", default=None, choices=("ceval", "cmmlu", "mmlu"), help=(
        "Run a standard benchmark from its files as downloaded: --data is its folder or zip; accuracy per subject, "
        "category and overall."))
    protocol: str | None = option("--protocol", default=None, choices=CHOICE_PROTOCOLS, help=(
        "How a multiple-choice question is asked (--benchmark, --task choice): harness as lm-evaluation-harness does; "
        "chat puts the same text in one turn of the model's template and scores the letter as the answer's first "
        "token; answer scores the letter as the whole answer, <|End|> included [default: harness with --benchmark, "
        "answer with --task choice]."))
    split: str | None = option("--split", default=None, choices=("val", "test"), help=(
        "With --benchmark: the split to score [default: the harness's: val for C-Eval, test for CMMLU and MMLU]."))
    subjects: str | None = option("--subjects", default=None, metavar="A,B,...",
                                  help="With --benchmark: only these subjects (comma-separated file names).")
    shots: int | None = option("--shots", default=None, at_least=0, metavar="K",
                               help="With --benchmark: examples before each question, the first K of dev [default: 5].")
    submission: Path | None = option("--submission", default=None, metavar="FILE.json", help=(
        "With --benchmark ceval --split test: write the predictions in the file C-Eval's site takes."))
    reference: str | None = option("--reference", default=None, metavar="DIR|HUB_ID", complete=complete_directories,
                                   help="With --task preference: the model rewards are measured against [default: the "
                                        "model it was trained from, in its run.json, else an adapter's base].")
    generate: bool = option("--generate", default=False,
                            help="Also generate each last answer and score it (exact match, ROUGE-L, BLEU-4).")
    sample: bool = option("--sample", default=False, help="Sample instead of greedy decoding with --generate.")
    max_new_tokens: int = option("--max-new-tokens", default=256, at_least=1, metavar="N", help="Longest generated answer.")
    batch_size: int = option("--batch-size", default=8, at_least=1, metavar="N", help="Records per forward pass.")
    max_samples: int | None = option("--max-samples", default=None, at_least=1, metavar="N",
                                     help="Evaluate a seeded sample of this many records.")
    max_length: int | None = option("--max-length", default=None, at_least=1, metavar="TOKENS",
                                    help="Truncate longer sequences (default: the model's context).")
    seed: int = option("--seed", default=0, help="Seed of --max-samples and of --sample.")
    device: str = device_option()
    dtype: str = dtype_option()
    load_in_8bit: bool = load_in_8bit_option()
    template: str | None = template_option()
    trust_remote_code: bool = trust_remote_code_option()
    output: Path | None = option("--output", "-o", default=None, metavar="REPORT.json", help="Write the JSON report here.")
    predictions: Path | None = option("--predictions", default=None, metavar="FILE.jsonl",
                                      help="Write each prediction with its reference and scores.")
    baseline: Path | None = option("--baseline", default=None, metavar="REPORT.json",
                                   help="A previous report: print changes against it.")
    fail_if: list[str] = option("--fail-if", default_factory=list, metavar="EXPR",
                                help='Exit 1 when it holds, e.g. "ppl>12.5" (repeatable).')
    max_regression: float | None = option("--max-regression", default=None, at_least=0, metavar="PCT",
                                          help="With --baseline: exit 1 when a metric is more than PCT% worse.")
    plot: Path | None = option("--plot", default=None, metavar="FILE.png|FILE.svg",
                               help="With --baseline: draw each group's metric against the baseline's.")
    force: bool = force_option("Replace existing --output, --predictions or --plot files.")
    base: str | None = base_option()

    def check_values(self) -> None:
        super().check_values()
        if self.max_regression is not None and self.baseline is None:
            raise UsageError("--max-regression needs --baseline REPORT.json")
        if self.plot is not None and self.baseline is None:
            raise UsageError("--plot draws the comparison with a baseline: give --baseline REPORT.json")
        if self.plot is not None and Path(self.plot).suffix.lower() not in (".png", ".svg"):
            raise UsageError(f"--plot {self.plot}: name a .png or .svg file")
        if self.reference is not None and self.task != "preference":
            raise UsageError("--reference is for --task preference")
        if self.generate and self.task == "preference":
            raise UsageError("--generate answers SFT records' last question; --task preference scores the answers the pairs give")
        if (self.task == "reward") != bool(self.reward):
            raise UsageError("--task reward scores answers with --reward (repeat for several); --reward needs --task reward")
        if self.protocol is not None and self.benchmark is None and self.task != "choice":
            raise UsageError("--protocol is for multiple choice: --task choice or --benchmark ceval|cmmlu|mmlu")
        if self.benchmark is None:
            given = [flag for flag, value in (("--split", self.split), ("--subjects", self.subjects),
                                              ("--shots", self.shots), ("--submission", self.submission)) if value is not None]
            if given:
                raise UsageError(f"{given[0]} is for --benchmark ceval|cmmlu|mmlu")
            return
        from yayi_cli.eval.choice.plan import check_benchmark_options

        check_benchmark_options(self)
