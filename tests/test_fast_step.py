"""The fast training step on CPU: its device-agnostic logic against the eager TrainStep, and the capture
logic with a stand-in for the CUDA API (whose replay re-runs the step on the static tensors)."""

import contextlib
import json
import os
import time
import types

import pytest
import torch

import batchshaping.fast_step as fs
import batchshaping.train as train_mod
from batchshaping.checkpoint import load_checkpoint
from batchshaping.config import ConfigError, config_from_dict, dump_config, load_config
from batchshaping.data import Data
from batchshaping.macs import MacCounter
from batchshaping.models import GateConfig
from batchshaping.models.cifar_resnet import CifarResNet
from batchshaping.step import STATS, TrainStep, schedule, sgd
from batchshaping.tasks import ClassificationTask
from batchshaping.train import fit
from tests.conftest import killed_in_epoch, tiny_config, tiny_data

# Float tolerance of fast vs eager: the same float32 ops up to rounding order (the update multiplies by
# -lr, then adds; SGD adds with alpha in one kernel), a few ulp after a few steps.
TOL = dict(rtol=1e-5, atol=1e-6)

# (lr, w_bs, w_l0, w_macs) per step: several losses on, each alone, all off (TrainStep then skips them).
SCHEDULE = [
    (0.05, 0.75, 0.0, 0.0),
    (0.05, 0.5, 0.01, 5.0),
    (0.04, 0.0, 0.02, 0.0),
    (0.03, 0.0, 0.0, 0.0),
    (0.03, 0.2, 0.0, 2.0),
]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny_model(gated: bool = True, seed: int = 0) -> CifarResNet:
    torch.manual_seed(seed)
    return CifarResNet(8, num_classes=4, gate=GateConfig() if gated else None)


def eager_step(model, cfg=None) -> TrainStep:
    cfg = cfg or tiny_config()
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    counter = MacCounter(model, (3, 16, 16))
    return TrainStep(model, model, sgd(model, cfg), scaler, ClassificationTask(), counter, cfg, None)


def batches(n: int = len(SCHEDULE), size: int = 8, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, 16, 16, generator=g), torch.randint(0, 4, (size,), generator=g))
        for _ in range(n)
    ]


