#!/usr/bin/env bash
# The paper's 500-epoch CIFAR-10 comparison on CPU (RESULTS.md, "The paper's recipe, 500 epochs, on CPU"):
# resnet20 and gated_resnet32 with the MAC budget at resnet20's cost, side by side, each started or resumed in
# results/cifar10_paper/<run>/ and stopped cleanly when MAX_TIME (counted from this script's start) runs out.
# Claim (a) comes first: the L0-only gated_resnet32 at the same budget (claim (b)) follows the budget run in
# its lane, as soon as that has finished (its summary.json). Each lane gets one thread per core shared by the
# lanes with work left (both: one each; once resnet20 has finished, the other lane gets every core: the
# gated step ran 1.8x as fast alone on two threads as on one beside resnet20, benchmarks/README.md).
# Finished runs are skipped. Output is appended to
# <run>/train.log. Commit the run folders (config.yaml, log.jsonl, history.jsonl, train.log, last.pt) after
# each piece, then refresh RESULTS.md with `python scripts/paper_progress.py --write`.
# SEED=N (default 0) trains the same three runs with another seed, in folders named <run>_sN; SEEDS="0 1"
# trains the seeds one after the other: a seed's runs start once every run of the seeds before it has
# finished, within the same piece if time is left.
#
#   MAX_TIME=2h30m bash scripts/paper_cifar10_cpu.sh
#   SEED=1 MAX_TIME=2h30m bash scripts/paper_cifar10_cpu.sh
#   SEEDS="0 1" MAX_TIME=2h30m bash scripts/paper_cifar10_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_TIME=${MAX_TIME:-2h30m}
DATA=${DATA:-../shared/data/cifar10}
OUT=${OUT:-results/cifar10_paper}
PYTHON=${PYTHON:-python}
CORES=${CORES:-$(nproc)}
SEEDS=${SEEDS:-${SEED:-0}}
MIN_START=${MIN_START:-900}  # seconds: a run is not started with less time left (compilation + an epoch)
seconds=$("$PYTHON" -c 'import sys; from batchshaping.config import parse_duration as p; print(int(p(sys.argv[1])))' "$MAX_TIME")
END=$(($(date +%s) + seconds))
for s in $SEEDS; do
  case "$s" in *[!0-9]*)
    echo "SEED and SEEDS take non-negative integers, got '$s'" >&2
    exit 2
    ;;
  esac
done
if [ -z "${SEEDS// /}" ]; then
  echo "SEED and SEEDS take non-negative integers, got none" >&2
  exit 2
fi

finished() { [ -f "$OUT/$1/summary.json" ]; }
piece() {  # run name, recipe, threads, options of a new run: start or resume it, until END
  local run=$1 recipe=$2 threads=$3 out="$OUT/$1" left=$((END - $(date +%s)))
  shift 3
  if finished "$run"; then return 0; fi
  if [ "$left" -lt "$MIN_START" ]; then
    echo "$run: not started, ${left}s left of MAX_TIME (less than MIN_START=${MIN_START}s)"
    return 0
  fi
  if [ -f "$out/last.pt" ]; then
    nice -n 5 "$PYTHON" -m batchshaping train --out "$out" --resume --set threads="$threads" \
      --set max_time="$left" >>"$out/train.log" 2>&1
  else
    mkdir -p "$out"
    nice -n 5 "$PYTHON" -m batchshaping train --config "$recipe" --data-dir "$DATA" --out "$out" \
      --set threads="$threads" --set progress=false --set max_time="$left" --set seed="$SEED" "$@" \
      >>"$out/train.log" 2>&1
  fi
}

seed_runs() {  # one seed's three runs in two lanes: resnet20, and the batch-shaping run then the L0-only run
  SEED=$1
  local suffix lane_a=1 lane_b=1 threads
  suffix=$([ "$SEED" -eq 0 ] || echo "_s$SEED") # seed 0's folders keep their names
  R20=resnet20_e500$suffix
  BS=gated_resnet32_budget0.585_e500$suffix
  L0=gated_resnet32_l0only_budget0.585_e500$suffix
  if finished "$R20"; then lane_a=0; fi
  if finished "$BS" && finished "$L0"; then lane_b=0; fi
  if [ $((lane_a + lane_b)) -eq 0 ]; then
    echo "all runs of seed $SEED in $OUT have finished"
    return 0
  fi
  threads=$((CORES / (lane_a + lane_b) > 0 ? CORES / (lane_a + lane_b) : 1))
  if [ "$lane_a" -eq 1 ]; then
    piece "$R20" cifar10_resnet20 "$threads" &
  fi
  if [ "$lane_b" -eq 1 ]; then
    (piece "$BS" cifar10_gated_resnet32_budget "$threads" --set step=compile &&
      finished "$BS" &&
      piece "$L0" cifar10_gated_resnet32_l0only_budget "$threads" --set step=compile) &
  fi
  wait
  finished "$R20" && finished "$BS" && finished "$L0"
}

for s in $SEEDS; do
  seed_runs "$s" || break # time ran out before this seed's runs finished: the next seeds wait
done
tail -n 2 "$OUT"/*/train.log 2>/dev/null || true
