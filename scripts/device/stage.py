#!/usr/bin/env python3
"""Run HERE (no GPU): cut the real CIFAR-10 into pieces that fit the device tool's 64 MiB per call.

    nice -n 10 python scripts/device/stage.py [--recipe paper|cpu] [--runs "resnet20 ..."] [--epochs N]

Reads ../shared/data/cifar10/*.npz (uint8 images and labels; the filenames are dropped), checks the arrays
against the content sha256 sums of that folder's README, lays them out as one byte stream
(x_train, x_test as residuals of codec.py's lossless pixel prediction, then y_train, y_test), cuts it into
N ranges and compresses each with xz (0.57 of the raw size; xz's delta filter over the RGB bytes gave 0.67,
the npz deflate 0.92). N is the fewest pieces
such that each piece, the working tree that travels with every call (tracked and untracked, not ignored
files) and a margin stay under 64 MiB. Writes into the git-ignored folder .devdata/:

    .devdata/cifar10.<k>of<N>.xz   the pieces
    .devdata/manifest.json         array layout and content sha256, each piece's sha256, bytes and range
    .devdata/calls.json            the device calls to make (carry lists, commands, timeouts)

and prints those calls. Running it again reuses the pieces when the data and N are unchanged.
scripts/device/assemble.py turns the pieces back into the npz layout on the device machine.

Runs that an earlier session stopped (runs/repro/<run>/last.pt without summary.json, put there by
`pack.py unpack`) travel back to resume: each run folder's last.pt, log.jsonl and config.yaml as
.devdata/resume/<run>.tar, listed with its sha256 and epoch in .devdata/resume.json, in the room the data
pieces leave (a call more if they do not fit). The run names and their folders are those of
scripts/reproduce_cifar10.sh (its functions, read by bash), for --recipe, --epochs, --seed and --device.
The second-to-last call also runs the GPU benchmark briefly (eager against captured for gated_resnet32,
single process, then three captured runs in one process on three streams, a few epochs of synthetic data:
benchmarks/bench_train_gpu.py; --no-bench: not).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import math
import os
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import codec
import numpy as np
from files import MIB, RUN_FILES, log_epochs, sha256_file

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = ".devdata"  # relative to the repository root; git-ignored
FORMAT = "batchshaping-devdata-v2"  # v2: images as codec.py residuals
CALL_LIMIT = 64 * MIB  # what one device call may carry, working tree included
IMAGE_BYTES = 32 * 32 * 3
# xz filter chain, stored in the manifest; assemble.py needs none of it (an .xz stream names its filters).
FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6}]
EST_RATIO = 0.60  # compressed / raw, to choose N before compressing (measured: 0.568 on the test set)
# Content sha256 of the C-contiguous arrays, from ../shared/data/cifar10/README.md.
README_SHA256 = {
    "x_train": "ee55ffafe445fd46c38fac142c3971602db24724f330f49ee73645a3dd529b5d",
    "y_train": "741d364c93cfbab39cefe8aa0d712b9b29a59bdc0e1b6c1785f8a6a295dfc91e",
    "x_test": "1f9e71c337f27c38452dc063bbdf05164772d7358edf779cd7c015dac77aeead",
    "y_test": "f24756e9fc27107597cd054b9df7247b4e5ab61780d1e5d55e7b1015307573de",
}
REPRO = "scripts/reproduce_cifar10.sh"
RUN_SH = "scripts/device/run.sh"
RESUME = "resume"  # .devdata/resume.json and .devdata/resume/<run>.tar
# Where a finished run's summary.json is: its run folder, or its results committed here.
FINISHED_DIRS = (REPO / "runs" / "repro", REPO / "results" / "cifar10")
BENCH = (
    "python3 -m benchmarks.bench_train_gpu --models gated_resnet32 --paths eager,captured --epochs 2 "
    '--streams 3 --budget-s 45 --out "$OUT/train_gpu.jsonl" 2>&1 | tail -25'
)


def sha256_bytes(b: bytes | memoryview) -> str:
    return hashlib.sha256(b).hexdigest()


def load_arrays(src: Path) -> dict[str, np.ndarray]:
    """The four CIFAR-10 arrays from the shared npz files, checked against the README's sums."""
    parts = [np.load(src / f"cifar10_train_part{i}.npz", allow_pickle=False) for i in (1, 2)]
    test = np.load(src / "cifar10_test.npz", allow_pickle=False)
    arrays = {
        "x_train": np.concatenate([p["x_train"] for p in parts]),
        "y_train": np.concatenate([p["y_train"] for p in parts]),
        "x_test": test["x_test"],
        "y_test": test["y_test"],
    }
    for name, a in arrays.items():
        a = arrays[name] = np.ascontiguousarray(a)
        if a.dtype != np.uint8:
            sys.exit(f"stage: {name} is {a.dtype}, expected uint8")
        got = sha256_bytes(a.data)
        if got != README_SHA256[name]:
            sys.exit(
                f"stage: {name} content sha256 {got} differs from the data README's {README_SHA256[name]}"
            )
    return arrays


