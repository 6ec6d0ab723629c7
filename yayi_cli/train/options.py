"""Every `yayi train` option as data, declared once (option_table.py): defaults < config file < flags.

A config file (YAML or JSON) holds a mapping of option names: the field names below, with `_` or
`-`, or any of a field's flag names, which include the upstream YaYi training flags (`data_path`,
`input_model`, ...).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yayi_cli.core.preference_tokens import DEFAULT_BETA
from yayi_cli.core.sampling import DEFAULT_SEED
from yayi_cli.options.fields import CommandOptions, complete_directories, option
from yayi_cli.options.shared import as_test_size, force_option, template_option
from yayi_cli.runtime.errors import UsageError


ZERO_STAGES = (0, 1, 2, 3)
OFFLOADS = ("none", "cpu", "nvme")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OVERLONG = ("truncate", "skip")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")

SFT, DPO, KTO, GRPO = "sft", "dpo", "kto", "grpo"
METHODS = (SFT, DPO, KTO, GRPO)
PREFERENCE_METHODS = (DPO, KTO)
REPORTERS = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""--report-to's trackers and the package each needs (the Trainer's own integrations report them)."""
DPO_LOSSES = ("sigmoid", "ipo", "hinge", "sigmoid_norm", "robust", "nca_pair", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop")
"""TRL DPOTrainer's loss types that need no setting yayi does not offer (exo_pair needs label smoothing);
sigmoid_norm is SimPO's length-normalised loss."""
GRPO_LOSSES = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo")
"""TRL GRPOTrainer's loss types that need no setting yayi does not offer; dapo is TRL's default."""
METHOD_OPTIONS = {"beta": (DPO, KTO, GRPO), "dpo_loss": (DPO,), "sft_weight": (DPO,), "precompute_ref": (DPO, KTO),
                  "reward": (GRPO,), "num_generations": (GRPO,), "max_completion_length": (GRPO,),
                  "grpo_loss": (GRPO,), "temperature": (GRPO,), "use_vllm": (GRPO,), "vllm_memory": (GRPO,)}
"""Options that only some methods read, refused with the others so that nothing is silently ignored."""

FULL_FINE_TUNE_LR = 5e-6
ADAPTER_LR = 1e-4
"""LoRA trains a few new weights from zero, so it needs a learning rate about 20x a full fine-tune's."""
DIST_TIMEOUT = 300
"""Seconds a rank waits for the others (to join, or in a collective) before the run ends as failed."""
INTERFACE_NAME = re.compile(r"^[\w.:@-]+(,[\w.:@-]+)*$")
"""A network interface, or several separated by commas (as Gloo and NCCL read them)."""
DEEPSPEED_FILE_DECIDES = ("zero", "offload", "nvme_path", "precision")
"""Options a --deepspeed FILE sets itself."""


@dataclass
class TrainOptions(CommandOptions):
    """What one training run does. Paths are kept as given; planning (train/plan.py) makes them absolute."""

    COMMAND = "train"
    CONFIG_FILE = True

    method: str = option("--method", default=SFT, choices=METHODS, help=(
        "sft: imitate the answers; dpo: prefer chosen over rejected answers (pairs); kto: good and bad answers "
        "(unpaired, labelled); grpo: answer prompts and learn from --reward functions."))
    data: list[str] = option("--data", "--data-path", "-d", default_factory=list, metavar="FILE", required=True,
                             help="Training data (repeat for several files).")
    model: str = option("--model", "--input-model", "-m", default="", metavar="DIR|HUB_ID", required=True,
                        complete=complete_directories, help="The model to fine-tune.")
    output: str = option("--output", "--local-output-dir", "-o", default="", metavar="DIR", required=True,
                         complete=complete_directories, help="Checkpoints, then the final model, go here.")
    eval_data: list[str] = option("--eval-data", default_factory=list, metavar="FILE",
                                  help="Held-out data for evaluation during training.")
    test_size: int | float | None = option("--test-size", default=None, metavar="N|F", parse=as_test_size,
                                           help="Hold out N records (or a fraction) of --data for evaluation.")
    template: str | None = template_option()
    max_length: int | None = option("--max-length", default=None, at_least=1, metavar="TOKENS",
                                    help="Longest example (default: the model's context).")
    overlong: str = option("--overlong", default="truncate", choices=OVERLONG,
                           help="Longer examples are cut or left out, and counted.")
    packing: bool = option("--packing", default=False, help="Pack several examples into each row.")
    epochs: float = option("--epochs", "--num-train-epochs", default=2.0, help="Passes over the data.")
    max_steps: int = option("--max-steps", default=-1, help="Stop after N optimizer steps (overrides --epochs; -1: train --epochs).",
                            default_text="-1, off")
    micro_batch_size: int = option("--micro-batch-size", "--per-device-train-batch-size", default=8, at_least=1,
                                   metavar="N", help="Examples (or packed rows) per rank per step.")
    eval_batch_size: int = option("--eval-batch-size", "--per-device-eval-batch-size", default=8, at_least=1,
                                  metavar="N", help="Examples per rank per evaluation step.")
    gradient_accumulation_steps: int = option("--gradient-accumulation-steps", default=1, at_least=1, metavar="N",
                                              help="Micro-batches per optimizer step.")
    global_batch_size: int | None = option("--global-batch-size", default=None, at_least=1, metavar="N",
                                           help="Set accumulation so micro x accumulation x ranks = N.")
    lr: float | None = option("--lr", "--learning-rate", default=None, above=0, help="Peak learning rate.",
                              default_text=f"{FULL_FINE_TUNE_LR:g}; {ADAPTER_LR:g} with --lora/--qlora")
    lr_scheduler: str = option("--lr-scheduler", default="linear", choices=SCHEDULERS, help="Learning-rate schedule.")
    warmup_steps: int = option("--warmup-steps", default=0, at_least=0, help="Steps of linear warm-up.")
    weight_decay: float = option("--weight-decay", default=0.0, at_least=0, help="AdamW weight decay.")
    max_grad_norm: float = option("--max-grad-norm", default=1.0, above=0, help="Gradient clipping.")
    seed: int = option("--seed", default=DEFAULT_SEED, help="Seed of data order, held-out records and weights.")
    logging_steps: int = option("--logging-steps", default=10, at_least=1, help="Log every N steps.")
    save_steps: int = option("--save-steps", default=500, at_least=1, help="Checkpoint every N steps.")
    save_total_limit: int | None = option("--save-total-limit", default=3, at_least=1,
                                          help="Keep the newest N checkpoints.")
    eval_steps: int | None = option("--eval-steps", default=None, at_least=1, default_text="--save-steps",
                                    help="Evaluate every N steps.")
    gradient_checkpointing: bool = option("--gradient-checkpointing", default=False,
                                          help="Recompute activations to save memory.")
    report_to: str = option("--report-to", default="none", choices=tuple(REPORTERS), help=(
        "A tracker the first rank also reports to: tensorboard (pip install tensorboard; events in OUTPUT/tensorboard), "
        "wandb (pip install wandb) or mlflow (pip install mlflow)."))
    gpus: int | None = option("--gpus", "--num-gpus", default=None, at_least=1, metavar="N",
                              help="GPUs per machine (default: all; with --cpu, CPU ranks).")
    num_nodes: int | None = option("--num-nodes", default=None, at_least=1, metavar="N",
                                   help="Use the first N machines of --hostfile.")
    hostfile: str | None = option("--hostfile", default=None, metavar="FILE",
                                  help="Machines to train on ('host slots=N' lines).")
    include: str | None = option("--include", default=None, metavar="HOST:I,J@...",
                                 help="Exactly which GPUs (DeepSpeed's --include).")
    master_addr: str | None = option("--master-addr", default=None, help="Address of the first machine.")
    master_port: int | None = option("--master-port", default=None, at_least=1, at_most=65535,
                                     help="Port for the ranks to meet on.")
    network_interface: str | None = option("--network-interface", default=None, metavar="IFACE", help=(
        "Network interface the machines reach each other on (sets GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME on "
        "every machine)."))
    dist_timeout: int = option("--dist-timeout", default=DIST_TIMEOUT, at_least=1, metavar="SECONDS",
                               help="A rank that cannot join, or waits this long for the others, ends the run.")
    cpu: bool = option("--cpu", default=False, help="Train on the CPU with DeepSpeed's CPU accelerator (tests).")
    zero: int = option("--zero", default=2, choices=ZERO_STAGES, help="ZeRO stage.")
    offload: str = option("--offload", default="none", choices=OFFLOADS,
                          help="Offload optimizer state (and at ZeRO-3 parameters).")
    nvme_path: str | None = option("--nvme-path", default=None, metavar="DIR", complete=complete_directories,
                                   help="Local NVMe folder for --offload nvme.")
    precision: str = option("--precision", default="auto", choices=PRECISIONS,
                            help="auto: bf16 where the GPU has it, else fp16; fp32 on the CPU.")
    deepspeed: str | None = option("--deepspeed", default=None, metavar="FILE",
                                   help="Your own DeepSpeed config, used as it is.")
    resume: str | None = option("--resume", default=None, metavar="auto|CHECKPOINT", complete=complete_directories,
                                help="Continue a run: auto = the newest complete checkpoint in --output (refused if "
                                     "the data or model settings differ from its run's).")
    cache_dir: str | None = option("--cache-dir", default=None, metavar="DIR", complete=complete_directories,
                                   help="Tokenized data cache.", default_text="~/.cache/yayi/tokenized")
    trust_remote_code: bool = option("--trust-remote-code", default=False,
                                     help="Allow the model's own Python code to run.")
    force: bool = option("--force", default=False, help=(
        "Start over in a non-empty --output (its old contents are moved beside it, not deleted); with --resume, "
        "continue although the settings differ."))
    lora: bool = option("--lora", default=False,
                        help="Train a LoRA adapter (PEFT) on the frozen 16-bit model instead of every weight.")
    qlora: bool = option("--qlora", default=False, help=(
        "LoRA on the model quantized to 4-bit NF4 (bitsandbytes): a 7B model on one 24 GB GPU."))
    lora_r: int = option("--lora-r", default=16, at_least=1, metavar="R", help="Adapter rank.")
    lora_alpha: int | None = option("--lora-alpha", default=None, above=0, metavar="ALPHA", default_text="2 x --lora-r",
                                    help="Adapter scale (the update is multiplied by alpha/r).")
    lora_dropout: float = option("--lora-dropout", default=0.05, metavar="P", help="Dropout on the adapter's input.")
    beta: float | None = option("--beta", default=None, at_least=0, default_text=f"{DEFAULT_BETA:g} with dpo|kto; 0 with grpo",
                                help="How far the model may move from the reference (higher: closer; grpo: 0 holds no reference).")
    dpo_loss: str = option("--dpo-loss", default="sigmoid", choices=DPO_LOSSES,
                           help="TRL's DPO loss: sigmoid (DPO), ipo, hinge, sigmoid_norm (SimPO's), ...")
    sft_weight: float = option("--sft-weight", default=0.0, at_least=0, metavar="W",
                               help="Add W x the SFT loss on the chosen answer to the DPO loss.")
    precompute_ref: bool = option("--precompute-ref", default=False, help=(
        "Compute the reference log-probs once before training, so that no reference model is held during it."))
    reward: list[str] = option("--reward", default_factory=list, metavar="NAME|FILE.py:FUNCTION[@WEIGHT]", help=(
        "grpo: a reward (repeat for several): exact, label[:A,B], format, length:N, or your function as "
        "path.py:function; @W weights it."))
    num_generations: int = option("--num-generations", default=8, at_least=2, metavar="N",
                                  help="grpo: answers sampled per prompt, compared with each other.")
    max_completion_length: int = option("--max-completion-length", default=256, at_least=1, metavar="TOKENS",
                                        help="grpo: longest sampled answer.")
    grpo_loss: str = option("--grpo-loss", default="dapo", choices=GRPO_LOSSES, help="grpo: TRL's loss type.")
    temperature: float = option("--temperature", default=1.0, above=0, help="grpo: sampling temperature of the answers.")
    use_vllm: bool = option("--use-vllm", default=False,
                            help="grpo: generate with vLLM, colocated on each GPU (where vLLM is installed).")
    vllm_memory: float = option("--vllm-memory", default=0.3, above=0, at_most=1, metavar="FRACTION",
                                help="grpo --use-vllm: share of each GPU's memory vLLM may take.")
    lora_targets: list[str] = option(
        "--lora-targets", default_factory=list, metavar="NAME,...|all-linear",
        default_text="every linear projection of the attention and MLP blocks", help="Modules that get adapters.")

    def __post_init__(self) -> None:
        """Defaults that depend on other options are resolved here, so every reader sees the same values."""
        if self.lr is None:
            self.lr = ADAPTER_LR if self.adapter else FULL_FINE_TUNE_LR
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r
        if self.beta is None and self.method in (*PREFERENCE_METHODS, GRPO):
            self.beta = 0.0 if self.method == GRPO else DEFAULT_BETA
        super().__post_init__()

    def check_values(self) -> None:
        """The table's checks, then the relations between options."""
        super().check_values()
        if self.max_steps != -1 and self.max_steps < 1:
            raise UsageError(f"--max-steps must be at least 1, got {self.max_steps} (leave it out to train --epochs)")
        if self.max_steps == -1 and self.epochs <= 0:
            raise UsageError(f"--epochs must be above 0, got {self.epochs}")
        if self.network_interface is not None and not INTERFACE_NAME.match(self.network_interface):
            raise UsageError(f"--network-interface {self.network_interface!r}: give an interface name such as eth0 "
                             "(several separated by commas)")
        if self.eval_data and self.test_size is not None:
            raise UsageError("give --eval-data or --test-size, not both")
        self.check_deepspeed_file()
        self.check_zero()
        self.check_machines()
        self.check_adapter()
        self.check_method()

    def check(self) -> None:
        """What the user asked, before planning; planning then resolves the accumulation from
        --global-batch-size into the options it hands on, which construction alone checks."""
        super().check()
        if self.global_batch_size and self.gradient_accumulation_steps != 1:
            raise UsageError("give --global-batch-size or --gradient-accumulation-steps, not both (one sets the other)")

    def check_deepspeed_file(self) -> None:
        if not self.deepspeed:
            return
        defaults = TrainOptions.__dataclass_fields__
        clashing = [name for name in DEEPSPEED_FILE_DECIDES if getattr(self, name) != defaults[name].default]
        if clashing:
            names = ", ".join(f"--{name.replace('_', '-')}" for name in clashing)
            raise UsageError(f"{names}: these come from --deepspeed FILE, which is used as it is; drop them")

    def check_zero(self) -> None:
        """ZeRO combinations DeepSpeed cannot run, refused with the way out."""
        if self.offload != "none" and self.zero == 0:
            raise UsageError(f"--offload {self.offload} needs ZeRO stage 1, 2 or 3 (got --zero 0)")
        if self.offload == "nvme" and self.zero != 3:
            raise UsageError("--offload nvme needs --zero 3 (ZeRO-Infinity); use --offload cpu with stages 1-2")
        if self.offload == "nvme" and not self.nvme_path:
            raise UsageError("--offload nvme needs --nvme-path DIR on a fast local disk")
        if self.nvme_path and self.offload != "nvme":
            raise UsageError("--nvme-path only matters with --offload nvme (and --zero 3)")
        if self.precision == "fp16" and self.cpu:
            raise UsageError("--precision fp16 does not run on the CPU; use bf16 or fp32 with --cpu")

    def check_machines(self) -> None:
        """Rank selections the launcher refuses, or that need the machines listed."""
        if self.include and (self.gpus or self.num_nodes):
            raise UsageError("--include cannot be combined with --gpus or --num-nodes (the launcher refuses it); use one")
        if self.hostfile:
            return
        if self.num_nodes and self.num_nodes > 1:
            raise UsageError(f"--num-nodes {self.num_nodes} needs --hostfile listing the machines")
        if self.include and not self.include.startswith("localhost:"):
            raise UsageError(f"--include {self.include!r}: without --hostfile only localhost:SLOTS can be named")

    def check_adapter(self) -> None:
        if self.lora and self.qlora:
            raise UsageError("give --lora or --qlora, not both (--qlora is LoRA on a 4-bit base)")
        if not 0 <= self.lora_dropout < 1:
            raise UsageError(f"--lora-dropout must be at least 0 and below 1, got {self.lora_dropout}")

    def check_method(self) -> None:
        """Options of another method are refused, and combinations the preference trainers cannot run."""
        defaults = TrainOptions.__dataclass_fields__
        for name, methods in METHOD_OPTIONS.items():
            value = getattr(self, name)
            default = defaults[name].default_factory() if callable(defaults[name].default_factory) else defaults[name].default
            if value != default and self.method not in methods:
                listed = " and ".join(methods) if len(methods) < 3 else f"{', '.join(methods[:-1])} and {methods[-1]}"
                raise UsageError(f"--{name.replace('_', '-')} applies to --method {listed}, not {self.method}")
        if self.method in PREFERENCE_METHODS and not self.beta:
            raise UsageError(f"--beta must be above 0 with --method {self.method}")
        if self.method == GRPO:
            self.check_grpo()
        if self.method == SFT:
            return
        if self.packing:
            raise UsageError(f"--packing applies to --method sft; a {self.method} batch keeps each prompt with its answers")
        if self.method == KTO and self.micro_batch_size < 2:
            raise UsageError("--method kto needs --micro-batch-size 2 or more: its KL term scores each prompt with "
                             "another record's answer from the same micro-batch")

    def check_grpo(self) -> None:
        if not self.reward:
            raise UsageError("--method grpo needs at least one --reward (exact, label, format, length:N, or path.py:function)")
        if self.eval_data or self.test_size is not None:
            raise UsageError("--method grpo does not evaluate during training; score held-out prompts before and after "
                             "with yayi eval --task reward")
        if self.use_vllm and self.cpu:
            raise UsageError("--use-vllm needs GPUs; leave it out with --cpu")

    @property
    def adapter(self) -> str | None:
        """"lora", "qlora" (LoRA on a 4-bit base), or None for a full fine-tune."""
        return "qlora" if self.qlora else "lora" if self.lora else None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PlotOptions(CommandOptions):
    """Everything `yayi plot` is asked to do."""

    COMMAND = "plot"

    runs: list[Path] = option("RUN_DIR...", argument=True, metavar="RUN_DIR...", complete=complete_directories,
                              help="Output folders of `yayi train` runs (finished or still going).")
    output: Path = option("--output", "-o", default=Path("curves.png"), metavar="FILE.png|FILE.svg",
                          help="The picture to write.")
    force: bool = force_option("Replace an existing picture.")

    def check_values(self) -> None:
        super().check_values()
        if Path(self.output).suffix.lower() not in (".png", ".svg"):
            raise UsageError(f"--output {self.output}: name a .png or .svg file")
