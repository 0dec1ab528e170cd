"""Batch-shaping loss with Beta priors, and the L0 gate-sparsity loss (Bejnordi et al., ICLR 2020).

Batch-shaping matches, for every gate (column) ``j`` of a batch of gate-on probabilities ``x`` (N, G), the
empirical distribution of the column to a prior CDF ``F`` (Beta(0.6, 0.4) in the paper)::

    loss_j = 1/N * sum_i (F(x_(i),j) - i / (N + 1))^2          x_(i),j: the i-th smallest value of column j

and its gradient is analytic: ``d loss_j / d x_ij = 2/N * (F(x_ij) - r_ij / (N + 1)) * f(x_ij)``, with
``r_ij`` the 1-based rank of ``x_ij`` in its column and ``f`` the prior density. Ranks are piecewise constant,
so they get no gradient.

The CPU float32 path is built for speed (the loss runs every training step): ranks come from one numpy sort
of packed 32-bit (value, row) keys instead of ``torch.sort`` (which is slow on CPU), and :class:`BetaPrior`
looks its CDF and density up in a table over the odds x / (1 - x), built once per prior, instead of
evaluating a continued fraction. See benchmarks/bench_losses.py for the numbers.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from batchshaping.gates import GateOutput

__all__ = ["BatchShapingLoss", "BetaPrior", "Prior", "l0_loss"]

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
# Regularised incomplete beta function


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _betacf(a, b, x, xp=torch, max_iter: int = 1000, tol: float = 1e-15):
    """Continued fraction of I_x(a, b) (modified Lentz), elementwise in float64.

    ``xp``: torch (tensors, on their device) or numpy (arrays; the table build, free of torch's per-op and
    thread overheads). Converges fast for x <= (a + 1) / (a + b + 2) (O(sqrt(max(a, b))) terms), which
    the caller ensures.
    """
    if (x.size if xp is np else x.numel()) == 0:
        return x
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1, a - 1
    c = x * 0 + 1
    d = 1 - qab * x / qap
    d = 1 / xp.where(abs(d) < tiny, tiny, d)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for num in (even, odd):
            d = 1 + num * d
            d = 1 / xp.where(abs(d) < tiny, tiny, d)
            c = 1 + num / c
            c = xp.where(abs(c) < tiny, tiny, c)
            delta = d * c
            h = h * delta
        # Checking every 8 terms keeps host syncs rare on GPU; extra terms only refine converged elements.
        if m % 8 == 0 and float(abs(delta - 1).max()) < tol:
            break
    return h


def _betainc(a: float, b: float, x, xp=torch):
    """Regularised incomplete beta function I_x(a, b) in float64, elementwise; x in [0, 1], a, b > 0.

    x: float64 tensor (xp=torch) or array (xp=numpy).
    """
    # Symmetry I_x(a, b) = 1 - I_{1-x}(b, a) keeps the continued fraction in its fast-converging range.
    swap = x > (a + 1) / (a + b + 2)
    swap = swap.astype(np.float64) if xp is np else swap.to(torch.float64)
    xs = x + swap * (1 - 2 * x)  # 1 - x where swapped (exact for x >= 1/2)
    aa = a + (b - a) * swap
    bb = b + (a - b) * swap
    with np.errstate(divide="ignore"):
        front = xp.exp(aa * xp.log(xs) + bb * xp.log1p(-xs) - _log_beta(a, b)) / aa
    r = front * _betacf(aa, bb, xs, xp)
    return r + swap * (1 - 2 * r)


def _betainc_series_or_cf(a: float, b: float, x: np.ndarray) -> np.ndarray:
    """I_x(a, b) in float64 (numpy): 3-term series x^a / B sum_n (1-b)_n x^n / (n! (a+n)) for x < 2^-20
    (relative error ~x^3), the continued fraction elsewhere."""
    out = np.empty_like(x)
    small = x < 2.0**-20
    xs = x[small]
    c1 = (1 - b) / (a + 1)
    c2 = (1 - b) * (2 - b) / (2 * (a + 2))
    with np.errstate(divide="ignore"):
        out[small] = np.exp(a * np.log(xs) - _log_beta(a, b)) * (1 / a + xs * (c1 + xs * c2))
    out[~small] = _betainc(a, b, x[~small], np)
    return out


def _beta_cdf_sf_at_odds(a: float, b: float, o: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F, 1 - F) of Beta(a, b) at odds o = x / (1 - x) (float64 numpy, 0 <= o <= inf), each to ~1e-15.

    Below x = 1/2 F is computed directly, above it 1 - F = I_{1/(1+o)}(b, a), so neither loses precision.
    """
    lower = o < 1
    cdf, sf = np.empty_like(o), np.empty_like(o)
    ol = o[lower]
    f_lo = _betainc_series_or_cf(a, b, ol / (1 + ol))
    s_hi = _betainc_series_or_cf(b, a, 1 / (1 + o[~lower]))
    cdf[lower], sf[lower] = f_lo, 1 - f_lo
    cdf[~lower], sf[~lower] = 1 - s_hi, s_hi
    return cdf, sf


