#!/usr/bin/env bash
# Run ON the device machine, in the repository root, as the LAST call of scripts/device/README.md:
#
#   RECIPE=paper PARALLEL=1 DEADLINE_S=540 bash scripts/device/run.sh [run ...]   # the paper's 500 epochs
#   EPOCHS=36 PARALLEL=1 DEADLINE_S=540 bash scripts/device/run.sh [run ...]        # the short protocol
#
# One command, in phases, each under the deadline: assemble the data (scripts/device/assemble.py, which
# also stashes the piece carried by this call), print the machine (nvidia-smi, torch/CUDA, packages), a
# smoke check (one short epoch of gated_resnet32 on a training subset through `python -m batchshaping
# train`; if it fails with the default step it is tried with STEP=eager, which the runs then use; the job
# stops here if that fails too), the runs (scripts/reproduce_cifar10.sh with the run names given
# as arguments or in RUNS, its RECIPE / EPOCHS / PARALLEL / SEED / DEVICE; runs carried from an earlier
# session, restored by assemble.py into runs/repro/, resume), `batchshaping analyze` of every gated run
# that has a checkpoint (RECIPE=paper: that finished), `batchshaping compare` of the finished runs, and,
# always (EXIT trap), the packing
# of whatever finished into $OUT by scripts/device/pack.py: results.tar.gz, weights.tar(.partNN),
# manifest.json, plus run.log (this script's whole output, written as it goes).
#
# The whole command ends within DEADLINE_S seconds (default 540; give the tool timeout_s=600): training is
# stopped (timeout, whole process group) RESERVE_S seconds before the deadline (default 90; 45 with
# RECIPE=paper, whose runs mostly end cut: they are analysed when they finish, here or after unpacking), so
# that the analysis, the comparison and the packing still fit; a run stopped that way keeps its last
# finished epoch (last.pt, log.jsonl) and is packed as <run>_stopped, with its run folder in weights.tar:
# a later session carries it back (stage.py) and it resumes. Called again on the same warm machine the
# script resumes stopped runs too (reproduce_cifar10.sh passes --resume when runs/repro/<run>/last.pt exists).
#
# Environment (defaults): RECIPE (cpu: the protocol's _cpu recipes; paper: the paper's), EPOCHS (36; paper:
# 500), PARALLEL (1: all runs at once), SEED (0), DEVICE (cuda), RUNS (cpu: the four runs of RESULTS.md's GPU
# section; paper: the batch-shaping + L0 bracket of scripts/device/README.md), DEADLINE_S (540), RESERVE_S
# (90; paper: 45), PACK_S (30, kept for packing),
# SMOKE (1; 0 skips it), SMOKE_TRAIN (2560 images: 10 steps), SMOKE_TIMEOUT (150), ANALYZE (1),
# DATA (<stash>/cifar10, from assemble.py; stash = $BS_DEVDATA_TMP or /tmp/bsdev), OUT (set by the tool;
# runs/device/out otherwise), PYTHON (python3).
# Dry runs only: SUBSET=N trains and tests on the first N images (--set data.train_subset / test_subset,
# added by a `python` shim on the training script's PATH, which also records each exact train command) and
# analyses N images.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
T0=$SECONDS
RECIPE=${RECIPE:-cpu}
if [ "$RECIPE" = paper ]; then EPOCHS=${EPOCHS:-500}; RESERVE_S=${RESERVE_S:-45}; else EPOCHS=${EPOCHS:-36}; fi
PARALLEL=${PARALLEL:-1}
SEED=${SEED:-0}
DEVICE=${DEVICE:-cuda}
DEADLINE_S=${DEADLINE_S:-540}
RESERVE_S=${RESERVE_S:-90}
PACK_S=${PACK_S:-30}
SMOKE=${SMOKE:-1}
SMOKE_TRAIN=${SMOKE_TRAIN:-2560}
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-150}
ANALYZE=${ANALYZE:-1}
SUBSET=${SUBSET:-}
STASH=${BS_DEVDATA_TMP:-/tmp/bsdev}
DATA=${DATA:-$STASH/cifar10}
OUT=${OUT:-runs/device/out}
PY=${PYTHON:-$(command -v python3 || command -v python)}
REPRO=scripts/reproduce_cifar10.sh
DEFAULT_RUNS="resnet20 resnet32 gated_resnet32_bs_l0_0.001 gated_resnet32_bs10_l0_0.001"
# The paper's recipe, most important first (issue: claim (a) at resnet20's MACs): batch-shaping + L0 at three
# L0 weights a decade wide below 0.001, which gave 0.65 of resnet20's MACs in 36 epochs (see the README).
[ "$RECIPE" = paper ] && DEFAULT_RUNS="gated_resnet32_bs_l0_0.0001 gated_resnet32_bs_l0_0.0003 gated_resnet32_bs_l0_0.001"
if [ $# -gt 0 ]; then RUN_NAMES=("$@"); else read -r -a RUN_NAMES <<<"${RUNS:-$DEFAULT_RUNS}"; fi
export RECIPE EPOCHS PARALLEL SEED DEVICE DATA
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK="runs/device/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT" "$WORK/logs" "$WORK/analysis" "$WORK/bin"

exec 3>&1 4>&2
exec > >(tee -a "$OUT/run.log") 2>&1
TEE_PID=$!

left() { echo $((DEADLINE_S - (SECONDS - T0))); }
stamp() { date -u +%s.%N; }
note() { printf '[%4ds] %s\n' $((SECONDS - T0)) "$*"; }
PHASE_T=
begin() { PHASE_T=$(stamp); note "== $1 (${2:-no} s budget, $(left) s left)"; }
end() { printf '%s\t%s\t%s\t%s\n' "$1" "$PHASE_T" "$(stamp)" "$2" >>"$WORK/phases.tsv"; }

STATUS=started
TRAIN_PID=
SCRIPT_COMMAND=
TRAIN_NOTE=
finish() {
  local rc=$?
  trap - EXIT
  if [ -n "$TRAIN_PID" ] && kill -0 "$TRAIN_PID" 2>/dev/null; then
    note "stopping the training (process group $TRAIN_PID)"
    kill -TERM -- "-$TRAIN_PID" 2>/dev/null
    sleep 3
    kill -KILL -- "-$TRAIN_PID" 2>/dev/null
  fi
  [ "$STATUS" = started ] && STATUS="aborted (exit $rc)"
  begin pack "$PACK_S"
  local settings
  settings=$(printf '{"RECIPE": "%s", "EPOCHS": "%s", "PARALLEL": "%s", "SEED": "%s", "DEVICE": "%s", "SUBSET": "%s", "RUNS": "%s"}' \
    "$RECIPE" "$EPOCHS" "$PARALLEL" "$SEED" "$DEVICE" "$SUBSET" "${RUN_NAMES[*]}")
  timeout -k 5 "$PACK_S" "$PY" scripts/device/pack.py pack --work "$WORK" --out "$OUT" --epochs "$EPOCHS" \
    --compare-name "$(compare_name)" --script-command "$SCRIPT_COMMAND" --settings "$settings" \
    --deadline "$DEADLINE_S" --status "$STATUS"
  end pack $?
  note "done: $STATUS; $OUT holds: $(cd "$OUT" && echo *)"
  exec 1>&3 2>&4 3>&- 4>&-
  for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$TEE_PID" 2>/dev/null || break; sleep 0.2; done  # tee flushes
  exit "$rc"
}
compare_name() { if declare -F run_name >/dev/null; then run_name compare; else echo compare; fi; }
trap finish EXIT
trap 'exit 143' TERM INT HUP

# The run names and folders as the training script itself defines them (its recipe choice and functions,
# read from it, so a name it does not know fails here in a second, before any GPU time is spent).
case $RECIPE in cpu | paper) ;; *) STATUS="RECIPE=$RECIPE unknown (cpu or paper)"; exit 2 ;; esac
eval "$(sed -n '/^case \$RECIPE in/,/^esac/p; /^args_for() {/,/^}/p; /^run_name() {/,/^}/p' "$REPRO")"
for name in "${RUN_NAMES[@]}"; do
  if declare -F args_for >/dev/null && ! args_for "$name" >/dev/null; then STATUS="bad run name $name"; exit 2; fi
  printf '%s\t%s\n' "$name" "$(run_name "$name")" >>"$WORK/runs.tsv"
  [ -e "results/cifar10/$(run_name "$name")" ] &&
    note "note: results/cifar10/$(run_name "$name") is already in the repository: unpacking overwrites it"