def run(step, data, seed: int = 5) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Stats and gradients of each step (the gates draw their noise from the seeded generator)."""
    torch.manual_seed(seed)
    stats, grads = [], []
    for (x, y), sched in zip(data, SCHEDULE * 4, strict=False):
        stats.append(step(x, y, *sched).clone())
        grads.append([p.grad.clone() for p in step.model.parameters()])
    return stats, grads


def assert_same_training(a: TrainStep, b, stats_a, stats_b, grads_a=None, grads_b=None) -> None:
    for i, (sa, sb) in enumerate(zip(stats_a, stats_b, strict=True)):
        torch.testing.assert_close(sb, sa, **TOL, msg=lambda m, i=i: f"stats of step {i + 1}: {m}")
    for ga, gb in zip(grads_a or [], grads_b or [], strict=True):
        for u, v in zip(ga, gb, strict=True):
            torch.testing.assert_close(v, u, **TOL)
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]  # lr floats included: a plain SGD state dict
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        torch.testing.assert_close(
            sb["state"][k]["momentum_buffer"], sa["state"][k]["momentum_buffer"], **TOL
        )


# ------------------------------------------------------------------------------------ schedules, SGD


def test_schedule_tensors_hold_the_schedule_values_in_place():
    cfg = tiny_config(epochs=500)
    cfg.optim.warmup, cfg.optim.lr_milestones = 0.01, [0.6, 0.75, 0.9]
    sched = fs.ScheduleTensors("cpu")
    ptr = sched.values.data_ptr()
    ts = [i / 977 for i in range(978)] + [0.0, 0.01, 0.2, 0.25, 0.6, 0.75, 0.9, 1.0, 300 / 500]
    for t in ts:
        assert sched.set_progress(cfg, t) == schedule(cfg, t)
        assert sched.values.tolist() == list(schedule(cfg, t)), t  # float64: exact
        slots = [sched.lr.item(), sched.w_bs.item(), sched.w_l0.item(), sched.w_macs.item()]
        assert slots == list(schedule(cfg, t))
    assert sched.values.data_ptr() == ptr


@pytest.mark.parametrize(
    "momentum,nesterov,dampening,wd",
    [(0.9, True, 0.0, 5e-4), (0.9, False, 0.1, 5e-4), (0.0, False, 0.0, 1e-3)],
)
def test_sgd_update_matches_torch_sgd(momentum, nesterov, dampening, wd):
    torch.manual_seed(0)
    shapes = [(4, 3, 3, 3), (4,), (10, 4), (10,)]
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    twins = [p.detach().clone().requires_grad_() for p in params]
    kw = dict(momentum=momentum, nesterov=nesterov, dampening=dampening)

    def groups(ps):
        return [
            {"params": ps[:2], "weight_decay": wd, "lr_factor": 1.0},
            {"params": ps[2:], "weight_decay": 0.0, "lr_factor": 0.1},
        ]

    ref = torch.optim.SGD(groups(params), lr=0.1, foreach=False, **kw)
    opt = torch.optim.SGD(groups(twins), lr=0.1, **kw)
    sgd_groups = fs.sgd_groups(opt)
    for step, lr in enumerate([0.1, 0.1, 0.05, 0.01]):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(params, twins, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        if step == 2:
            twins[3].grad = params[3].grad = None  # skipped, as SGD skips it
        for group in ref.param_groups:
            group["lr"] = lr * group["lr_factor"]
        ref.step()
        fs.sgd_update(sgd_groups, opt.state, fs.gradients(sgd_groups), torch.tensor([-lr, -lr * 0.1]))
        for p, q in zip(params, twins, strict=True):
            torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    if momentum:
        for p, q in zip(params, twins, strict=True):
            torch.testing.assert_close(opt.state[q]["momentum_buffer"], ref.state[p]["momentum_buffer"])
    else:
        assert not opt.state


# -------------------------------------------------------------------------------- the step, eagerly


@pytest.mark.parametrize("gated,l0_reduction", [(True, "sum"), (True, "macs"), (False, "sum")])
def test_fast_step_gives_the_losses_gradients_and_state_of_the_eager_step(gated, l0_reduction):
    cfg = tiny_config()
    cfg.loss.l0_reduction = l0_reduction
    data = batches()
    a = eager_step(tiny_model(gated), cfg)
    b = fs.FastTrainStep(eager_step(tiny_model(gated), cfg), capture=False)
    (sa, ga), (sb, gb) = run(a, data), run(b, data)
    assert_same_training(a, b, sa, sb, ga, gb)
    if gated:  # logged like TrainStep: a loss whose weight is 0 shows as 0
        bs, l0 = STATS.index("train_bs"), STATS.index("train_l0")
        macs = STATS.index("train_macs")
        assert sb[2][bs] == 0 and sb[0][l0] == 0 and sb[1][bs] > 0 and sb[1][l0] > 0
        assert sb[0][macs] == 0 and sb[1][macs] > 0 and sb[4][macs] > 0
    assert b.path == "eager" and b.warmup_s > 0


def test_fast_step_compiled_matches_eager_without_recompiling():
    """torch.compile's tracing (dynamo + AOTAutograd, backend aot_eager: no code generation) of the
    forward + losses and of the update; one recompile of the update once momentum buffers exist."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    data = batches(len(SCHEDULE) + 1)
    a = eager_step(tiny_model())
    b = fs.FastTrainStep(
        eager_step(tiny_model()), capture=False, compile_mode="default", compile_backend="aot_eager"
    )
    sa, _ = run(a, data[:2])
    sb, _ = run(b, data[:2])
    graphs = counters["stats"]["unique_graphs"]
    sa2, _ = run(a, data[2:], seed=6)
    sb2, _ = run(b, data[2:], seed=6)  # other lr and loss weights: the same graphs
    assert counters["stats"]["unique_graphs"] == graphs
    assert_same_training(a, b, sa + sa2, sb + sb2)
    assert b.path == "compiled"


def test_failed_compilation_hands_over_to_the_eager_step(capsys):
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    torch._dynamo.reset()
    data = batches(3)
    a = eager_step(tiny_model())
    b = fs.FastTrainStep(
        eager_step(tiny_model()), capture=False, compile_mode="default", compile_backend=broken
    )
    sa, _ = run(a, data)
    sb, _ = run(b, data)
    assert_same_training(a, b, sa, sb)
    assert b.path == "eager" and "training step: eager (compilation failed: " in capsys.readouterr().out