#: Cells per octave of the odds in BetaPrior's table: 2^9, i.e. the top 9 mantissa bits of a float32.
_TABLE_MANTISSA_BITS = 9
#: A float32 bit pattern >> _TABLE_SHIFT is its table cell; the low _TABLE_SHIFT bits are the position j.
_TABLE_SHIFT = 23 - _TABLE_MANTISSA_BITS
#: Odds are scaled by 2^64 so that every float32 x > 0 gives a normal float32 (no subnormal cells).
_ODDS_SCALE_LOG2 = 64
#: float32 exponent fields of the scaled odds of float32 x in (0, 1): 2^-149 * 2^64 to < 2^24 * 2^64.
_ODDS_EXPONENTS = (127 - 149 + _ODDS_SCALE_LOG2, 127 + 23 + _ODDS_SCALE_LOG2)

#: Host tables of BetaPrior by (alpha, beta): (c0, c1, c2, pdf at cell starts, pdf at cell ends), float32.
_HOST_TABLES: dict[tuple[float, float], tuple[tuple[Tensor, ...], float]] = {}


_ODDS_SCALE_INV = torch.tensor(2.0**-_ODDS_SCALE_LOG2, dtype=torch.float32)


def _scaled_odds(x: Tensor, out: Tensor) -> Tensor:
    """2^64 x / (1 - x) in float32 for x in [0, 1] (inf at 1), computed as x / (2^-64 - 2^-64 x).

    Scaling by a power of two is exact, so this is 2^64 fl(x / fl(1 - x)): monotone in x, and normal for
    every x > 0. Values outside [0, 1] give negative odds or NaN.
    """
    scale = 2.0**-_ODDS_SCALE_LOG2
    if x.device.type == "cpu":  # one pass
        torch.add(_ODDS_SCALE_INV, x, alpha=-scale, out=out)
    else:  # same bits (x * 2^-64 is exact or swamped by the + 2^-64), no CPU scalar tensor involved
        torch.mul(x, -scale, out=out).add_(scale)
    return torch.div(x, out, out=out)