def travelling_tree_bytes() -> int:
    """Bytes of what travels with every call: tracked and untracked-not-ignored files (links as links)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    total = 0
    for name in set(out.decode().split("\0")) - {""}:
        p = REPO / name
        if p.is_symlink() or p.is_file():
            total += p.lstat().st_size
    shared = REPO / "shared"  # a shared/ folder inside the checkout travels too
    if shared.is_dir():
        total += sum(f.lstat().st_size for f in shared.rglob("*") if f.is_file() or f.is_symlink())
    return total


def compress(raw: bytes) -> bytes:
    return lzma.compress(raw, format=lzma.FORMAT_XZ, filters=FILTERS)


def piece_name(k: int, n: int) -> str:
    return f"cifar10.{k}of{n}.xz"


def ranges(total_images: int, tail_bytes: int, n: int) -> list[tuple[int, int]]:
    """N byte ranges of the raw stream, cut at image boundaries (the labels ride in the last range)."""
    cuts = [round(total_images * k / n) * IMAGE_BYTES for k in range(n + 1)]
    cuts[-1] = total_images * IMAGE_BYTES + tail_bytes
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def layout(arrays: dict[str, np.ndarray]) -> tuple[list[dict], bytes]:
    """Images first (x_train, x_test, encoded by codec.py image by image), then labels, so pieces hold
    whole images; returns (specs of the original arrays, the stream)."""
    order = ["x_train", "x_test", "y_train", "y_test"]
    specs, offset = [], 0
    for name in order:
        a = arrays[name]
        specs.append(
            {
                "name": name,
                "dtype": str(a.dtype),
                "shape": list(a.shape),
                "offset": offset,
                "nbytes": a.nbytes,
                "sha256": README_SHA256[name],
            }
        )
        offset += a.nbytes
    stream = [codec.encode(arrays[n]) if n.startswith("x_") else arrays[n] for n in order]
    return specs, b"".join(a.tobytes() for a in stream)


def reusable(out: Path, source_id: str, n: int | None) -> dict | None:
    """The existing manifest if its pieces are there, intact, and for the same data (and N, if given)."""
    mpath = out / "manifest.json"
    if not mpath.is_file():
        return None
    try:
        m = json.loads(mpath.read_text())
    except json.JSONDecodeError:
        return None
    if m.get("format") != FORMAT or m.get("source_id") != source_id:
        return None
    if n is not None and len(m["pieces"]) != n:
        return None
    for p in m["pieces"]:
        f = out / p["file"]
        if not f.is_file() or f.stat().st_size != p["bytes"] or sha256_file(f) != p["sha256"]:
            return None
    return m


def build(out: Path, arrays: dict[str, np.ndarray], n: int, jobs: int, max_piece: int) -> dict | None:
    """Compress into N pieces; None if a piece came out larger than max_piece."""
    specs, raw = layout(arrays)
    total_images = sum(len(arrays[k]) for k in ("x_train", "x_test"))
    tail = len(raw) - total_images * IMAGE_BYTES
    rs = ranges(total_images, tail, n)
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, n))) as ex:
        blobs = list(ex.map(compress, [raw[a:b] for a, b in rs]))
    print(f"compressed {len(raw) / MIB:.1f} MiB into {n} pieces in {time.time() - t0:.0f} s", flush=True)
    if max(len(b) for b in blobs) > max_piece:
        return None
    for old in out.glob("cifar10.*of*.xz"):
        old.unlink()
    pieces = []
    for k, ((a, b), blob) in enumerate(zip(rs, blobs, strict=True), 1):
        name = piece_name(k, n)
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(blob)
        tmp.replace(out / name)
        pieces.append(
            {
                "file": name,
                "bytes": len(blob),
                "sha256": sha256_bytes(blob),
                "raw_offset": a,
                "raw_bytes": b - a,
            }
        )
    return {"specs": specs, "raw_bytes": len(raw), "pieces": pieces}


def _bash(code: str, env: dict[str, str], *args: str) -> list[str]:
    """Lines printed by a bash snippet (the run scripts' own definitions, read from them)."""
    out = subprocess.run(
        ["bash", "-c", code, "bash", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"stage: {out.stderr.strip() or 'bash failed'}")
    return out.stdout.split()


def default_runs(recipe: str) -> list[str]:
    """run.sh's default run names for the recipe."""
    code = f"""eval "$(sed -n '/^DEFAULT_RUNS=/p; /^\\[ "\\$RECIPE" = paper \\] && DEFAULT_RUNS=/p' {RUN_SH})"
echo $DEFAULT_RUNS"""
    return _bash(code, {"RECIPE": recipe})


def run_folders(names: list[str], recipe: str, epochs: int | None, seed: int, device: str) -> list[str]:
    """The run folder of each name, by reproduce_cifar10.sh's own run_name()."""
    code = f"""set -e
eval "$(sed -n '/^case \\$RECIPE in/,/^esac/p; /^args_for() {{/,/^}}/p; /^run_name() {{/,/^}}/p' {REPRO})"
for n in "$@"; do args_for "$n" >/dev/null; run_name "$n"; done"""
    env = {"RECIPE": recipe, "EPOCHS": str(epochs or ""), "SEED": str(seed), "DEVICE": device}
    return _bash(code, env, *names)


def bundle_runs(out: Path, folders: list[str]) -> dict | None:
    """.devdata/resume/<run>.tar for each stopped run of ``folders`` in runs/repro/, and resume.json."""
    rdir = out / RESUME
    entries = []
    for folder in folders:
        src = REPO / "runs" / "repro" / folder
        if not (src / "last.pt").is_file() or (src / "summary.json").is_file():
            continue
        rdir.mkdir(exist_ok=True)
        tar_path = rdir / f"{folder}.tar"
        with tarfile.open(tar_path, "w") as tar:
            for f in RUN_FILES:
                if (src / f).is_file():
                    tar.add(src / f, f"runs/repro/{folder}/{f}")
        entries.append(
            {
                "run": folder,
                "file": tar_path.name,
                "bytes": tar_path.stat().st_size,
                "sha256": sha256_file(tar_path),
                "epoch": log_epochs(src / "log.jsonl"),
            }
        )
    for old in rdir.glob("*.tar") if rdir.is_dir() else []:
        if old.name not in {e["file"] for e in entries}:
            old.unlink()
    index = out / f"{RESUME}.json"
    if not entries:
        index.unlink(missing_ok=True)
        return None
    r = {"runs": entries, "id": sha256_bytes(json.dumps([e["sha256"] for e in entries]).encode())[:16]}
    index.write_text(json.dumps(r, indent=2) + "\n")
    return r


def assign(runs: list[dict], rooms: list[int], call_room: int) -> list[list[dict]]:
    """Carried runs per call, largest first into the call with the most room left; a run that fits in
    none gets a call of its own (inserted before the last); ``rooms``: bytes left in each data call."""
    rooms = list(rooms)
    calls: list[list[dict]] = [[] for _ in rooms]
    for e in sorted(runs, key=lambda e: -e["bytes"]):
        k = max(range(len(rooms)), key=lambda i: rooms[i])
        if rooms[k] < e["bytes"]:
            if e["bytes"] > call_room:
                sys.exit(f"stage: {e['file']} ({e['bytes'] / MIB:.1f} MiB) does not fit in any call")
            rooms.insert(len(rooms) - 1, call_room)
            calls.insert(len(calls) - 1, [])
            k = len(rooms) - 2
        rooms[k] -= e["bytes"]
        calls[k].append(e)
    return calls


def calls(m: dict, job: str, resume: dict | None, per_call: list[list[dict]], bench: bool) -> list[dict]:
    """The device calls: each carries the manifest and one piece (or only carried runs), with resume.json
    and its runs' tarballs; the first probes the machine, the second-to-last benchmarks, the last runs the
    job."""
    pieces, n = m["pieces"], len(per_call)
    seq = []
    for k in range(1, n + 1):
        carry = [f"{OUT_DIR}/manifest.json"]
        # pieces 1..P-1 in calls 1..P-1, the last piece with the job; calls of carried runs only between
        piece = pieces[k - 1] if k < len(pieces) else pieces[-1] if k == n else None
        if piece is not None:
            carry.append(f"{OUT_DIR}/{piece['file']}")
        if resume is not None:
            carry.append(f"{OUT_DIR}/{RESUME}.json")
            carry += [f"{OUT_DIR}/{RESUME}/{e['file']}" for e in per_call[k - 1]]
        if k == n:
            seq.append({"call": k, "timeout_s": 600, "carry": carry, "command": job})
            continue
        cmd = "python3 scripts/device/assemble.py --stash" + (" --probe" if k == 1 else "")
        timeout = 120
        if bench and k == n - 1:
            cmd, timeout = f"{cmd} && {BENCH}", 180
        seq.append({"call": k, "timeout_s": timeout, "carry": carry, "command": cmd})
    return seq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=REPO.parent / "shared" / "data" / "cifar10")
    ap.add_argument("--pieces", type=int, default=None, help="force N pieces (default: the fewest that fit)")
    ap.add_argument("--margin-mib", type=float, default=4.0, help="kept free in each call (default 4)")
    ap.add_argument("--jobs", type=int, default=2, help="compression processes (default 2)")
    ap.add_argument(
        "--recipe", default=os.environ.get("RECIPE", "paper"), choices=("paper", "cpu"), help="default paper"
    )
    ap.add_argument(
        "--runs", default=os.environ.get("RUNS"), help="run names (default: run.sh's for the recipe)"
    )
    ap.add_argument(
        "--epochs", type=int, default=int(os.environ["EPOCHS"]) if os.environ.get("EPOCHS") else None
    )
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SEED", "0")))
    ap.add_argument("--device", default=os.environ.get("DEVICE", "cuda"), help="of the runs (dry runs: cpu)")
    ap.add_argument("--deadline", type=int, default=int(os.environ.get("DEADLINE_S", "540")))
    ap.add_argument("--no-bench", dest="bench", action="store_false", help="no benchmark in the calls")
    ap.add_argument("--nice", type=int, default=10, help="lower this process's priority (default 10)")
    args = ap.parse_args()
    if args.nice:
        os.nice(args.nice)
    out = REPO / OUT_DIR
    out.mkdir(exist_ok=True)
    check = subprocess.run(["git", "check-ignore", "-q", f"{OUT_DIR}/manifest.json"], cwd=REPO)
    if check.returncode != 0:
        sys.exit(
            f"stage: {OUT_DIR}/ is not git-ignored: add '/{OUT_DIR}/' to .gitignore (carry needs it ignored)"
        )

    tree = travelling_tree_bytes()
    max_piece = int(CALL_LIMIT - tree - args.margin_mib * MIB)
    room = max_piece / MIB
    print(f"working tree that travels with each call: {tree / MIB:.1f} MiB; room per piece: {room:.1f} MiB")
    if max_piece < 8 * MIB:
        sys.exit(
            "stage: the working tree leaves under 8 MiB per call; ignore or remove large untracked files"
        )

    t0 = time.time()
    arrays = load_arrays(args.src)
    source_id = sha256_bytes(json.dumps(README_SHA256, sort_keys=True).encode())[:16]
    raw_bytes = sum(a.nbytes for a in arrays.values())
    n = args.pieces or max(1, math.ceil(raw_bytes * EST_RATIO / max_piece))
    print(f"read and checked {raw_bytes / MIB:.1f} MiB of arrays in {time.time() - t0:.0f} s", flush=True)

    m = reusable(out, source_id, args.pieces)
    # Reused if they still fit and fewer would not (the tree shrank, or more room came): a call fewer
    # saves device time in every session.
    if m is not None and len(m["pieces"]) > n and not args.pieces:
        print(f"the {len(m['pieces'])} pieces in {OUT_DIR}/ could be {n} now; rebuilding")
        m = None
    if m is not None and max(p["bytes"] for p in m["pieces"]) <= max_piece:
        print(f"reusing the {len(m['pieces'])} pieces already in {OUT_DIR}/")
    else:
        while True:
            built = build(out, arrays, n, args.jobs, max_piece)
            if built is not None:
                break
            if args.pieces:
                sys.exit(f"stage: a piece of {n} is over {max_piece / MIB:.1f} MiB; use more --pieces")
            n += 1
            print(f"a piece was over the room per call; trying {n} pieces")
        m = {
            "format": FORMAT,
            "source_id": source_id,
            "source": str(args.src),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "filters": [{k: v for k, v in f.items()} for f in FILTERS],
            "transform": {"codec": "med-green", "images": len(arrays["x_train"]) + len(arrays["x_test"])},
            "arrays": built["specs"],
            "raw_bytes": built["raw_bytes"],
            "pieces": built["pieces"],
        }
        m["id"] = sha256_bytes(json.dumps([p["sha256"] for p in m["pieces"]]).encode())[:16]
        (out / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")

    names = args.runs.split() if args.runs else default_runs(args.recipe)
    folders = run_folders(names, args.recipe, args.epochs, args.seed, args.device)
    # A finished run would start again from epoch 0 on the device (nothing to resume): leave it out.
    finished = [f for f in folders if any((d / f / "summary.json").is_file() for d in FINISHED_DIRS)]
    for f in finished:
        print(f"run {f}: finished already (its summary.json is here): left out of the job")
    todo = [(n, f) for n, f in zip(names, folders, strict=True) if f not in finished]
    if not todo:
        sys.exit("stage: every named run has finished; name others with --runs")
    names, folders = [n for n, _ in todo], [f for _, f in todo]
    resume = bundle_runs(out, folders)
    small = (out / "manifest.json").stat().st_size + 64 * 1024  # + resume.json
    rooms = [int(CALL_LIMIT - tree - small - args.margin_mib * MIB - p["bytes"]) for p in m["pieces"]]
    per_call = assign(
        resume["runs"] if resume else [], rooms, int(CALL_LIMIT - tree - small - args.margin_mib * MIB)
    )
    epochs = f"EPOCHS={args.epochs} " if args.epochs else ""
    job = (
        f"RECIPE={args.recipe} {epochs}{'SEED=' + str(args.seed) + ' ' if args.seed else ''}PARALLEL=1 "
        f"DEADLINE_S={args.deadline} bash {RUN_SH} {' '.join(names)}"
    )
    seq = calls(m, job, resume, per_call, args.bench)
    (out / "calls.json").write_text(json.dumps(seq, indent=2) + "\n")
    total = sum(p["bytes"] for p in m["pieces"])
    print(f"\n{len(m['pieces'])} pieces, {total / MIB:.1f} MiB in all (manifest id {m['id']}), in {OUT_DIR}/")
    for folder in folders:
        carried = [e for e in (resume or {"runs": []})["runs"] if e["run"] == folder]
        state = f"resumes after epoch {carried[0]['epoch']}" if carried else "starts"
        print(f"run {folder}: {state}")
    print("Device calls (make them back to back: a machine stays warm ~30 s after a call):\n")
    for c in seq:
        size = (tree + sum((REPO / f).stat().st_size for f in c["carry"])) / MIB
        print(f"call {c['call']}/{len(seq)}: timeout_s={c['timeout_s']}, ~{size:.1f} MiB travels")
        print(f"  carry:   {json.dumps(c['carry'])}")
        print(f"  command: {c['command']}")
    print(f"\n(also in {OUT_DIR}/calls.json; scripts/device/README.md is the runbook)")


if __name__ == "__main__":
    main()
