"""Training speed on CUDA: the eager step against the fast paths of batchshaping.fast_step, side by side.

For resnet20, resnet32 and gated_resnet32 with the paper recipe's step (their configs/ recipes: batch 256,
SGD + Nesterov, batch-shaping + L0 on the gated model; bf16 autocast, channels_last), each path in turn:

    eager               batchshaping.train.TrainStep, what runs without the fast path
    captured            FastTrainStep: the whole step as one CUDA graph (what step=auto picks on CUDA)
    compiled            FastTrainStep with torch.compile (--compile-mode, reduce-overhead: step=compile)
    captured+compiled   FastTrainStep compiled (--capture-compile-mode, no CUDA graphs) then captured

Each (model, path) first trains --warmup-steps steps (warm-up, capture or compilation: "warmup_s"), then
--epochs epochs through batchshaping.train.train_epoch (its host read every 20 steps included) on synthetic
CIFAR-sized uint8 images on the GPU, augmented there by TensorLoader as in a real run (speed does not depend
on the pixels), each epoch timed with CUDA events; every model's eager path first, then the next path. Before
the timings, --check trains --check-steps steps of each of --check-paths (default: captured) and of the eager
step from the same weights on the same batches (fp32, TF32 off, cuDNN deterministic, gates without noise: no
random numbers) and records the largest relative differences of the per-step losses and of the weights; "ok"
needs both < --check-tol and the path taken being the one asked for (a failed capture falls back to eager and
says why on stdout).

One JSON record per measurement is appended to --out (default benchmarks/results/train_gpu.jsonl):
kind "check" | "timing" | "profile" | "concurrent", model, path (taken) and requested_path,
device name, median_epoch_s, epoch_s, warmup_s, images_per_s, concurrent (training processes sharing the GPU),
gpu_sharing (nvidia-smi compute mode, other processes on the GPU, MPS), versions, git commit, time.

    python -m benchmarks.bench_train_gpu                              # check, then every model and path
    python -m benchmarks.bench_train_gpu --models gated_resnet32 --paths eager,captured --epochs 3
    python -m benchmarks.bench_train_gpu --concurrent 4 --paths captured   # 4 processes on one GPU at once
    python -m benchmarks.bench_train_gpu --profile                    # + torch.profiler tables, launches/step
    python -m benchmarks.bench_train_gpu --dry-run --out /tmp/t.jsonl   # the logic on CPU, tiny model

Without CUDA it exits at once (status 2) unless --dry-run, which runs everything on CPU with a tiny CIFAR
ResNet (8 layers, 16x16 images, batch 8, 2 steps per epoch), the "captured" path as the uncaptured fast step
and the compiled ones with the aot_eager backend: it checks the logic, not the speed.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from batchshaping.checkpoint import git_commit
from batchshaping.config import TrainConfig, load_config
from batchshaping.data import CIFAR10_MEAN, CIFAR10_STD, TensorLoader
from batchshaping.fast_step import FastTrainStep, unsupported
from batchshaping.macs import MacCounter
from batchshaping.models import GateConfig, create_model, model_info
from batchshaping.models.cifar_resnet import CifarResNet
from batchshaping.runtime import resolve_precision, seed_everything
from batchshaping.step import TrainStep, schedule, sgd
from batchshaping.tasks import ClassificationTask
from batchshaping.train import train_epoch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "train_gpu.jsonl"
RECIPES = {
    "resnet20": "cifar10_resnet20",
    "resnet32": "cifar10_resnet32",
    "gated_resnet32": "cifar10_gated_resnet32",
}
PATHS = ("eager", "captured", "compiled", "captured+compiled")
#: (lr, w_bs, w_l0) of the check's steps, cycled: each gate loss alone, both, neither.
CHECK_SCHEDULE = [(0.1, 0.75, 0.0), (0.1, 0.75, 0.0015), (0.1, 0.0, 0.0015), (0.05, 0.0, 0.0)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(RECIPES), help="comma-separated, from " + ", ".join(RECIPES))
    ap.add_argument(
        "--paths", default="eager,captured,compiled", help="comma-separated, from " + ", ".join(PATHS)
    )
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per (model, path)")
    ap.add_argument("--warmup-steps", type=int, default=20, help="untimed steps first (capture, compile)")
    ap.add_argument("--images", type=int, default=50000, help="synthetic training images (an epoch)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--precision", default="bf16", choices=("bf16", "fp32", "fp16"))
    ap.add_argument(
        "--at", type=float, default=0.0, help="training progress t of the timed epochs (schedules)"
    )
    ap.add_argument("--compile-mode", default="reduce-overhead", help="torch.compile mode of 'compiled'")
    ap.add_argument("--capture-compile-mode", default="default", help="mode of 'captured+compiled'")
    ap.add_argument(
        "--check", action=argparse.BooleanOptionalAction, default=True, help="agreement check first"
    )
    ap.add_argument("--check-only", action="store_true", help="only the agreement check")
    ap.add_argument("--check-paths", default="captured", help="fast paths the check compares with eager")
    ap.add_argument("--check-steps", type=int, default=8)
    ap.add_argument("--check-tol", type=float, default=1e-3)
    ap.add_argument("--profile", action="store_true", help="torch.profiler over --profile-steps per run")
    ap.add_argument("--profile-steps", type=int, default=10)
    ap.add_argument("--concurrent", type=int, default=1, help="training processes at once on the GPU")
    ap.add_argument("--budget-s", type=float, default=540.0, help="start no measurement after this")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON lines file the records are appended to")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, 2 steps: the logic only")
    ap.add_argument("--worker-dir", help=argparse.SUPPRESS)  # set by --concurrent for its processes
    ap.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.models, args.paths, args.check_paths = (
        a.split(",") for a in (args.models, args.paths, args.check_paths)
    )
    bad = [m for m in args.models if m not in RECIPES]
    bad += [
        p for p in args.paths + args.check_paths if p not in PATHS or (p == "eager" and p in args.check_paths)
    ]
    if bad:
        ap.error(f"unknown model or path (the check compares fast paths): {', '.join(dict.fromkeys(bad))}")
    if args.dry_run:
        args.images, args.batch, args.epochs = 16, 8, 1
        args.warmup_steps, args.check_steps, args.profile_steps = 2, 3, 2
        args.precision = "fp32"
        args.budget_s = float("inf")
    return args


# ------------------------------------------------------------------------------------------- set-up


def build_model(name: str, args: argparse.Namespace, noise: bool) -> torch.nn.Module:
    gate = GateConfig(noise=noise) if model_info(name).gated else None
    if args.dry_run:  # a tiny stand-in of the same kind
        return CifarResNet(8, num_classes=10, gate=gate)
    return create_model(name, num_classes=10, **({"gate": gate} if gate else {}))


def setup(
    name: str, args: argparse.Namespace, device: torch.device, noise: bool = True, precision: str = ""
) -> tuple[TrainConfig, TrainStep]:
    """The config and the eager step of the recipe of ``name``, as fit builds them: model (seed 0,
    channels_last), SGD groups, batch-shaping and L0 losses, MAC counter; ``precision`` or --precision."""
    cfg = load_config(RECIPES[name], [f"precision={precision or args.precision}", "progress=false"])
    cfg.data.batch_size, cfg.channels_last = args.batch, True
    seed_everything(0, deterministic=False)
    model = build_model(name, args, noise).to(device, memory_format=torch.channels_last)
    amp_dtype = resolve_precision(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    counter = MacCounter(model, (3, image_size(args), image_size(args)))
    return cfg, TrainStep(
        model, model, sgd(model, cfg), scaler, ClassificationTask(), counter, cfg, amp_dtype
    )


def image_size(args: argparse.Namespace) -> int:
    return 16 if args.dry_run else 32


def make_step(path: str, eager: TrainStep, args: argparse.Namespace) -> Any:
    """The step of ``path`` around ``eager`` (on CPU, --dry-run: "captured" runs uncaptured); the eager one
    where the fast step does not apply (fp16)."""
    why_not = unsupported(eager)
    if path == "eager" or why_not:
        if why_not:
            print(f"{path}: eager ({why_not})", flush=True)
        return eager
    capture = path.startswith("captured") and eager.device.type == "cuda"
    mode = {"compiled": args.compile_mode, "captured+compiled": args.capture_compile_mode}.get(path)
    backend = "aot_eager" if args.dry_run else "inductor"
    if mode is not None:  # each step compiles afresh: no cache of another model, no recompile limit hit
        torch._dynamo.reset()
    return FastTrainStep(eager, capture=capture, compile_mode=mode, compile_backend=backend)


def synthetic_loader(args: argparse.Namespace, device: torch.device) -> TensorLoader:
    """TensorLoader(train=True) over random uint8 images and labels made on the device (crop + flip there)."""
    torch.manual_seed(1)
    size = image_size(args)
    x = torch.randint(0, 256, (args.images, 3, size, size), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (args.images,), device=device)
    return TensorLoader(x, y, args.batch, True, device, CIFAR10_MEAN, CIFAR10_STD, channels_last=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------- measuring


def warm_up(step: Any, loader: TensorLoader, cfg: Any, steps: int, epoch: int) -> float:
    """``steps`` untimed training steps (the first ones: capture, compilation); their wall time."""
    device = step.device
    sync(device)
    t0, done = time.perf_counter(), 0
    loader.set_epoch(epoch)
    while done < steps:
        for x, y in loader:
            step(x, y, *schedule(cfg, epoch / cfg.epochs))
            done += 1
            if done == steps:
                break
    sync(device)
    return time.perf_counter() - t0


def time_epochs(
    step: Any, loader: TensorLoader, cfg: Any, epochs: int, epoch0: int
) -> tuple[list[float], dict]:
    """Seconds of each of ``epochs`` epochs of train_epoch (CUDA events on a GPU); the last epoch's log."""
    times, record = [], {}
    for k in range(epochs):
        loader.set_epoch(epoch0 + k)
        if step.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            record = train_epoch(step, loader, epoch0 + k, cfg)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            record = train_epoch(step, loader, epoch0 + k, cfg)
            times.append(time.perf_counter() - t0)
    return times, record