class BetaPrior:
    """Beta(alpha, beta) prior on [0, 1], with CDF and density in torch on the input's device.

    float32 (and 16-bit) inputs: the CDF comes from a table built once per (alpha, beta), indexed by the
    float32 bits of the odds o = x / (1 - x) (scaled by 2^64): the top 9 mantissa bits and the exponent
    select a cell, i.e. a geometric grid with 512 cells per factor of 2 in the odds, and the low 14 bits
    give the position j in the cell, where the CDF is a quadratic in j. Geometric in the odds, the grid is
    fine exactly where the CDF is singular (x^alpha near 0, 1 - (1 - x)^beta near 1, for alpha, beta < 1),
    and the lookup needs no log, exp or pow. The quadratics interpolate exact values (continued fraction,
    :meth:`cdf_exact`) at the cell ends and midpoints; their error is < 1e-9 for alpha, beta in [0.1, 10]
    and the float32 result is within 2e-7 of the exact CDF (rounding of x / (1 - x) and of the sums;
    measured <= 1.1e-7). The table takes 2.6 MB per (alpha, beta), shared by equal priors, plus a copy per
    device. float64 inputs use the exact continued fraction (slower, ~1e-14).

    ``pdf`` is the closed form ``exp((alpha-1) log x + (beta-1) log(1-x) - log B(alpha, beta))`` (inf at 0
    if alpha < 1 and at 1 if beta < 1). The batch-shaping loss uses a clipped density tabulated on the same
    grid (linear in j; relative error < 3e-7 for Beta(0.6, 0.4), < 4e-5 for alpha, beta in [0.1, 10]).
    """

    def __init__(self, alpha: float = 0.6, beta: float = 0.4) -> None:
        alpha, beta = float(alpha), float(beta)
        if not (math.isfinite(alpha) and math.isfinite(beta) and alpha > 0 and beta > 0):
            raise ValueError(f"Beta prior needs finite alpha, beta > 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = alpha, beta
        self.log_beta = _log_beta(alpha, beta)
        if (alpha, beta) not in _HOST_TABLES:  # shared by equal priors: building takes ~0.1 s
            while len(_HOST_TABLES) >= 16:  # bound the memory of, e.g., a sweep over priors
                del _HOST_TABLES[next(iter(_HOST_TABLES))]
            _HOST_TABLES[(alpha, beta)] = self._build_tables()
        self._host_tables, self.table_error = _HOST_TABLES[(alpha, beta)]
        self._tables: dict[tuple, tuple[Tensor, ...]] = {}

    def __repr__(self) -> str:
        return f"BetaPrior(alpha={self.alpha:g}, beta={self.beta:g})"

    @property
    def mean(self) -> float:
        """Mean alpha / (alpha + beta) of the prior (the on-rate batch-shaping drives each gate to)."""
        return self.alpha / (self.alpha + self.beta)

    def cdf_exact(self, x: Tensor) -> Tensor:
        """Exact CDF I_x(alpha, beta) by continued fraction, float64 (~1e-14), on x's device; any shape."""
        return _betainc(self.alpha, self.beta, x.detach().to(torch.float64).clamp(0, 1))

    # ---- table -----------------------------------------------------------------------------------------

    def _pdf_at_odds(self, o: np.ndarray) -> np.ndarray:
        """Density at odds o (float64 numpy): o^(a-1) (1+o)^(2-a-b) / B, with its limits at o = 0, inf."""
        a, b = self.alpha, self.beta
        with np.errstate(all="ignore"):
            f = np.exp((a - 1) * np.log(o) - (a + b - 2) * np.log1p(o) - self.log_beta)
        f[o == 0] = math.inf if a < 1 else (math.exp(-self.log_beta) if a == 1 else 0.0)
        f[o == math.inf] = math.inf if b < 1 else (math.exp(-self.log_beta) if b == 1 else 0.0)
        return f

    def _build_tables(self) -> tuple[tuple[Tensor, ...], float]:
        """Per-cell quadratic coefficients (c0, c1, c2) of the CDF in j and the density at both cell ends.

        Built in numpy (float64) from exact values, then stored as float32 tensors. Cells no float32 odds of
        an x in [0, 1] can reach hold NaN (so do the cells of NaN bit patterns).
        """
        m, shift = _TABLE_MANTISSA_BITS, _TABLE_SHIFT
        e_lo, e_hi = _ODDS_EXPONENTS
        n_cells = 1 << (31 - shift)  # every non-negative float32 bit pattern
        c0, c1, c2, p0, p1 = (np.full(n_cells, np.nan) for _ in range(5))
        # Points k / 2^(m+1) of each octave 2^e: cell ends (even k) and midpoints (odd k).
        scale = np.ldexp(1.0, np.arange(e_lo, e_hi + 1) - 127 - _ODDS_SCALE_LOG2)[:, None]
        o = (1 + np.arange(2 ** (m + 1) + 1) / 2 ** (m + 1)) * scale  # unscaled odds, (octaves, points)
        cdf, sf = (t.reshape(o.shape) for t in _beta_cdf_sf_at_odds(self.alpha, self.beta, o.ravel()))
        # Upper cells work with F - 1 = -(1 - F) (no cancellation); c0 = F is rounded once, at the end.
        upper = o[:, :1] >= 1
        val = np.where(upper, -sf, cdf)
        v0, vh, v1 = val[:, 0:-1:2], val[:, 1::2], val[:, 2::2]
        cells = slice(e_lo << m, (e_hi + 1) << m)
        c0[cells] = np.where(upper, 1 - sf[:, 0:-1:2], cdf[:, 0:-1:2]).ravel()
        c1[cells] = ((4 * vh - 3 * v0 - v1) / 2.0**shift).ravel()
        c2[cells] = ((2 * v0 + 2 * v1 - 4 * vh) / 4.0**shift).ravel()
        pdf = self._pdf_at_odds(o[:, 0::2])
        p0[cells], p1[cells] = pdf[:, :-1].ravel(), pdf[:, 1:].ravel()
        # x = 0 (odds 0: cell 0 at j = 0) and x = 1 (odds inf).
        for cell, cdf_val, odds in ((0, 0.0, 0.0), (0x7F800000 >> shift, 1.0, math.inf)):
            c0[cell], c1[cell], c2[cell] = cdf_val, 0.0, 0.0
            p0[cell] = p1[cell] = self._pdf_at_odds(np.array([odds]))[0]
        # Check the quadratics between their nodes, at the quarter points of every 8th cell.
        cstart = np.arange(0, 1 << m, 8)
        quarter = np.array([0.25, 0.75])
        oq = (1 + (2 * cstart[:, None] + 2 * quarter).ravel() / 2 ** (m + 1)) * scale
        exact, _ = _beta_cdf_sf_at_odds(self.alpha, self.beta, oq.ravel())
        ci = ((np.arange(e_lo, e_hi + 1) << m)[:, None] + np.repeat(cstart, 2)).ravel()
        jq = np.tile(quarter * 2.0**shift, cstart.size * (e_hi - e_lo + 1))
        err = float(np.abs(c0[ci] + jq * (c1[ci] + jq * c2[ci]) - exact).max())
        with np.errstate(over="ignore"):  # densities beyond float32 become inf (clipped before use)
            return tuple(torch.from_numpy(t.astype(np.float32)) for t in (c0, c1, c2, p0, p1)), err

    def _table(self, device: torch.device) -> tuple[Tensor, ...]:
        """(c0, c1, c2) float32 on ``device``."""
        key = (device, None)
        if key not in self._tables:
            self._tables[key] = tuple(t.to(device) for t in self._host_tables[:3])
        return self._tables[key]

    def _pdf_table(self, device: torch.device, clip: float) -> tuple[Tensor, ...]:
        """(d0, d1) float32 on ``device``: min(pdf, clip) linear in j, d0 + j d1, within each cell."""
        key = (device, float(clip))
        if key not in self._tables:
            p0, p1 = (t.double().clamp(max=clip) for t in self._host_tables[3:])
            d1 = (p1 - p0) / 2.0**_TABLE_SHIFT
            self._tables[key] = (p0.float().to(device), d1.float().to(device))
        return self._tables[key]

    def _eval_odds(
        self,
        odds: Tensor,
        cell: Tensor,
        need_pdf: bool,
        clip: float,
        bufs: Sequence[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """CDF and (if need_pdf) min(pdf, clip) from the table, elementwise.

        odds: float32 scaled odds (:func:`_scaled_odds`), >= 0 or NaN; cell: int32 or int64 of the same
        shape, the cell of each value (its float32 bits >> _TABLE_SHIFT). bufs: optional 4 float32 buffers
        of that shape to compute in; the results are written into two of them.
        """
        if bufs is None:
            bufs = [torch.empty_like(odds) for _ in range(4)]
        j, t0, t1, t2 = bufs
        low = odds.view(torch.int32) & ((1 << _TABLE_SHIFT) - 1)  # position in the cell
        j.copy_(low)  # as float (one fused CPU op with out=j, but CUDA has no bitwise kernel into floats)
        iv = cell.view(-1)
        c0, c1, c2 = self._table(odds.device)
        a2 = torch.index_select(c2, 0, iv, out=t2.view(-1)).view_as(odds)
        a1 = torch.index_select(c1, 0, iv, out=t1.view(-1)).view_as(odds).addcmul_(j, a2)
        cdf = torch.index_select(c0, 0, iv, out=t0.view(-1)).view_as(odds).addcmul_(j, a1)
        if not need_pdf:
            return cdf, None
        d0, d1 = self._pdf_table(odds.device, clip)  # t1, t2 are free again
        pdf = torch.index_select(d0, 0, iv, out=t2.view(-1)).view_as(odds)
        pdf.addcmul_(j, torch.index_select(d1, 0, iv, out=t1.view(-1)).view_as(odds))
        return cdf, pdf

    def _eval_f32(
        self, x: Tensor, need_pdf: bool = False, clip: float = math.inf
    ) -> tuple[Tensor, Tensor | None]:
        """Table CDF (and clipped pdf) of float32 x, any shape; values outside [0, 1] clamp, NaN stays NaN."""
        xc = x.clamp(0, 1).add_(0.0)  # -0.0 + 0.0 = +0.0: no sign bit in the odds
        odds = _scaled_odds(xc, torch.empty_like(xc))
        bits = odds.view(torch.int32) & 0x7FFFFFFF  # NaN may carry a sign; NaN patterns have NaN cells
        cell = torch.bitwise_right_shift(bits, _TABLE_SHIFT)
        return self._eval_odds(odds, cell, need_pdf, clip)

    # ---- public API ------------------------------------------------------------------------------------

    def cdf(self, x: Tensor) -> Tensor:
        """CDF, elementwise. x: any shape; float64 -> exact float64, otherwise float32 from the table.

        Values outside [0, 1] are clamped (0 below, 1 above); NaN stays NaN.
        """
        if x.dtype == torch.float64:
            return _betainc(self.alpha, self.beta, x.clamp(0, 1))
        return self._eval_f32(x.float())[0]

    def pdf(self, x: Tensor) -> Tensor:
        """Density, elementwise, closed form; float64 stays float64, others give float32. 0 outside [0, 1]."""
        xf = x if x.dtype == torch.float64 else x.float()
        inside = (xf >= 0) & (xf <= 1)
        xc = xf.clamp(0, 1)
        # xlogy / xlog1py give 0 * log 0 = 0, so alpha = 1 or beta = 1 are exact at the boundary.
        logf = torch.xlogy(self.alpha - 1, xc) + torch.special.xlog1py(self.beta - 1, -xc) - self.log_beta
        return torch.where(inside | xf.isnan(), torch.exp(logf), 0.0)


# --------------------------------------------------------------------------------------------------------
# Column ranks on CPU

#: Largest batch handled by the packed-key sort: the row index takes the low log2(N) bits of the 31-bit
#: key, which must stay below the table cell bits (key >> _TABLE_SHIFT is the cell).
_KEY_MAX_ROWS = 4096
assert _KEY_MAX_ROWS <= 1 << _TABLE_SHIFT

_local = threading.local()


class _Workspace:
    """Reusable (G, N) buffers for one input shape: fresh multi-MB tensors would page-fault every call, and
    a small working set stays in cache (buffers are reused as soon as they are dead, see below)."""

    def __init__(self, n: int, g: int) -> None:
        self.xt, self.odds, self.v, *self.f = (torch.empty(g, n) for _ in range(5))
        self.keys = torch.empty(g, n, dtype=torch.int32)
        self.perm = torch.empty(g, n, dtype=torch.int64)
        self.inverted = np.empty((g, n - 1), dtype=bool)
        self.rows = torch.arange(n, dtype=torch.int32).unsqueeze(0)
        self.q = (torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)).float().unsqueeze(0)


def _workspace(n: int, g: int) -> _Workspace:
    cache = getattr(_local, "workspaces", None)
    if cache is None:
        cache = _local.workspaces = OrderedDict()
    ws = cache.get((n, g))
    if ws is None:
        ws = cache[(n, g)] = _Workspace(n, g)
        while len(cache) > 4:
            cache.popitem(last=False)
    cache.move_to_end((n, g))
    return ws


def _sort_columns_cpu(x: Tensor, ws: _Workspace, check: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sort the columns of x (N, G) float32 CPU, ties broken by row index (stable).

    Returns (v, perm, odds, cell), all (G, N): v[j] the sorted column j, perm[j] its row indices (int64),
    odds[j] their scaled odds (:func:`_scaled_odds`) and cell[j] their BetaPrior table cells (int32).
    Views of the workspace, valid until its next use. check: raise ValueError for NaN or values outside
    [0, 1] (without it, such values give a meaningless but finite order).

    torch.sort is slow on CPU (~90 ms along dim 0 of (256, 2048)); numpy sorts 32-bit keys with SIMD
    (~1.5 ms). The key packs the value's order in its high bits (the bits of the odds x / (1 - x): monotone
    in x and, unlike x, resolving values near 1 as finely as values near 0), the row in the low log2(N)
    bits. The truncated value bits can tie for nearly equal values (relative gap < ~2^-(23-log2 N)) and
    then order them by row; such local inversions are detected on the gathered values and those columns
    re-sorted exactly (stable sort of nearly sorted rows). The re-sort only moves values among equal
    truncated keys, which share a table cell (cell = key >> 14 ignores the row bits), so ``cell`` stays.
    """
    n, g = x.shape
    bits = max(1, (n - 1).bit_length())
    low = (1 << bits) - 1
    xt = ws.xt.copy_(x.T)
    odds = _scaled_odds(xt, ws.odds)  # +inf at x = 1; negative or NaN for x outside [0, 1] or NaN
    keys = torch.bitwise_and(odds.view(torch.int32), 0x7FFFFFFF & ~low, out=ws.keys)  # no sign (-0.0)
    keys.bitwise_or_(ws.rows).numpy().sort(axis=1)
    perm = torch.bitwise_and(keys, low, out=ws.perm)  # int32 -> int64 in the same pass
    cell = keys.bitwise_right_shift_(_TABLE_SHIFT)  # int32 indices: index_select is as fast with them
    v = torch.gather(xt, 1, perm, out=ws.v)
    vn, pn = v.numpy(), perm.numpy()
    if np.less(vn[:, 1:], vn[:, :-1], out=ws.inverted).any():  # numpy: ~2x faster than torch for this
        rows = np.flatnonzero(ws.inverted.any(axis=1))
        vr = vn[rows]
        order = np.argsort(vr, axis=1, kind="stable")  # stable: equal values keep their row order
        vn[rows] = np.take_along_axis(vr, order, 1)
        pn[rows] = np.take_along_axis(pn[rows], order, 1)
    # Bad values get keys out of order (negative odds lose their sign bit, NaN sorts last), so the
    # re-sort above has put every one first or last in its column: checking v's ends covers all of x.
    if check and not (vn[:, 0].min() >= 0 and vn[:, -1].max() <= 1):  # NaN fails the comparison
        _raise_bad_values(x)
    # The odds of v, recomputed (same bits as the unsorted ones; cheaper than a gather). xt is dead.
    return v, perm, _scaled_odds(v, ws.xt), cell


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
    """Raise the ValueError describing why x is not a tensor of probabilities (slow path, errors only)."""
    xd = x.detach()
    n_nan, n_inf = int(torch.isnan(xd).sum()), int(torch.isinf(xd).sum())
    if n_nan or n_inf:
        raise ValueError(
            f"BatchShapingLoss input contains {n_nan} NaN and {n_inf} inf value(s) (shape {tuple(x.shape)}); "
            f"expected gate probabilities in [0, 1]"
        )
    lo, hi = torch.aminmax(xd)
    raise ValueError(
        f"BatchShapingLoss expects gate probabilities in [0, 1], got values outside: "
        f"min={float(lo):.6g}, max={float(hi):.6g}"
    )


def _batch_shaping(
    x: Tensor, prior: Prior, reduction: str, flatten: bool, pdf_clip: float, need_grad: bool, check: bool
) -> tuple[Tensor, Tensor | None, float, bool]:
    """Batch-shaping loss of x (N, G).

    Returns (loss, grad, grad_scale, transposed) with d loss / d x = grad_scale * grad, where grad is
    (G, N) (the transpose of x's layout) if transposed, else x's shape; grad is None if not need_grad.
    """
    n, g = x.shape
    table = isinstance(prior, BetaPrior) and x.dtype == torch.float32
    fast = x.device.type == "cpu" and x.dtype == torch.float32 and not flatten and n <= _KEY_MAX_ROWS
    if fast:
        # Columns as rows of (G, N) buffers; the quantiles q = i / (N + 1) run along dim 1.
        ws = _workspace(n, g)
        v, perm, odds, cell = _sort_columns_cpu(x, ws, check)
        q, rows = ws.q, n
        if table:  # the unsorted odds and v are dead now: 4 buffers to compute in
            bufs = [ws.odds, ws.v, *ws.f]
            cdf, pdf = prior._eval_odds(odds, cell, need_grad, pdf_clip, bufs)  # type: ignore[union-attr]
    else:
        if check:
            lo, hi = torch.aminmax(x.detach())
            if not bool((lo >= 0) & (hi <= 1)):  # NaN fails too; on CUDA the loss's one host sync
                _raise_bad_values(x)
        xs = x.reshape(-1, 1) if flatten else x
        v, perm = torch.sort(xs, dim=0, stable=True)  # ties by row index, like the CPU path
        rows = xs.shape[0]
        q = (torch.arange(1, rows + 1, device=x.device, dtype=torch.float64) / (rows + 1)).to(x.dtype)
        q = q.unsqueeze(1)
        if table:
            cdf, pdf = prior._eval_f32(v, need_grad, pdf_clip)  # type: ignore[union-attr]
    if table:
        d = cdf.sub_(q)  # scratch tensors: updated in place
    else:
        # A custom prior (or float64): its outputs may alias v or be expanded views, so never written to.
        cdf = prior.cdf(v).to(v.dtype)
        pdf = prior.pdf(v).to(v.dtype).clamp(0, pdf_clip) if need_grad else None  # inf -> the clip
        if cdf.shape != v.shape or (pdf is not None and pdf.shape != v.shape):
            raise ValueError(
                f"prior {prior!r} returned a cdf/pdf of the wrong shape for input {tuple(v.shape)}"
            )
        d = cdf - q
    # Per column (1/rows) sum_i d^2; "sum" adds the columns, "mean" (and flatten, one column) averages.
    # square + sum (pairwise summation, ~3e-8 relative) rather than dot (float32 lanes, ~3e-6).
    scale = 1.0 / rows if (reduction == "sum" and not flatten) else 1.0 / (n * g)
    loss = torch.square(d, out=ws.f[0] if fast and table else None).sum() * scale
    if not need_grad:
        return loss, None, 0.0, False
    assert pdf is not None
    gs = pdf.mul_(d) if table else pdf * d  # sorted layout; 2 * scale is applied in backward
    if fast:
        # Back to column order, in a fresh tensor: autograd keeps it until backward (or longer).
        return loss, torch.empty_like(gs).scatter_(1, perm, gs), 2 * scale, True
    grad = torch.empty_like(v).scatter_(0, perm, gs)
    return loss, grad.view(x.shape), 2 * scale, False


class _BatchShapingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, module: BatchShapingLoss) -> Tensor:  # type: ignore[override]
        loss, grad, scale, transposed = _batch_shaping(
            x,
            module.prior,
            module.reduction,
            module.flatten,
            module.pdf_clip,
            ctx.needs_input_grad[0],
            module.check_inputs,
        )
        ctx.grad, ctx.scale, ctx.transposed = grad, scale, transposed
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad, factor = ctx.grad, grad_out * ctx.scale
        if ctx.transposed:
            # (G, N) -> contiguous (N, G). copy_ has a blocked transpose kernel; a multiply reading the
            # transposed view does not (3x slower), so transpose first, then scale in place.
            out = torch.empty(grad.shape[1], grad.shape[0], dtype=grad.dtype, device=grad.device)
            return out.copy_(grad.T).mul_(factor), None
        return grad * factor, None


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
            weight tuned for one is not right for the other. Our recipes use "sum": in a CIFAR-10 pilot
            (gated ResNet-20, 336 gates, weight 0.75) "mean" left every gate always on after 2 epochs,
            while "sum" made every gate conditional after 1 epoch, with mean on-rate 0.61 (the prior's mean).
        flatten: treat all N * G values as one column (one CDF over all gates pooled); reduction is then
            moot (one column).
        pdf_clip: the prior density f in the gradient is clipped to [0, pdf_clip]. Beta(0.6, 0.4) has
            f -> inf at 0 and 1, and a float32 sigmoid saturates to exactly 1 (logit > ~17) or 0 (logit
            < ~-104), where inf * 0 would give NaN in the chain rule. The default 100 is the upper clip of
            the authors' reference code; Beta(0.6, 0.4) reaches it only for x < 5e-7 or 1 - x < 6.3e-5
            (logit < -14.5 or > 9.7), where the sigmoid's own derivative x (1 - x) already scales the logit
            gradient down to < 0.01 of its size. It bounds each element's gradient by 2 * pdf_clip / N
            (times the reduction factor). (Their lower clip, 1e-3, is below the minimum density 0.59 of
            Beta(0.6, 0.4) and is not applied here.)
        check_inputs: validate values (NaN, inf, outside [0, 1]); see below.

    Gradient: analytic (a custom autograd Function), ``d loss / d x_ij = 2/N (F(x_ij) - r_ij/(N+1)) f(x_ij)``
    times the reduction factor (1 for "sum", 1/G for "mean"; N -> N G with flatten). Ranks are piecewise
    constant and get no gradient; the loss is not twice differentiable.

    Ties: equal values are ranked in order of their row (batch) index, i.e. a stable sort. The loss value
    does not depend on how ties are broken; the gradient of tied elements does (the function has a kink).

    Bad input raises ValueError: not 2-D, N < 2, non-floating dtype, NaN/inf, values outside [0, 1]. The
    value check is one reduction per call (min and max of x, or on the CPU path the min of the odds
    x / (1 - x) it computes anyway, negative or NaN exactly for bad values); only if it fails is the input
    scanned again to say what is wrong. On CUDA reading its result is one host sync per call
    (``check_inputs=False`` skips the check and the sync; the loss has no other host sync on CUDA).

    Speed: on CPU with float32 and N <= 4096 the ranks come from a packed-key numpy sort and the CDF and
    density of a :class:`BetaPrior` from its table, with buffers reused between calls of the same shape
    (per thread). Other cases use ``torch.sort`` (fast on GPU; slow on CPU, e.g. float64 or flatten=True).
    A custom prior's ``cdf``/``pdf`` run on the sorted values.
    """

    def __init__(
        self,
        alpha: float = 0.6,
        beta: float = 0.4,
        prior: Prior | None = None,
        reduction: str = "sum",
        flatten: bool = False,
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
        self.reduction, self.flatten, self.pdf_clip = reduction, flatten, float(pdf_clip)
        self.check_inputs = check_inputs

    def extra_repr(self) -> str:
        return f"prior={self.prior!r}, reduction={self.reduction!r}, flatten={self.flatten}"

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, G) probabilities in [0, 1] -> scalar loss."""
        _check_shape(x)
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return _BatchShapingFunction.apply(x, self)
        return _BatchShapingFunction.apply(x, self)


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
    and calibrate its weight for it: in a pilot, "mean" with weight 0.3 left every gate open.
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
