"""Tests of batchshaping.losses: Beta prior accuracy, batch-shaping loss values and gradients (gate
probabilities and any features, every prior family, learned prior parameters), L0 loss."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy import special, stats
from torch import nn

from batchshaping import losses
from batchshaping.gates import GateOutput
from batchshaping.losses import BatchShapingLoss, BetaPrior, Prior, _BatchShapingFunction, l0_loss
from batchshaping.priors import NormalPrior, RelaxedBernoulliPrior, SymBetaPrior


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one intra-op thread is faster, and steadier on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (alpha, beta) pairs spanning [0.1, 10], the paper's (0.6, 0.4) first.
PARAMS = [(0.6, 0.4), (0.1, 0.1), (0.1, 10.0), (10.0, 0.1), (10.0, 10.0), (1.0, 1.0), (2.5, 0.3), (6.0, 10.0)]


# ---- slow references (pure python: sort + scipy) ---------------------------------------------------------


def ref_loss(x: torch.Tensor, a: float = 0.6, b: float = 0.4, reduction: str = "sum"):
    xn = x.detach().double().numpy()
    n, g = xn.shape
    per_gate = []
    for j in range(g):
        col = sorted(xn[:, j])
        per_gate.append(sum((special.betainc(a, b, v) - i / (n + 1)) ** 2 for i, v in enumerate(col, 1)) / n)
    return sum(per_gate) if reduction == "sum" else sum(per_gate) / g


def ref_grad(x: torch.Tensor, a: float = 0.6, b: float = 0.4, reduction: str = "sum", clip: float = 100.0):
    """2/N (F(x) - r/(N+1)) min(f(x), clip) with r the stable (row-order tie-break) rank in the column."""
    xn = x.detach().double().numpy()
    n, g = xn.shape
    rank = np.empty_like(xn)
    for j in range(g):
        rank[np.argsort(xn[:, j], kind="stable"), j] = np.arange(1, n + 1)
    f = np.minimum(stats.beta.pdf(xn, a, b), clip)
    grad = 2 / n * (special.betainc(a, b, xn) - rank / (n + 1)) * f
    return grad if reduction == "sum" else grad / g


def distinct_probs(n: int, g: int, seed: int = 0, lo: float = 0.02) -> torch.Tensor:
    """(n, g) float64 values in [lo, 1 - lo], all pairwise far apart (no ties)."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randperm(n * g, generator=gen).double() + 0.5) / (n * g)
    return (x * (1 - 2 * lo) + lo).view(n, g)


# ---- Beta prior --------------------------------------------------------------------------------------------


def grid32() -> torch.Tensor:
    """Dense float32 grid of [0, 1] with points very near 0 (down to subnormals) and very near 1."""
    near0 = torch.logspace(-45, -0.3, 1000, dtype=torch.float64)
    near1 = 1 - torch.logspace(-7.2, -0.3, 1000, dtype=torch.float64)
    special_pts = torch.tensor([0.0, 1.0, 0.5, 0.5 - 2**-25, 0.5 + 2**-24, 2**-149, 1 - 2**-24])
    x = torch.cat([torch.linspace(0, 1, 20001, dtype=torch.float64), near0, near1, special_pts.double()])
    return x.float()


@pytest.mark.parametrize("a,b", PARAMS)
def test_beta_cdf_matches_scipy(a, b):
    prior = BetaPrior(a, b)
    x = grid32()
    ref = special.betainc(a, b, x.double().numpy())
    cdf32 = prior.cdf(x)
    err32 = np.abs(cdf32.double().numpy() - ref).max()
    assert cdf32.dtype == torch.float32 and err32 <= 1.5e-7, f"float32 table CDF error {err32:.3g}"
    cdf64 = prior.cdf(x.double())
    assert cdf64.dtype == torch.float64 and np.abs(cdf64.numpy() - ref).max() <= 1e-13
    # The loss evaluates the CDF and the (clipped) density together.
    cdf, pdf = prior._cdf_pdf_f32(x, 1e30)
    assert torch.equal(cdf, cdf32)
    ref_pdf = np.minimum(stats.beta.pdf(x.double().numpy(), a, b), 1e30)
    ok = ref_pdf > 1e-30
    rel = np.abs(pdf.double().numpy()[ok] / ref_pdf[ok] - 1).max()
    assert rel <= 1e-5, f"pdf relative error {rel:.3g}"  # float32 exp of log terms up to ~100
    clipped = prior._cdf_pdf_f32(x, 3.0)[1]
    assert torch.equal(clipped, pdf.clamp(max=3.0))


@pytest.mark.parametrize("a,b", PARAMS)
def test_beta_pdf_matches_scipy(a, b):
    prior = BetaPrior(a, b)
    x = torch.cat([torch.linspace(0, 1, 2001, dtype=torch.float64), torch.tensor([1e-300, 1 - 1e-16])])
    ref = stats.beta.pdf(x.numpy(), a, b)
    got = prior.pdf(x).numpy()
    assert np.array_equal(np.isinf(got), np.isinf(ref)), "infinite exactly where scipy's is"
    fin = np.isfinite(ref)
    np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-10, atol=1e-300)
    # float32 input: float32 output, scipy's value at the float32 point to float32 precision.
    xf = x[1:-3].float()
    got32 = prior.pdf(xf)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), stats.beta.pdf(xf.double().numpy(), a, b), rtol=1e-5)
    assert prior.pdf(torch.tensor([-0.5, 1.5])).tolist() == [0.0, 0.0]


