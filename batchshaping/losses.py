"""Batch-shaping loss with Beta priors, and the L0 gate-sparsity loss (Bejnordi et al., ICLR 2020).

Batch-shaping matches, for every gate (column) ``j`` of a batch of gate-on probabilities ``x`` (N, G), the
empirical distribution of the column to a prior CDF ``F`` (Beta(0.6, 0.4) in the paper)::

    loss_j = 1/N * sum_i (F(x_(i),j) - i / (N + 1))^2          x_(i),j: the i-th smallest value of column j

and its gradient is analytic: ``d loss_j / d x_ij = 2/N * (F(x_ij) - r_ij / (N + 1)) * f(x_ij)``, with
``r_ij`` the 1-based rank of ``x_ij`` in its column and ``f`` the prior density. Ranks are piecewise constant,
so they get no gradient.

Everything is torch ops on the input's device, with no host synchronisation on accelerators: ranks come
from ``torch.sort`` along the batch dimension, and :class:`BetaPrior` interpolates its CDF in a table it
builds once (float32 inputs) or evaluates it exactly by continued fraction (float64 inputs). The one
exception is eager float32 on CPU, where ``torch.sort`` costs twice the rest of the loss
(benchmarks/README.md, "BatchShapingLoss"): there numpy sorts exact int64 keys (value bits, row index) and
gives the same ranks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from batchshaping.gates import GateOutput

__all__ = ["BatchShapingLoss", "BetaPrior", "Prior", "l0_loss", "mac_target_loss"]

#: Default clip of the prior density in the batch-shaping gradient (the authors' reference code clips the
#: density to [1e-3, 100]), see :class:`BatchShapingLoss`.
DEFAULT_PDF_CLIP = 100.0


@runtime_checkable
class Prior(Protocol):
    """A prior distribution on [0, 1] for :class:`BatchShapingLoss`.

    Any object with these two elementwise torch functions works; both take and return tensors of the same
    shape on the input's device. Autograd is not used through them (the loss's gradient is analytic).
    """

    def cdf(self, x: Tensor) -> Tensor:
        """Cumulative distribution function F(x), elementwise."""
        ...

    def pdf(self, x: Tensor) -> Tensor:
        """Density f(x) = F'(x), elementwise (may be inf at 0 or 1; the loss clips it)."""
        ...


# --------------------------------------------------------------------------------------------------------
# Regularised incomplete beta function, float64


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _betainc(a: float, b: float, x: Tensor, terms: int) -> Tensor:
    """I_x(a, b) by continued fraction (modified Lentz) with a fixed number of terms: no data-dependent
    stopping, hence no host sync. x: float64 in [0, 1], any shape, any device."""
    # I_x(a, b) = 1 - I_{1-x}(b, a) keeps x below (a + 1) / (a + b + 2), where the fraction converges fast.
    swap = (x > (a + 1) / (a + b + 2)).to(x.dtype)
    xs = x + swap * (1 - 2 * x)  # 1 - x where swapped (exact for x >= 1/2)
    aa, bb = a + (b - a) * swap, b + (a - b) * swap
    tiny = 1e-300
    c = torch.ones_like(x)
    d = 1 / (1 - (aa + bb) * xs / (aa + 1)).clamp_min(tiny)  # positive for xs below the switch point
    h = d
    for m in range(1, terms + 1):
        even = m * (bb - m) * xs / ((aa - 1 + 2 * m) * (aa + 2 * m))
        odd = -(aa + m) * (aa + bb + m) * xs / ((aa + 2 * m) * (aa + 1 + 2 * m))
        for num in (even, odd):
            d = 1 + num * d
            d = 1 / torch.where(d.abs() < tiny, tiny, d)
            c = 1 + num / c
            c = torch.where(c.abs() < tiny, tiny, c)
            h = h * d * c
    front = torch.exp(torch.xlogy(aa, xs) + torch.special.xlog1py(bb, -xs) - _log_beta(a, b)) / aa
    r = front * h
    return r + swap * (1 - 2 * r)


@torch.compiler.disable  # host-side set-up, never traced
@functools.lru_cache(maxsize=64)
def _cf_terms(a: float, b: float) -> int:
    """Terms the continued fraction needs for Beta(a, b), measured once on the host over [0, 1] (both sides
    of the switch point, where it converges slowest): the first term changing the result by < 1e-15, + 2."""
    x = torch.linspace(0, 1, 1025, dtype=torch.float64)
    prev = _betainc(a, b, x, 0)
    for terms in range(1, 1000):
        cur = _betainc(a, b, x, terms)
        if float((cur - prev).abs().max()) < 1e-15:
            return terms + 2
        prev = cur
    raise ValueError(f"the Beta({a}, {b}) CDF's continued fraction does not converge")


