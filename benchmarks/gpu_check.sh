#!/usr/bin/env bash
# The GPU check: the landed CLI on random-weight models against bare PyTorch baselines, one table last.
#
#   bash benchmarks/gpu_check.sh OUT_DIR               # on the GPU machine (about 11 minutes on one H100/H200)
#   bash benchmarks/gpu_check.sh OUT_DIR --cpu-smoke   # the same steps, tiny shapes, on a CPU (about 3 minutes)
#   bash benchmarks/gpu_check.sh OUT_DIR [--cpu-smoke] dpo lora   # only these sections
#
# Sections: train (yayi train against a bare loop), lora (LoRA and QLoRA), quantize, chat (decode speed),
# eval, dpo (LoRA-DPO on the big shape at 1024 tokens: peak memory and pairs per second).
#
# On the GPU machine (no network) the wheels that travel with the tree in .whl/ are installed first
# (see ../shared/gpu/README.md; benchmarks/gpu_wheels.sh adds what this project needs beyond them).
# Every step runs under a time limit and logs into OUT_DIR/<step>.log; a failed step says so in
# OUT_DIR/status.txt and the table, and the script goes on with the next.
set -u
out=${1:?usage: gpu_check.sh OUT_DIR [--cpu-smoke] [SECTION...]}
shift
mode=gpu
if [ "${1:-}" = "--cpu-smoke" ]; then mode=--cpu-smoke; shift; fi
sections=" ${*:-train lora quantize chat eval dpo} "
wants() {  # wants SECTION...: whether any of them was asked for
  local name
  for name in "$@"; do [[ $sections == *" $name "* ]] && return 0; done
  return 1
}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here" || exit 2
mkdir -p "$out"
out=$(cd "$out" && pwd)
: > "$out/status.txt"

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=$here:/tmp/site PATH=/tmp/site/bin:$PATH
fi
py=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PYTHONPATH=$here${PYTHONPATH:+:$PYTHONPATH}

if [ "$mode" = "--cpu-smoke" ]; then
  small=tiny big=tiny records=64 seq=256 batch=2 steps=2 tokens=64 limit=300 pair_tokens=256  # every step runs and is timed; the numbers mean nothing on a CPU
  device=(--cpu --gpus 1) precision=fp32
else
  small=1b big=7b records=3000 seq=2048 batch=8 steps=20 tokens=128 limit=240 pair_tokens=1024
  device=(--gpus 1) precision=bf16
fi

step() {  # step NAME SECONDS COMMAND...: run it with a limit, log it, record how it ended
  local name=$1 seconds=$2
  shift 2
  local started=$SECONDS
  timeout --kill-after=10 "$seconds" "$@" > "$out/$name.log" 2>&1
  local code=$?
  local state=ok
  [ $code -eq 124 ] && state=timeout
  [ $code -ne 0 ] && [ $code -ne 124 ] && state=failed
  echo "$name $state $((SECONDS - started))s" >> "$out/status.txt"
  echo "== $name: $state ($((SECONDS - started)) s)"
  [ "$state" = ok ] || tail -5 "$out/$name.log"
}

chat_run() {  # chat_run NAME NEW_TOKENS [FLAGS...]: a --jsonl batch, its tokens and generate's own seconds as JSON
  local name=$1 new=$2
  shift 2
  for i in 1 2 3 4; do echo "{\"prompt\": \"【媒宣领域任务】请写一段关于城市治理的评论，第${i}段。\"}"; done \
    | "$py" -m yayi_cli chat --model "$out/model-$big" --jsonl --greedy --max-new-tokens "$new" \
      --repetition-penalty 1.0 --max-context-tokens 1024 "$@" > "$out/$name.jsonl" || return 1
  "$py" -c "import json,sys; rows=[json.loads(l) for l in open(sys.argv[1])]; print(json.dumps({'tokens': sum(r['completion_tokens'] for r in rows), 'seconds': sum(r['seconds'] for r in rows)}))" \
    "$out/$name.jsonl" > "$out/$name.json"
}

export -f chat_run
export py out big

step data 60 "$py" benchmarks/gpu_check.py data "$out/data.jsonl" --records "$records"
wants train eval && step model-$small $limit "$py" benchmarks/gpu_check.py model "$out/model-$small" --shape "$small" --data "$out/data.jsonl"
if wants lora quantize chat dpo && { [ "$big" != "$small" ] || ! wants train eval; }; then
  step model-$big $limit "$py" benchmarks/gpu_check.py model "$out/model-$big" --shape "$big" --data "$out/data.jsonl"
