"""GPU wall-clock latency of conditional inference (batchshaping.inference.compile_conditional), one shot.

Does skipping closed channels pay on a GPU? For gated_resnet50 at 224x224 (CIFAR-10 test images upsampled,
as benchmarks/latency.py does) and gated_resnet32 at 32x32, untrained gates calibrated on CPU to r ~ 0.5
(common.calibrate_untrained), several batch sizes, these variants run side by side on the same inputs:

    dense_folded        compile_conditional(dense twin): BN folded, gates forced open, TorchScript. Reference
    dense_eager         the plain dense ResNet (same weights, no gates, BN unfolded): the framework baseline
    masked              the original gated model in eval mode (closed channels computed, then times 0)
    cond, cond_eager    compile_conditional(gated, batch_mode="union"), script=True / False; batch 1
                        only (exact subsets)
    cond_union, cond_masked   batch > 1: compile_conditional(gated, batch_mode=...)
    cond_auto           compile_conditional(gated): batch_mode "auto", which is "masked" on a GPU
    cond_a1*            ResNet-50 only: the same with channel_align=1 (no padding to 8 channels)
    *_bf16              dense_eager / masked under bf16 autocast + channels_last (a GPU user's fast path),
                        dense_folded / cond (batch_mode "union") compiled from bf16 copies of the models

fp32 variants run with TF32 off. Numbers are medians over repeats of the wall time of one batch (perf_counter
with torch.cuda.synchronize before and after, so the host syncs of the conditional code are included), the
variants interleaved in a rotating order, each round on a new batch of images (cycled). ratio = ms / ms of
dense_folded; r = mean per-image MAC ratio (gates included) over the images cycled through. Each variant's
first output is checked against masked (dense_eager for the dense ones): max |diff| and argmax agreement.
Each batch runs about twice per variant: new/seen = medians over the variant's first / later runs of a batch
(cuDNN caches plans per conv shape, and the conditional variants make new shapes; variants with the same
open-channel subsets, e.g. cond and cond_eager, share that cache, so "new" can be warm). cudnn.benchmark off.
Errors are recorded and the run goes on; the JSON is rewritten after every (model, batch) cell. If
dense_folded fails, ratios are to dense_eager ("(eager)").

    python -m benchmarks.latency_gpu                          # the GPU run (~250 s: --budget-s 230)
    python -m benchmarks.latency_gpu --device cpu --quick     # a CPU smoke run
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

import batchshaping as bs
from batchshaping.inference import compile_conditional
from batchshaping.macs import MacCounter
from batchshaping.runtime import machine_description
from benchmarks.common import CIFAR_TEST, calibrate_untrained, dense_twin, load_images, mac_ratio

MODELS = {"gated_resnet50": (224, (1, 8, 64, 256)), "gated_resnet32": (32, (1, 64, 256, 1024))}
QUICK = {"gated_resnet50": (64, (1, 2)), "gated_resnet32": (32, (1, 4))}
REF = {"dense_folded": "dense_eager", "dense_eager_bf16": "dense_eager", "dense_folded_bf16": "dense_eager"}
nan, CL = float("nan"), torch.channels_last
SETUP_RESERVE_S = 20.0  # time kept back for each model still to set up


def err(e: BaseException) -> str:
    """The exception, shortened from the middle (the message ends TorchScript's), and its last frames."""
    msg = f"{type(e).__name__}: {e}".strip()
    msg = msg if len(msg) < 1000 else msg[:300] + " [...] " + msg[-600:]
    frames = traceback.extract_tb(e.__traceback__)[-3:]
    return msg + " @ " + " < ".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in frames)


def short(e: str) -> str:
    return e.split(" @ ")[0].strip().splitlines()[-1][-100:]