done
SCRIPT_COMMAND="${STEP:+STEP=$STEP }RECIPE=$RECIPE EPOCHS=$EPOCHS DEVICE=$DEVICE PARALLEL=$PARALLEL SEED=$SEED DATA=$DATA bash $REPRO ${RUN_NAMES[*]}"
note "runs: ${RUN_NAMES[*]} -> $(cut -f2 "$WORK/runs.tsv" | tr '\n' ' ')"
note "deadline ${DEADLINE_S} s; work folder $WORK; outputs $OUT"

begin machine 60
command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi
timeout -k 5 60 "$PY" scripts/device/pack.py env --json "$WORK/env.json"
rc=$?; end machine $rc
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  # load_config and every --set need PyYAML: without it nothing trains (carry its wheel, see the README)
  STATUS="PyYAML missing: the package cannot read its configs"; exit 5
fi

begin assemble 120
timeout -k 5 120 "$PY" scripts/device/assemble.py
rc=$?; end assemble $rc
if [ $rc -ne 0 ]; then STATUS="data not assembled (assemble.py exit $rc)"; exit 3; fi

SUBSET_ARGS=()
[ -n "$SUBSET" ] && SUBSET_ARGS=(--set "data.train_subset=$SUBSET" --set "data.test_subset=$SUBSET")
smoke() {  # one short epoch of gated_resnet32 with the step of $STEP (empty: the config's, auto)
  local out="$WORK/smoke${STEP:+_$STEP}" cmd
  cmd=("$PY" -m batchshaping train --config cifar10_gated_resnet32_cpu --set epochs=1
    --set "data.train_subset=$SMOKE_TRAIN" --set "data.test_subset=${SUBSET:-1000}" --set progress=false
    --set "device=$DEVICE" ${STEP:+--set "step=$STEP"} --data-dir "$DATA" --out "$out")
  echo "${cmd[*]}"
  timeout -k 10 "$SMOKE_TIMEOUT" "${cmd[@]}" </dev/null || return $?
  "$PY" - "$out/summary.json" "$DEVICE" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
want = sys.argv[2].split(":")[0]
ok = s["device"].split(":")[0] == want
print(f"smoke: {s['model']} on {s['device']} ({s['machine']}, {s['precision']}): {s['wall_time_s']:.1f} s, "
      f"top1 {s['top1']:.3f}, MAC ratio {s['mac_ratio']:.3f}" + ("" if ok else f"  NOT ON {want}"))
sys.exit(0 if ok else 1)
EOF
}
if [ "$SMOKE" = 1 ]; then
  begin smoke "$SMOKE_TIMEOUT"
  smoke
  rc=$?
  if [ $rc -ne 0 ] && [ -z "${STEP:-}" ]; then
    # A fast step that kills the process or hangs (rather than falling back by itself) would do so in every
    # run: try the eager step, and if it works, train with it.
    note "smoke check failed (exit $rc) with the default step; trying STEP=eager"
    STEP=eager
    smoke
    rc=$?
    if [ $rc -eq 0 ]; then
      export STEP
      SCRIPT_COMMAND="STEP=eager $SCRIPT_COMMAND"
      note "the eager step works: every run trains with STEP=eager (the fast path failed; see above)"
    fi
  fi
  end smoke $rc
  if [ $rc -ne 0 ]; then
    STATUS="smoke check failed (exit $rc$([ $rc -eq 124 ] && echo ": over ${SMOKE_TIMEOUT} s"))"
    note "SMOKE CHECK FAILED: $STATUS; no runs started. Its output is above and in run.log."
    exit 4
  fi
