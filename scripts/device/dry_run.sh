#!/usr/bin/env bash
# Run HERE, on CPU, before spending device time: play the device calls of .devdata/calls.json (written by
# stage.py) in a copy of the repository, the way the device tool lays it out, and show what comes back.
#
#   nice -n 10 bash scripts/device/dry_run.sh [run ...]      # default runs: resnet20 gated_resnet32_bs10_l0_0.001
#
# The copy holds what travels (tracked and untracked-not-ignored files; FROM=head: the last commit plus
# scripts/device/), each call gets only its carry paths in .devdata/ (carried runs included), the pieces are
# stashed in a temporary folder (not /tmp/bsdev), the benchmark call runs bench_train_gpu --dry-run, and the
# last call runs scripts/device/run.sh with DEVICE=cpu RECIPE=paper EPOCHS=1 SUBSET=512 SMOKE_TRAIN=512
# PARALLEL=1 DEADLINE_S=300 (each may be set in the environment). FRESH=1 skips the staging calls: the last
# call must then fail in the assemble phase and still pack. Prints the files of each call's $OUT, their
# sizes and the manifest; leaves everything in the folder it names (delete it after). A second session
# that resumes cut runs: stage with --device cpu after `pack.py unpack` of the first one's last $OUT (in a
# scratch clone: unpack writes into the repository), then dry-run again with the same RECIPE and EPOCHS.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
[ -f .devdata/calls.json ] || { echo "no .devdata/calls.json: run scripts/device/stage.py first" >&2; exit 2; }
SIM=$(mktemp -d /tmp/bs_devsim.XXXXXX)
COPY=$SIM/repo
mkdir -p "$COPY" "$SIM/stash"
if [ "${FROM:-worktree}" = head ]; then
  git archive HEAD | tar -x -C "$COPY"
  mkdir -p "$COPY/scripts/device" && cp scripts/device/* "$COPY/scripts/device/"
else
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    if [ -e "$f" ] || [ -L "$f" ]; then cp -P --parents -- "$f" "$COPY/"; fi
  done
fi
echo "copy of the tree ($(du -sh "$COPY" | cut -f1)) in $COPY"
RUN_ARGS=("$@")
[ ${#RUN_ARGS[@]} -eq 0 ] && RUN_ARGS=(resnet20 gated_resnet32_bs10_l0_0.001)
n=$(python3 -c 'import json; print(len(json.load(open(".devdata/calls.json"))))')
for k in $(seq 1 "$n"); do
  [ "${FRESH:-0}" = 1 ] && [ "$k" -lt "$n" ] && continue
  mapfile -t carry < <(python3 -c "import json; print('\n'.join(json.load(open('.devdata/calls.json'))[$k - 1]['carry']))")
  cmd=$(python3 -c "import json; print(json.load(open('.devdata/calls.json'))[$k - 1]['command'])")
  rm -rf "$COPY/.devdata"
  for c in "${carry[@]}"; do mkdir -p "$COPY/$(dirname "$c")" && cp -- "$REPO/$c" "$COPY/$c"; done
  out=$SIM/out$k
  mkdir -p "$out"
  if [ "$k" -eq "$n" ]; then  # the job, small and on CPU
    cmd="RECIPE=${RECIPE:-paper} EPOCHS=${EPOCHS:-1} PARALLEL=${PARALLEL:-1} DEADLINE_S=${DEADLINE_S:-300} bash scripts/device/run.sh ${RUN_ARGS[*]}"
  fi
  cmd=${cmd/bench_train_gpu /bench_train_gpu --dry-run }  # the benchmark's logic on CPU
  echo "=== call $k/$n: carry ${carry[*]}; command: $cmd"
  start=$SECONDS
  set +e
  (cd "$COPY" && env OUT="$out" BS_DEVDATA_TMP="$SIM/stash" DEVICE=cpu SUBSET="${SUBSET:-512}" \
    SMOKE_TRAIN="${SMOKE_TRAIN:-512}" timeout 600 bash -c "$cmd")
  rc=$?
  set -e
  echo "=== call $k: exit $rc after $((SECONDS - start)) s; \$OUT:"
  ls -l "$out"
done
last=$SIM/out$n
if [ -f "$last/manifest.json" ]; then
  echo "=== results.tar.gz:"
  tar -tzvf "$last/results.tar.gz" | awk '{print $3, $6}'
  ls "$last"/weights.tar* >/dev/null 2>&1 && { echo "=== weights:"; cat "$last"/weights.tar* | tar -tv | awk '{print $3, $6}'; }
  python3 - "$last/manifest.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
print("=== manifest:", m["status"], "| phases:", {k: v["wall_s"] for k, v in m["phases"].items()})
for r in m["runs"]:
    w = r["weights"] or {}
    print(f"  {r['run']}: {r['status']} {r['epochs_done']}/{r['epochs']} top1={r['top1']} "
          f"weights={w.get('kind')} {w.get('sha256', '')[:12]}\n    command: {r['command']}")
EOF
fi
echo "simulation folder: $SIM"