def measure(name: str, path: str, args: argparse.Namespace, device: torch.device, env: dict) -> list[dict]:
    """Warm-up, timed epochs and (--profile) a profile of one (model, path): its records."""
    cfg, eager = setup(name, args, device)
    loader = synthetic_loader(args, device)
    step = make_step(path, eager, args)
    epoch0 = int(args.at * cfg.epochs)
    warm_s = warm_up(step, loader, cfg, args.warmup_steps, epoch0)
    if args.worker_dir:  # --concurrent: time together
        env = {**env, "barrier_ok": barrier(Path(args.worker_dir), args.worker_index, args.concurrent)}
    times, log = time_epochs(step, loader, cfg, args.epochs, epoch0)
    median = statistics.median(times)
    record = {
        "kind": "timing",
        **base_record(name, path, step, args, env),
        "median_epoch_s": median,
        "epoch_s": times,
        "warmup_steps_s": warm_s,
        "warmup_s": getattr(step, "warmup_s", None),
        "steps_per_epoch": len(loader),
        "images_per_s": len(loader) * args.batch / median,
        "uncaptured_steps": getattr(step, "uncaptured_steps", 0),
        **{k: log.get(k) for k in ("lr", "w_bs", "w_l0", "train_loss", "train_mac_ratio")},
    }
    records = [record]
    if args.profile:
        records.append(profile(name, path, step, loader, cfg, epoch0, args, env))
    return records