fi

# The training script calls `python`: a shim first on its PATH records each exact command and, in dry
# runs, adds the subset options.
cat >"$WORK/bin/python" <<EOF
#!/usr/bin/env bash
# (not on --resume: the subset is in the run's saved config, and a resume refuses data.* overrides)
if [ "\${1:-} \${2:-} \${3:-}" = "-m batchshaping train" ] && [ -n "$SUBSET" ] && [[ " \$* " != *" --resume "* ]]; then
  set -- "\$@" ${SUBSET_ARGS[*]}
fi
printf '%s\t%s\n' "\$(date -u +%s)" "\$(printf '%q ' "\$@")" >>"$PWD/$WORK/commands.txt"
exec "$PY" "\$@"
EOF
chmod +x "$WORK/bin/python"

# Runs carried from an earlier session (restored by assemble.py) resume: note where each one stands, so that
# the packing can tell this job's epochs (and their times) from the earlier ones.
while IFS=$'\t' read -r _ folder; do
  if [ -f "runs/repro/$folder/last.pt" ]; then
    n=$(grep -c . "runs/repro/$folder/log.jsonl" 2>/dev/null || echo 0)
    printf '%s\t%s\n' "$folder" "$n" >>"$WORK/resumed.tsv"
    note "$folder resumes after epoch $n"
  fi
