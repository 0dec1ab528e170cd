#!/usr/bin/env bash
# Gate a trained dense network, and the fair comparison (RESULTS.md, "Gating a trained dense network"):
#   dense      resnet32 for E epochs (configs/cifar10_resnet32_cpu.yaml, the 30-epoch CPU recipe's shape)
#   resnet20   resnet20 for E + F epochs, same recipe shape: the same total epochs as the gated model
#   finetune   gated_resnet32 warm-started from the dense resnet32's best.pt, F epochs of
#              configs/cifar10_gated_resnet32_finetune.yaml, one run per L0 weight in L0
#   analyze    batchshaping analyze on every fine-tuned run
# Each run trains in runs/ft/<run>; its summary, log and config are copied to results/cifar10_finetune/<run>/.
#
#   E=15 F=4 L0="0.001 0.002" THREADS=1 bash scripts/finetune_cifar10.sh dense resnet20 finetune analyze
# BS=0.2 sets the batch-shaping weight of the fine-tunes (default: the recipe's 0.75; named in the run).
# STEP=compile compiles the training step (on CPU 1.25-1.5x faster per step after minutes of compiling:
# benchmarks/README.md), also on resume.
#
# Steps run in the order given; a step whose run already finished is skipped, a killed one resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
E=${E:-15}
F=${F:-4}
L0=${L0:-"0.001 0.002"}
DATA=${DATA:-../shared/data/cifar10}
THREADS=${THREADS:-}
BS=${BS:-}
bs_set=()
[ -n "$BS" ] && bs_set=(--set "loss.bs_weight=$BS")
run_opts=()
[ -n "$THREADS" ] && run_opts=(--set "threads=$THREADS")
[ -n "${STEP:-}" ] && run_opts+=(--set "step=$STEP")  # where/how keys: allowed on resume too

train() {  # run-name, then the arguments of a new run
  local run=$1 out="runs/ft/$1"
  shift
  if [ -f "$out/summary.json" ]; then
    echo "== $run: done"
  elif [ -f "$out/last.pt" ]; then
    python -m batchshaping train --out "$out" --resume --data-dir "$DATA" --set progress=false "${run_opts[@]}"
  else
    python -m batchshaping train "$@" --set progress=false "${run_opts[@]}" --data-dir "$DATA" --out "$out"
  fi
  mkdir -p "results/cifar10_finetune/$run"
  cp "$out/summary.json" "$out/log.jsonl" "$out/config.yaml" "results/cifar10_finetune/$run/"
}

finetuned() { for w in $L0; do echo "gated_resnet32_ft${F}${BS:+_bs$BS}_l0_${w}_from_resnet32_e${E}"; done; }

for step in "$@"; do
  case $step in
    dense) train "resnet32_e$E" --config cifar10_resnet32_cpu --set epochs="$E" ;;
    resnet20) train "resnet20_e$((E + F))" --config cifar10_resnet20_cpu --set epochs="$((E + F))" ;;
    finetune)
      for w in $L0; do
        train "gated_resnet32_ft${F}${BS:+_bs$BS}_l0_${w}_from_resnet32_e$E" --config cifar10_gated_resnet32_finetune \
          --set epochs="$F" --set loss.l0_weight="$w" --set pretrained="runs/ft/resnet32_e$E/best.pt" "${bs_set[@]}"
      done ;;
    analyze)
      for run in $(finetuned); do
        python -m batchshaping analyze "runs/ft/$run/last.pt" --out "results/cifar10_finetune/$run/analysis" \
          --data-dir "$DATA"
      done ;;
    *) echo "unknown step $step (dense | resnet20 | finetune | analyze)" >&2; exit 2 ;;
  esac
done