def base_record(name: str, path: str, step: Any, args: argparse.Namespace, env: dict) -> dict:
    return {
        "model": name,
        "path": getattr(step, "path", "eager"),
        "requested_path": path,
        "batch": args.batch,
        "precision": args.precision,
        "channels_last": True,
        "progress_t": args.at,
        "concurrent": args.concurrent,
        "worker": args.worker_index if args.worker_dir else None,
        "dry_run": args.dry_run,
        **env,
    }


def profile(name, path, step, loader, cfg, epoch0, args, env) -> dict:
    """torch.profiler over --profile-steps steps: the table (file next to --out) and launches per step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = step.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    loader.set_epoch(epoch0)
    n = min(args.profile_steps, len(loader))
    with torch_profile(activities=acts) as prof:
        for _, (x, y) in zip(range(n), loader, strict=False):
            step(x, y, *schedule(cfg, epoch0 / cfg.epochs))
        sync(step.device)
    avg = prof.key_averages()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    folder = args.out.parent / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    table_file = folder / f"{name}_{path.replace('+', '_')}{'_dry' if args.dry_run else ''}.txt"
    table_file.write_text(avg.table(sort_by=sort, row_limit=30) + "\n")
    launch_ops = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")
    top = sorted(avg, key=lambda e: getattr(e, sort), reverse=True)[:10]
    return {
        "kind": "profile",
        **base_record(name, path, step, args, env),
        "steps": n,
        "kernel_launches_per_step": sum(e.count for e in avg if e.key in launch_ops) / n,
        "graph_launches_per_step": sum(e.count for e in avg if e.key == "cudaGraphLaunch") / n,
        "top_ops_us_per_step": [[e.key, getattr(e, sort) / n, e.count / n] for e in top],
        "table": str(table_file.relative_to(ROOT) if table_file.is_relative_to(ROOT) else table_file),
    }


# ------------------------------------------------------------------------------------ the agreement


def check(
    name: str, paths: list[str], args: argparse.Namespace, device: torch.device, env: dict
) -> list[dict]:
    """Do the fast paths train as the eager step does? --check-steps steps of each from the same weights on
    the same batches, fp32, TF32 off, cuDNN deterministic, gates without noise; relative differences."""
    flags = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.manual_seed(2)
        size = image_size(args)
        batches = [
            (
                torch.randn(args.batch, 3, size, size, device=device).contiguous(
                    memory_format=torch.channels_last
                ),
                torch.randint(0, 10, (args.batch,), device=device),
            )
            for _ in range(args.check_steps)
        ]
        init, runs = None, {}
        for path in ["eager", *paths]:
            eager = setup(name, args, device, noise=False, precision="fp32")[1]
            torch.backends.cudnn.benchmark = False  # setup's seed_everything turned it on
            if init is None:
                init = copy.deepcopy(eager.model.state_dict())
            eager.model.load_state_dict(init)
            step = make_step(path, eager, args)
            losses = []
            for i, (x, y) in enumerate(batches):
                stats = step(x, y, *CHECK_SCHEDULE[i % len(CHECK_SCHEDULE)])
                losses.append(float(stats[0] / stats[-1]))  # a sync per step: fine here
            params = [p.detach().clone() for p in eager.model.parameters()]
            runs[path] = (losses, params, getattr(step, "path", "eager"), step)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    ref_losses, ref_params = runs["eager"][:2]
    records = []
    for path in paths:
        losses, params, taken, step = runs[path]
        loss_rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, ref_losses, strict=True))
        param_rel = max(
            float((p - q).norm() / q.norm().clamp(min=1e-12)) for p, q in zip(params, ref_params, strict=True)
        )
        expected = path.split("+")[0] if not args.dry_run else "compiled" if "compiled" in path else "eager"
        ok = loss_rel < args.check_tol and param_rel < args.check_tol and taken == expected
        records.append(
            {
                "kind": "check",
                **base_record(name, path, step, args, env),
                "precision": "fp32",
                "steps": args.check_steps,
                "max_rel_loss_diff": loss_rel,
                "max_rel_param_diff": param_rel,
                "losses": losses,
                "eager_losses": ref_losses,
                "ok": ok,
            }
        )
    return records


# ------------------------------------------------------------------------ processes sharing the GPU


def barrier(folder: Path, index: int, n: int, timeout_s: float = 600.0) -> bool:
    """Wait until the n workers have warmed up (a file each in ``folder``): their timed epochs overlap."""
    (folder / f"ready{index}").touch()
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if len(list(folder.glob("ready*"))) >= n:
            return True
        time.sleep(0.05)
    return False


def concurrent(name: str, path: str, args: argparse.Namespace, env: dict) -> list[dict]:
    """--concurrent N processes training (name, path) at once; their records and an aggregate one."""
    with tempfile.TemporaryDirectory(prefix="bench_train_gpu_") as tmp:
        cmd = [sys.executable, "-m", "benchmarks.bench_train_gpu", "--worker-dir", tmp, "--models", name]
        cmd += ["--paths", path, "--no-check", "--concurrent", str(args.concurrent)]
        for key in ("epochs", "warmup_steps", "images", "batch", "precision", "at", "compile_mode"):
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        cmd += ["--capture-compile-mode", args.capture_compile_mode] + (["--dry-run"] if args.dry_run else [])
        child_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        child_env.setdefault("OMP_NUM_THREADS", "2")
        procs = [
            subprocess.Popen(
                [*cmd, "--worker-index", str(i), "--out", f"{tmp}/w{i}.jsonl"], cwd=ROOT, env=child_env
            )
            for i in range(args.concurrent)
        ]
        rcs = [wait(p, 900) for p in procs]
        records = [
            json.loads(line)
            for f in sorted(Path(tmp).glob("w*.jsonl"))
            for line in f.read_text().splitlines()
        ]
    timings = [r for r in records if r["kind"] == "timing"]
    aggregate = {
        "kind": "concurrent",
        "model": name,
        "requested_path": path,
        "paths": [r["path"] for r in timings],
        "concurrent": args.concurrent,
        "workers_ok": sum(rc == 0 for rc in rcs),
        "images_per_s_total": sum(r["images_per_s"] for r in timings),
        "median_epoch_s_mean": statistics.fmean(r["median_epoch_s"] for r in timings) if timings else None,
        "dry_run": args.dry_run,
        **env,
    }
    return records + [aggregate]


def wait(proc: subprocess.Popen, timeout_s: float) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child
        return proc.wait()


# ---------------------------------------------------------------------------------------- the run


def gpu_sharing() -> dict:
    """Who else uses the GPU and how it is shared: nvidia-smi compute mode and processes, MPS."""
    pipe = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
    info: dict[str, Any] = {
        "mps_control_binary": shutil.which("nvidia-cuda-mps-control"),
        "mps_daemon_running": (pipe / "control").exists(),
    }
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {**info, "nvidia_smi": None}

    def query(what: str) -> list[str]:
        try:
            out = subprocess.run(
                [smi, what, "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.SubprocessError) as e:
            return [f"error: {e}"]
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]

    gpu = query("--query-gpu=name,compute_mode,driver_version,memory.used,memory.total,utilization.gpu")
    apps = query("--query-compute-apps=pid,used_memory")
    return {**info, "nvidia_smi_gpu": gpu, "gpu_processes_at_start": len(apps), "gpu_processes": apps}


def environment(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu (dry run)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "git_commit": git_commit(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu_sharing": gpu_sharing() if cuda else None,
    }


def emit(records: list[dict], out: Path) -> None:
    """Append the records to ``out`` at once (a run cut short keeps what it measured) and print them short."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    for r in records:
        path = r.get("path", r["requested_path"])
        print(f"{r['kind']:10s} {r['model']:15s} {path:18s} {summary(r)}", flush=True)


