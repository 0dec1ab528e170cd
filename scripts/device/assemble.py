#!/usr/bin/env python3
"""Run ON the device machine, in the repository root: rebuild CIFAR-10 from the pieces of stage.py.

    python3 scripts/device/assemble.py --stash [--probe]   # calls 1..N-1: keep this call's piece
    python3 scripts/device/assemble.py                     # last call (run.sh does it): all pieces -> npz

Pieces arrive one per call in .devdata/ (carried). --stash copies the carried manifest and pieces to the
stash folder outside the repository ($BS_DEVDATA_TMP, default /tmp/bsdev), which outlives the call while
the machine stays warm, after checking each piece's sha256 against the manifest, and says which pieces are
still missing. Without --stash it stashes too, then, once all pieces are there, decompresses them in
parallel, checks the content sha256 of every array (the sums of the data README) and writes the npz layout
(c) of batchshaping.data.cifar to <stash>/cifar10/:

    cifar10_train_part1.npz, cifar10_train_part2.npz (x_train, y_train), cifar10_test.npz (x_test, y_test)

uncompressed, then loads it with the package's own load_cifar10 (50,000 / 10,000 images) unless
--no-loader-check. A second run with the same manifest finds the marker and does nothing. --probe prints
the Python, torch and CUDA versions and which optional packages import. Needs only numpy (and torch for
the loader check). Exit status 3: pieces missing or corrupt.

Runs carried from an earlier session (stage.py: .devdata/resume.json and .devdata/resume/<run>.tar, each
a stopped run's folder: last.pt, log.jsonl, config.yaml) are stashed the same way, and the last call
restores them into runs/repro/<run>/, where reproduce_cifar10.sh resumes them; a run folder that is
already further along there (a rerun on the same machine) is kept. A listed run whose tarball is missing
or corrupt is an error too (exit 3): it would otherwise start again from epoch 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import codec
import numpy as np
from files import log_epochs, sha256_file

REPO = Path(__file__).resolve().parents[2]
CARRIED = REPO / ".devdata"
STASH = Path(os.environ.get("BS_DEVDATA_TMP", "/tmp/bsdev"))
MARKER = "ASSEMBLED.json"
RESUME = "resume"  # .devdata/resume.json, .devdata/resume/<run>.tar; the same names in the stash


class Missing(SystemExit):
    """Pieces are missing or corrupt: exit status 3 with the message."""

    def __init__(self, msg: str) -> None:
        print(f"assemble: {msg}", file=sys.stderr, flush=True)
        super().__init__(3)


def read_manifest(stash: Path) -> dict:
    """The carried manifest (copied into the stash, whose pieces of another staging are dropped), or the
    stash's own."""
    carried, kept = CARRIED / "manifest.json", stash / "manifest.json"
    if carried.is_file():
        m = json.loads(carried.read_text())
        if kept.is_file() and json.loads(kept.read_text()).get("id") != m["id"]:
            wanted = {p["file"] for p in m["pieces"]}
            for old in stash.glob("cifar10.*of*.xz"):
                if old.name not in wanted:
                    old.unlink()
            shutil.rmtree(stash / "cifar10", ignore_errors=True)
        stash.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(carried, kept)
        return m
    if kept.is_file():
        return json.loads(kept.read_text())
    raise Missing(
        f"no manifest: neither {CARRIED}/manifest.json (carry it in every call) nor {kept} (a fresh machine: "
        "make all the staging calls again, back to back)"
    )


def stash_pieces(m: dict, stash: Path) -> tuple[list[str], list[str]]:
    """Put the carried pieces into the stash; check every piece found. Returns (present, missing)."""
    present, missing = [], []
    for p in m["pieces"]:
        name, kept = p["file"], stash / p["file"]
        for src in (CARRIED / name, kept):
            if not src.is_file():
                continue
            if src.stat().st_size != p["bytes"] or sha256_file(src) != p["sha256"]:
                print(f"assemble: {src} is corrupt (size or sha256 differs from the manifest); ignored")
                continue
            if src != kept:
                tmp = stash / f".{name}.tmp"
                shutil.copyfile(src, tmp)
                tmp.replace(kept)
            present.append(name)
            break
        else:
            missing.append(name)
    return present, missing


