#!/usr/bin/env python3
"""Run ON the device machine (run.sh calls it): machine description, and the packing of a job's outputs.

    python3 scripts/device/pack.py env --json WORK/env.json      # print versions, write them as JSON
    python3 scripts/device/pack.py pack --work WORK --out $OUT ...  # (run.sh) outputs -> at most 8 files
    python3 scripts/device/pack.py digest                        # the source digest, to compare here
    python3 scripts/device/pack.py unpack DIR [--force]          # HERE: check the returned files, unpack

`pack` writes into OUT, within the device tool's limits (8 files, 16 MiB each, 64 MiB in all):

    results.tar.gz   results/cifar10/<run>/{summary.json,log.jsonl,config.yaml,device.json,analysis/}
                     (<run>_stopped/ for a run the deadline cut: no summary), results/cifar10/<compare>/,
                     device/{manifest.json,phases.tsv,commands.txt,env.json,logs/,smoke/}
    weights.tar      runs/repro/<run>/last.pt (the full checkpoint: resumable) with the run's log.jsonl and
                     config.yaml, for every run that has one (a stopped run's folder, which a later session
                     carries back to resume it: stage.py); model.pt (model weights, config and metrics, no
                     optimizer state) instead where the full checkpoints do not fit; cut into
                     weights.tar.partNN (15 MiB) when over 15 MiB
    manifest.json    per run: status, epochs done, the exact train command, weights sha256, wall times,
                     top-1, MAC ratio, the training step's path (eager / captured / compiled, from the run's
                     log) and its epoch times in this job; the device, the phases' wall times, the source
                     digest, every file's sha256
    run.log          (written by run.sh itself, still growing while this runs: not in the sums)

Here, `pack.py unpack DIR` checks every returned file against manifest.json and the weights against their
sums, then writes results/ where it is committed, the weights into runs/repro/ where the benchmarks and
`batchshaping analyze` look for them (never committed) and device/ into runs/device/returned_<time>/; it
refuses to overwrite a file that exists with other contents unless --force, except where a run came back
further than it is here (runs/repro/<run>/ and results/.../<run>_stopped/ of a run resumed from an earlier
session). It appends one record per run and job to benchmarks/results/train_runs_gpu.jsonl: the model,
GPU, step path, median epoch time and how many runs shared the GPU. The final weights of every finished run
are published where they are committed: weights/cifar10/<run>.pt (model weights, config and metrics, no
optimizer state: `batchshaping eval` / `analyze` read it) and weights/cifar10/manifest.json (file, sha256,
the command that made it, top-1, MAC ratio, device, source digest).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from files import MIB, RUN_FILES, log_epochs, sha256_file

REPO = Path(__file__).resolve().parents[2]
FILE_LIMIT = 15 * MIB  # the tool returns files up to 16 MiB
TOTAL_LIMIT = 60 * MIB  # of 64 MiB in all; run.log and the manifest come on top
MAX_FILES = 8


def source_digest(root: Path = REPO) -> str:
    """sha256 over the package, the recipes and the scripts that train (path + content, sorted): the same
    tree here and there gives the same digest, so a result can be matched to a commit."""
    files: list[Path] = []
    for folder in ("batchshaping", "configs"):
        d = root / folder
        if d.is_dir():
            files += [
                p for p in d.rglob("*") if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts
            ]
    files += [root / "scripts" / "reproduce_cifar10.sh", root / "pyproject.toml"]
    h = hashlib.sha256()
    seen = set()
    for p in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        rel = p.relative_to(root).as_posix()
        if rel in seen or not p.is_file():
            continue
        seen.add(rel)
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


# ------------------------------------------------------------------------------------------------- env


def probe(json_path: Path | None = None) -> dict[str, Any]:
    """Print and return Python, numpy, torch, CUDA, the GPU and which optional packages import."""
    import importlib

    info: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable}
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:
        info["numpy"] = None
    try:
        import torch

        info.update(
            torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available()
        )
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        if info["cuda_available"]:
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_capability"] = list(torch.cuda.get_device_capability(0))
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except Exception as e:  # noqa: BLE001 - report whatever breaks
        info["torch_error"] = f"{type(e).__name__}: {e}"
    try:
        q = "--query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu"
        r = subprocess.run(
            ["nvidia-smi", q, "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
        info["nvidia_smi"] = r.stdout.strip() or r.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        info["nvidia_smi"] = f"not available ({type(e).__name__})"
    info["packages"] = {}
    for mod in ("yaml", "tqdm", "tensorboard", "matplotlib"):
        try:
            importlib.import_module(mod)
            info["packages"][mod] = "ok"
        except Exception as e:  # noqa: BLE001
            info["packages"][mod] = f"missing ({type(e).__name__})"
    sys.path.insert(0, str(REPO))
    try:
        importlib.import_module("batchshaping.cli")
        importlib.import_module("batchshaping.train")
        info["batchshaping"] = "ok"
    except Exception as e:  # noqa: BLE001
        info["batchshaping"] = f"does not import: {type(e).__name__}: {e}"
    info["cpu_count"] = os.cpu_count()
    info["source_digest"] = source_digest()
    info["git_commit"] = git_commit()
    line = (
        f"python {info['python']}, numpy {info['numpy']}, torch {info.get('torch')}, CUDA {info.get('cuda')}"
    )
    line += f", cuDNN {info.get('cudnn')}, GPU {info.get('gpu', 'NONE')}, {info['cpu_count']} CPUs"
    print(line)
    print(f"nvidia-smi: {info['nvidia_smi']}")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items()))
    print(f"batchshaping: {info['batchshaping']} (source digest {info['source_digest']})")
    if "torch_error" in info:
        print(f"torch: {info['torch_error']}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(info, indent=2) + "\n")
    return info


# ------------------------------------------------------------------------------------------------ pack


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_tsv(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line.strip()]


def train_commands(work: Path) -> dict[str, str]:
    """run folder -> the exact `python -m batchshaping train ...` that the shim saw (the last one)."""
    out = {}
    for row in read_tsv(work / "commands.txt"):
        argv = shlex.split(row[-1])
        if "--out" in argv and "train" in argv:
            out[Path(argv[argv.index("--out") + 1]).name] = "python " + row[-1].strip()
    return out


def last_record(log: Path, key: str | None = None) -> dict[str, Any] | None:
    """The log's last record (that has ``key``, if given)."""
    if not log.is_file():
        return None
    for line in reversed(log.read_text().splitlines()):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if key is None or key in r:
            return r
    return None


