"""The baseline of train_grpo.py: a bare TRL `GRPOTrainer` script, as a user would write one without yayi.

Plain transformers and TRL, nothing of yayi: `{"prompt", "label"}` records whose prompt is already the model's
chat text, a reward that checks the answer's first line against the label, answers stopped at the `<|End|>` id
(set on the model's generation config, as a user would), and `GRPOConfig(deepspeed=CONFIG)` with yayi's
settings for the rest (fp32 on the CPU, no gradient checkpointing, beta 0, TRL's dapo loss). Started by the
`deepspeed` launcher, which passes `--local_rank=N` first:

    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 benchmarks/bare_grpo.py --model DIR --prompts FILE \\
        --deepspeed ds_config.json --output DIR [--steps 8] [--micro-batch-size 8] [--num-generations 8] ...

The first rank prints one JSON line: the Trainer's metrics and the steps.
"""

from __future__ import annotations

import argparse
import json


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local_rank", type=int, default=0, help="set by the deepspeed launcher")
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", required=True, help="JSON lines of prompt (chat text) and label")
    parser.add_argument("--deepspeed", required=True, help="the ZeRO config (the one yayi wrote)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args()


def label_reward(completions: list[str], label: list[str], **_: object) -> list[float]:
    return [float(answer.strip().split("\n")[0].strip() == expected) for answer, expected in zip(completions, label)]


def main() -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    args = arguments()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|End|>")
    config = GRPOConfig(
        output_dir=args.output, deepspeed=args.deepspeed, use_cpu=True, ddp_backend="gloo", seed=args.seed,
        per_device_train_batch_size=args.micro_batch_size, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, max_steps=args.steps, learning_rate=args.lr, beta=0.0,
        loss_type="dapo", logging_steps=1, save_strategy="steps", save_steps=100_000, report_to="none",
        disable_tqdm=True, bf16=False, gradient_checkpointing=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=label_reward, args=config, processing_class=tokenizer,
                          train_dataset=load_dataset("json", data_files=args.prompts, split="train"))
    result = trainer.train()
    if trainer.is_world_process_zero():
        print(json.dumps({"metrics": result.metrics, "steps": result.global_step}), flush=True)


if __name__ == "__main__":
    main()