def summary(r: dict) -> str:
    if r["kind"] == "check":
        diffs = f"losses {r['max_rel_loss_diff']:.2e}, weights {r['max_rel_param_diff']:.2e}"
        return f"rel diff: {diffs}, ok={r['ok']}"
    if r["kind"] == "timing":
        return f"{r['median_epoch_s']:.3f} s/epoch (warm-up {r['warmup_steps_s']:.1f} s)"
    if r["kind"] == "profile":
        kernels, graphs = r["kernel_launches_per_step"], r["graph_launches_per_step"]
        return f"{kernels:.0f} kernel + {graphs:.0f} graph launches/step"
    return f"{r['concurrent']} processes: {r['images_per_s_total']:.0f} img/s in all"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        msg = (
            "bench_train_gpu needs a CUDA GPU (torch.cuda.is_available() is False); --dry-run runs it on CPU"
        )
        print(msg, file=sys.stderr)
        return 2
    device = torch.device("cuda" if not args.dry_run else "cpu")
    env = environment(device)
    if args.worker_dir:  # one of --concurrent's processes
        emit(measure(args.models[0], args.paths[0], args, device, env), args.out)
        return 0
    t0 = time.monotonic()
    if args.check or args.check_only:
        for name in args.models:
            emit(check(name, args.check_paths, args, device, env), args.out)
    if args.check_only:
        return 0
    for path in args.paths:  # every model's eager time first: a run cut short keeps the baselines
        for name in args.models:
            if time.monotonic() - t0 > args.budget_s:
                print(f"skipped {name} {path}: --budget-s {args.budget_s:.0f} spent", flush=True)
                continue
            if args.concurrent > 1:
                emit(concurrent(name, path, args, env), args.out)
            else:
                emit(measure(name, path, args, device, env), args.out)
            gc.collect()  # the last step's graph, model and data (a FastTrainStep holds reference cycles)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