fi

# 1. yayi train (ZeRO-2, packing) against a bare loop on the same model, sequence length and batch
wants train && step train $limit "$py" -m yayi_cli train "${device[@]}" --zero 2 --precision "$precision" --packing \
  --max-length "$seq" --micro-batch-size "$batch" --max-steps "$steps" --logging-steps 5 --save-steps 100000 \
  --data "$out/data.jsonl" --model "$out/model-$small" -o "$out/train" --force
wants train && step bare-train $limit "$py" benchmarks/gpu_check.py bare-train "$out/model-$small" --seq "$seq" --batch "$batch" \
  --steps "$steps" --result "$out/bare-train.json"

# 2. LoRA and QLoRA on the big shape, where yayi train has them
if wants lora; then
  for kind in lora qlora; do
    step $kind $limit "$py" -m yayi_cli train "${device[@]}" --$kind --gradient-checkpointing --packing \
      --max-length "$seq" --micro-batch-size 1 --max-steps "$steps" --logging-steps 5 --save-steps 100000 \
      --data "$out/data.jsonl" --model "$out/model-$big" -o "$out/$kind" --force
  done
fi

# 3. quantize int8 and NF4 (sizes, decode speed before and after, in yayi's own report)
wants quantize && for bits in 8 4; do
  step quantize-$bits $limit "$py" -m yayi_cli quantize --model "$out/model-$big" -o "$out/int$bits" --bits $bits --force
done

# 4. chat decode: default and --compile against bare generate and the memory-bandwidth floor
if wants chat; then
  step bandwidth 60 "$py" benchmarks/gpu_check.py bandwidth --result "$out/bandwidth.json"
  step bare-decode $limit "$py" benchmarks/gpu_check.py bare-decode "$out/model-$big" --tokens "$tokens" --result "$out/bare-decode.json"
  step chat $limit bash -c 'chat_run "$@"' _ chat "$tokens"
  step chat-1 $limit bash -c 'chat_run "$@"' _ chat-1 1
  if [ "$mode" != "--cpu-smoke" ]; then  # compiling takes minutes on a CPU and proves nothing there
    step chat-compile $limit bash -c 'chat_run "$@"' _ chat-compile "$tokens" --compile
    step chat-compile-1 $limit bash -c 'chat_run "$@"' _ chat-compile-1 1 --compile
  fi
fi

# 5. eval, batched, on the small shape
wants eval && step eval $limit "$py" -m yayi_cli eval --model "$out/model-$small" --data "$out/data.jsonl" --batch-size 16 \
  --max-samples 256 --output "$out/eval.json" --force

# 6. LoRA-DPO on the big shape: pairs whose prompt + each answer fill the sequence, gradient checkpointing
if wants dpo; then
  step pairs 60 "$py" benchmarks/gpu_check.py pairs "$out/pairs.jsonl" --text "$out/pairs-text.jsonl" --records 400 \
    --tokens "$pair_tokens"
  shared=(--max-length "$pair_tokens" --micro-batch-size 1 --lr 1e-4 --beta 0.1 --seed 515)
  step dpo $limit "$py" -m yayi_cli train "${device[@]}" --method dpo --lora --lora-r 16 --gradient-checkpointing \
    "${shared[@]}" --max-steps "$steps" --logging-steps 5 --save-steps 100000 \
    --data "$out/pairs.jsonl" --model "$out/model-$big" -o "$out/dpo" --force
  # the same with a bare TRL + PEFT script, started by the same launcher with the ZeRO config yayi wrote
  bare_device=(--gpu) bare_env=()
  if [ "$mode" = "--cpu-smoke" ]; then bare_device=() bare_env=(DS_ACCELERATOR=cpu); fi
  step bare-dpo $limit env "${bare_env[@]}" "$py" -m deepspeed.launcher.runner --num_gpus 1 benchmarks/bare_dpo.py --model "$out/model-$big" \
    --pairs "$out/pairs-text.jsonl" --deepspeed "$out/dpo/ds_config.json" --output "$out/bare-dpo" --steps "$steps" \
    "${shared[@]}" --lora 16 --gradient-checkpointing "${bare_device[@]}" --result "$out/bare-dpo.json"
fi

echo
"$py" benchmarks/gpu_check.py table "$out"