def test_beta_prior_rejects_bad_parameters():
    for a, b in [(0.0, 1.0), (1.0, -2.0), (float("nan"), 1.0), (float("inf"), 1.0)]:
        with pytest.raises(ValueError, match="alpha, beta > 0"):
            BetaPrior(a, b)


def test_beta_prior_is_a_prior():
    prior = BetaPrior()
    assert isinstance(prior, Prior)
    assert prior.mean == pytest.approx(0.6)
    # Values outside [0, 1] clamp; NaN stays NaN.
    out = prior.cdf(torch.tensor([-1.0, 2.0, float("nan")]))
    assert out[:2].tolist() == [0.0, 1.0] and torch.isnan(out[2])


# ---- batch-shaping loss: values ----------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_matches_slow_reference(reduction):
    torch.manual_seed(0)
    x64 = torch.rand(40, 5, dtype=torch.float64)
    x64[0, 0], x64[1, 1], x64[2, 2] = 0.0, 1.0, 1.0  # boundaries included
    loss = BatchShapingLoss(reduction=reduction)
    ref = ref_loss(x64, reduction=reduction)
    out64 = loss(x64)
    assert out64.dtype == torch.float64 and out64.dim() == 0
    assert abs(out64.item() - ref) <= 1e-12
    out32 = loss(x64.float())
    assert out32.dtype == torch.float32
    # float32 CDF is within ~1e-7 per value; the loss (a sum over gates for "sum") accordingly.
    assert abs(out32.item() - ref) <= 1e-6 * (5 if reduction == "sum" else 1)


@pytest.mark.parametrize("a,b", [(0.6, 0.4), (2.0, 5.0)])
def test_loss_and_gradient_float32(a, b):
    """float32 (table CDF, closed-form density) against the references, on a larger batch."""
    torch.manual_seed(1)
    x = torch.rand(256, 48, requires_grad=True)
    loss = BatchShapingLoss(a, b)
    out = loss(x)
    out.backward()
    assert abs(out.item() - ref_loss(x, a, b)) <= 2e-6  # 48 gates, each CDF value within ~1e-7
    np.testing.assert_allclose(x.grad.numpy(), ref_grad(x, a, b), atol=1e-9, rtol=1e-4)
    # "mean" scales the gradient by 1/G.
    xm = x.detach().clone().requires_grad_()
    BatchShapingLoss(a, b, reduction="mean")(xm).backward()
    np.testing.assert_allclose(xm.grad.numpy() * 48, x.grad.numpy(), rtol=1e-6)


@pytest.mark.parametrize("a,b", [(0.6, 0.4), (0.1, 10.0), (10.0, 10.0), (2.0, 5.0)])
def test_float32_path_matches_float64_path(a, b):
    """The device-agnostic float32 path (table CDF, float32 density) against the exact float64 path.

    Tolerances: loss within 1e-6 relative (measured <= 1e-7). Each gradient element
    2/N (F - r/(N+1)) min(f, clip) within 2/N min(f, clip) 2e-7 (the float32 error of F - r/(N+1), measured
    1.1e-7) plus 1e-5 relative (the float32 density exp((a-1) log x + (b-1) log(1-x)): see
    test_beta_cdf_matches_scipy) plus 1e-12 (densities below float32 range).
    """
    torch.manual_seed(9)
    logits = torch.randn(128, 600) * 4  # near 0 to near 1, like trained gates; 3 column blocks on CPU
    logits[:8, :8] = 30.0  # saturated: exactly 1.0 in float32
    x32 = torch.sigmoid(logits).requires_grad_()
    x64 = x32.detach().double().requires_grad_()
    loss = BatchShapingLoss(a, b)
    out32, out64 = loss(x32), loss(x64)
    out32.backward()
    out64.backward()
    assert abs(out32.item() - out64.item()) <= 1e-6 * out64.item()
    f = BetaPrior(a, b).pdf(x64.detach()).clamp(max=100.0)
    bound = 2 / 128 * f * 2e-7 + 1e-5 * x64.grad.abs() + 1e-12
    assert ((x32.grad.double() - x64.grad).abs() <= bound).all()


def test_ties_and_near_ties_rank_stably():
    """Exact ties (0, 1) get ranks in row order; values 1 ulp apart keep their order."""
    n = 64
    x = torch.rand(n, 6)
    x[:20, 0] = 1.0  # many exact ties at 1 and 0 (saturated sigmoids)
    x[30:50, 1] = 0.0
    # Values a few ulps apart, in decreasing row order, near 0.3 and near 1.
    x[:, 2] = 0.3 * (1 + torch.arange(n, 0, -1, dtype=torch.float32) * 2**-22)
    x[:, 3] = 1 - (1 - 0.999) * (1 + torch.arange(n, 0, -1, dtype=torch.float32) * 2**-20)
    x.requires_grad_()
    out = BatchShapingLoss()(x)
    out.backward()
    assert abs(out.item() - ref_loss(x)) <= 6e-6
    np.testing.assert_allclose(x.grad.numpy(), ref_grad(x), atol=1e-9, rtol=1e-4)
    # Same ranks on the float64 path.
    x64 = x.detach().double().requires_grad_()
    BatchShapingLoss()(x64).backward()
    np.testing.assert_allclose(x64.grad.numpy(), x.grad.numpy(), atol=1e-9, rtol=1e-4)