def build(name: str, gated: torch.nn.Module, twin: torch.nn.Module, dev: torch.device, bf16: bool):
    """({variant: (kind, fn)} (kind: "all" batches, "one" = batch 1 only, "many" = batch > 1), build errors,
    {variant: (scripted, batch_mode)} of the compiled ones)."""
    fns, errors, compiled = {}, {}, {}
    try:  # the dense ResNet without gates, else the twin (gates forced open)
        plain = bs.create_model(name.removeprefix("gated_")).eval()
        plain.load_state_dict({k: v for k, v in twin.state_dict().items() if ".gate." not in k})
    except Exception as e:
        plain, errors["dense_eager_plain"] = copy.deepcopy(twin), err(e)
    dense_eager, gated, twin = plain.to(dev), gated.to(dev), twin.to(dev)  # move first, then compile

    def amp(model):  # bf16 autocast + channels_last on a copy
        m = copy.deepcopy(model).to(memory_format=torch.channels_last)
        return torch.autocast(dev.type, dtype=torch.bfloat16)(lambda x: m(x.contiguous(memory_format=CL)))

    def half(model, **kw):  # compiled from a bf16 copy, bf16 input
        c = compile_conditional(copy.deepcopy(model).to(torch.bfloat16), **kw)
        return lambda x: c(x.to(torch.bfloat16))

    cc = compile_conditional
    specs = {
        "dense_folded": ("all", lambda: cc(twin)),
        "dense_eager": ("all", lambda: dense_eager),
        "masked": ("all", lambda: gated),
        "cond": ("one", lambda: cc(gated, batch_mode="union")),  # batch 1: the exact subsets
        "cond_eager": ("one", lambda: cc(gated, batch_mode="union", script=False)),
        "cond_auto": ("all", lambda: cc(gated)),
        **{f"cond_{m}": ("many", lambda m=m: cc(gated, batch_mode=m)) for m in ("union", "masked")},
    }
    if name == "gated_resnet50":
        specs["cond_a1"] = ("one", lambda: cc(gated, batch_mode="union", channel_align=1))
        specs["cond_a1_union"] = ("many", lambda: cc(gated, batch_mode="union", channel_align=1))
    if bf16:
        specs["dense_eager_bf16"] = ("all", lambda: amp(dense_eager))
        specs["masked_bf16"] = ("all", lambda: amp(gated))
        specs["dense_folded_bf16"] = ("all", lambda: half(twin))
        specs["cond_bf16"] = ("all", lambda: half(gated, batch_mode="union"))
    for k, (kind, make) in specs.items():
        try:
            fns[k] = (kind, make())
            if hasattr(fns[k][1], "scripted"):
                compiled[k] = (fns[k][1].scripted, fns[k][1].batch_mode)
        except Exception as e:
            errors[k] = err(e)
            print(f"  build {k} FAILED: {short(errors[k])}", flush=True)
    return fns, errors, compiled


def timed(fn, x, sync) -> tuple[torch.Tensor, float]:
    sync()
    t0 = time.perf_counter()
    out = fn(x)
    sync()
    return out, (time.perf_counter() - t0) * 1e3


def check(out: torch.Tensor, ref: torch.Tensor) -> dict:
    out = out.float()
    agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    diff, scale = (out - ref).abs().max().item(), ref.abs().max().item()
    return {"max_abs_diff": diff, "ref_max_abs": scale, "argmax_agree": agree, "argmax_identical": agree == 1}


@torch.inference_mode()
def measure(fns: dict, batches: list, repeats: int, share_s: float, deadline: float, sync) -> dict:
    """First call (checked) and a warm-up per variant, then rounds in rotating order; a variant stops once it
    has its minimum runs (3, or 1 when one call takes > share/8) and has spent its share of the cell."""
    res = {k: {"times": [], "idx": []} for k in fns}
    refs = {}
    for k in sorted(fns, key=lambda k: k not in ("masked", "dense_eager")):  # the references first
        if time.perf_counter() > deadline:
            res[k]["error"] = "skipped: budget"
            continue
        try:
            out, res[k]["first_ms"] = timed(fns[k], batches[0], sync)
            if k in ("masked", "dense_eager"):
                refs[k] = out.float()
            ref = refs.get(REF.get(k, "masked"))
            if ref is not None and k not in ("masked", "dense_eager"):
                res[k]["check"] = check(out, ref)
            del out
            timed(fns[k], batches[1 % len(batches)], sync)
        except Exception as e:
            res[k]["error"] = err(e)
            if "out of memory" in str(e) and torch.cuda.is_available():
                torch.cuda.empty_cache()
    alive = [k for k in fns if "error" not in res[k]]
    t_end = min(time.perf_counter() + share_s, deadline)
    share_k = share_s / max(len(alive), 1)
    spent = dict.fromkeys(alive, 0.0)
    min_runs = {k: 1 if res[k]["first_ms"] / 1e3 > share_s / 8 else 3 for k in alive}
    for rnd in range(repeats):
        now = time.perf_counter()
        if now > deadline or (now > t_end and all(len(res[k]["times"]) >= min_runs[k] for k in alive)):
            break
        i = (rnd + 2) % len(batches)  # batches 0 and 1 were the first call and the warm-up
        for j in range(len(alive)):
            k = alive[(rnd + j) % len(alive)]
            enough = len(res[k]["times"]) >= min_runs[k]
            if "error" in res[k] or (enough and (spent[k] > share_k or now > t_end)):
                continue
            try:
                _, t = timed(fns[k], batches[i], sync)
                res[k]["times"].append(t)
                res[k]["idx"].append(i)
                spent[k] += t / 1e3
            except Exception as e:
                res[k]["error"] = err(e)
    return res