def stash_runs(stash: Path) -> dict | None:
    """Keep the carried run tarballs (checked against resume.json) in the stash; return the resume list
    (the carried one, else the stash's), None if this session carries no runs."""
    carried, kept = CARRIED / f"{RESUME}.json", stash / f"{RESUME}.json"
    folder = stash / RESUME
    if carried.is_file():
        r = json.loads(carried.read_text())
        if kept.is_file() and json.loads(kept.read_text()).get("id") != r["id"]:
            shutil.rmtree(folder, ignore_errors=True)  # another staging's tarballs
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(carried, kept)
    elif kept.is_file():
        r = json.loads(kept.read_text())
    else:
        return None
    for e in r["runs"]:
        src, dest = CARRIED / RESUME / e["file"], folder / e["file"]
        if src.is_file() and not dest.is_file():
            if src.stat().st_size != e["bytes"] or sha256_file(src) != e["sha256"]:
                print(f"assemble: {src} is corrupt (size or sha256 differs from resume.json); ignored")
                continue
            tmp = folder / f".{e['file']}.tmp"
            shutil.copyfile(src, tmp)
            tmp.replace(dest)
    have = [e["run"] for e in r["runs"] if (folder / e["file"]).is_file()]
    print(f"assemble: {len(have)} of {len(r['runs'])} carried runs in {folder}")
    return r


def restore_runs(r: dict, stash: Path, repro: Path) -> None:
    """Unpack each carried run into repro/<run>/ unless the folder there is as far along already."""
    for e in r["runs"]:
        tar_path = stash / RESUME / e["file"]
        if not tar_path.is_file() or sha256_file(tar_path) != e["sha256"]:
            raise Missing(
                f"carried run {e['run']} ({e['file']}) is missing or corrupt: it would start again from "
                "epoch 0. Make the staging calls of scripts/device/README.md again, back to back."
            )
        dest = repro / e["run"]
        here = log_epochs(dest / "log.jsonl")
        if (dest / "last.pt").is_file() and here >= e["epoch"]:
            print(f"assemble: {dest} is at epoch {here} already (carried: {e['epoch']}); kept")
            continue
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            prefix = f"runs/repro/{e['run']}/"
            if any(not m.isfile() or not m.name.startswith(prefix) or ".." in m.name for m in members):
                raise Missing(f"{e['file']} holds files outside {prefix}")
            dest.mkdir(parents=True, exist_ok=True)
            for m in members:
                f = tar.extractfile(m)
                assert f is not None
                (dest / Path(m.name).name).write_bytes(f.read())
        print(f"assemble: {dest} restored at epoch {e['epoch']}: the run resumes there")


def decompress(stash: Path, p: dict) -> bytes:
    raw = lzma.decompress((stash / p["file"]).read_bytes(), format=lzma.FORMAT_XZ)
    if len(raw) != p["raw_bytes"]:
        raise Missing(f"{p['file']} decompresses to {len(raw)} bytes, the manifest says {p['raw_bytes']}")
    return raw