def speed(log: Path, start: int, *run_logs: Path) -> dict[str, Any]:
    """The training step's path (the last "training step: <path> (...)" line of the run's output) and the
    epoch times of this job: wall_time_s differences of the log's records from ``start`` on (the records
    there before the job: a run resumed from an earlier session), after the first epoch the job trained
    (that one holds the start, warm-up and capture: ``first_epoch_s``). The median includes the evaluation
    epochs (every eval_every) but is set by the others."""
    path = precision = None
    for f in run_logs:
        if f.is_file():
            for line in f.read_text(errors="replace").splitlines():
                if line.startswith("training step: "):
                    path = line.removeprefix("training step: ").split(" ")[0]
                elif line.startswith("run folder ") and ") on " in line and line.endswith("each"):
                    precision = line.split(") on ", 1)[1].split("(", 1)[1].split(")")[0]
            break
    records = []
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    times = [float(r["wall_time_s"]) for r in records if "wall_time_s" in r]
    job = times[start:]
    first = job[0] - (times[start - 1] if start > 0 else 0.0) if job else None
    diffs = sorted(b - a for a, b in zip(job, job[1:], strict=False))
    median = diffs[len(diffs) // 2] if diffs else None
    return {
        "step_path": path,
        "step_precision": precision,
        "epochs_this_job": len(job),
        "first_epoch_s": round(first, 2) if first is not None else None,
        "median_epoch_s": round(median, 3) if median is not None else None,
    }


def model_only(src: Path, dest: Path) -> None:
    """The checkpoint without optimizer, scaler and RNG states: still loads with load_model / analyze."""
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    keep = {k: v for k, v in ckpt.items() if k not in ("optimizer", "scaler", "rng")}
    torch.save(keep, dest)


def add_tree(tar: tarfile.TarFile, src: Path, arc: str, skip: tuple[str, ...] = ()) -> None:
    """A file or a folder's files into the tarball, without files named by ``skip`` patterns."""
    if src.is_dir():
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src)
            if p.is_file() and not any(rel.match(pat) or p.name == pat for pat in skip):
                tar.add(p, f"{arc}/{p.relative_to(src).as_posix()}")
    elif src.is_file():
        tar.add(src, arc)


