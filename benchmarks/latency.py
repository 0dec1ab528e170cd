"""Batch-1 CPU latency of conditional inference (:func:`batchshaping.inference.compile_conditional`).

For each model and thread count, side by side in one process, the variants run on the same images with
their order interleaved and rotated; a variant's latency is the mean over images of its per-image median
over the repeats (MACs are additive, so a mean latency is what compares with the mean MAC ratio r):

    dense         BN-folded dense model of the same architecture (the gated model with its gates forced
                  open, compiled: folded convs, no gate cost), eager PyTorch. The reference for the ratio.
    cond          compile_conditional(gated model, script=False): gates first, then only the open channels.
    dense_script, cond_script   the same two with torch.jit.script (compile_conditional's default).
    masked        the original gated model in eval mode (BatchNorm unfolded, closed channels times 0).

    reference, reference_script   with ``--reference``: another trained model, dense (e.g. resnet20 beside a
                  gated_resnet32 trained to its MACs), BN-folded, eager and TorchScript.

r is the per-image MAC ratio (conditional MACs, gate MACs included) / (MACs of the dense twin), averaged over
the images. ratio = cond / dense latency, ratio_script = cond_script / dense_script. With 1 thread the
latencies are thread CPU times (robust to preemption on a shared machine; wall-clock is in the JSON too),
with more threads wall-clock (see time_variants).

Without ``--checkpoint`` the models are untrained: BatchNorm statistics are collected on real images with all
gates open, every gate's last layer gets random weights N(0, 0.5) (so that the gates depend on the image:
some gates are always on, some always off, some conditional, as in trained models) and biases mu + N(0, 1),
mu bisected so that r is about ``--target-r`` (0.5).

Inputs: CIFAR-10 test images (normalised); the ImageNet models get the same images bilinearly upsampled to
224x224. Prints a table and a torch.profiler breakdown, writes a JSON file (``--out``).

    python -m benchmarks.latency                    # full run (--budget per model and thread count)
    python -m benchmarks.latency --quick            # smoke run
    python -m benchmarks.latency --checkpoint runs/cifar/best.pt   # a trained batchshaping checkpoint
    python -m benchmarks.latency --checkpoint weights.pt --model gated_resnet32   # a plain state_dict
    python -m benchmarks.latency --checkpoint gated.pt --reference resnet20.pt   # against a smaller model
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

import batchshaping as bs
from batchshaping.inference import compile_conditional
from batchshaping.macs import MacCounter
from batchshaping.models.cifar_resnet import CifarResNet
from benchmarks.common import (
    CIFAR_TEST,
    calibrate_untrained,
    dense_twin,
    load_images,
    mac_ratio,
    machine,
    time_variants,
)

DEFAULT_MODELS = ("gated_resnet32", "gated_resnet56", "gated_resnet110", "gated_resnet18", "gated_resnet50")


def load_trained(path: str, name: str | None) -> tuple[str, nn.Module]:
    """(name, model) from a batchshaping checkpoint (batchshaping.checkpoint.load_model), else from a
    state_dict file (or a dict with a "model" state_dict) for the architecture ``name``."""
    try:
        from batchshaping.checkpoint import CheckpointError, load_model
    except ImportError:
        load_model = None
    if load_model is not None:
        try:
            model, cfg = load_model(path)
            return getattr(cfg, "model", None) or name or type(model).__name__, model.eval()
        except CheckpointError:
            pass  # not our format: a plain state_dict below
    if name is None:
        raise SystemExit("--checkpoint is a plain state_dict: give the architecture with --model")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    model = bs.create_model(name, num_classes=state["fc.weight"].shape[0])
    model.load_state_dict(state)
    return name, model.eval()


def build_variants(
    gated: nn.Module, reference: nn.Module | None = None
) -> dict[str, Callable[[Tensor], Tensor]]:
    """The timed variants (module docstring) of one gated model, and of the reference model if given."""
    twin = dense_twin(gated)  # forced-open gates compile to plain folded blocks: the dense model
    fns = {
        "dense": compile_conditional(twin, script=False),
        "cond": compile_conditional(gated, script=False),
        "dense_script": compile_conditional(twin, script=True),
        "cond_script": compile_conditional(gated, script=True),
        "masked": gated.eval(),
    }
    if reference is not None:
        with warnings.catch_warnings():  # a model without gates is folded with a warning that says so
            warnings.simplefilter("ignore", UserWarning)
            fns["reference"] = compile_conditional(reference, script=False)
            fns["reference_script"] = compile_conditional(reference, script=True)
    return fns


@torch.inference_mode()
def batched_modes(model: nn.Module, x: Tensor, batch: int, repeats: int) -> dict[str, float]:
    """ms per image (thread CPU time, 1 thread) of each batch_mode on batches of ``batch`` images of x, and
    of the dense folded model; all TorchScript. Median over repeats, mean over the batches."""
    fns = {"dense": compile_conditional(dense_twin(model))}
    fns.update({mode: compile_conditional(model, batch_mode=mode) for mode in ("union", "masked")})
    batches = list(x.split(batch))
    ref = model(batches[0])
    for k, f in fns.items():  # warm-up, and every mode computes the gated model
        out = f(batches[0])
        assert k == "dense" or torch.equal(out.argmax(1), ref.argmax(1)), k
    times = {k: [[] for _ in batches] for k in fns}
    names = list(fns)
    for rep in range(repeats):
        for b, xb in enumerate(batches):
            for j in range(len(names)):
                k = names[(b + rep + j) % len(names)]
                c0 = time.thread_time()
                fns[k](xb)
                times[k][b].append(time.thread_time() - c0)
    return {k: 1e3 * statistics.fmean(statistics.median(t) for t in v) / batch for k, v in times.items()}


def run_batched(data: Path, quick: bool) -> list[dict]:
    """The batch_mode comparison: gated_resnet32 (image-dependent and image-independent gates, batches of 8
    and 32) and gated_resnet50 at 224x224 (batches of 4), r ~ 0.5, 1 thread."""
    torch.set_num_threads(1)
    out = []
    cifar_x = load_images(data, 8 if quick else 64, 32, seed=3)
    for weight_std, gates in ((0.5, "image-dependent"), (0.0, "same for all images")):
        model = bs.create_model("gated_resnet32").eval()
        calibrate_untrained(model, data, 0.5, weight_std)
        counter = MacCounter(model, (3, 32, 32))
        r = mac_ratio(model, cifar_x, counter).mean().item()
        for batch in (8,) if quick else (8, 32):
            ms = batched_modes(model, cifar_x, batch, 2 if quick else 5)
            out.append(
                {
                    "model": "gated_resnet32",
                    "gates": gates,
                    "batch": batch,
                    "r": round(r, 3),
                    "ms_per_image": ms,
                }
            )
    if not quick:
        model = bs.create_model("gated_resnet50").eval()
        calibrate_untrained(model, data)
        x = load_images(data, 8, 224, seed=3)
        r = mac_ratio(model, x, MacCounter(model, (3, 224, 224))).mean().item()
        ms = batched_modes(model, x, 4, 2)
        out.append(
            {
                "model": "gated_resnet50",
                "gates": "image-dependent",
                "batch": 4,
                "r": round(r, 3),
                "ms_per_image": ms,
            }
        )
    print("\nbatch_mode comparison, 1 thread, ms per image (thread CPU time), all TorchScript:")
    for row in out:
        cells = "  ".join(f"{k} {v:7.3f}" for k, v in row["ms_per_image"].items())
        print(f"  {row['model']:15s} {row['gates']:20s} batch {row['batch']:2d} r {row['r']:.3f}: {cells}")
    return out


_CATEGORIES = {
    "conv": ("aten::conv2d", "aten::linear", "aten::mkldnn_convolution"),  # + 1x1 convs run as addmm
    "weight gather": ("aten::index_select",),
    "gate MLP + decision": (
        *("aten::addmm", "aten::gt", "aten::nonzero", "aten::full", "aten::mean", "aten::sum"),
    ),
    "elementwise": ("aten::relu_", "aten::add_", "aten::add", "aten::mul_", "aten::relu", "aten::pad"),
}


def _rows(shapes: list) -> int:
    """Rows of mat1 of an addmm(bias, mat1, mat2) from the profiler's input shapes, 0 if unknown.

    TorchScript ops list some empty shapes first, hence the filter.
    """
    shapes = [sh for sh in shapes if sh]
    return shapes[1][0] if len(shapes) >= 3 and len(shapes[1]) == 2 else 0


def _outermost_aten(ev) -> bool:
    """An aten op called from Python or TorchScript, not from inside another aten op."""
    if not ev.name.startswith("aten::"):
        return False
    parent = ev.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


@torch.inference_mode()
def profile_breakdown(fn: Callable[[Tensor], Tensor], x: Tensor, rounds: int = 3) -> dict[str, float]:
    """Share (%) of batch-1 time by category of the top-level ops (torch.profiler), median over ``rounds``.

    "python + dispatch" is the loop's wall time minus the time inside the top-level ops: the interpreter
    (Python or TorchScript) and dispatch between ops. Shares rather than ms because preemption on a busy
    machine inflates every op's wall time alike; the profiler's own per-op cost (~1-2 us) inflates the many
    tiny ops (gate MLP, index_select) a little.
    """
    from torch.profiler import ProfilerActivity, profile

    for i in range(len(x)):
        fn(x[i : i + 1])
    per_round = []
    for _ in range(rounds):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            t0 = time.perf_counter()
            for i in range(len(x)):
                fn(x[i : i + 1])
            total = (time.perf_counter() - t0) * 1e3
        ms = dict.fromkeys([*_CATEGORIES, "other ops"], 0.0)
        for ev in prof.events():
            if _outermost_aten(ev):
                cat = next((c for c, ops in _CATEGORIES.items() if ev.name in ops), "other ops")
                if ev.name == "aten::addmm" and _rows(ev.input_shapes) > 1:
                    cat = "conv"  # a 1x1 conv as one GEMM, (C_out, C_in) @ (C_in, H*W); gate GEMMs are (1, C)
                ms[cat] += ev.cpu_time_total / 1e3  # us -> ms
        ms["python + dispatch"] = max(total - sum(ms.values()), 0.0)
        per_round.append({k: 100 * v / total for k, v in ms.items()})
    return {k: round(statistics.median(r[k] for r in per_round), 1) for k in per_round[0]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--threads", default="1,2", help="comma-separated torch.set_num_threads values")
    p.add_argument("--target-r", type=float, default=0.5, help="MAC ratio the untrained gates are set to")
    p.add_argument("--cifar-images", type=int, default=16)
    p.add_argument("--cifar-repeats", type=int, default=7)
    p.add_argument("--imagenet-images", type=int, default=4)
    p.add_argument("--imagenet-repeats", type=int, default=4)
    p.add_argument("--budget", type=float, default=30.0, help="seconds per model and thread count")
    p.add_argument("--checkpoint", help="trained model: batchshaping checkpoint, or state_dict with --model")
    p.add_argument("--model", help="architecture of a plain state_dict --checkpoint, e.g. gated_resnet32")
    p.add_argument(
        "--reference", help="with --checkpoint: a trained model timed beside it (batchshaping checkpoint)"
    )
    p.add_argument("--data", type=Path, default=CIFAR_TEST, help="cifar10_test.npz")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--no-batched", action="store_true", help="skip the batch_mode comparison")
    p.add_argument("--quick", action="store_true", help="few images and repeats: a smoke run")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "latency.json")
    args = p.parse_args(argv)
    if args.reference and not args.checkpoint:
        p.error("--reference times a model beside a trained --checkpoint; give both")
    if args.quick:
        args.cifar_images, args.cifar_repeats, args.imagenet_images, args.imagenet_repeats = 4, 2, 1, 1
    return args


def setup(name: str, trained: nn.Module | None, args: argparse.Namespace, reference: nn.Module | None = None):
    """(model, its variants, timed images, warm-up images, per-image r, gates description) of one model; the
    compiled variants checked against the gated model (and the reference's against the reference)."""
    model = trained if trained is not None else bs.create_model(name).eval()
    size = 32 if isinstance(model, CifarResNet) else 224
    n_img = args.cifar_images if size == 32 else args.imagenet_images
    x = load_images(args.data, n_img, size)
    warmup = load_images(args.data, 2, size, seed=2)
    gates = "trained"
    torch.set_num_threads(1)  # calibration and checks: 2 threads on a busy 2-core machine can be 10x slower
    if trained is None:
        # The r reported is measured on the timed images, not on the calibration images.
        mu = calibrate_untrained(model, args.data, args.target_r)
        gates = (
            f"untrained (BN statistics from real images); gate fc2 weights N(0, 0.5), biases {mu:+.3f} "
            f"+ N(0, 1): r ~ {args.target_r}"
        )
    r = mac_ratio(model, x, MacCounter(model, x.shape[1:]))
    fns = build_variants(model, reference)
    with torch.inference_mode():
        checks = {"cond": model, "cond_script": model}
        if reference is not None:
            checks.update(reference=reference.eval(), reference_script=reference)
        for k, original in checks.items():
            ref = original(x)
            out = torch.cat([fns[k](x[i : i + 1]) for i in range(len(x))])
            err = (out - ref).abs().max().item()
            scale = max(1.0, ref.abs().max().item())  # fp32 rounding grows with the logits
            assert err < 1e-4 * scale and torch.equal(out.argmax(1), ref.argmax(1)), (k, err, scale)
    return model, fns, x, warmup, r, gates


def time_model(name: str, fns, x: Tensor, warmup: Tensor, r: Tensor, gates: str, nt: int, reps: int, budget):
    """The result row of one model at ``nt`` threads (printed too)."""
    torch.set_num_threads(nt)
    t_timing = time.perf_counter()
    lat, n_used, done = time_variants(fns, x, warmup, reps, budget)
    t_timing = time.perf_counter() - t_timing
    how = "cpu" if nt == 1 else "wall"  # the headline measure (see time_variants)
    size = x.shape[-1]
    row = {
        "model": name,
        "input": f"{size}x{size}",
        "threads": nt,
        "images": n_used,
        "repeats": done,
        "r": round(r.mean().item(), 4),
        "measure": how,
        "latency_ms": {k: {m: round(v, 3) for m, v in d.items()} for k, d in lat.items()},
        "ratio": round(lat["cond"][how] / lat["dense"][how], 3),
        "ratio_script": round(lat["cond_script"][how] / lat["dense_script"][how], 3),
        "ratio_vs_masked": round(lat["cond"][how] / lat["masked"][how], 3),
        "ratio_wall": round(lat["cond"]["wall"] / lat["dense"]["wall"], 3),
        "ratio_first_run": round(lat["cond"]["first"] / lat["dense"]["first"], 3),
        "gates": gates,
    }
    if "reference" in lat:
        row["ratio_vs_reference"] = round(lat["cond"][how] / lat["reference"][how], 3)
        row["ratio_script_vs_reference"] = round(lat["cond_script"][how] / lat["reference_script"][how], 3)
    print(
        f"  threads={nt} ({how}): "
        + "  ".join(f"{k} {d[how]:.2f}" for k, d in lat.items())
        + f" ms | ratio {row['ratio']:.3f}, script {row['ratio_script']:.3f}, vs masked "
        f"{row['ratio_vs_masked']:.3f}; wall ratio {row['ratio_wall']:.3f}, first runs "
        f"{row['ratio_first_run']:.3f} [{t_timing:.0f} s]"
        + (
            f"; against the reference {row['ratio_vs_reference']:.3f}, script "
            f"{row['ratio_script_vs_reference']:.3f}"
            if "reference" in lat
            else ""
        ),
        flush=True,
    )
    return row


def profile_model(fns, x: Tensor, lat1: dict | None) -> dict[str, dict[str, float]]:
    """profile_breakdown of dense, cond and cond_script at 1 thread on up to 8 images, printed with the
    share of the 1-thread latencies ``lat1`` (if measured)."""
    torch.set_num_threads(1)
    xp = x[: min(len(x), 8)]
    prof = {k: profile_breakdown(fns[k], xp) for k in ("dense", "cond", "cond_script")}
    print(f"  torch.profiler, 1 thread, share of the time ({len(xp)} images, median of 3 rounds)")
    print("  and that share of the 1-thread CPU latency:" if lat1 else "")
    for cat in prof["dense"]:
        cells = []
        for k in prof:
            share = prof[k][cat]
            ms = f" {share / 100 * lat1[k]['cpu']:6.2f} ms" if lat1 else ""
            cells.append(f"{k} {share:5.1f}%{ms}")
        print(f"    {cat:20s} " + "  ".join(cells))
    return prof


def print_table(rows: list[dict]) -> None:
    print(
        "\nms = thread CPU time with 1 thread, wall-clock with more (see time_variants)\n"
        f"{'model':16s} {'input':8s} {'thr':>3s} {'r':>6s} {'dense':>8s} {'cond':>8s} {'ratio':>6s} "
        f"{'dense_s':>8s} {'cond_s':>8s} {'ratio_s':>7s} {'masked':>8s} {'wall_r':>6s}"
    )
    for row in rows:
        lat, m = row["latency_ms"], row["measure"]
        print(
            f"{row['model']:16s} {row['input']:8s} {row['threads']:3d} {row['r']:6.3f} "
            f"{lat['dense'][m]:8.2f} {lat['cond'][m]:8.2f} {row['ratio']:6.3f} {lat['dense_script'][m]:8.2f} "
            f"{lat['cond_script'][m]:8.2f} {row['ratio_script']:7.3f} {lat['masked'][m]:8.2f} "
            f"{row['ratio_wall']:6.3f}"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    torch.manual_seed(0)
    jobs = (
        [load_trained(args.checkpoint, args.model)] if args.checkpoint else [(n, None) for n in args.models]
    )
    reference, reference_info = None, None
    if args.reference:
        ref_name, reference = load_trained(args.reference, None)
        reference_info = {"checkpoint": args.reference, "model": ref_name}
    rows, profiles = [], {}
    t_start = time.perf_counter()
    for name, trained in jobs:
        t_model = time.perf_counter()
        model, fns, x, warmup, r, gates = setup(name, trained, args, reference)
        size = x.shape[-1]
        print(
            f"\n{name} @ {size}x{size}: r = {r.mean():.3f} (images {r.min():.3f}..{r.max():.3f}); {gates} "
            f"[setup {time.perf_counter() - t_model:.0f} s]"
        )
        if reference_info is not None:  # the gated model's mean conditional MACs against the reference's
            macs = r.mean().item() * MacCounter(model, x.shape[1:]).dense
            reference_info["macs"] = MacCounter(reference, x.shape[1:]).dense
            reference_info["mac_ratio_vs_reference"] = round(macs / reference_info["macs"], 4)
            print(f"reference {reference_info['model']}: MAC ratio {macs / reference_info['macs']:.3f}")
        reps = args.cifar_repeats if size == 32 else args.imagenet_repeats
        for nt in threads:
            rows.append(time_model(name, fns, x, warmup, r, gates, nt, reps, args.budget))
        if not args.no_profile and name in ("gated_resnet32", "gated_resnet50"):
            lat1 = next((r["latency_ms"] for r in rows if r["model"] == name and r["threads"] == 1), None)
            profiles[name] = profile_model(fns, x, lat1)
    print_table(rows)
    batched = [] if args.no_batched or args.checkpoint else run_batched(args.data, args.quick)
    result = {
        "command": " ".join(["python -m benchmarks.latency", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "seconds": round(time.perf_counter() - t_start, 1),
        "rows": rows,
        "reference": reference_info,
        "profile_percent_threads1": profiles,
        "batched_ms_per_image_threads1": batched,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        main()