@pytest.mark.skipif(
    not os.environ.get("BATCHSHAPING_COMPILE_TESTS"),
    reason="inductor compiles this tiny step in ~80 s on the shared 2-core machine with a cold cache (limit "
    "60 s; ~10 s once /tmp/torchinductor_* holds it); set BATCHSHAPING_COMPILE_TESTS=1 to run it",
)
def test_fast_step_compiled_by_inductor_matches_eager():
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    data = batches(3)
    a = eager_step(tiny_model())
    b = fs.FastTrainStep(eager_step(tiny_model()), capture=False, compile_mode="default")
    with inductor_config.patch(fallback_random=True):  # the gates' noise drawn as eagerly
        t0 = time.perf_counter()
        sb, _ = run(b, data)
        print(f"inductor: {time.perf_counter() - t0:.0f} s for {len(data)} steps")
    sa, _ = run(a, data)
    assert_same_training(a, b, sa, sb)


# ---------------------------------------------------------------------- capture, with a stand-in API


class StandInCuda:
    """The calls fast_step makes to torch.cuda, on CPU: a "capture" runs the step and then restores every
    tensor it changed and the RNG (a capture records work without doing it); replay re-runs the step on
    the static tensors and writes the static stats."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.owner, self.captures, self.replays = fail, None, 0, 0
        stream = types.SimpleNamespace(wait_stream=lambda other: None)
        self.Stream = self.current_stream = lambda device=None: stream
        self.stream = lambda s: contextlib.nullcontext()
        self.synchronize = lambda device=None: None
        self.set_stream = lambda s: None

    def CUDAGraph(self):  # noqa: N802  (torch.cuda's name)
        return types.SimpleNamespace(replay=self._replay)

    @contextlib.contextmanager
    def graph(self, g, stream=None):
        if self.fail:
            try:  # an op refused in the capture, then capture_end's error raised while handling it
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
            finally:
                raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        step = self.owner
        tensors = [*step.model.parameters(), *step.model.buffers()]
        tensors += [s["momentum_buffer"] for s in step.optimizer.state.values()]
        saved, rng = [t.detach().clone() for t in tensors], torch.get_rng_state()
        yield
        with torch.no_grad():
            for t, s in zip(tensors, saved, strict=True):
                t.copy_(s)
        torch.set_rng_state(rng)
        self.captures += 1

    def _replay(self):
        sx, sy, stats = self.owner._static
        stats.copy_(self.owner._step(sx, sy))
        self.replays += 1


@pytest.fixture
def stand_in(monkeypatch):
    def make(fail: bool = False) -> StandInCuda:
        api = StandInCuda(fail)
        monkeypatch.setattr(fs, "_cuda", api)
        monkeypatch.setattr(fs, "CAPTURE_DEVICE_TYPES", ("cuda", "cpu"))
        return api

    return make


def test_captured_step_warms_up_captures_once_and_replays(stand_in):
    api = stand_in()
    data = batches(7)
    data.insert(5, batches(1, size=6, seed=9)[0])  # a smaller batch: run uncaptured
    a = eager_step(tiny_model())
    b = api.owner = fs.FastTrainStep(eager_step(tiny_model()), capture=True, warmup=2)
    sa, ga = run(a, data)
    sb, gb = run(b, data)
    assert_same_training(a, b, sa, sb)
    assert (api.captures, api.replays, b.uncaptured_steps, b.path) == (1, 5, 1, "captured")
    sx, _, stats = b._static
    assert b(*data[-1], *SCHEDULE[0]) is stats  # the static output, overwritten by each replay
    assert sx.shape == data[0][0].shape and b.warmup_s > 0


def test_failed_capture_hands_over_to_the_eager_step(stand_in, capsys):
    api = stand_in(fail=True)
    data = batches(5)
    a = eager_step(tiny_model())
    b = api.owner = fs.FastTrainStep(eager_step(tiny_model()), capture=True, warmup=2)
    sa, _ = run(a, data)
    sb, _ = run(b, data)
    assert_same_training(a, b, sa, sb)
    assert b.path == "eager" and b.fallback is b.eager and api.captures == 0
    assert "training step: eager (capture failed: RuntimeError: CUDA error: operation not permitted" in (
        capsys.readouterr().out
    )


def test_capture_refuses_cpu_and_cudagraph_compile_modes(stand_in):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        fs.FastTrainStep(eager_step(tiny_model()), capture=True)
    stand_in()
    with pytest.raises(ValueError, match="without CUDA graphs"):
        fs.FastTrainStep(eager_step(tiny_model()), capture=True, compile_mode="reduce-overhead")


# ------------------------------------------------------------------------------ path choice, config


def fake_step(device: str, fp16: bool = False, optimizer=None, gated: bool = True):
    model = tiny_model()
    opt = optimizer or sgd(model, tiny_config())
    scaler = types.SimpleNamespace(is_enabled=lambda: fp16)
    dev = torch.device(device)
    return types.SimpleNamespace(device=dev, optimizer=opt, net=model, scaler=scaler, gated=gated)


@pytest.mark.parametrize(
    "requested,device,kw,world,path,reason",
    [
        ("auto", "cpu", {}, 1, "eager", "step=auto on cpu: nothing to capture"),
        ("auto", "cpu", {"steps_left": 1999}, 1, "eager", "a long run may go faster with --set step=compile"),
        ("auto", "cpu", {"steps_left": 2000}, 1, "compiled", "a gated model with 2000 steps to go"),
        ("auto", "cpu", {"steps_left": 97500, "gated": False}, 1, "eager", "nothing to capture"),
        ("eager", "cpu", {"steps_left": 97500}, 1, "eager", "step=eager"),
        ("graph", "cpu", {}, 1, "eager", "step=graph needs CUDA graphs"),
        ("compile", "cpu", {}, 1, "compiled", "mode 'default'"),
        ("auto", "cuda", {}, 1, "captured", "one CUDA graph"),
        ("graph", "cuda", {}, 1, "captured", "one CUDA graph"),
        ("compile", "cuda", {}, 1, "compiled", "mode 'reduce-overhead'"),
        ("eager", "cuda", {}, 1, "eager", "step=eager"),
        ("auto", "cuda", {}, 2, "eager", "DDP with 2 processes"),
        ("auto", "cuda", {"fp16": True}, 1, "eager", "fp16 loss scaling"),
        ("auto", "cuda", {"optimizer": "adam"}, 1, "eager", "not Adam"),
    ],
)
def test_choose_path(requested, device, kw, world, path, reason):
    kw = dict(kw)
    steps_left = kw.pop("steps_left", None)
    if kw.get("optimizer") == "adam":
        kw = {"optimizer": torch.optim.Adam(tiny_model().parameters())}
    got = fs.choose_path(requested, fake_step(device, **kw), world, steps_left)
    assert got[0] == path and reason in got[1]


def test_config_step_key():
    assert load_config(overrides=["step=graph"]).step == "graph"
    with pytest.raises(ConfigError, match="'step' must be one of"):
        load_config(overrides=["step=fast"])
    text = dump_config(load_config())
    assert "step: auto" in text and "compile" not in text


# ------------------------------------------------------------------------------------------- fit


@pytest.mark.parametrize(
    "name, shape, l0_reduction",
    [
        ("gated_resnet32", (3, 32, 32), "sum"),
        ("gated_resnet32", (3, 32, 32), "macs"),
        ("resnet20", (3, 32, 32), "sum"),
        ("gated_resnet18", (3, 64, 64), "sum"),
        ("gated_pspnet50", (3, 64, 64), "sum"),
    ],
)
def test_the_whole_step_never_reads_values_on_the_host(name, shape, l0_reduction):
    """What a CUDA graph capture needs from the step: no host sync (.item(), bool(t), .tolist(), a branch
    on a value), which would stop the capture and leave the run eager. Meta tensors have shapes but no
    values, so such a read raises on them: three steps (SGD's first, which creates the momentum buffers,
    then the foreach update) of the fast step's code, forward + CE/mIoU task + batch-shaping + L0 + MAC
    stats + backward + update, run on "meta" for a dense and a gated CIFAR ResNet, an ImageNet one and
    the segmentation model. (Autocast has no meta form: the bf16 casts are the one part left unchecked.)"""
    from batchshaping.models import create_model
    from batchshaping.tasks import SegmentationTask

    budget = 0.5 if name.startswith("gated_") else None  # a MAC target needs gates
    cfg = config_from_dict(
        {"model": name, "loss": {"bs_weight": 0.75, "l0_weight": 0.01, "macs_target": budget}}
    )
    cfg.loss.l0_reduction = l0_reduction
    seg = name.endswith("pspnet50")
    task = SegmentationTask(5, 255) if seg else ClassificationTask()
    model = create_model(name, num_classes=5)
    counter = MacCounter(model, shape)  # counts on CPU, then the model leaves for "meta"
    model.to("meta")
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    fast = fs.FastTrainStep(TrainStep(model, model, sgd(model, cfg), scaler, task, counter, cfg, None), False)
    x = torch.empty(2, *shape, device="meta")
    y = torch.empty((2, *shape[1:]) if seg else (2,), dtype=torch.long, device="meta")
    for sched in SCHEDULE[:3]:
        stats = fast(x, y, *sched)
    assert stats.shape == (len(STATS) + 1,) and stats.device.type == "meta"
    assert all("momentum_buffer" in fast.optimizer.state[p] for p in model.parameters())


def fit_run(out, **kw):
    return fit(tiny_model(), Data(tiny_data(64, 1), tiny_data(32, 2), 4), tiny_config(), out, **kw)


def test_fit_on_cpu_runs_the_eager_step_and_says_so(tmp_path, capsys, monkeypatch):
    steps = []
    real_epoch = train_mod.train_epoch
    monkeypatch.setattr(train_mod, "train_epoch", lambda step, *a: steps.append(step) or real_epoch(step, *a))
    fit_run(tmp_path)
    out = capsys.readouterr().out
    assert "training step: eager (step=auto on cpu: nothing to capture; a long run may go faster with" in out
    assert all(type(s) is TrainStep for s in steps)


def test_fit_with_the_captured_step_matches_eager_and_resumes_exactly(
    tmp_path, stand_in, monkeypatch, capsys
):
    """The whole of fit through the capture logic (stand-in CUDA API): the same training as the eager
    step, plain SGD checkpoints, and a killed run resumed from last.pt ends as an uninterrupted one."""
    fit_run(tmp_path / "eager")
    api = stand_in()

    def captured(step, cfg, world_size=1, verbose=True, steps_left=None):
        api.owner = fs.FastTrainStep(step, capture=True, warmup=1, verbose=verbose)
        return api.owner

    monkeypatch.setattr(fs, "choose_train_step", captured)
    full = fit_run(tmp_path / "full")
    assert api.captures == 1 and api.replays == 2 * 4 - 1  # 2 epochs of 4 steps, the first a warm-up
    a, b = load_checkpoint(tmp_path / "eager"), load_checkpoint(tmp_path / "full")
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()

    with killed_in_epoch(2), pytest.raises(KeyboardInterrupt):
        fit_run(tmp_path / "killed")
    resumed = fit_run(tmp_path / "killed", resume=True)
    for key in ("top1", "test_loss", "macs_mean", "gates_conditional"):
        assert resumed[key] == full[key], key
    c = load_checkpoint(tmp_path / "killed")
    for k, v in b["model"].items():
        assert torch.equal(v, c["model"][k]), k
    log = [json.loads(s) for s in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all(r["train_loss"] > 0 for r in log)


# -------------------------------------------------------------------------------- the GPU benchmark


def test_gpu_benchmark_needs_cuda_or_a_dry_run(capsys):
    from benchmarks.bench_train_gpu import main

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["--models", "resnet20"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_gpu_benchmark_dry_run_checks_times_and_profiles(tmp_path):
    from benchmarks.bench_train_gpu import main

    out = tmp_path / "train_gpu.jsonl"
    args = [
        "--dry-run",
        "--models",
        "gated_resnet32",
        "--paths",
        "eager,captured",
        "--profile",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["kind"], r["requested_path"]) for r in records] == [
        ("check", "captured"),
        ("timing", "eager"),
        ("profile", "eager"),
        ("timing", "captured"),
        ("profile", "captured"),
    ]
    check, timing = records[0], records[3]
    assert check["ok"] and check["max_rel_param_diff"] < 1e-4 and len(check["losses"]) == 3
    assert timing["path"] == "eager" and timing["dry_run"] and timing["concurrent"] == 1  # no capture on CPU
    assert timing["median_epoch_s"] > 0 and timing["steps_per_epoch"] == 2 and timing["w_bs"] > 0
    assert (tmp_path / "profiles" / "gated_resnet32_captured_dry.txt").is_file()


def test_gpu_benchmark_runs_processes_side_by_side(tmp_path):
    from benchmarks.bench_train_gpu import main

    out = tmp_path / "train_gpu.jsonl"
    args = ["--dry-run", "--models", "resnet20", "--paths", "captured", "--concurrent", "2", "--no-check"]
    assert main([*args, "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    workers, aggregate = records[:-1], records[-1]
    assert sorted(r["worker"] for r in workers) == [0, 1] and all(r["barrier_ok"] for r in workers)
    assert aggregate["kind"] == "concurrent" and aggregate["workers_ok"] == 2
    assert aggregate["images_per_s_total"] == pytest.approx(sum(r["images_per_s"] for r in workers))