def split(path: Path, limit: int | None = None) -> list[Path]:
    """Cut a file over ``limit`` (default FILE_LIMIT) into path.partNN pieces (cat them back in order)."""
    limit = limit or FILE_LIMIT
    if path.stat().st_size <= limit:
        return [path]
    parts = []
    with open(path, "rb") as f:
        for i, chunk in enumerate(iter(lambda: f.read(limit), b"")):
            part = path.with_name(f"{path.name}.part{i:02d}")
            part.write_bytes(chunk)
            parts.append(part)
    path.unlink()
    return parts


def pack(args: argparse.Namespace) -> None:
    t0 = time.time()
    work, out, repro = Path(args.work), Path(args.out), Path(args.repro)
    out.mkdir(parents=True, exist_ok=True)
    runs = read_tsv(work / "runs.tsv")  # name, folder
    before = dict(read_tsv(work / "resumed.tsv"))  # folder -> records in its log.jsonl before this job
    commands = train_commands(work)
    env = read_json(work / "env.json") or {}
    phases = {
        r[0]: {"start": float(r[1]), "end": float(r[2]), "rc": int(r[3])}
        for r in read_tsv(work / "phases.tsv")
    }
    for p in phases.values():
        p["wall_s"] = round(p["end"] - p["start"], 1)
    results = Path("results") / "cifar10"

    entries: list[dict[str, Any]] = []
    layout: list[tuple[Path, str]] = []  # (source, name in results.tar.gz)
    for name, folder in runs:
        rdir = repro / folder
        summary = read_json(rdir / "summary.json")
        last = last_record(rdir / "log.jsonl")
        evaluated = last_record(rdir / "log.jsonl", "top1")  # the paper's recipe evaluates every 5 epochs
        ckpt = rdir / "last.pt"
        epochs_done = int(last["epoch"]) if last and "epoch" in last else 0
        if summary:
            status = "complete"
        elif epochs_done:
            status = "stopped"  # the deadline (or an error) cut it after a finished epoch
        else:
            status = "no epoch finished" if rdir.is_dir() else "not started"
        dest = results / (folder if summary else f"{folder}_stopped")
        e: dict[str, Any] = {
            "name": name,
            "run": folder,
            "status": status,
            "results_folder": dest.as_posix() if epochs_done else None,
            "epochs_done": epochs_done,
            "epochs": int(args.epochs),
            "command": commands.get(folder),
            "script_command": args.script_command,
            "device": (summary or {}).get("machine") or env.get("gpu"),
            "precision": (summary or {}).get("precision"),
            "train_wall_time_s": (summary or last or {}).get("wall_time_s"),
            "top1": (summary or evaluated or {}).get("top1"),
            "mac_ratio": (summary or evaluated or {}).get("mac_ratio"),
            "evaluated_epoch": (evaluated or {}).get("epoch"),
            "analysis": (work / "analysis" / folder / "report.md").is_file(),
            "weights": None,
        }
        entries.append(e)
        if not epochs_done:
            continue
        for f in ("summary.json", "log.jsonl", "config.yaml"):
            if (rdir / f).is_file():
                layout.append((rdir / f, (dest / f).as_posix()))
        if (work / "analysis" / folder).is_dir():
            layout.append((work / "analysis" / folder, (dest / "analysis").as_posix()))
        if ckpt.is_file():
            e["weights"] = {"source": ckpt, "file": f"runs/repro/{folder}/last.pt", "kind": "full checkpoint"}
        logs = (repro / f"{folder}.log", work / "logs" / f"train_{folder}.log")
        e.update(speed(rdir / "log.jsonl", int(before.get(folder, 0)), *logs))

    # weights: full checkpoints if they fit, else model-only copies (largest first) until they do
    small = sum(f.stat().st_size for src, _ in layout for f in ([src] if src.is_file() else src.rglob("*")))
    budget = TOTAL_LIMIT - small - 2 * MIB  # results.tar.gz (at most its sources' size) and the manifest
    with_w = [e for e in entries if e["weights"]]
    if sum(e["weights"]["source"].stat().st_size for e in with_w) > budget:
        slim = work / "slim"
        slim.mkdir(exist_ok=True)
        for e in sorted(with_w, key=lambda e: -e["weights"]["source"].stat().st_size):
            dest_pt = slim / f"{e['run']}.model.pt"
            model_only(e["weights"]["source"], dest_pt)
            e["weights"] = {
                "source": dest_pt,
                "file": f"runs/repro/{e['run']}/model.pt",
                "kind": "model only",
            }
            if sum(x["weights"]["source"].stat().st_size for x in with_w) <= budget:
                break
    total_w = sum(e["weights"]["source"].stat().st_size for e in with_w)
    if total_w > budget:
        print(f"pack: weights ({total_w / MIB:.1f} MiB) do not fit even without optimizer states; not packed")
        for e in with_w:
            e["weights"] = {"file": None, "kind": "not packed (too large)"}
        with_w = []
    for e in with_w:
        w = e["weights"]
        w["bytes"] = w["source"].stat().st_size
        w["sha256"] = sha256_file(w["source"])

    manifest: dict[str, Any] = {
        "format": "batchshaping-device-run-v1",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": args.status,
        "script_command": args.script_command,
        "settings": json.loads(args.settings) if args.settings else {},
        "deadline_s": float(args.deadline) if args.deadline else None,
        "device": {k: env.get(k) for k in ("gpu", "gpu_memory_gib", "nvidia_smi", "torch", "cuda", "cudnn")},
        "python": env.get("python"),
        "packages": env.get("packages"),
        "source_digest": env.get("source_digest") or source_digest(),
        "git_commit": env.get("git_commit"),
        "phases": phases,
        "runs": [{k: v for k, v in e.items()} for e in entries],
        "compare": args.compare_name if (work / "compare" / "compare.json").is_file() else None,
        "files": [],
    }
    for e in manifest["runs"]:
        if e["weights"]:
            e["weights"] = {k: v for k, v in e["weights"].items() if k != "source"}

    # per-run device.json inside the run's results folder: this run's entry plus the machine
    per_run = work / "device_json"
    per_run.mkdir(exist_ok=True)
    for e in manifest["runs"]:
        if e["results_folder"]:
            p = per_run / f"{e['run']}.json"
            keep = {k: manifest[k] for k in ("created_utc", "device", "source_digest", "git_commit")}
            p.write_text(json.dumps({**e, **keep}, indent=2) + "\n")
            layout.append((p, f"{e['results_folder']}/device.json"))
    if manifest["compare"]:
        layout.append((work / "compare", (results / args.compare_name).as_posix()))
    for f in ("phases.tsv", "commands.txt", "env.json"):
        layout.append((work / f, f"device/{f}"))
    layout += [(work / "logs", "device/logs")]
    layout += [(d, f"device/{d.name}") for d in sorted(work.glob("smoke*"))]  # smoke, smoke_eager

    res_path = out / "results.tar.gz"
    with tarfile.open(res_path, "w:gz") as tar:
        for src, arc in layout:
            add_tree(tar, src, arc, skip=("*.pt", "events.out.tfevents.*"))
        partial = json.dumps(manifest, indent=2, default=str).encode()
        info = tarfile.TarInfo("device/manifest.json")
        info.size, info.mtime = len(partial), int(time.time())
        tar.addfile(info, io.BytesIO(partial))
    files = split(res_path)
    if with_w:
        w_path = out / "weights.tar"
        with tarfile.open(w_path, "w") as tar:
            for e in with_w:
                tar.add(e["weights"]["source"], e["weights"]["file"])
                if e["weights"]["kind"] == "full checkpoint":  # the rest of a resumable run folder
                    for f in (f for f in RUN_FILES if f != "last.pt"):  # last.pt: added above
                        if (repro / e["run"] / f).is_file():
                            tar.add(repro / e["run"] / f, f"runs/repro/{e['run']}/{f}")
        w_parts = split(w_path)
        room = MAX_FILES - 2 - len(files)  # run.log and manifest.json
        if len(w_parts) > room:
            print(f"pack: {len(w_parts)} weight parts but room for {room} files; dropping the weights")
            for p in w_parts:
                p.unlink()
            w_parts = []
            for e in manifest["runs"]:
                if e["weights"]:
                    e["weights"] = {"file": None, "kind": "not packed (too many files)"}
        files += w_parts
    for f in files:
        manifest["files"].append({"name": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)})
    manifest["pack_wall_s"] = round(time.time() - t0, 1)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(
        f"pack: {len(list(out.iterdir()))} files in {out}, {total / MIB:.1f} MiB ({time.time() - t0:.1f} s)"
    )
    for e in entries:
        w = e["weights"]
        print(
            f"  {e['run']}: {e['status']}, {e['epochs_done']}/{e['epochs']} epochs, top1 {e['top1']}, "
            f"weights {w['kind'] if w else 'none'}"
        )


