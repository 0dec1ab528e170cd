#!/usr/bin/env bash
# The CIFAR-10 reproduction protocol of RESULTS.md: every run has the same epochs, the paper's schedule
# shape (points as fractions of the epochs), seed 0, on CPU. Runs one job at a time; after each run its
# small artifacts (summary.json, log.jsonl, config.yaml) are copied to results/cifar10/<run>/.
#
#   EPOCHS=30 DATA=../shared/data/cifar10 bash scripts/reproduce_cifar10.sh [run ...]
#
# SEED=N (default 0) repeats runs with another seed; their names get the suffix _s<N> (seed 0: none).
# DEVICE=cuda trains on the GPU (precision "auto": bf16 autocast) under the names <run>_e<N>_gpu; PARALLEL=1
# starts all the named runs at once (CIFAR ResNets leave most of a big GPU idle), each logging to
# runs/repro/<run>.log (the run's full name), and waits for them.
#
# RECIPE=paper runs the paper's recipes instead (configs/cifar10_<model>.yaml: 500 epochs, evaluation every 5;
# the protocol's _cpu recipes differ only in epochs and evaluating every epoch), under the names
# <run>_paper_e<N>[_s<SEED>][_gpu]; EPOCHS defaults to the recipe's 500 then.
#
# STEP=eager|graph|compile sets the training step (the config's `step`, default auto: captured on CUDA), also
# on resume.
#
# Without arguments all runs below are done in order. Checkpoints stay in runs/ (never committed).
set -euo pipefail
RECIPE=${RECIPE:-cpu}
case $RECIPE in
  cpu) EPOCHS=${EPOCHS:-30}; SUFFIX=_cpu; TAG= ;;
  paper) EPOCHS=${EPOCHS:-500}; SUFFIX=; TAG=_paper ;;
  *) echo "RECIPE=$RECIPE: use cpu (the protocol of RESULTS.md) or paper (the paper's 500-epoch recipes)" >&2; exit 2 ;;
esac
DATA=${DATA:-../shared/data/cifar10}
SEED=${SEED:-0}
DEVICE=${DEVICE:-cpu}
PARALLEL=${PARALLEL:-0}
STEP=${STEP:-}
# Run names: resnet20 | resnet32 | resnet56 | gated_resnet32_bs_l0_<w> | gated_resnet32_bs10_l0_<w> |
# gated_resnet32_l0only_<w>, where <w> is the L0 weight (sum over gates), so a sweep point is just another name.
args_for() {
  case "$1" in
    resnet20|resnet32) echo "--config configs/cifar10_$1$SUFFIX.yaml" ;;
    resnet56) echo "--config configs/cifar10_resnet56.yaml${SUFFIX:+ --set eval_every=1}" ;;
    gated_resnet32_bs_l0_*) echo "--config configs/cifar10_gated_resnet32$SUFFIX.yaml --set loss.l0_weight=${1##*_}" ;;
    # The batch-shaping phase over the first 10% of the epochs instead of 20%: the short-schedule comparison.
    gated_resnet32_bs10_l0_*) echo "--config configs/cifar10_gated_resnet32$SUFFIX.yaml --set loss.bs_end=0.1 --set loss.l0_weight=${1##*_}" ;;
    gated_resnet32_l0only_*) echo "--config configs/cifar10_gated_resnet32_l0only$SUFFIX.yaml --set loss.l0_weight=${1##*_}" ;;
    *) echo "unknown run name: $1 (see the list at the top of $0)" >&2; return 2 ;;
  esac
}
# L0 alone needs a much larger weight than with batch-shaping for a similar MAC level: with batch-shaping
# the gates sit near the prior's mean (p ~ 0.6, where the L0 gradient p(1 - p) is large); without it they
# start at p ~ 0.95, and once they move the gradient grows and they collapse, so its sweep must be fine
# (RESULTS.md, "The claims, after 5 epochs").
ORDER=(resnet20 gated_resnet32_bs_l0_0.001 gated_resnet32_l0only_0.025 resnet32 gated_resnet32_bs10_l0_0.001 resnet56)
[ $# -gt 0 ] && ORDER=("$@")
for name in "${ORDER[@]}"; do args_for "$name" >/dev/null; done  # fail before any run starts
run_name() {  # name -> <name>[_paper]_e<EPOCHS>[_s<SEED>][_gpu], the folder of the run and of its artifacts
  local run="${1}${TAG}_e${EPOCHS}"
  [ "$SEED" != 0 ] && run="${run}_s${SEED}"
  [ "$DEVICE" != cpu ] && run="${run}_gpu"
  echo "$run"
}
one_run() {  # name -> trains it, then copies its small artifacts to results/cifar10/<run>/
  local run out
  run=$(run_name "$1")
  out="runs/repro/$run"
  echo "== $run"
  if [ -f "$out/last.pt" ]; then  # a killed run continues with its own config
    python -m batchshaping train --out "$out" --resume --data-dir "$DATA" --set progress=false --set device="$DEVICE" \
      ${STEP:+--set step="$STEP"}
  else
    # shellcheck disable=SC2046,SC2086
    python -m batchshaping train $(args_for "$1") --set epochs="$EPOCHS" --set progress=false --set seed="$SEED" \
      --set device="$DEVICE" ${STEP:+--set step="$STEP"} --data-dir "$DATA" --out "$out"
  fi
  mkdir -p "results/cifar10/$run"
  cp "$out/summary.json" "$out/log.jsonl" "$out/config.yaml" "results/cifar10/$run/"
}
if [ "$PARALLEL" = 1 ]; then
  mkdir -p runs/repro
  pids=()
  for name in "${ORDER[@]}"; do one_run "$name" >"runs/repro/$(run_name "$name").log" 2>&1 & pids+=($!); done
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  exit $status
fi
for name in "${ORDER[@]}"; do one_run "$name"; done