def summarize(res: dict, batch: int) -> tuple[dict, str | None]:
    out = {}
    for k, d in res.items():
        row = {kk: v for kk, v in d.items() if kk not in ("times", "idx")}
        if d["times"]:
            ms = statistics.median(d["times"])
            row.update(ms_per_batch=ms, ms_per_image=ms / batch, images_per_s=1e3 * batch / ms)
            row.update(min_ms=min(d["times"]), runs=len(d["times"]))
            # A batch this variant had run before (its conv shapes, hence cuDNN plans, cached) or a new one.
            seen = [i < 2 or i in d["idx"][:j] for j, i in enumerate(d["idx"])]
            for key, want in (("ms_new_batches", False), ("ms_seen_batches", True)):
                ts = [t for t, s in zip(d["times"], seen, strict=True) if s == want]
                row[key] = statistics.median(ts) if ts else None
        out[k] = row
    ref = next((k for k in ("dense_folded", "dense_eager") if "ms_per_batch" in out.get(k, {})), None)
    for row in out.values():
        if ref and "ms_per_batch" in row:
            row["ratio"] = row["ms_per_batch"] / out[ref]["ms_per_batch"]
    return out, ref


def write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)


def table(result: dict) -> str:
    def f(v, fmt=".3f"):
        return "-" if v is None else format(v, fmt)

    cols = "model | batch | r | variant | ms/batch | ms/image | img/s | ratio | runs | new/seen | check"
    lines = [f"| {cols} |", "| --- | ---: | ---: | --- |" + " ---: |" * 6 + " --- |"]
    for cell in result["cells"]:
        for k, d in cell["variants"].items():
            c = d.get("check")
            chk = f"{c['max_abs_diff']:.1e} / {c['argmax_agree']:.2f}" if c else ""
            row = [cell["model"], cell["batch"], f(cell.get("r")), k]
            if "ms_per_batch" in d:
                row += [f(d["ms_per_batch"]), f(d["ms_per_image"], ".4f"), f(d["images_per_s"], ".0f")]
                ratio = f(d.get("ratio")) + ("" if cell.get("ratio_ref") == "dense_folded" else " (eager)")
                row += [ratio, d["runs"], f"{f(d['ms_new_batches'])}/{f(d['ms_seen_batches'])}"]
            else:
                row += [short(d.get("error", "no timed run")), "", "", "", "", ""]
            lines.append("| " + " | ".join(map(str, [*row, chk])) + " |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=CIFAR_TEST, help="cifar10_test.npz")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/latency_gpu.json"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--repeats", type=int, default=30, help="timed rounds per cell at most")
    p.add_argument("--budget-s", type=float, default=230.0, help="wall-clock budget from the start")
    p.add_argument("--no-bf16", action="store_true", help="skip the *_bf16 variants")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 3 repeats: a CPU smoke run")
    return p.parse_args()


def header(args: argparse.Namespace, dev: torch.device, repeats: int) -> dict:
    """The run's metadata: code version, command, device and software."""
    cuda = dev.type == "cuda"
    src = Path(__file__).resolve().parent.parent / "batchshaping" / "inference.py"
    return {
        "inference_py_sha1": hashlib.sha1(src.read_bytes()).hexdigest() if src.exists() else None,
        "command": " ".join(["python -m benchmarks.latency_gpu", *sys.argv[1:]]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": machine_description(dev),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "tf32": False,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "budget_s": args.budget_s,
        "repeats_max": repeats,
        "models": {},
        "cells": [],
    }


def setup_model(name: str, size: int, n_pool: int, args: argparse.Namespace, dev: torch.device, info: dict):
    """(variants, image pool on dev, per-image r or None) of one model; setup facts go into ``info``."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    gated = bs.create_model(name).eval()
    info["gate_bias_mu"] = calibrate_untrained(gated, args.data)  # on CPU
    twin = dense_twin(gated)
    fns, info["build_errors"], info["compiled"] = build(name, gated, twin, dev, not args.no_bf16)
    pool = load_images(args.data, n_pool, size, seed=3).to(dev)
    try:
        r_img = mac_ratio(gated, pool, MacCounter(gated, pool.shape[1:]), chunk=64).cpu()
    except Exception as e:
        r_img, info["r_error"] = None, err(e)
    info["setup_s"] = time.perf_counter() - t0
    print(f"\n{name} @ {size}x{size}: setup {info['setup_s']:.1f} s", flush=True)
    return fns, pool, r_img


def run_cell(name: str, b: int, fns: dict, pool, r_img, repeats: int, share: float, deadline: float, sync):
    """One (model, batch) cell: the variants for this batch size timed on batches cycled from the pool."""
    n_b = max(1, min(len(pool) // b, (repeats + 2) // 2 + 1))  # each batch runs about twice
    cell = {"model": name, "batch": b, "images_cycled": n_b * b, "share_s": round(share, 1)}
    batches = [pool[i * b : (i + 1) * b] for i in range(n_b)]
    if r_img is not None:
        cell["r"] = r_img[: n_b * b].mean().item()
    sel = {k: f for k, (kind, f) in fns.items() if kind == "all" or (kind == "one") == (b == 1)}
    t0 = time.perf_counter()
    try:
        cell["variants"], cell["ratio_ref"] = summarize(
            measure(sel, batches, repeats, share, deadline, sync), b
        )
    except Exception as e:  # a bug of this script: keep what the other cells have
        cell["variants"], cell["error"] = {}, err(e)
    cell["seconds"] = time.perf_counter() - t0
    print(f"  batch {b}: r {cell.get('r', nan):.3f} [{cell['seconds']:.0f} s] ms (ratio)", flush=True)
    for k, d in cell["variants"].items():
        how = f"{d['ms_per_batch']:.3f} ({d.get('ratio', nan):.3f})" if "ms_per_batch" in d else ""
        print(f"    {k:18s} {how or short(d.get('error', 'no timed run'))}", flush=True)
    return cell


def main() -> None:
    args = parse_args()
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    configs, repeats = (QUICK, 3) if args.quick else (MODELS, args.repeats)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 variants compare in real fp32
    torch.backends.cudnn.allow_tf32 = False
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if args.quick and not cuda:
        torch.set_num_threads(1)  # a smoke run on a small shared machine: 2 threads can be 10x slower
    result = header(args, dev, repeats)
    print(f"{result['device']} | torch {torch.__version__} cuda {torch.version.cuda}", flush=True)
    cells_left = sum(len(configs[m][1]) for m in args.models)
    for i_model, name in enumerate(args.models):
        size, batch_sizes = configs[name]
        info = result["models"][name] = {"input": f"{size}x{size}"}
        if time.perf_counter() > deadline:
            info["error"] = "skipped: budget"
            cells_left -= len(batch_sizes)
            continue
        try:
            fns, pool, r_img = setup_model(name, size, max(max(batch_sizes), repeats + 2), args, dev, info)
        except Exception as e:
            info["error"] = err(e)
            print(f"{name} setup FAILED: {info['error']}", flush=True)
            cells_left -= len(batch_sizes)
            write(args.out, result)
            continue
        for b in batch_sizes:
            reserve = SETUP_RESERVE_S * (len(args.models) - 1 - i_model)
            share = max(1.0, (deadline - time.perf_counter() - reserve) / cells_left)
            cells_left -= 1
            result["cells"].append(run_cell(name, b, fns, pool, r_img, repeats, share, deadline, sync))
            result["seconds"] = time.perf_counter() - t_start
            write(args.out, result)
        del fns, pool
        if cuda:
            torch.cuda.empty_cache()
    result["seconds"] = time.perf_counter() - t_start
    result["table_md"] = table(result)
    write(args.out, result)
    print(
        "\nms per batch: median over runs; ratio = ms / ms of dense_folded (cell's ratio_ref)\n"
        + result["table_md"]
    )
    print(f"\nwrote {args.out} ({result['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