def _joined(d: Path, name: str, tmp: Path) -> Path | None:
    """``name`` in ``d``, or its .partNN pieces joined into ``tmp``; None if neither is there."""
    if (d / name).is_file():
        return d / name
    parts = sorted(d.glob(f"{name}.part[0-9][0-9]"))
    if not parts:
        return None
    with open(tmp, "wb") as f:
        for part in parts:
            f.write(part.read_bytes())
    return tmp


SPEED_LOG = "benchmarks/results/train_runs_gpu.jsonl"
WEIGHTS = "weights/cifar10"  # published final weights of finished runs, and their manifest


def publish(m: dict[str, Any], root: Path = REPO) -> list[str]:
    """Model-only copies of the finished runs' checkpoints (now in runs/repro/) into WEIGHTS, each listed
    in WEIGHTS/manifest.json with its sha256 and the command that made it; returns the files written."""
    folder = root / WEIGHTS
    index = folder / "manifest.json"
    listed = {e["run"]: e for e in (json.loads(index.read_text())["weights"] if index.is_file() else [])}
    written = []
    for e in m["runs"]:
        src = root / "runs" / "repro" / e["run"] / "last.pt"
        if e["status"] != "complete" or (e["weights"] or {}).get("kind") != "full checkpoint":
            continue
        if not src.is_file() or sha256_file(src) != e["weights"]["sha256"]:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / f"{e['run']}.pt"
        tmp = dest.with_suffix(".pt.tmp")
        model_only(src, tmp)
        tmp.replace(dest)
        listed[e["run"]] = {
            "run": e["run"],
            "file": f"{WEIGHTS}/{dest.name}",
            "bytes": dest.stat().st_size,
            "sha256": sha256_file(dest),
            "content": "model weights, config, metrics (no optimizer state)",
            "command": e["command"],
            "epochs": e["epochs_done"],
            "top1": e["top1"],
            "mac_ratio": e["mac_ratio"],
            "device": e["device"],
            "precision": e["precision"],
            "trained_utc": m["created_utc"],
            "source_digest": m.get("source_digest"),
            "checkpoint_sha256": e["weights"]["sha256"],
        }
        written.append(listed[e["run"]]["file"])
    if written:
        body = {"weights": sorted(listed.values(), key=lambda x: x["run"])}
        index.write_text(json.dumps(body, indent=2) + "\n")
    return written