def tied_probs(n: int, g: int, seed: int) -> torch.Tensor:
    """(n, g) float32 probabilities, most of them tied: 0, -0.0, subnormals, 1 - 1 ulp, 1 and a few others."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.tensor([0.0, -0.0, 2**-149, 2**-126, 0.25, 0.5, 0.5 + 2**-24, 1 - 2**-24, 1.0])
    return pool[torch.randint(len(pool), (n, g), generator=gen)]


@pytest.mark.parametrize("n", [2, 3, 64, 255, 256, 257, 1000])
def test_cpu_fast_sort_matches_torch_sort(n):
    """Eager float32 on CPU sorts packed int64 keys with numpy: the same values (-0.0 as 0.0) and the same
    indices (ties in row order) as torch.sort(stable=True), the path of every other device and of compile."""
    gen = torch.Generator().manual_seed(n)
    for v in (tied_probs(40, n, seed=n), torch.rand(40, n, generator=gen)):
        v[3, :] = 0.5  # a row of one tied value
        values, idx = losses._sort_rows(v)
        ref_values, ref_idx = torch.sort(v, dim=1, stable=True)
        assert values.dtype == torch.float32 and idx.dtype == torch.int64
        assert torch.equal(values, ref_values) and torch.equal(idx, ref_idx)
    # Bad values still end up at the ends of their row, where the loss's check looks.
    v = torch.rand(5, n, generator=gen)
    v[0, -1], v[1, -1], v[2, -1], v[3, -1], v[4, -1] = -0.3, -math.inf, math.nan, -math.nan, 1.5
    values = losses._sort_rows(v)[0]
    assert ((values[:, 0] < 0) | (values[:, -1] > 1) | values[:, 0].isnan() | values[:, -1].isnan()).all()


@pytest.mark.parametrize("kind", ["ties", "random"])
def test_cpu_fast_sort_gives_the_torch_sort_loss_and_gradient(kind, monkeypatch):
    """Loss and gradient bit for bit equal with the numpy sort and with torch.sort, over several blocks."""
    x = tied_probs(256, 300, seed=12) if kind == "ties" else torch.rand(256, 300)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out1 = BatchShapingLoss()(x1)
    out1.backward()
    monkeypatch.setattr(losses, "_sort_rows", lambda v: torch.sort(v, dim=1, stable=True))
    out2 = BatchShapingLoss()(x2)
    out2.backward()
    assert torch.equal(out1, out2) and torch.equal(x1.grad, x2.grad)
    if kind == "ties":  # and both agree with the row-order (stable) reference ranks
        np.testing.assert_allclose(x1.grad.numpy(), ref_grad(x), atol=1e-9, rtol=1e-4)


# ---- batch-shaping loss: gradients -------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gradcheck(reduction):
    x = distinct_probs(6, 3, seed=2).requires_grad_()
    loss = BatchShapingLoss(reduction=reduction)
    assert torch.autograd.gradcheck(loss, (x,), eps=1e-6, atol=1e-7, rtol=1e-4)


def test_gradcheck_other_prior():
    x = distinct_probs(7, 2, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(BatchShapingLoss(2.0, 0.7), (x,), eps=1e-6, atol=1e-7, rtol=1e-4)


def test_gradient_is_finite_at_saturation():
    """Probabilities at exactly 0 and 1 (float32 sigmoid saturation) give finite gradients, no NaN."""
    logits = torch.tensor([[-200.0, 30.0], [0.0, 0.5], [40.0, -120.0], [1.0, 2.0]], requires_grad=True)
    probs = torch.sigmoid(logits)
    assert {0.0, 1.0} <= set(probs.flatten().tolist())
    loss = BatchShapingLoss(pdf_clip=50.0)
    loss(probs).backward()
    assert torch.isfinite(logits.grad).all()
    # The clip bounds d loss / d x by 2 * pdf_clip / N.
    x = probs.detach().requires_grad_()
    loss(x).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() <= 2 * 50.0 / 4 + 1e-6


def test_dtypes_and_autocast():
    torch.manual_seed(4)
    x = torch.rand(32, 4)
    ref = BatchShapingLoss()(x)
    xb = x.bfloat16().requires_grad_()
    out = BatchShapingLoss()(xb)
    assert out.dtype == torch.float32
    assert abs(out.item() - BatchShapingLoss()(xb.detach().float()).item()) < 1e-6
    out.backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ac = BatchShapingLoss()(x)
    assert out_ac.dtype == torch.float32 and abs(out_ac.item() - ref.item()) < 1e-6


def test_no_grad_forward_and_repeated_calls():
    torch.manual_seed(5)
    loss = BatchShapingLoss()
    x1, x2 = torch.rand(16, 3, requires_grad=True), torch.rand(16, 3, requires_grad=True)
    # Two forwards (same shape, shared buffers) before one backward: each keeps its own gradient.
    (loss(x1) + 2 * loss(x2)).backward()
    np.testing.assert_allclose(x1.grad.numpy(), ref_grad(x1), atol=1e-9, rtol=1e-4)
    np.testing.assert_allclose(x2.grad.numpy(), 2 * ref_grad(x2), atol=1e-9, rtol=1e-4)
    with torch.no_grad():
        assert abs(loss(x1).item() - ref_loss(x1)) < 3e-6


# ---- batch-shaping loss: behaviour -------------------------------------------------------------------------


def test_optimising_logits_reaches_the_prior():
    """BatchShapingLoss alone turns each column of sigmoid(logits) into a Beta(0.6, 0.4) sample."""
    torch.manual_seed(0)
    logits = (3 + 0.5 * torch.randn(512, 4)).requires_grad_()  # gates start ~95% on, like GATE_BIAS_INIT

    def ks_pvalues() -> list[float]:
        p = torch.sigmoid(logits).detach().double().numpy()
        return [stats.kstest(p[:, j], stats.beta(0.6, 0.4).cdf).pvalue for j in range(p.shape[1])]

    assert max(ks_pvalues()) < 1e-10, "the initial logits must fail the test"
    loss = BatchShapingLoss()
    opt = torch.optim.Adam([logits], lr=0.3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 150)
    for _ in range(150):
        opt.zero_grad()
        loss(torch.sigmoid(logits)).backward()
        opt.step()
        sched.step()
    pvals = ks_pvalues()
    assert min(pvals) > 0.01, pvals
    on_rate = torch.sigmoid(logits).mean().item()
    assert abs(on_rate - 0.6) < 0.02


class UniformPrior:
    """Uniform prior on [0, 1]: F(x) = x, f(x) = 1."""

    def cdf(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def pdf(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(()).to(x).expand_as(x)  # an expanded view: the loss must not write into it


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_custom_prior(dtype):
    torch.manual_seed(6)
    x = torch.rand(30, 3, dtype=dtype, requires_grad=True)
    prior = UniformPrior()
    assert isinstance(prior, Prior)
    loss = BatchShapingLoss(prior=prior)
    out = loss(x)
    out.backward()
    ref = ref_loss(x, 1.0, 1.0)  # Beta(1, 1) is the uniform distribution
    assert abs(out.item() - ref) < 1e-6
    np.testing.assert_allclose(x.grad.numpy(), ref_grad(x, 1.0, 1.0), atol=1e-7, rtol=1e-5)
    # Identical to the built-in Beta(1, 1).
    assert abs(BatchShapingLoss(1.0, 1.0)(x).item() - out.item()) < 1e-6
    with pytest.raises(ValueError, match="cdf"):
        BatchShapingLoss(prior=object())


def test_accelerator_path_never_reads_values_on_the_host():
    """Meta tensors have shapes but no values, so any host read (.item(), bool(t), nonzero, a
    data-dependent branch) raises on them: the loss's forward and backward in the mode BatchShapingLoss uses
    off CPU (check "nan": bad values flagged by NaN, not raised) run on "meta", so on CUDA they neither sync
    nor break a graph capture."""
    for dtype in (torch.float32, torch.float64):
        x = torch.empty(32, 8, dtype=dtype, device="meta", requires_grad=True)
        out = _BatchShapingFunction.apply(x, BetaPrior(), "sum", 100.0, "nan")
        out.backward()
        assert out.shape == () and out.dtype == dtype and x.grad.shape == x.shape
    # On valid values that path ("nan" check) gives what the CPU path ("raise" check) gives.
    torch.manual_seed(11)
    x1, x2 = torch.rand(32, 8, requires_grad=True), torch.rand(32, 8).requires_grad_()
    with torch.no_grad():
        x2.copy_(x1)
    BatchShapingLoss()(x1).backward()
    _BatchShapingFunction.apply(x2, BetaPrior(), "sum", 100.0, "nan").backward()
    assert torch.equal(x1.grad, x2.grad)


def test_torch_compile_matches_eager():
    """forward + backward compile to one graph (fullgraph=True; the eager call first builds the prior's
    table) and give the eager loss and gradient; compiled, bad values give NaN instead of raising."""
    loss = BatchShapingLoss()

    def step(logits: torch.Tensor) -> torch.Tensor:
        return loss(torch.sigmoid(logits))

    torch.manual_seed(10)
    logits = torch.randn(64, 8, requires_grad=True)
    eager = step(logits)
    eager.backward()
    grad, logits.grad = logits.grad, None
    try:
        compiled_step = torch.compile(step, fullgraph=True)
        compiled = compiled_step(logits)
        compiled.backward()
        with torch.no_grad():
            bad = compiled_step(logits.detach().index_fill(0, torch.tensor([3]), math.nan))
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=0)
    torch.testing.assert_close(logits.grad, grad, rtol=1e-5, atol=1e-9)
    assert torch.isnan(bad)


# ---- batch-shaping loss: bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x,message",
    [
        (torch.tensor([[0.2, 1.3], [0.5, 0.1]]), r"\[0, 1\].*max=1\.3"),
        (torch.tensor([[0.2, -0.1], [0.5, 0.1]]), r"\[0, 1\].*min=-0\.1"),
        (torch.tensor([[0.2, float("nan")], [0.5, 0.1]]), r"1 NaN"),
        (torch.tensor([[0.2, float("inf")], [0.5, 0.1]]), r"1 inf"),
        (torch.rand(1, 8), r"at least 2 samples.*N=1"),
        (torch.rand(8), r"2-D \(N, G\).*1-D"),
        (torch.rand(4, 3, 2), r"2-D \(N, G\).*3-D"),
        (torch.rand(4, 0), r"no gates"),
        (torch.ones(4, 2, dtype=torch.int64), r"floating point"),
    ],
)
def test_bad_input_raises(x, message):
    with pytest.raises(ValueError, match=message):
        BatchShapingLoss()(x)


BAD_VALUES = [1.5, -0.3, float("nan"), float("inf"), -float("inf"), 1 + 2**-23, -(2**-149)]


@pytest.mark.parametrize("bad", BAD_VALUES)
@pytest.mark.parametrize("row", [0, 17, 63])
def test_bad_value_anywhere_in_a_column_raises(bad, row):
    """The check reads only the ends of the sorted columns: every bad value must end up there."""
    torch.manual_seed(8)
    x = torch.rand(64, 1100)  # 3 column blocks on CPU: the bad value is in the last one
    x[row, 1050] = bad
    for dtype in (torch.float32, torch.float64):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            BatchShapingLoss()(x.to(dtype))
        # The accelerator mode ("nan", no host sync): loss and gradient NaN instead of an error.
        xg = x.to(dtype, copy=True).requires_grad_()
        out = _BatchShapingFunction.apply(xg, BetaPrior(), "sum", 100.0, "nan")
        out.backward()
        assert torch.isnan(out) and torch.isnan(xg.grad).all()
    BatchShapingLoss(check_inputs=False)(x)  # unchecked: no crash (garbage in, garbage out)


def test_bad_arguments():
    with pytest.raises(ValueError, match="reduction"):
        BatchShapingLoss(reduction="none")
    with pytest.raises(ValueError, match="pdf_clip"):
        BatchShapingLoss(pdf_clip=0.0)


# ---- batch-shaping beyond gates: any features, other priors, learned parameters ----------------------------


def ref_loss_cols(x: torch.Tensor, cdf, reduction: str = "sum") -> float:
    """Slow reference for (N, C) x and any prior: cdf(sorted column values, column index) -> numpy."""
    xn = x.detach().double().numpy()
    n, c = xn.shape
    q = np.arange(1, n + 1) / (n + 1)
    per_column = [((cdf(np.sort(xn[:, j]), j) - q) ** 2).sum() / n for j in range(c)]
    return sum(per_column) if reduction == "sum" else sum(per_column) / c


def ref_grad_cols(x: torch.Tensor, cdf, pdf, clip: float = 100.0) -> np.ndarray:
    """2/N (F(x) - r/(N+1)) min(f(x), clip), r the stable rank in the column ("sum" reduction)."""
    xn = x.detach().double().numpy()
    n, c = xn.shape
    grad = np.empty_like(xn)
    for j in range(c):
        rank = np.empty(n)
        rank[np.argsort(xn[:, j], kind="stable")] = np.arange(1, n + 1)
        grad[:, j] = 2 / n * (cdf(xn[:, j], j) - rank / (n + 1)) * np.minimum(pdf(xn[:, j], j), clip)
    return grad


def rb_cdf(x, mean, tau):
    return special.expit(tau * special.logit(x) - special.logit(mean))


def rb_pdf(x, mean, tau):
    f = rb_cdf(x, mean, tau)
    return tau * f * (1 - f) / (x * (1 - x))


COL_M = [0.2, 0.5, 0.8, 0.4, 0.6]
COL_S = [0.5, 1.0, 2.0, 0.3, 1.5]
OTHER_PRIORS = {
    "normal": (
        lambda dt: NormalPrior(0.2, 1.5),
        lambda c, j: stats.norm.cdf(c, 0.2, 1.5),
        lambda c, j: stats.norm.pdf(c, 0.2, 1.5),
    ),
    "normal per column": (
        lambda dt: NormalPrior(torch.tensor(COL_M, dtype=dt), torch.tensor(COL_S, dtype=dt)),
        lambda c, j: stats.norm.cdf(c, COL_M[j], COL_S[j]),
        lambda c, j: stats.norm.pdf(c, COL_M[j], COL_S[j]),
    ),
    "relaxed bernoulli": (
        lambda dt: RelaxedBernoulliPrior(0.3, 0.6),
        lambda c, j: rb_cdf(c, 0.3, 0.6),
        lambda c, j: rb_pdf(c, 0.3, 0.6),
    ),
    "relaxed bernoulli per column": (
        lambda dt: RelaxedBernoulliPrior(torch.tensor(COL_M, dtype=dt), torch.tensor(COL_S, dtype=dt)),
        lambda c, j: rb_cdf(c, COL_M[j], COL_S[j]),
        lambda c, j: rb_pdf(c, COL_M[j], COL_S[j]),
    ),
    "symbeta": (
        lambda dt: SymBetaPrior(0.8),
        lambda c, j: stats.beta.cdf(c, 0.8, 0.2),
        lambda c, j: stats.beta.pdf(c, 0.8, 0.2),
    ),
    "beta per column": (
        lambda dt: BetaPrior(torch.tensor(COL_S, dtype=dt), torch.tensor(COL_M, dtype=dt) * 3),
        lambda c, j: stats.beta.cdf(c, COL_S[j], COL_M[j] * 3),
        lambda c, j: stats.beta.pdf(c, COL_S[j], COL_M[j] * 3),
    ),
}


@pytest.mark.parametrize("name", list(OTHER_PRIORS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_other_priors_match_the_slow_reference(name, dtype):
    """Loss and gradient of every prior family (fixed and per-column parameters) against sort + scipy;
    Normal on features of both signs."""
    make, cdf, pdf = OTHER_PRIORS[name]
    gen = torch.Generator().manual_seed(13)
    x64 = torch.randn(48, 5, generator=gen, dtype=torch.float64) * 1.5
    if not name.startswith("normal"):
        x64 = torch.sigmoid(x64 * 2)
    x = x64.to(dtype).requires_grad_()
    out = BatchShapingLoss(prior=make(dtype), dim=0)(x)
    out.backward()
    assert out.dtype == dtype
    ref = ref_loss_cols(x, cdf)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert abs(out.item() - ref) <= tol * max(1.0, ref)
    rtol, atol = (1e-9, 1e-12) if dtype == torch.float64 else (2e-4, 1e-7)
    np.testing.assert_allclose(x.grad.double().numpy(), ref_grad_cols(x, cdf, pdf), rtol=rtol, atol=atol)


def test_dim_picks_the_sample_dims_and_flattens_the_rest_into_columns():
    """dim=0: (N, C, H, W) has C*H*W columns; dim=(0, 2, 3): one column per channel over batch and space
    (the reference code's dim=1); dim=None: every value in one distribution. Loss and gradient equal the
    classic (N, G) loss on the matching reshape."""
    torch.manual_seed(3)
    x = torch.rand(6, 3, 4, 5, dtype=torch.float64)
    prior = BetaPrior(2.0, 3.0)
    cases = [
        (0, lambda t: t.reshape(6, -1)),
        ((0, -1, 2), lambda t: t.permute(0, 2, 3, 1).reshape(-1, 3)),
        (None, lambda t: t.reshape(-1, 1)),
    ]
    for dim, as_gates in cases:
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        out = BatchShapingLoss(prior=prior, dim=dim)(xa)
        ref = BatchShapingLoss(prior=prior)(as_gates(xb))
        out.backward()
        ref.backward()
        assert abs(out.item() - ref.item()) <= 1e-12, dim
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-12, atol=1e-15)


GRADCHECK_PRIORS = {
    "normal": (NormalPrior, [[0.1, -0.2, 0.3], 0.8], "features"),
    "relaxed bernoulli": (RelaxedBernoulliPrior, [0.4, [0.5, 0.9, 2.0]], "probs"),
    "beta": (BetaPrior, [[0.6, 2.0, 0.3], 0.7], "probs"),
    "beta scalar": (BetaPrior, [1.5, 0.4], "probs"),
    "symbeta": (SymBetaPrior, [[0.6, 0.2, 0.9]], "probs"),
}


@pytest.mark.parametrize("name", list(GRADCHECK_PRIORS))
def test_gradcheck_input_and_prior_parameters(name):
    """float64 gradcheck of the loss with respect to x and to every (per-column or scalar) parameter."""
    cls, values, kind = GRADCHECK_PRIORS[name]
    x = distinct_probs(7, 3, seed=5)
    x = (x * 4 - 2 if kind == "features" else x).requires_grad_()
    params = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]

    def loss(x, *p):
        return BatchShapingLoss(prior=cls(*p), dim=0, reduction="mean")(x)

    assert torch.autograd.gradcheck(loss, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-4)


def test_gradcheck_with_a_hyperprior_on_learned_means():
    """The generalized loss: Relaxed Bernoulli priors with per-column means under a Beta(3, 7) hyperprior
    (the means enter both the prior and the hyperprior term)."""
    x = distinct_probs(9, 4, seed=6).requires_grad_()
    means = torch.tensor([0.2, 0.35, 0.5, 0.1], dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    shaping = BatchShapingLoss(dim=0, hyperprior={"mean": BetaPrior(3.0, 7.0)}, hyperprior_weight=0.5)

    def loss(x, m, t):
        return shaping(x, prior=RelaxedBernoulliPrior(m, t))

    assert torch.autograd.gradcheck(loss, (x, means, tau), eps=1e-6, atol=1e-7, rtol=1e-4)


def test_learned_normal_parameters_move_to_the_data():
    """Fixed N(2, 0.5) samples; the prior's mean and std (per column, std = exp(log_std)) learn them."""
    torch.manual_seed(0)
    data = 2 + 0.5 * torch.randn(512, 4)
    mean, log_std = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4))
    shaping = BatchShapingLoss(dim=0)
    opt = torch.optim.Adam([mean, log_std], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        shaping(data, prior=NormalPrior(mean, log_std.exp())).backward()
        opt.step()
    assert (mean - data.mean(0)).abs().max() < 0.02, mean
    assert (log_std.exp() - data.std(0)).abs().max() < 0.02, log_std.exp()


def test_learned_symbeta_parameter_moves_to_the_data():
    """Fixed Beta(0.8, 0.2) samples; a learned SymBetaPrior alpha (the per-call Hermite table) finds 0.8."""
    torch.manual_seed(1)
    data = torch.distributions.Beta(0.8, 0.2).sample((2048,)).view(-1, 1).clamp(0, 1)
    raw = nn.Parameter(torch.tensor(0.0))  # alpha = sigmoid(raw) = 0.5
    shaping = BatchShapingLoss(dim=None)
    opt = torch.optim.Adam([raw], lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        shaping(data, prior=SymBetaPrior(torch.sigmoid(raw))).backward()
        opt.step()
    assert abs(torch.sigmoid(raw).item() - 0.8) < 0.03


def test_hyperprior_terms_and_registered_parameters():
    means = nn.Parameter(torch.tensor([0.2, 0.3, 0.5, 0.4]))
    tau = torch.tensor([0.5, 0.6, 0.7, 0.8], requires_grad=True)
    prior = RelaxedBernoulliPrior(means, tau)
    shaping = BatchShapingLoss(
        prior=prior,
        hyperprior={"mean": BetaPrior(3.0, 7.0), "temperature": lambda t: t.abs().mean()},
        hyperprior_weight=0.5,
    )
    assert [p is means for p in shaping.parameters()] == [True]  # the nn.Parameter, not the plain tensor
    assert "prior_mean" in shaping.state_dict()
    assert list(BatchShapingLoss().parameters()) == []
    x = torch.rand(64, 4)
    total = shaping(x)
    expect = (
        BatchShapingLoss(prior=prior)(x)
        + 0.5 * BatchShapingLoss(prior=BetaPrior(3.0, 7.0), dim=None)(means)
        + 0.5 * tau.mean()
    )
    assert abs(total.item() - expect.item()) <= 1e-6
    total.backward()
    assert means.grad.abs().sum() > 0 and tau.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"hyperprior names parameter 'std'"):
        BatchShapingLoss(prior=prior, hyperprior={"std": BetaPrior()})
    with pytest.raises(ValueError, match=r"needs a tensor parameter"):
        BatchShapingLoss(prior=RelaxedBernoulliPrior(0.5, tau), hyperprior={"mean": BetaPrior()})
    with pytest.raises(ValueError, match=r"one value per column \(it has 1\)"):
        BatchShapingLoss(
            prior=RelaxedBernoulliPrior(torch.tensor(0.3), tau), hyperprior={"mean": BetaPrior()}
        )(x)


def test_signed_keys_sort_like_torch_sort():
    """The eager CPU sort with signed keys (priors on the real line): values of both signs, -0.0 and 0.0,
    ties, infinities; the same indices as torch.sort(stable=True)."""
    gen = torch.Generator().manual_seed(2)
    pool = torch.tensor([-math.inf, -3.5, -1.0, -(2**-149), -0.0, 0.0, 2**-149, 1.0, 2.5, math.inf])
    for v in (pool[torch.randint(len(pool), (30, 300), generator=gen)], torch.randn(30, 300, generator=gen)):
        _, idx = losses._sort_rows(v, signed=True)
        values, idx_v = losses._sort_rows(v, signed=True, values=True)
        ref_values, ref_idx = torch.sort(v, dim=1, stable=True)
        assert torch.equal(idx, ref_idx) and torch.equal(idx_v, ref_idx) and torch.equal(values, ref_values)


def meta_tensor(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta", requires_grad=True)


def test_other_priors_never_read_values_on_the_host():
    """Like test_accelerator_path_never_reads_values_on_the_host: forward and backward on "meta" tensors,
    with fixed, per-column and learned parameters, run without reading a value (bad values and parameters
    are flagged by NaN there)."""
    for dtype in (torch.float32, torch.float64):
        meta = functools.partial(meta_tensor, dtype=dtype)
        priors = [
            (NormalPrior(0.5, 2.0), 0),
            (NormalPrior(meta(8), meta()), 0),
            (RelaxedBernoulliPrior(0.3, 0.5), "gates"),
            (RelaxedBernoulliPrior(meta(), meta(8)), "gates"),
            (SymBetaPrior(0.7), "gates"),
        ]
        if dtype == torch.float32:  # the continued fraction (its most terms, no host read): thousands of ops
            priors += [(BetaPrior(meta(), meta()), "gates"), (SymBetaPrior(meta(8)), "gates")]
        for prior, dim in priors:
            x = meta(32, 8)
            out = BatchShapingLoss(prior=prior, dim=dim, reduction="mean")(x)
            out.backward()
            assert out.shape == () and out.dtype == dtype and x.grad.shape == x.shape
            assert all(p.grad.shape == p.shape for p in prior.tensor_params())


def test_other_priors_compile_to_one_graph():
    """torch.compile (aot_eager, fullgraph) of learned Normal and Relaxed Bernoulli priors: the eager loss
    and gradients; bad values give NaN instead of raising."""
    mean, std = nn.Parameter(torch.tensor([0.1, -0.2, 0.3])), nn.Parameter(torch.tensor(0.8))
    tau = nn.Parameter(torch.tensor(0.5))
    normal = BatchShapingLoss(prior=NormalPrior(mean, std), dim=0)
    relaxed = BatchShapingLoss(prior=RelaxedBernoulliPrior(0.3, tau))

    def step(x: torch.Tensor) -> torch.Tensor:
        return normal(x) + relaxed(torch.sigmoid(x))

    torch.manual_seed(12)
    x = torch.randn(16, 3, requires_grad=True)
    eager = step(x)
    eager.backward()
    grads = [t.grad.clone() for t in (x, mean, std, tau)]
    for t in (x, mean, std, tau):
        t.grad = None
    try:
        compiled_step = torch.compile(step, backend="aot_eager", fullgraph=True)
        compiled = compiled_step(x)
        compiled.backward()
        with torch.no_grad():
            bad = compiled_step(x.detach().index_fill(0, torch.tensor([2]), math.nan))
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=0)
    for t, g in zip((x, mean, std, tau), grads, strict=True):
        torch.testing.assert_close(t.grad, g, rtol=1e-5, atol=1e-9)
    assert torch.isnan(bad)


@pytest.mark.parametrize(
    "prior,dim,x,message",
    [
        (NormalPrior(), 0, torch.tensor([[0.2, math.nan], [-5.0, 0.1]]), r"1 NaN and 0 inf.*finite values"),
        (NormalPrior(), 0, torch.tensor([[0.2, -math.inf], [-5.0, 0.1]]), r"0 NaN and 1 inf"),
        (RelaxedBernoulliPrior(), 0, torch.tensor([[0.2, 1.5], [0.5, 0.1]]), r"\[0, 1\].*max=1\.5.*sigmoid"),
        (NormalPrior(torch.zeros(5), 1.0), 0, torch.rand(8, 3), r"'mean' has 5 values.*for 3 columns"),
        (NormalPrior(), 3, torch.rand(8, 3), r"dim=3 does not name dims of the 2-D input"),
        (NormalPrior(), None, torch.rand(1, 1), r"at least 2 samples"),
        (NormalPrior(), (0, 1), torch.rand(4, 0), r"at least 2 samples|no columns"),
        (NormalPrior(torch.zeros(3, device="meta"), 1.0), 0, torch.rand(8, 3), r"'mean' is on meta.*on cpu"),
    ],
)
def test_bad_features_and_parameters_raise(prior, dim, x, message):
    with pytest.raises(ValueError, match=message):
        BatchShapingLoss(prior=prior, dim=dim)(x)


def test_invalid_learned_parameters_raise_on_cpu_and_give_nan_elsewhere():
    """A learned std pushed to <= 0: ValueError naming it and the fix on CPU; in the no-sync mode of other
    devices ("nan" check), NaN loss and gradients."""
    std = nn.Parameter(torch.tensor([1.0, 0.5, 2.0]))
    prior = NormalPrior(0.0, std)
    x = torch.randn(16, 3, requires_grad=True)
    BatchShapingLoss(prior=prior, dim=0)(x)
    with torch.no_grad():
        std[1] = -0.5
    with pytest.raises(ValueError, match=r"NormalPrior needs std > 0: 1 of its 3 values.*softplus"):
        BatchShapingLoss(prior=prior, dim=0)(x)
    out = _BatchShapingFunction.apply(x, prior, "sum", 100.0, "nan", std)
    out.backward()
    assert torch.isnan(out) and torch.isnan(x.grad).all() and torch.isnan(std.grad).all()
    with pytest.raises(ValueError, match=r"dim must be 'gates'"):
        BatchShapingLoss(dim="batch")
    with pytest.raises(ValueError, match=r"2-D \(N, G\).*3-D.*dim=0"):
        BatchShapingLoss()(torch.rand(4, 3, 2))


# ---- L0 loss -----------------------------------------------------------------------------------------------


def gate_outputs_example():
    torch.manual_seed(7)
    p1 = torch.rand(4, 3, requires_grad=True)
    p2 = torch.rand(4, 5, requires_grad=True)
    outs = [GateOutput("a.gate", p1, (p1 > 0.5).float()), GateOutput("b.gate", p2, (p2 > 0.5).float())]
    return p1, p2, outs


def test_l0_loss_modes():
    p1, p2, outs = gate_outputs_example()
    a, b = p1.detach().numpy(), p2.detach().numpy()
    # mean: all gates and samples pooled.
    expect_mean = (a.sum() + b.sum()) / (a.size + b.size)
    assert l0_loss(outs).item() == pytest.approx(expect_mean, rel=1e-6)
    # sum: expected number of open gates per image.
    expect_sum = a.sum(1).mean() + b.sum(1).mean()
    assert l0_loss(outs, "sum").item() == pytest.approx(expect_sum, rel=1e-6)
    # Weighted: expected fraction of the gated cost that stays on, or the unnormalised cost with "sum".
    w1, w2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 0.0, 1.0, 1.0, 4.0])
    cost = (a * w1.numpy()).sum(1).mean() + (b * w2.numpy()).sum(1).mean()
    total = w1.sum().item() + w2.sum().item()
    assert l0_loss(outs, weights=[w1, w2]).item() == pytest.approx(cost / total, rel=1e-6)
    assert l0_loss(outs, "sum", weights=[w1, w2]).item() == pytest.approx(cost, rel=1e-6)
    # Uniform weights reduce the weighted mean to the plain mean when all layers have the same G.
    assert l0_loss([p1, p1 * 0.5], weights=[torch.ones(3)] * 2).item() == pytest.approx(
        0.75 * a.mean(), rel=1e-6
    )


