"""The baseline of train_dpo.py: a bare TRL `DPOTrainer` script, as a user would write one without yayi.

Plain transformers, TRL and PEFT, nothing of yayi: it loads the model twice (the policy and a frozen
reference, as a full DPO fine-tune holds them), or once with `--lora R` (TRL wraps it with a PEFT
LoRA config on the Llama projections and scores the reference with the adapter disabled), reads
`{"prompt", "chosen", "rejected"}` text records and lets TRL tokenize them (TRL appends the tokenizer's
EOS to each answer), and trains with `DPOConfig(deepspeed=CONFIG)`: in fp32 on the CPU, or in bf16 on
a GPU with `--gpu`. Started by the `deepspeed` launcher, which passes `--local_rank=N` first:

    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 benchmarks/bare_dpo.py --model DIR --pairs FILE \\
        --deepspeed ds_config.json --output DIR [--steps 8] [--micro-batch-size 4] ...
    deepspeed --num_gpus 1 benchmarks/bare_dpo.py ... --gpu --lora 16 --gradient-checkpointing

The first rank prints one JSON line: the Trainer's metrics, the steps, and the data set's tokens
(prompt twice, plus both answers, per pair), so a caller can compare seconds per step and tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local_rank", type=int, default=0, help="set by the deepspeed launcher")
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", required=True, help="JSON lines of prompt, chosen and rejected texts")
    parser.add_argument("--deepspeed", required=True, help="the ZeRO config (the one yayi wrote)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lora", type=int, default=0, metavar="R", help="LoRA rank (alpha 2R); 0: full fine-tune")
    parser.add_argument("--gpu", action="store_true", help="bf16 on the GPU (default: fp32 on the CPU, gloo)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--result", help="also write the JSON line to this file")
    return parser.parse_args()


def lora_config(rank: int):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def main() -> None:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    args = arguments()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dtype = torch.bfloat16 if args.gpu else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    reference = None if args.lora else AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    pairs = load_dataset("json", data_files=args.pairs, split="train")
    config = DPOConfig(
        output_dir=args.output, deepspeed=args.deepspeed, use_cpu=not args.gpu, ddp_backend=None if args.gpu else "gloo",
        seed=args.seed,
        per_device_train_batch_size=args.micro_batch_size, max_steps=args.steps, learning_rate=args.lr,
        max_length=args.max_length, beta=args.beta, logging_steps=1, save_strategy="steps", save_steps=100_000,
        report_to="none", disable_tqdm=True,
        # yayi's settings, not TRL's own defaults (bf16 unless fp16, and gradient checkpointing), which would make
        # each step several times slower on a CPU without bf16 units
        bf16=args.gpu, gradient_checkpointing=args.gradient_checkpointing,
    )
    trainer = DPOTrainer(model=model, ref_model=reference, args=config, train_dataset=pairs, processing_class=tokenizer,
                         peft_config=lora_config(args.lora) if args.lora else None)
    result = trainer.train()
    if trainer.is_world_process_zero():
        tokens = sum(2 * len(pair["prompt_ids"]) + len(pair["chosen_ids"]) + len(pair["rejected_ids"])
                     for pair in trainer.train_dataset)
        line = json.dumps({"metrics": result.metrics, "steps": result.global_step, "tokens": tokens,
                           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if args.gpu else None})
        print(line, flush=True)
        if args.result:
            Path(args.result).write_text(line + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