#: CDF table in t = logit(x): t of a float32 x in (0, 1) lies in [-103.3, 16.7] (x = 2^-149, 1 - 2^-24).
_T_LO, _T_HI = -104.0, 17.0
#: Bound on the linear interpolation error of the table, h^2 max|F''(t)| / 8.
_TABLE_TOL = 2e-8


@torch.compiler.disable
@functools.lru_cache(maxsize=16)
def _cdf_table(a: float, b: float) -> tuple[float, int, Tensor, Tensor]:
    """(1/h, k0, F, D): F[k] = CDF at t = (k - k0) h, D[k] = F[k+1] - F[k], float32 (CPU).

    In t the CDF is smooth everywhere (its x^a, (1-x)^b singularities become e^{a t}, e^{-b t} tails), so a
    uniform grid suits any Beta. The step h is a power of two (t / h exact), the largest in [2^-12, 2^-4]
    with h^2 max|F''| / 8 <= _TABLE_TOL: 2^-10 for Beta(0.6, 0.4), 2^-12 (the finest) for Beta(10, 10).
    The end nodes hold F(0) = 0 and F(1) = 1 exactly: t = -inf and +inf clamp to them, finite t do not
    reach them.
    """
    probe = torch.arange(_T_LO, _T_HI, 1 / 64, dtype=torch.float64)
    xp = torch.sigmoid(probe)
    g = torch.exp(a * torch.log(xp) + b * torch.log(torch.sigmoid(-probe)) - _log_beta(a, b))  # dF/dt
    f2 = float((g * (a * (1 - xp) - b * xp)).abs().max())  # max |F''(t)|
    log2_h = math.floor(0.5 * math.log2(8 * _TABLE_TOL / f2)) if f2 > 0 else -4
    inv_h = 2.0 ** -min(-4, max(-12, log2_h))
    k0, k1 = math.ceil(-_T_LO * inv_h), math.ceil(_T_HI * inv_h)
    t = torch.arange(-k0, k1 + 1, dtype=torch.float64) / inv_h
    cdf = _betainc(a, b, torch.sigmoid(t), _cf_terms(a, b))
    cdf[0], cdf[-1] = 0.0, 1.0
    diff = torch.cat([cdf[1:] - cdf[:-1], cdf.new_zeros(1)])
    return inv_h, k0, cdf.float(), diff.float()