def assemble(m: dict, stash: Path, loader_check: bool) -> Path:
    out = stash / "cifar10"
    marker = out / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("id") == m["id"]:
        print(f"assemble: {out} already holds manifest {m['id']}")
        return out
    t0 = time.time()
    buf = np.empty(m["raw_bytes"], dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=len(m["pieces"])) as ex:  # lzma releases the GIL
        for p, raw in zip(m["pieces"], ex.map(lambda p: decompress(stash, p), m["pieces"]), strict=True):
            buf[p["raw_offset"] : p["raw_offset"] + p["raw_bytes"]] = np.frombuffer(raw, dtype=np.uint8)
    if m.get("transform"):  # images travel as codec.py residuals: decode in chunks, in parallel
        images = buf[: m["transform"]["images"] * 32 * 32 * 3].reshape(-1, 32, 32, 3)
        cuts = sorted({round(len(images) * k / 16) for k in range(17)})
        chunks = list(zip(cuts[:-1], cuts[1:], strict=True))
        with ThreadPoolExecutor(max_workers=16) as ex:  # numpy releases the GIL in the big steps
            decoded = ex.map(lambda c: codec.decode(images[c[0] : c[1]]), chunks)
            for (a, b), d in zip(chunks, decoded, strict=True):
                images[a:b] = d
    t1 = time.time()
    arrays = {}
    for s in m["arrays"]:
        a = buf[s["offset"] : s["offset"] + s["nbytes"]]
        if hashlib.sha256(a.data).hexdigest() != s["sha256"]:
            raise Missing(f"{s['name']}: content sha256 differs from the manifest after decompression")
        arrays[s["name"]] = a.view(s["dtype"]).reshape(s["shape"])
    out.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    half = len(arrays["x_train"]) // 2  # the npz layout holds the training set in two equal parts
    files = {
        "cifar10_train_part1.npz": {"x_train": arrays["x_train"][:half], "y_train": arrays["y_train"][:half]},
        "cifar10_train_part2.npz": {"x_train": arrays["x_train"][half:], "y_train": arrays["y_train"][half:]},
        "cifar10_test.npz": {"x_test": arrays["x_test"], "y_test": arrays["y_test"]},
    }
    for name, content in files.items():
        tmp = out / f".{name}.tmp.npz"
        np.savez(tmp, **content)
        tmp.replace(out / name)
    t2 = time.time()
    if loader_check:
        sys.path.insert(0, str(REPO))
        from batchshaping.data import load_cifar10

        d = load_cifar10(out)
        counts = (len(d.x_train), len(d.x_test))
        if counts != (50_000, 10_000) or tuple(d.x_train.shape[1:]) != (3, 32, 32):
            raise Missing(f"load_cifar10({out}) gave {counts} images of {tuple(d.x_train.shape[1:])}")
        dt = time.time() - t2
        print(f"assemble: load_cifar10 reads {counts[0]} train / {counts[1]} test images ({dt:.1f} s)")
    marker.write_text(json.dumps({"id": m["id"], "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ")}) + "\n")
    print(
        f"assemble: {out} written (decompress + decode {t1 - t0:.1f} s, check + write {t2 - t1:.1f} s, "
        f"{len(m['pieces'])} pieces)",
        flush=True,
    )
    return out


def probe() -> None:
    """Versions and optional packages (pack.py env), so a broken machine is seen in the first call."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pack import probe as pack_probe

    pack_probe()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stash", action="store_true", help="only keep the carried piece(s); do not assemble")
    ap.add_argument("--probe", action="store_true", help="print versions and optional packages")
    ap.add_argument("--no-loader-check", dest="loader_check", action="store_false")
    args = ap.parse_args()
    t0 = time.time()
    STASH.mkdir(parents=True, exist_ok=True)
    m = read_manifest(STASH)
    present, missing = stash_pieces(m, STASH)
    n = len(m["pieces"])
    print(f"assemble: manifest {m['id']}: {len(present)} of {n} pieces in {STASH} ({time.time() - t0:.1f} s)")
    if missing:
        print(f"assemble: still missing: {', '.join(missing)}")
    runs = stash_runs(STASH)
    if args.probe:
        probe()
    if args.stash:
        return
    if missing:
        raise Missing(
            f"cannot assemble: {len(missing)} of {n} pieces missing ({', '.join(missing)}). Either the "
            "machine was given back between calls (it stays warm ~30 s) or a call was skipped: make the "
            "staging calls of scripts/device/README.md again, back to back."
        )
    out = assemble(m, STASH, args.loader_check)
    if runs is not None:
        restore_runs(runs, STASH, REPO / "runs" / "repro")
    print(f"assemble: data ready in {out} ({time.time() - t0:.1f} s in all)")


if __name__ == "__main__":
    main()