def test_l0_loss_accepts_tensors_and_gradient_flows():
    p1, p2, outs = gate_outputs_example()
    assert l0_loss([p1, p2]).item() == l0_loss(outs).item()
    l0_loss(outs, "sum").backward()
    assert torch.allclose(p1.grad, torch.full_like(p1, 1 / 4))  # d/dp of sum_g mean_n p
    assert torch.allclose(p2.grad, torch.full_like(p2, 1 / 4))
    p1.grad = None
    w = torch.tensor([1.0, 2.0, 5.0])
    l0_loss([p1], weights=[w]).backward()
    assert torch.allclose(p1.grad, (w / w.sum() / 4).expand_as(p1))
    # One gating module's output may be given alone, as BatchShapingLoss takes one tensor.
    assert l0_loss(p1).item() == l0_loss([p1]).item() and l0_loss(outs[1]).item() == l0_loss([p2]).item()
    assert l0_loss(p1, "sum", weights=w).item() == l0_loss([p1], "sum", weights=[w]).item()


def test_l0_loss_bad_input():
    p1, p2, outs = gate_outputs_example()
    with pytest.raises(ValueError, match="reduction"):
        l0_loss(outs, "max")
    with pytest.raises(ValueError, match="at least one"):
        l0_loss([])
    with pytest.raises(ValueError, match="weights"):
        l0_loss(outs, weights=[torch.ones(3)])
    with pytest.raises(ValueError, match=r"weights\[1\] must have shape \(5,\)"):
        l0_loss(outs, weights=[torch.ones(3), torch.ones(4)])
    with pytest.raises(ValueError, match=r"\(N, G\)"):
        l0_loss([torch.rand(5)])


def test_mac_target_loss_is_zero_on_target_and_pulls_towards_it():
    from batchshaping.losses import mac_target_loss

    macs = torch.tensor([30.0, 50.0], requires_grad=True)  # mean 40 of a dense 100
    assert mac_target_loss(macs, 100.0, 0.4).item() == 0.0
    loss = mac_target_loss(macs, 100.0, 0.3)
    assert loss.item() == pytest.approx(0.01)
    loss.backward()
    assert torch.all(macs.grad > 0)  # above the budget: every image is pushed down
    with pytest.raises(ValueError, match=r"macs must be \(N,\) per-image MACs"):
        mac_target_loss(torch.ones(2, 2), 100.0, 0.3)
    with pytest.raises(ValueError, match=r"dense must be the dense twin's MACs \(> 0\), got 0"):
        mac_target_loss(macs, 0, 0.3)
