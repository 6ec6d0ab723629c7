"""The token ids of a Llama 2 YaYi model before and after yayi followed the reference rules of docs/formats.md.

Two rules tokenize the same sample records (examples/sample.jsonl, the yayi-llama2 system prompt):
- "reference": what the published models were trained on (transformers 4.28's slow LlamaTokenizer): no whitespace
  beside a marker, the `▁` dummy prefix after each one, BOS first; what yayi produces now;
- "before": what yayi produced before (transformers 5's reading of the published files: the `\\n\\n` separators
  kept, no `▁` after a marker).

It reports tokens per character of each, for each tiny layout, and then the effect of a mismatch: a tiny Llama
(SentencePiece, as shipped) is trained with plain PyTorch on the first 15 records under one rule and scored on the
answers of the last 5 under each rule.

    .venv/bin/python benchmarks/llama2_tokens.py [--steps 150] [--lr 1e-3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from pathlib import Path

from yayi_cli.core.prompt import TEMPLATES, Template, render_training
from yayi_cli.core.reader import read_records
from yayi_cli.core.records import parse_record
from yayi_cli.models.tiny import TinySpec, build_tiny, training_texts


SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.jsonl"
BEFORE = Template(name="before", system=TEMPLATES["yayi-llama2"].system)
"""The template yayi-llama2 was before: the upstream separators, nothing stripped."""


def conversations():
    return [parse_record(record.value).conversation for record in read_records(SAMPLE)]


def encode(directory: Path, rule: str, conversation) -> tuple[list[int], list[int]]:
    """Ids and labels (-100 outside answers) of one conversation under `rule`."""
    from transformers import AutoTokenizer

    from yayi_cli.core.prompt import PromptTokenizer
    from yayi_cli.models.tokenizers import load_tokenizer

    if rule == "reference":
        prompts = PromptTokenizer(TEMPLATES["yayi-llama2"], load_tokenizer(str(directory)))
    else:
        prompts = PromptTokenizer(BEFORE, AutoTokenizer.from_pretrained(directory))
    encoded = prompts.encode_training(conversation)
    return encoded.input_ids, encoded.labels


def tokens_per_character(directory: Path, rule: str) -> float:
    """Tokens per character of the upstream text (the same characters for both rules)."""
    pairs = [(len(encode(directory, rule, c)[0]), len(render_training(c, BEFORE).text)) for c in conversations()]
    return sum(tokens for tokens, _ in pairs) / sum(characters for _, characters in pairs)


def train_and_score(directory: Path, train_rule: str, steps: int, seed: int, lr: float) -> dict[str, float]:
    """Held-out answer loss under each rule, of the model trained under `train_rule`."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(directory)
    records = conversations()
    train = [encode(directory, train_rule, c) for c in records[:15]]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        ids, labels = train[step % len(train)]
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    scores = {}
    with torch.no_grad():
        for rule in ("reference", "before"):
            losses = [model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
                      for ids, labels in (encode(directory, rule, c) for c in records[15:])]
            scores[rule] = sum(losses) / len(losses)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        texts = list(training_texts([SAMPLE], TEMPLATES["yayi"]))
        shipped = build_tiny(Path(tmp) / "shipped", texts, TinySpec(tokenizer="sentencepiece"))
        (shipped / "yayi_template.json").unlink()
        saved_again = Path(tmp) / "saved-again"
        from transformers import AutoModelForCausalLM, AutoTokenizer

        AutoModelForCausalLM.from_pretrained(shipped).save_pretrained(saved_again)
        AutoTokenizer.from_pretrained(shipped).save_pretrained(saved_again)
        shutil.copy(shipped / "tokenizer.model", saved_again / "tokenizer.model")
        print(f"machine: {platform.machine()}, {args.steps} steps, lr {args.lr}, seed {args.seed}")
        for name, directory in (("as shipped", shipped), ("saved again", saved_again)):
            rates = {rule: round(tokens_per_character(directory, rule), 4) for rule in ("reference", "before")}
            differing = sum(encode(directory, "reference", c)[0] != encode(directory, "before", c)[0] for c in conversations())
            print(json.dumps({"layout": name, "tokens_per_character": rates,
                              "records_whose_ids_differ": f"{differing} of {len(conversations())}"}))
        bloom = build_tiny(Path(tmp) / "bloom", texts, TinySpec(arch="bloom"))
        from yayi_cli.core.prompt import PromptTokenizer
        from yayi_cli.models.tokenizers import load_tokenizer

        prompts = PromptTokenizer(TEMPLATES["yayi"], load_tokenizer(str(bloom)))
        pairs = [(len(prompts.encode_training(c).input_ids), len(render_training(c, TEMPLATES["yayi"]).text)) for c in conversations()]
        print(json.dumps({"layout": "BLOOM byte-level BPE (one rule: the rendered text, no BOS)",
                          "tokens_per_character": round(sum(t for t, _ in pairs) / sum(c for _, c in pairs), 4)}))
        for train_rule in ("reference", "before"):
            scores = train_and_score(shipped, train_rule, args.steps, args.seed, args.lr)
            print(json.dumps({"trained_with": train_rule, "held_out_answer_loss": {k: round(v, 4) for k, v in scores.items()}}))


if __name__ == "__main__":
    main()