def local_epochs(run: str) -> int:
    """Epochs of ``run`` here: the records of its newest log.jsonl (run folder or results/..._stopped)."""
    folders = (REPO / "runs" / "repro" / run, REPO / "results" / "cifar10" / f"{run}_stopped")
    return max(log_epochs(f / "log.jsonl") for f in folders)


def newer_runs(runs: list[dict[str, Any]]) -> set[str]:
    """Runs that came back further than they are here (a run carried to the device and resumed there)."""
    return {e["run"] for e in runs if e["epochs_done"] and e["epochs_done"] >= local_epochs(e["run"])}


def _superseded(target: Path, further: set[str]) -> bool:
    """A file that a further-trained copy of its run may replace: the run folder or its _stopped results."""
    parts = target.parts
    if parts[:2] == ("runs", "repro") and len(parts) > 3:
        return parts[2] in further
    if parts[0] == "results" and len(parts) > 3 and parts[2].endswith("_stopped"):
        return parts[2].removesuffix("_stopped") in further
    return False


def speed_records(m: dict[str, Any]) -> int:
    """Append one record per run that trained in this job to SPEED_LOG (skipped if already there)."""
    path = REPO / SPEED_LOG
    seen = set()
    for line in path.read_text().splitlines() if path.is_file() else []:
        r = json.loads(line)
        seen.add((r.get("run"), r.get("job_utc")))
    concurrent = sum(1 for e in m["runs"] if e.get("epochs_this_job"))
    settings = m.get("settings") or {}
    added = 0
    with open(path, "a") as f:
        for e in m["runs"]:
            if not e.get("median_epoch_s"):
                continue
            rec = {
                "kind": "run",
                "run": e["run"],
                "model": (e.get("name") or "").split("_bs")[0].split("_l0")[0],
                "device": (m.get("device") or {}).get("gpu") or "cpu",
                "path": e.get("step_path"),
                "median_epoch_s": e["median_epoch_s"],
                "first_epoch_s": e.get("first_epoch_s"),
                "epochs_this_job": e["epochs_this_job"],
                "concurrent": concurrent if settings.get("PARALLEL") == "1" else 1,
                "precision": e.get("precision") or e.get("step_precision"),
                "job_utc": m["created_utc"],
                "torch": (m.get("device") or {}).get("torch"),
                "source_digest": m.get("source_digest"),
            }
            if (e["run"], m["created_utc"]) in seen:
                continue
            f.write(json.dumps(rec) + "\n")
            added += 1
    return added


