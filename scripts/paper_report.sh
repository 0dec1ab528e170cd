#!/usr/bin/env bash
# What RESULTS.md reports of the paper-length CIFAR-10 runs (scripts/paper_cifar10_cpu.sh), made from their run
# folders in results/cifar10_paper/ for the runs that have finished (summary.json). Each step says what it
# wrote, or which run it waits for.
#   analyze  batchshaping analyze of each finished gated run (claim (c)): results/cifar10_paper/analysis<tag>/
#   compare  per seed, once resnet20 and the batch-shaping run have finished: the seed's finished runs against
#            resnet20 on the same test images (claim (a)): results/cifar10_paper/compare<seed>/; once the L0-only
#            run has finished too, the batch-shaping run against it (claim (b)): .../compare_b<seed>/
#   weights  model-only weights of each finished run, evaluated again to check them: weights/cifar10/<run>.pt
#            and its manifest.json entry
#   latency  batch-1 CPU latency (1 thread) of each finished gated run against resnet20 of its seed:
#            benchmarks/results/latency_paper_e500<tag>.json. Not a default step: time it on a quiet machine.
#   tables   the progress table, the verdicts and the plot (scripts/paper_progress.py --write), then every
#            table of RESULTS.md and README's headline (scripts/results_table.py --write)
# <seed> is "" for seed 0 and "_s<N>" for seed N; <tag> is "" for the batch-shaping run and "_l0only" for the
# L0-only run, followed by <seed>. An analysis, weights or latency file that exists is kept (FORCE=1 makes them
# again: a latency measured on another machine is then replaced); compare and tables always run, as finished
# runs join them.
#
#   bash scripts/paper_report.sh                    # analyze compare weights tables
#   bash scripts/paper_report.sh compare tables     # only these steps, in this order
#   FORCE=1 bash scripts/paper_report.sh analyze
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10}
OUT=${OUT:-results/cifar10_paper}
WEIGHTS=${WEIGHTS:-weights/cifar10}
LATENCY=${LATENCY:-benchmarks/results}
PYTHON=${PYTHON:-python}
FORCE=${FORCE:-0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" # the scripts import the package from this checkout
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(analyze compare weights tables)
for step in "${steps[@]}"; do
  case $step in
    analyze | compare | weights | latency | tables) ;;
    *)
      echo "unknown step '$step' (analyze | compare | weights | latency | tables)" >&2
      exit 2
      ;;
  esac
done

finished() { [ -f "$OUT/$1/summary.json" ]; }
unfinished() { # the runs among the arguments that have not finished, joined by " and "
  local run out=()
  for run in "$@"; do finished "$run" || out+=("$run"); done
  local IFS=,
  echo "${out[*]}" | sed 's/,/ and /g'
}
seeds() { # the seed suffixes of the run folders: "" (seed 0), "_s1", ...
  local d
  for d in "$OUT"/*_e500 "$OUT"/*_e500_s*; do
    [ -d "$d" ] || continue
    d=${d##*/}
    echo "${d##*_e500}"
  done | sort -u
}
if [ "$(seeds | wc -l)" -eq 0 ]; then
  echo "no 500-epoch run folders in $OUT: train them with scripts/paper_cifar10_cpu.sh (or name their folder" \
    "with OUT=)" >&2
  exit 2
fi
R20=resnet20_e500
BS=gated_resnet32_budget0.585_e500
L0=gated_resnet32_l0only_budget0.585_e500

analyze() { # run, tag
  local out="$OUT/analysis$2"
  if ! finished "$1"; then
    echo "analyze: $1 has not finished"
  elif [ -f "$out/report.md" ] && [ "$FORCE" != 1 ]; then
    echo "analyze: $out/report.md exists (FORCE=1 makes it again)"
  else
    "$PYTHON" -m batchshaping analyze "$OUT/$1" --out "$out" --data-dir "$DATA"
  fi
}

compare() { # seed suffix
  local s=$1 wait
  wait=$(unfinished "$R20$s" "$BS$s")
  if [ -n "$wait" ]; then
    echo "compare: claim (a) waits for $wait to finish"
    return 0
  fi
  local runs=("$OUT/$R20$s" "$OUT/$BS$s")
  if finished "$L0$s"; then runs+=("$OUT/$L0$s"); fi
  "$PYTHON" -m batchshaping compare "${runs[@]}" --out "$OUT/compare$s" --paired --data-dir "$DATA"
  if finished "$L0$s"; then
    "$PYTHON" -m batchshaping compare "$OUT/$BS$s" "$OUT/$L0$s" --out "$OUT/compare_b$s" --paired \
      --reference "$OUT/$L0$s" --data-dir "$DATA"
  else
    echo "compare: claim (b) waits for $L0$s to finish"
  fi
}

weights() {
  local s run todo=()
  while read -r s; do
    for run in "$R20$s" "$BS$s" "$L0$s"; do
      if ! finished "$run"; then
        [ ! -d "$OUT/$run" ] || echo "weights: $run has not finished"
      elif [ -f "$WEIGHTS/$run.pt" ] && [ "$FORCE" != 1 ]; then
        echo "weights: $WEIGHTS/$run.pt exists (FORCE=1 exports it again)"
      else
        todo+=("$OUT/$run")
      fi
    done
  done < <(seeds)
  if [ ${#todo[@]} -gt 0 ]; then
    "$PYTHON" scripts/export_weights.py "${todo[@]}" --out "$WEIGHTS" --check --data-dir "$DATA"
  fi
}

latency() { # seed suffix
  local s=$1 run tag=$1 wait out
  for run in "$BS$s" "$L0$s"; do
    [ "$run" = "$BS$s" ] || tag=_l0only$s
    wait=$(unfinished "$run" "$R20$s")
    out="$LATENCY/latency_paper_e500$tag.json"
    if [ -n "$wait" ]; then
      echo "latency: waits for $wait to finish"
    elif [ -f "$out" ] && [ "$FORCE" != 1 ]; then
      echo "latency: $out exists (FORCE=1 measures it again)"
    else
      "$PYTHON" -m benchmarks.latency --checkpoint "$OUT/$run/last.pt" --reference "$OUT/$R20$s/last.pt" \
        --threads 1 --no-batched --cifar-images 64 --budget 60 --out "$out"
    fi
  done
}

for step in "${steps[@]}"; do
  case $step in
    analyze)
      while read -r s; do
        analyze "$BS$s" "$s"
        analyze "$L0$s" "_l0only$s"
      done < <(seeds)
      ;;
    compare) while read -r s; do compare "$s"; done < <(seeds) ;;
    weights) weights ;;
    latency) while read -r s; do latency "$s"; done < <(seeds) ;;
    tables)
      "$PYTHON" scripts/paper_progress.py --write
      "$PYTHON" scripts/results_table.py --write
      ;;
  esac
done
