"""Tests of batchshaping.losses: Beta prior accuracy, batch-shaping loss values and gradients, L0 loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import special, stats

from batchshaping.gates import GateOutput
from batchshaping.losses import BatchShapingLoss, BetaPrior, Prior, l0_loss


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


def ref_loss(x: torch.Tensor, a: float = 0.6, b: float = 0.4, reduction: str = "sum", flatten: bool = False):
    xn = x.detach().double().numpy()
    if flatten:
        xn = xn.reshape(-1, 1)
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
    """(n, g) float64 values in [lo, 1 - lo], all pairwise far apart (no ties, even with flatten)."""
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
    err32 = np.abs(prior.cdf(x).double().numpy() - ref).max()
    assert err32 <= 2e-7, f"float32 table CDF error {err32:.3g} for Beta({a}, {b})"  # task: <= 1e-6
    assert prior.table_error < 1e-9  # the quadratics themselves, before float32 rounding
    sub = torch.cat([x[::8], x[-20:]])  # the exact evaluator is slower: a subsample incl. the extremes
    ref_sub = special.betainc(a, b, sub.double().numpy())
    cdf64 = prior.cdf(sub.double())
    assert cdf64.dtype == torch.float64 and np.abs(cdf64.numpy() - ref_sub).max() <= 1e-12
    assert np.abs(prior.cdf_exact(sub).numpy() - ref_sub).max() <= 1e-12
    # The loss evaluates the CDF and the (clipped) density together from the table.
    cdf, pdf = prior._eval_f32(x, need_pdf=True, clip=1e30)
    assert torch.equal(cdf, prior.cdf(x))
    ref_pdf = np.minimum(stats.beta.pdf(x.double().numpy(), a, b), 1e30)
    ok = ref_pdf > 1e-30
    rel = np.abs(pdf.double().numpy()[ok] / ref_pdf[ok] - 1).max()
    bound = 5e-7 if (a, b) == (0.6, 0.4) else 5e-5  # linear in each cell, see BetaPrior
    assert rel <= bound, f"table pdf relative error {rel:.3g}"
    # Clipped: the clip applies to the tabulated nodes, so it is exact away from the crossing cells.
    clipped = prior._eval_f32(x, need_pdf=True, clip=3.0)[1]
    assert clipped.max() <= 3.0 and torch.equal(clipped[pdf < 2.9], pdf[pdf < 2.9])


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
@pytest.mark.parametrize("flatten", [False, True])
def test_loss_matches_slow_reference(reduction, flatten):
    torch.manual_seed(0)
    x64 = torch.rand(40, 5, dtype=torch.float64)
    x64[0, 0], x64[1, 1], x64[2, 2] = 0.0, 1.0, 1.0  # boundaries included
    loss = BatchShapingLoss(reduction=reduction, flatten=flatten)
    ref = ref_loss(x64, reduction=reduction, flatten=flatten)
    out64 = loss(x64)
    assert out64.dtype == torch.float64 and out64.dim() == 0
    assert abs(out64.item() - ref) <= 1e-10
    out32 = loss(x64.float())
    assert out32.dtype == torch.float32
    # float32 CDF is within ~3e-7 per value; the loss (a sum over gates for "sum") accordingly.
    assert abs(out32.item() - ref) <= 1e-6 * (5 if reduction == "sum" and not flatten else 1)


@pytest.mark.parametrize("a,b", [(0.6, 0.4), (2.0, 5.0)])
def test_loss_and_gradient_fast_path(a, b):
    """CPU float32 (packed-key sort, table CDF) against the references, on a larger batch."""
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


def test_ties_and_near_ties_rank_stably():
    """Exact ties (0, 1) get ranks in row order; near-ties the packed key cannot resolve are re-sorted."""
    n = 64
    x = torch.rand(n, 6)
    x[:20, 0] = 1.0  # many exact ties at 1 and 0 (saturated sigmoids)
    x[30:50, 1] = 0.0
    # Column 2: values 1 ulp-ish apart in *decreasing* row order: they share a truncated key, so the
    # key sort orders them by row, wrongly, and the exactness check must repair it.
    base = torch.tensor(0.3)
    x[:, 2] = base * (1 + torch.arange(n, 0, -1, dtype=torch.float32) * 2**-22)
    x[:, 3] = 1 - (1 - 0.999) * (1 + torch.arange(n, 0, -1, dtype=torch.float32) * 2**-20)  # near 1
    x.requires_grad_()
    out = BatchShapingLoss()(x)
    out.backward()
    assert abs(out.item() - ref_loss(x)) <= 6e-6
    np.testing.assert_allclose(x.grad.numpy(), ref_grad(x), atol=1e-9, rtol=1e-4)
    # Same ranks from the generic torch.sort path (float64).
    x64 = x.detach().double().requires_grad_()
    BatchShapingLoss()(x64).backward()
    np.testing.assert_allclose(x64.grad.numpy(), x.grad.numpy(), atol=1e-9, rtol=1e-4)


# ---- batch-shaping loss: gradients -------------------------------------------------------------------------


@pytest.mark.parametrize("reduction,flatten", [("sum", False), ("mean", False), ("sum", True)])
def test_gradcheck(reduction, flatten):
    x = distinct_probs(6, 3, seed=2).requires_grad_()
    loss = BatchShapingLoss(reduction=reduction, flatten=flatten)
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
    for flatten in (False, True):
        with pytest.raises(ValueError, match=message):
            BatchShapingLoss(flatten=flatten)(x)


BAD_VALUES = [1.5, -0.3, float("nan"), float("inf"), -float("inf"), 1 + 2**-23, -(2**-149)]


@pytest.mark.parametrize("bad", BAD_VALUES)
@pytest.mark.parametrize("row", [0, 17, 63])
def test_bad_value_anywhere_in_a_column_raises(bad, row):
    """The CPU path checks only the ends of the sorted columns: every bad value must end up there."""
    torch.manual_seed(8)
    x = torch.rand(64, 5)
    x[row, 3] = bad
    for dtype in (torch.float32, torch.float64):  # packed-key path and torch.sort path
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            BatchShapingLoss()(x.to(dtype))
    BatchShapingLoss(check_inputs=False)(x)  # unchecked: no crash (garbage in, garbage out)


def test_bad_arguments():
    with pytest.raises(ValueError, match="reduction"):
        BatchShapingLoss(reduction="none")
    with pytest.raises(ValueError, match="pdf_clip"):
        BatchShapingLoss(pdf_clip=0.0)


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
