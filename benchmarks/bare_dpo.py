"""The baseline of train_dpo.py: a bare TRL `DPOTrainer` script, as a user would write one without yayi.

Plain transformers and TRL, nothing of yayi: it loads the model twice (the policy and a frozen
reference, as a full DPO fine-tune holds them), reads `{"prompt", "chosen", "rejected"}` text records
and lets TRL tokenize them (TRL appends the tokenizer's EOS to each answer), and trains with
`DPOConfig(deepspeed=CONFIG)` in fp32 without gradient checkpointing, as yayi does here. Started by the `deepspeed` launcher, which passes `--local_rank=N` first:

    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 benchmarks/bare_dpo.py --model DIR --pairs FILE \\
        --deepspeed ds_config.json --output DIR [--steps 8] [--micro-batch-size 4] ...

The first rank prints one JSON line: the Trainer's metrics, the steps, and the data set's tokens
(prompt twice, plus both answers, per pair), so a caller can compare seconds per step and tokens.
"""

from __future__ import annotations

import argparse
import json


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
    return parser.parse_args()


def main() -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    args = arguments()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    reference = AutoModelForCausalLM.from_pretrained(args.model)
    pairs = load_dataset("json", data_files=args.pairs, split="train")
    config = DPOConfig(
        output_dir=args.output, deepspeed=args.deepspeed, use_cpu=True, ddp_backend="gloo", seed=args.seed,
        per_device_train_batch_size=args.micro_batch_size, max_steps=args.steps, learning_rate=args.lr,
        max_length=args.max_length, beta=args.beta, logging_steps=1, save_strategy="steps", save_steps=100_000,
        report_to="none", disable_tqdm=True,
        # yayi's settings for a CPU run without --gradient-checkpointing; TRL's own defaults (bf16 unless fp16, and
        # gradient checkpointing) would make each step several times slower on a CPU without bf16 units
        bf16=False, gradient_checkpointing=False,
    )
    trainer = DPOTrainer(model=model, ref_model=reference, args=config, train_dataset=pairs, processing_class=tokenizer)
    result = trainer.train()
    if trainer.is_world_process_zero():
        tokens = sum(2 * len(pair["prompt_ids"]) + len(pair["chosen_ids"]) + len(pair["rejected_ids"])
                     for pair in trainer.train_dataset)
        print(json.dumps({"metrics": result.metrics, "steps": result.global_step, "tokens": tokens}), flush=True)


if __name__ == "__main__":
    main()
