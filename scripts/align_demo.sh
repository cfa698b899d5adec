#!/usr/bin/env bash
# The alignment pipeline of the README on 2 cores, nothing downloaded (~6 minutes):
# pre-train tiny-llama on the stdlib corpus, SFT it on string reversal (stopped early, so that
# there is something left to learn), then GRPO with the verifiable reward and, separately, DPO
# on synthetic preferences; the report plots every curve. Usage: scripts/align_demo.sh [DIR]
set -euo pipefail
dir="${1:-runs/align-demo}"
backend="${BACKEND:-torch_triton}"
mkdir -p "$dir"
[ -e "$dir/pre/latest" ] || lmspec train --model tiny-llama --steps 300 --out "$dir/pre" \
  --backend "$backend" --no-progress
lmspec align sft --init "$dir/pre" --out "$dir/sft" --task reverse --steps 150 \
  --batch-size 32 --backend "$backend" --no-progress
lmspec align grpo --init "$dir/sft" --out "$dir/grpo" --task reverse --steps 60 \
  --batch-size 8 --backend "$backend" --eval-every 10 --no-progress
lmspec align dpo --init "$dir/sft" --out "$dir/dpo" --task reverse --steps 60 \
  --batch-size 16 --backend "$backend" --eval-every 10 --no-progress
lmspec report --results "$dir/report" --runs "$dir/pre" "$dir/sft" "$dir/grpo" "$dir/dpo"