class BetaPrior:
    """Beta(alpha, beta) prior on [0, 1], with CDF and density in torch on the input's device.

    float64 inputs get the exact CDF (continued fraction, ~1e-15). Other inputs are computed in float32:
    the CDF is interpolated linearly in a table over t = logit(x) = log(x) - log(1 - x), built once per
    (alpha, beta) on the host and copied once to each device it is used on (1 MB for Beta(0.6, 0.4), up to
    4 MB for peaked priors). For alpha, beta in [0.1, 10] the float32 CDF is within 1.1e-7 of the exact one
    (the table's own error is <= 2e-8; the rest is float32 rounding of t and of the result).

    ``pdf`` is the closed form ``exp((alpha-1) log x + (beta-1) log(1-x) - log B(alpha, beta))`` (inf at 0
    if alpha < 1 and at 1 if beta < 1); in float32 it is within 1e-5 relative for alpha, beta in [0.1, 10].
    """

    def __init__(self, alpha: float = 0.6, beta: float = 0.4) -> None:
        alpha, beta = float(alpha), float(beta)
        if not (math.isfinite(alpha) and math.isfinite(beta) and alpha > 0 and beta > 0):
            raise ValueError(f"Beta prior needs finite alpha, beta > 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = alpha, beta
        self.log_beta = _log_beta(alpha, beta)
        self._tables: dict[torch.device, tuple[float, int, Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        return f"BetaPrior(alpha={self.alpha:g}, beta={self.beta:g})"

    @property
    def mean(self) -> float:
        """Mean alpha / (alpha + beta) of the prior (the on-rate batch-shaping drives each gate to)."""
        return self.alpha / (self.alpha + self.beta)

    def cdf(self, x: Tensor) -> Tensor:
        """CDF, elementwise. x: any shape; float64 -> exact float64, other dtypes -> float32 from the table.

        Values outside [0, 1] are clamped (0 below, 1 above); NaN stays NaN.
        """
        if x.dtype == torch.float64:
            return _betainc(self.alpha, self.beta, x.clamp(0, 1), _cf_terms(self.alpha, self.beta))
        xf = x.float().clamp(0, 1)
        return torch.where(xf.isnan(), xf, self._cdf_pdf_f32(xf)[0])

    def pdf(self, x: Tensor) -> Tensor:
        """Density, elementwise, closed form; float64 stays float64, others give float32. 0 outside [0, 1]."""
        xf = x if x.dtype == torch.float64 else x.float()
        inside = (xf >= 0) & (xf <= 1)
        xc = xf.clamp(0, 1)
        # xlogy / xlog1py give 0 * log 0 = 0, so alpha = 1 or beta = 1 are exact at the boundary.
        logf = torch.xlogy(self.alpha - 1, xc) + torch.special.xlog1py(self.beta - 1, -xc) - self.log_beta
        return torch.where(inside | xf.isnan(), torch.exp(logf), 0.0)

    def _cdf_pdf_f32(self, x: Tensor, pdf_clip: float | None = None) -> tuple[Tensor, Tensor | None]:
        """Table CDF and (if pdf_clip is given) the density clipped to [0, pdf_clip], both float32.

        x: float32 in [0, 1], any shape. Values outside [0, 1] or NaN give garbage (never an invalid index).
        """
        table = self._tables.get(x.device)
        if table is None:  # one copy per device; on CUDA, made by a first call before any graph capture
            inv_h, k0, cdf, diff = _cdf_table(self.alpha, self.beta)
            table = self._tables[x.device] = (inv_h, k0, cdf.to(x.device), diff.to(x.device))
        inv_h, k0, cdf_tab, diff_tab = table
        lx, l1 = torch.log(x), torch.log1p(-x)  # log1p: t keeps float32 precision near x = 1
        # u = t / h; ±inf (x = 0, 1) clamp to the end nodes, NaN (bad input) to node 0.
        u = torch.nan_to_num_((lx - l1).mul_(inv_h), nan=-k0).clamp_(-k0, cdf_tab.numel() - 1 - k0)
        cell = torch.floor(u)
        frac = u.sub_(cell)
        idx = cell.add_(k0).to(torch.int32).view(-1)
        cdf = torch.index_select(cdf_tab, 0, idx).view_as(x)
        cdf.addcmul_(frac, torch.index_select(diff_tab, 0, idx).view_as(x))
        if pdf_clip is None:
            return cdf, None
        logf = torch.full_like(x, -self.log_beta)
        for coef, log_term in ((self.alpha - 1, lx), (self.beta - 1, l1)):
            if coef != 0:  # skipped when 0: 0 * log 0 would give NaN at the boundary
                logf.add_(log_term, alpha=coef)
        return cdf, logf.exp_().clamp_(max=pdf_clip)


# --------------------------------------------------------------------------------------------------------
# Batch-shaping loss


def _check_shape(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"BatchShapingLoss expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(
            f"BatchShapingLoss expects a 2-D (N, G) tensor of gate probabilities (batch x gates), "
            f"got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
        )
    n, g = x.shape
    if n < 2:
        raise ValueError(
            f"BatchShapingLoss needs a batch of at least 2 samples to compare each gate's distribution over "
            f"the batch with the prior, got N={n} (input shape {tuple(x.shape)})"
        )
    if g < 1:
        raise ValueError(f"BatchShapingLoss got no gates: input shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"BatchShapingLoss expects floating point probabilities, got dtype {x.dtype}")


def _raise_bad_values(x: Tensor) -> None:
    """Raise the ValueError describing why x is not a tensor of probabilities (CPU, errors only)."""
    n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    if n_nan or n_inf:
        raise ValueError(
            f"BatchShapingLoss input contains {n_nan} NaN and {n_inf} inf value(s) (shape {tuple(x.shape)}); "
            f"expected gate probabilities in [0, 1]"
        )
    lo, hi = torch.aminmax(x)
    raise ValueError(
        f"BatchShapingLoss expects gate probabilities in [0, 1], got values outside: "
        f"min={float(lo):.6g}, max={float(hi):.6g}"
    )


def _eager_cpu(x: Tensor) -> bool:
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def _sort_rows(v: Tensor) -> tuple[Tensor, Tensor]:
    """torch.sort(v, dim=1, stable=True) of a contiguous 2-D v; eager float32 on CPU by numpy instead.

    numpy sorts int64 keys (float32 bits << b | position along dim 1, in b bits) with SIMD, ~7x faster than
    torch.sort on CPU. The keys are unique and, for values >= 0 (+ 0.0 turns -0.0 into 0.0), ordered as
    (value, index): the same values and indices as the stable sort. Values < 0 or NaN (rejected by the
    loss's check) sort to the front, negatives in reverse order.
    """
    if v.dtype != torch.float32 or not _eager_cpu(v):
        return torch.sort(v, dim=1, stable=True)
    b = max(1, (v.shape[1] - 1).bit_length())
    keys = (v + 0.0).numpy().view(np.int32).astype(np.int64) << b
    keys |= np.arange(v.shape[1])
    keys.sort(axis=1)
    idx = torch.from_numpy(keys & ((1 << b) - 1))
    return torch.from_numpy((keys >> b).astype(np.int32).view(np.float32)), idx


def _cdf_pdf(prior: Prior, v: Tensor, pdf_clip: float | None) -> tuple[Tensor, Tensor | None]:
    """The prior's CDF and (if pdf_clip is given) its density clipped to [0, pdf_clip] at v, fresh tensors."""
    if isinstance(prior, BetaPrior) and v.dtype == torch.float32:
        return prior._cdf_pdf_f32(v, pdf_clip)
    # float64, or a custom prior (its outputs may alias v or be expanded views: clamp copies the density).
    cdf = prior.cdf(v).to(v.dtype)
    pdf = None if pdf_clip is None else prior.pdf(v).to(v.dtype).clamp(0, pdf_clip)  # inf -> the clip
    if cdf.shape != v.shape or (pdf is not None and pdf.shape != v.shape):
        raise ValueError(f"prior {prior!r} returned a cdf/pdf of the wrong shape for input {tuple(v.shape)}")
    return cdf, pdf


def _batch_shaping(
    x: Tensor, prior: Prior, reduction: str, pdf_clip: float, need_grad: bool, check: str | None
) -> tuple[Tensor, Tensor | None]:
    """Batch-shaping loss of x: (N, G) float, detached.

    Returns (loss, grad_t): the scalar loss and, if need_grad, d loss / d x transposed, (G, N). check: None,
    "raise" (ValueError for bad values: a host sync) or "nan" (bad values make the loss and gradient NaN).
    """
    n, g = x.shape
    scale = 1.0 / n if reduction == "sum" else 1.0 / (n * g)  # per column (1/N) sum_i d^2, added or averaged
    q = (torch.arange(1, n + 1, device=x.device, dtype=torch.float64) / (n + 1)).to(x.dtype)
    xt = x.t().contiguous()  # columns as contiguous rows: torch.sort along the last dim is the fast case
    grad_t = torch.empty_like(xt) if need_grad else None
    loss, ok = x.new_zeros(()), None
    # Eager on CPU, blocks of ~32K values keep the temporaries in cache and reused by the allocator (multi-MB
    # ones are page-faulted in anew on every call); other devices and torch.compile take all columns at once.
    block = max(1, 32768 // n) if _eager_cpu(x) else g
    for j in range(0, g, block):
        v, perm = _sort_rows(xt[j : j + block])  # stable: ties ranked by row
        if check is not None:  # bad values sort to the ends of their row
            ok_j = (v[:, 0].amin() >= 0) & (v[:, -1].amax() <= 1)  # False for NaN
            if check == "raise" and not bool(ok_j):
                _raise_bad_values(x)
            ok = ok_j if ok is None else ok & ok_j
        cdf, pdf = _cdf_pdf(prior, v, pdf_clip if need_grad else None)
        d = cdf - q  # not in place: a custom prior's cdf may alias v or its own state
        loss = loss + d.square().sum(dtype=torch.float64)  # float64: blocks of float32 sums lose ~1e-7
        if grad_t is not None:  # d loss / d x in sorted order, scattered back to column order
            grad_t[j : j + block].scatter_(1, perm, pdf.mul_(d).mul_(2 * scale))
    loss = (loss * scale).to(x.dtype)
    if check == "nan":
        loss = torch.where(ok, loss, math.nan)
        grad_t = None if grad_t is None else torch.where(ok, grad_t, math.nan)
    return loss, grad_t


class _BatchShapingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, prior: Prior, reduction: str, pdf_clip: float, check: str | None) -> Tensor:  # type: ignore[override]
        loss, grad_t = _batch_shaping(x.detach(), prior, reduction, pdf_clip, ctx.needs_input_grad[0], check)
        ctx.save_for_backward(grad_t)  # computed here: backward needs only it, not the sort
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (grad_t,) = ctx.saved_tensors
        # (G, N) -> a fresh contiguous (N, G): the copy transposes in blocks, then the scaling runs in place.
        grad = torch.empty(grad_t.shape[::-1], dtype=grad_t.dtype, device=grad_t.device)
        return grad.copy_(grad_t.t()).mul_(grad_out), None, None, None, None


class BatchShapingLoss(nn.Module):
    """Batch-shaping loss: match each gate's distribution over the batch to a prior CDF.

    Input x: (N, G) gate-on probabilities in [0, 1] (N >= 2 samples, G gates). Output: scalar tensor,
    float32 (float64 for float64 input; 16-bit inputs, e.g. under autocast, are computed in float32).

    For each gate (column) j, with r_ij the 1-based rank of x_ij within column j and F the prior CDF::

        loss_j = 1/N * sum_i (F(x_ij) - r_ij / (N + 1))^2 = 1/N * sum_i (F(x_(i),j) - i / (N + 1))^2

    Args:
        alpha, beta: parameters of the default :class:`BetaPrior` (0.6, 0.4 as in the paper: a U-shaped
            prior with mean 0.6, i.e. gates mostly fully on or fully off, on 60% of the time).
        prior: any :class:`Prior` (``cdf``/``pdf`` torch functions); overrides alpha, beta.
        reduction: ``"sum"`` (default) adds ``loss_j`` over the gates; ``"mean"`` averages them, as in the
            authors' reference code. With "mean" the loss (and its gradient per gate) shrinks by 1/G, so a
            weight tuned for one is not right for the other (our recipes use "sum").
        pdf_clip: the prior density f in the gradient is clipped to [0, pdf_clip] (100: the upper clip of
            the authors' code; their lower one, 1e-3, is below the minimum 0.59 of Beta(0.6, 0.4)). f -> inf
            at 0 and 1, where a float32 sigmoid saturates (logit > ~17 or < ~-104) and inf * 0 would give NaN
            in the chain rule; Beta(0.6, 0.4) reaches 100 only for x < 5e-7 or 1 - x < 6.3e-5, where the
            sigmoid's derivative x (1 - x) already scales the logit gradient below 0.01. Each element's
            gradient is at most 2 * pdf_clip / N (times the reduction factor).
        check_inputs: validate values (NaN, inf, outside [0, 1]); see below.

    Gradient: analytic (a custom autograd Function), ``d loss / d x_ij = 2/N (F(x_ij) - r_ij/(N+1)) f(x_ij)``
    times the reduction factor (1 for "sum", 1/G for "mean"). Ranks are piecewise constant and get no
    gradient; the loss is not twice differentiable.

    Ties: equal values are ranked in order of their row (batch) index, i.e. a stable sort. The loss value
    does not depend on how ties are broken; the gradient of tied elements does (the function has a kink).

    Bad input: a wrong shape (not 2-D, N < 2, G = 0) or a non-floating dtype raises ValueError. Bad values
    (NaN, inf, outside [0, 1]), found from the ends of the sorted columns, raise ValueError on CPU; on other
    devices and under torch.compile, where raising would need a host sync or a graph break, they make the
    loss and its gradient NaN instead: forward and backward then never sync, compile to one graph and can be
    captured in a CUDA graph (after a first call has put the prior's table on the device).
    ``check_inputs=False`` skips the check.
    """

    def __init__(
        self,
        alpha: float = 0.6,
        beta: float = 0.4,
        prior: Prior | None = None,
        reduction: str = "sum",
        pdf_clip: float = DEFAULT_PDF_CLIP,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if not pdf_clip > 0:
            raise ValueError(f"pdf_clip must be > 0, got {pdf_clip}")
        if prior is None:
            prior = BetaPrior(alpha, beta)
        elif not (callable(getattr(prior, "cdf", None)) and callable(getattr(prior, "pdf", None))):
            raise ValueError(f"prior must have cdf(x) and pdf(x) methods, got {prior!r}")
        self.prior = prior
        self.reduction, self.pdf_clip = reduction, float(pdf_clip)
        self.check_inputs = check_inputs

    def extra_repr(self) -> str:
        return f"prior={self.prior!r}, reduction={self.reduction!r}"

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, G) float probabilities in [0, 1] -> scalar loss."""
        _check_shape(x)
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        # Raising needs the check's result on the host: free on CPU, a sync (or a graph break under
        # torch.compile) elsewhere, where NaN flags it.
        check = ("raise" if _eager_cpu(x) else "nan") if self.check_inputs else None
        args = (x, self.prior, self.reduction, self.pdf_clip, check)
        kind = x.device.type  # "meta" (shape checks) has no autocast state to ask
        if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
            with torch.autocast(kind, enabled=False):
                return _BatchShapingFunction.apply(*args)
        return _BatchShapingFunction.apply(*args)


# --------------------------------------------------------------------------------------------------------
# L0 loss


def l0_loss(
    outputs: Sequence[GateOutput | Tensor],
    reduction: str = "mean",
    weights: Sequence[Tensor] | None = None,
) -> Tensor:
    """Expected gate usage: an L0 sparsity penalty on gate-on probabilities.

    Args:
        outputs: one entry per gating module: :class:`GateOutput` (its ``probs`` are used) or an (N, G_k)
            probability tensor.
        reduction: without weights, ``"mean"`` = mean of all probabilities, all gates and samples pooled
            (expected fraction of open gates); ``"sum"`` = sum over all gates of the per-sample mean
            (expected number of open gates per image, so it grows with the network's gate count).
        weights: optional per-channel costs, one (G_k,) tensor per output (e.g. the MACs each gated channel
            controls). ``"mean"`` then gives ``sum_k (probs_k @ w_k).mean() / sum_k w_k.sum()``, the expected
            fraction of gated cost that stays on (a MAC-weighted L0, like the compute targets of DGNet and
            ConvNet-AIG), and ``"sum"`` the unnormalised expected gated cost per image.

    Returns a scalar (float32, or float64 for float64 probs), differentiable w.r.t. the probabilities.

    The scale differs by orders of magnitude between the modes, so a recipe must state which one it uses
    and calibrate its weight for it.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    probs = [o.probs if isinstance(o, GateOutput) else o for o in outputs]
    if not probs:
        raise ValueError("l0_loss needs at least one gate output")
    for k, p in enumerate(probs):
        if not isinstance(p, Tensor) or p.dim() != 2:
            shape = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
            raise ValueError(f"l0_loss: output {k} must be an (N, G) probability tensor, got {shape}")
    probs = [p if p.dtype == torch.float64 else p.float() for p in probs]
    if weights is None:
        if reduction == "mean":
            return sum(p.sum() for p in probs) / sum(p.numel() for p in probs)
        return sum(p.sum() / p.shape[0] for p in probs)
    if len(weights) != len(probs):
        raise ValueError(f"l0_loss: weights has {len(weights)} tensors for {len(probs)} outputs")
    num, den = 0, 0
    for k, (p, w) in enumerate(zip(probs, weights, strict=True)):
        w = torch.as_tensor(w, dtype=p.dtype, device=p.device)
        if w.shape != (p.shape[1],):
            raise ValueError(f"l0_loss: weights[{k}] must have shape ({p.shape[1]},), got {tuple(w.shape)}")
        num = num + (p @ w).mean()
        den = den + w.sum()
    return num / den if reduction == "mean" else num


def mac_target_loss(macs: Tensor, dense: float, target: float | Tensor) -> Tensor:
    """A compute budget: ``(mean(macs) / dense - target)^2``, 0 when the batch's mean cost is on target.

    Args:
        macs: (N,) per-image MACs, differentiable w.r.t. the gates; the expected MACs of
            :meth:`MacCounter.conditional` with ``expected=True`` (computed from the gate probabilities, so
            the gradient is exact, not the straight-through estimate of the sampled gates).
        dense: the dense twin's MACs (``MacCounter.dense``), so ``target`` is a fraction of it.
        target: the mean MAC ratio to reach, e.g. 0.585 for a gated ResNet-32 at ResNet-20's cost.

    Why this form: it is DGNet's FLOPs loss (Li et al., ICCV 2021), a two-sided pull on the budget of the
    *whole batch*, so each image may spend more or less than the target (the conditional compute that
    batch-shaping aims for); ConvNet-AIG's per-layer target rates (Veit & Belongie, ECCV 2018) would fix
    every layer's rate instead. Unlike a fixed L0 weight it does not need a new weight for every model,
    schedule and length: its weight only has to be large enough to hold the budget against the task loss
    (the offset from the target shrinks as 1 / weight). Returns a float32 (or float64) scalar.
    """
    if macs.dim() != 1:
        raise ValueError(f"mac_target_loss: macs must be (N,) per-image MACs, got {tuple(macs.shape)}")
    ratio = macs.mean() / dense
    return (ratio - target).square()
