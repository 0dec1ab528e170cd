#!/usr/bin/env bash
# The CIFAR-10 reproduction protocol of RESULTS.md: every run has the same epochs, the paper's schedule
# shape (points as fractions of the epochs), seed 0, on CPU. Runs one job at a time; after each run its
# small artifacts (summary.json, log.jsonl, config.yaml) are copied to results/cifar10/<run>/.
#
#   EPOCHS=30 DATA=../shared/data/cifar10 bash scripts/reproduce_cifar10.sh [run ...]
#
# Without arguments all runs below are done in order. Checkpoints stay in runs/ (never committed).
set -euo pipefail
EPOCHS=${EPOCHS:-30}
DATA=${DATA:-../shared/data/cifar10}
declare -A RUNS=(
  [resnet20]="--config configs/cifar10_resnet20_cpu.yaml"
  [resnet32]="--config configs/cifar10_resnet32_cpu.yaml"
  [resnet56]="--config configs/cifar10_resnet56.yaml --set eval_every=1"
  [gated_resnet32_bs_l0_0.002]="--config configs/cifar10_gated_resnet32_cpu.yaml --set loss.l0_weight=0.002"
  [gated_resnet32_bs_l0_0.003]="--config configs/cifar10_gated_resnet32_cpu.yaml --set loss.l0_weight=0.003"
  [gated_resnet32_l0only_0.002]="--config configs/cifar10_gated_resnet32_l0only_cpu.yaml --set loss.l0_weight=0.002"
)
ORDER=(resnet20 gated_resnet32_bs_l0_0.002 gated_resnet32_l0only_0.002 resnet32 gated_resnet32_bs_l0_0.003 resnet56)
[ $# -gt 0 ] && ORDER=("$@")
for name in "${ORDER[@]}"; do
  run="${name}_e${EPOCHS}"
  out="runs/repro/$run"
  resume=""
  [ -f "$out/last.pt" ] && resume="--resume"
  echo "== $run"
  # shellcheck disable=SC2086
  batchshaping train ${RUNS[$name]} --set epochs="$EPOCHS" --set progress=false --data-dir "$DATA" --out "$out" $resume
  mkdir -p "results/cifar10/$run"
  cp "$out/summary.json" "$out/log.jsonl" "$out/config.yaml" "results/cifar10/$run/"
done