def unpack(args: argparse.Namespace) -> None:
    """HERE: check the returned files against their manifest, then put results/ and the weights in place."""
    import tempfile

    d = Path(args.dir)
    m = json.loads((d / "manifest.json").read_text())
    bad = [
        f["name"]
        for f in m["files"]
        if not (d / f["name"]).is_file() or sha256_file(d / f["name"]) != f["sha256"]
    ]
    if bad:
        sys.exit(f"unpack: missing or corrupt (sha256 differs from manifest.json): {', '.join(bad)}")
    weights = {
        e["weights"]["file"]: e["weights"]["sha256"] for e in m["runs"] if (e["weights"] or {}).get("sha256")
    }
    stamp = m["created_utc"].replace(":", "").replace("-", "")
    plan: list[tuple[Path, bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind in (("results.tar.gz", "r:gz"), ("weights.tar", "r:")):
            path = _joined(d, name, Path(tmp) / name)
            if path is None:
                continue
            with tarfile.open(path, kind) as tar:
                for member in tar.getmembers():
                    parts = Path(member.name).parts
                    if not member.isfile() or ".." in parts or Path(member.name).is_absolute():
                        continue
                    f = tar.extractfile(member)
                    assert f is not None
                    data = f.read()
                    if parts[0] == "device":  # logs and the manifest: beside the runs, never committed
                        target = Path("runs", "device", f"returned_{stamp}", *parts[1:])
                    elif parts[0] == "results" or parts[:2] == ("runs", "repro"):
                        target = Path(member.name)
                    else:
                        continue
                    if member.name in weights and hashlib.sha256(data).hexdigest() != weights[member.name]:
                        sys.exit(f"unpack: {member.name}: sha256 differs from the manifest")
                    plan.append((target, data))
    further = newer_runs(m["runs"])
    clash = [
        t
        for t, data in plan
        if (REPO / t).is_file() and (REPO / t).read_bytes() != data and not _superseded(t, further)
    ]
    if clash and not args.force:
        listing = "\n  ".join(str(t) for t in clash[:20])
        sys.exit(
            f"unpack: {len(clash)} files exist here with other contents (--force overwrites):\n  {listing}"
        )
    for target, data in plan:
        (REPO / target).parent.mkdir(parents=True, exist_ok=True)
        (REPO / target).write_bytes(data)
    folders = sorted({Path(*t.parts[:3]).as_posix() for t, _ in plan if t.parts[0] == "results"})
    records = speed_records(m)
    print(f"unpack: {len(plan)} files written under {REPO}; {records} speed records added to {SPEED_LOG}")
    published = publish(m)
    for f in published:
        print(f"  published {f} (listed in {WEIGHTS}/manifest.json)")
    for e in m["runs"]:
        w = (e["weights"] or {}).get("file")
        done = f"{e['epochs_done']}/{e['epochs']} epochs"
        pace = f", {e['median_epoch_s']} s/epoch ({e['step_path']})" if e.get("median_epoch_s") else ""
        print(f"  {e['run']}: {e['status']}, {done}, top1 {e['top1']}, weights {w}{pace}")
        old = Path("results", "cifar10", f"{e['run']}_stopped")
        if e["status"] == "complete" and (REPO / old).is_dir():
            print(f"    {old}/ is superseded by the finished run: git rm -r {old}")
    if records:
        folders.append(SPEED_LOG)
    if published:
        folders.append(WEIGHTS)
    if folders:
        print("to commit (the full checkpoints stay in runs/repro/, ignored):")
        print(f"  git add {' '.join(folders)}")
        print(f"  git commit -m '...' -- {' '.join(folders)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env", help="print versions; --json writes them")
    e.add_argument("--json", type=Path)
    sub.add_parser("digest", help="print the source digest of this tree")
    p = sub.add_parser("pack", help="pack a job's outputs into OUT")
    p.add_argument("--work", required=True, help="run.sh's work folder")
    p.add_argument("--out", required=True)
    p.add_argument("--repro", default="runs/repro", help="where reproduce_cifar10.sh writes the runs")
    p.add_argument("--epochs", default="0")
    p.add_argument("--compare-name", default="compare")
    p.add_argument("--script-command", default="")
    p.add_argument("--settings", default="", help="JSON of run.sh's settings")
    p.add_argument("--deadline", default="")
    p.add_argument("--status", default="")
    u = sub.add_parser("unpack", help="HERE: verify the returned files and put them in the repository")
    u.add_argument("dir", help="the folder holding the returned files (manifest.json, results.tar.gz, ...)")
    u.add_argument("--force", action="store_true", help="overwrite files that exist with other contents")
    args = ap.parse_args()
    if args.cmd == "unpack":
        unpack(args)
    elif args.cmd == "env":
        probe(args.json)
    elif args.cmd == "digest":
        print(source_digest())
    else:
        pack(args)


if __name__ == "__main__":
    main()