done <"$WORK/runs.tsv"

budget=$(($(left) - RESERVE_S))
if [ "$budget" -lt 30 ]; then
  TRAIN_NOTE="only $budget s left for training: no runs started"
  note "$TRAIN_NOTE"
else
  begin train "$budget"
  note "$SCRIPT_COMMAND"
  # timeout puts itself and the script's runs in their own process group and stops all of them at once
  PATH="$PWD/$WORK/bin:$PATH" timeout -k 15 "$budget" bash "$REPRO" "${RUN_NAMES[@]}" </dev/null &
  TRAIN_PID=$!
  last=$SECONDS
  while kill -0 "$TRAIN_PID" 2>/dev/null; do
    sleep 2
    if [ $((SECONDS - last)) -ge 30 ]; then
      last=$SECONDS
      line=""
      while IFS=$'\t' read -r _ folder; do
        n=$( (wc -l <"runs/repro/$folder/log.jsonl") 2>/dev/null || echo 0)
        line+=" $folder ${n// /}/$EPOCHS;"
      done <"$WORK/runs.tsv"
      note "epochs done:$line"
    fi
  done
  wait "$TRAIN_PID"
  rc=$?
  TRAIN_PID=
  end train $rc
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    TRAIN_NOTE="training stopped at the deadline, after $budget s"
  elif [ $rc -ne 0 ]; then
    TRAIN_NOTE="training script exit status $rc"
  fi
  [ -n "$TRAIN_NOTE" ] && note "$TRAIN_NOTE"
  if [ "$PARALLEL" = 1 ]; then
    while IFS=$'\t' read -r _ folder; do
      [ -f "runs/repro/$folder.log" ] && cp "runs/repro/$folder.log" "$WORK/logs/train_$folder.log"
    done <"$WORK/runs.tsv"
  fi
fi

budget=$(($(left) - PACK_S))
pids=()
rc=0
if [ "$ANALYZE" = 1 ] && [ "$budget" -ge 15 ]; then
  begin analyze+compare "$budget"
  if ! "$PY" -c 'import matplotlib' 2>/dev/null; then
    note "matplotlib missing: no analysis or comparison (their plots need it); weights are packed for later"
  else
    while IFS=$'\t' read -r name folder; do
      case "$name" in gated_*) ;; *) continue ;; esac
      [ -f "runs/repro/$folder/last.pt" ] || continue
      [ "$RECIPE" = paper ] && ! [ -f "runs/repro/$folder/summary.json" ] && continue  # mid-way: not yet
      timeout -k 5 "$budget" "$PY" -m batchshaping analyze "runs/repro/$folder/last.pt" \
        --out "$WORK/analysis/$folder" --data-dir "$DATA" ${SUBSET:+--max-images "$SUBSET"} \
        >"$WORK/logs/analyze_$folder.log" 2>&1 </dev/null &
      pids+=($!)
    done <"$WORK/runs.tsv"
    done_runs=()
    while IFS=$'\t' read -r _ folder; do
      [ -f "runs/repro/$folder/summary.json" ] && [ -f "results/cifar10/$folder/summary.json" ] &&
        done_runs+=("results/cifar10/$folder")
    done <"$WORK/runs.tsv"
    if [ ${#done_runs[@]} -gt 0 ]; then
      timeout -k 5 "$budget" "$PY" -m batchshaping compare "${done_runs[@]}" --out "$WORK/compare" \
        >"$WORK/logs/compare.log" 2>&1 </dev/null &
      pids+=($!)
    fi
    rc=0
    for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
    for f in "$WORK"/logs/analyze_*.log "$WORK/logs/compare.log"; do
      [ -f "$f" ] && { echo "--- $f"; tail -n 5 "$f"; }
    done
  fi
  end analyze+compare "$rc"
else
  note "no analysis (ANALYZE=$ANALYZE, $budget s left before packing)"
fi
STATUS="finished${TRAIN_NOTE:+ ($TRAIN_NOTE)}"
