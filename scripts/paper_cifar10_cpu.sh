#!/usr/bin/env bash
# The paper's 500-epoch CIFAR-10 comparison on CPU (RESULTS.md, "The paper's recipe, 500 epochs, on CPU"):
# resnet20 and gated_resnet32 with the MAC budget at resnet20's cost, side by side with one thread each,
# each started or resumed in results/cifar10_paper/<run>/ and stopped cleanly by MAX_TIME. Once resnet20 has
# finished (its summary.json), the L0-only gated_resnet32 at the same budget takes its place. Their output is
# appended to <run>/train.log. Commit the run folders (config.yaml, log.jsonl, history.jsonl, train.log,
# last.pt) after each piece, then refresh RESULTS.md with `python scripts/paper_progress.py --write`.
#
#   MAX_TIME=2h30m bash scripts/paper_cifar10_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_TIME=${MAX_TIME:-2h30m}
DATA=${DATA:-../shared/data/cifar10}
OUT=results/cifar10_paper
piece() {  # run name, recipe, extra options of a new run
  local run=$1 recipe=$2 out="$OUT/$1"
  shift 2
  if [ -f "$out/last.pt" ]; then
    nice -n 5 python -m batchshaping train --out "$out" --resume --set max_time="$MAX_TIME" >>"$out/train.log" 2>&1
  else
    mkdir -p "$out"
    nice -n 5 python -m batchshaping train --config "$recipe" --data-dir "$DATA" --out "$out" --set threads=1 \
      --set progress=false --set max_time="$MAX_TIME" "$@" >>"$out/train.log" 2>&1
  fi
}
if [ -f "$OUT/resnet20_e500/summary.json" ]; then  # resnet20 done: its core trains the L0-only ablation
  piece gated_resnet32_l0only_budget0.585_e500 cifar10_gated_resnet32_l0only_budget --set step=compile &
else
  piece resnet20_e500 cifar10_resnet20 &
fi
piece gated_resnet32_budget0.585_e500 cifar10_gated_resnet32_budget --set step=compile &
wait
tail -n 2 "$OUT"/*/train.log
