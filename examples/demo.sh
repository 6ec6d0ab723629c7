#!/usr/bin/env bash
# The whole life of a YaYi-format model on the CPU, offline, in a few minutes:
# check and split the sample data, build a tiny model, fine-tune it through the real DeepSpeed
# launcher (2 CPU ranks), evaluate it against the untrained model, quantize it to int8, and ask it
# a question from its training data. Run it with `make demo` (which installs everything first).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-.demo}
DATA=examples/sample.jsonl
export HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. check the data"
"$BIN/yayi" data validate "$DATA"

step "2. split it: 4 held-out records, one per domain where possible"
"$BIN/yayi" data split "$DATA" --test-size 4 --stratify domain -o "$OUT/split" --force

step "3. build a tiny Llama-shaped model offline (tokenizer trained on the data, random weights)"
"$BIN/python" -m yayi_cli.models.tiny "$OUT/tiny" --arch llama --data "$DATA" --force

step "4. evaluate the untrained model"
"$BIN/yayi" eval --model "$OUT/tiny" --data "$OUT/split/train.jsonl" --output "$OUT/eval-untrained.json" --force

step "5. fine-tune: the deepspeed launcher, 2 CPU ranks, ZeRO-2, packed examples"
"$BIN/yayi" train --cpu --gpus 2 --zero 2 --packing --data "$OUT/split/train.jsonl" --eval-data "$OUT/split/test.jsonl" \
  --model "$OUT/tiny" -o "$OUT/trained" --force --micro-batch-size 1 --epochs 150 --lr 1e-2 --warmup-steps 10 \
  --logging-steps 50 --save-steps 1000 --eval-steps 1000

step "6. evaluate the trained model against the untrained one"
"$BIN/yayi" eval --model "$OUT/trained" --data "$OUT/split/train.jsonl" --baseline "$OUT/eval-untrained.json" \
  --output "$OUT/eval-trained.json" --force

step "7. quantize it to int8 and check the quality on held-out records"
"$BIN/yayi" quantize --model "$OUT/trained" -o "$OUT/trained-int8" --check-data "$OUT/split/test.jsonl" --force

step "8. ask it a question from its training data"
QUESTION=$("$BIN/python" -c 'import json, sys; r = json.loads(open(sys.argv[1], encoding="utf-8").readline()); print("\n".join(filter(None, [r["instruction"], r.get("input", "")])))' "$OUT/split/train.jsonl")
printf 'question: %s\n' "$QUESTION"
ANSWER=$("$BIN/yayi" chat --model "$OUT/trained" --prompt "$QUESTION" --greedy --max-new-tokens 128)
printf 'answer:   %s\n' "$ANSWER"

step "summary"
"$BIN/python" - "$OUT" "$ANSWER" <<'PY'
import json, sys
out, answer = sys.argv[1], sys.argv[2]
before = json.load(open(f"{out}/eval-untrained.json"))["metrics"]
after = json.load(open(f"{out}/eval-trained.json"))["metrics"]
summary = json.load(open(f"{out}/trained/train_summary.json"))
reference = json.loads(open(f"{out}/split/train.jsonl", encoding="utf-8").readline())["output"]
print(f"records trained on:      {summary['examples']['train']['kept']} ({summary['examples']['train']['tokens']} tokens)")
print(f"answer loss (train set): {before['loss']:.3f} untrained -> {after['loss']:.3f} trained")
print(f"held-out eval loss:      {summary['metrics'].get('eval_loss', float('nan')):.3f} "
      "(a 200k-parameter model memorizes its 16 records; it does not generalize)")
print(f"chat answer matches the training answer: {'yes' if answer.strip() == reference.strip() else 'no'}")
print(f"outputs in {out}/: split/, tiny/, trained/ (yayi chat --model {out}/trained), trained-int8/")
PY
