#!/usr/bin/env bash
# Does loss.macs_target land on its budget? gated_resnet32 with the 30-epoch CPU recipe's schedule shape
# (configs/cifar10_gated_resnet32_cpu.yaml: batch-shaping to epoch 6, the budget's weight ramped over
# epochs 6-18), the fixed L0 weight off, trained on the first N training images, once per target in
# TARGETS; evaluated on the whole test set. Runs train in runs/macs_target/<run>; their summary, log and
# config are copied to results/cifar10_macs_target/<run>/, and the last line per run says how far the
# test set's mean MACs ended from the target.
#
#   N=5000 TARGETS="0.585 0.4" WEIGHT=20 THREADS=1 bash scripts/macs_target_cifar10.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5000}
TARGETS=${TARGETS:-"0.585 0.4"}
WEIGHT=${WEIGHT:-20}
EPOCHS=${EPOCHS:-30}
DATA=${DATA:-../shared/data/cifar10}
opts=(--set progress=false --data-dir "$DATA")
[ -n "${THREADS:-}" ] && opts+=(--set "threads=$THREADS")
[ -n "${STEP:-}" ] && opts+=(--set "step=$STEP")

for target in $TARGETS; do
  run="gated_resnet32_macs${target}_w${WEIGHT}_n${N}_e${EPOCHS}"
  out="runs/macs_target/$run"
  if [ -f "$out/summary.json" ]; then
    echo "== $run: done"
  elif [ -f "$out/last.pt" ]; then
    python -m batchshaping train --out "$out" --resume "${opts[@]}"
  else
    python -m batchshaping train --config cifar10_gated_resnet32_cpu --out "$out" "${opts[@]}" \
      --set epochs="$EPOCHS" --set eval_every=5 --set data.train_subset="$N" \
      --set loss.l0_weight=0 --set loss.macs_target="$target" --set loss.macs_weight="$WEIGHT"
  fi
  mkdir -p "results/cifar10_macs_target/$run"
  cp "$out/summary.json" "$out/log.jsonl" "$out/config.yaml" "$out/history.jsonl" "results/cifar10_macs_target/$run/"
  python - "$out/summary.json" "$target" <<'PY'
import json, sys
s, target = json.load(open(sys.argv[1])), float(sys.argv[2])
print(f"{sys.argv[1]}: test mean MAC ratio {s['mac_ratio']:.4f} for target {target} "
      f"({100 * (s['mac_ratio'] / target - 1):+.2f}%), top-1 {100 * s['top1']:.2f}%")
PY
done
