"""Priors for batch-shaping: Beta, Beta(a, 1 - a), Normal and Relaxed Bernoulli (binary Concrete).

Every prior gives its CDF and density as torch functions on the input's device, and, for the parameters
that are tensors, the derivatives of its CDF with respect to them, so
:class:`~batchshaping.losses.BatchShapingLoss` can learn them (the generalized batch-shaping of MSViT,
Havtorn et al. 2023). A parameter is a float (fixed), or a tensor: a scalar, or one value per column of the
shaped features (any shape with that many elements, in the order of the flattened column dimensions).
Tensors may require grad (``nn.Parameter``) or be computed from other parameters (``std=log_std.exp()``).
In :meth:`~ParametricPrior.cdf` / :meth:`~ParametricPrior.pdf` tensor parameters broadcast against x like
any torch operands (one value per column: shape (C,) against x (..., C)).

Families and parameterisations are those of the authors' reference code (Qualcomm-AI-research/batchshaping):

- :class:`BetaPrior` (alpha, beta), its ``Prior.BETA``;
- :class:`SymBetaPrior` (alpha): Beta(alpha, 1 - alpha), the reference's ``Prior.SYMBETA``. The name is
  theirs: the two parameters sum to 1 (mean alpha), the density is symmetric only for alpha = 1/2. The paper's
  Beta(0.6, 0.4) is SymBetaPrior(0.6);
- :class:`NormalPrior` (mean, std), ``Prior.NORMAL`` (its docstring says variance; the formula uses std);
- :class:`RelaxedBernoulliPrior` (mean, temperature), ``Prior.RELAXED_BERNOULLI``: the binary Concrete
  distribution of sigmoid((logit(U) + logit(mean)) / temperature), U ~ Uniform(0, 1), with the closed-form
  CDF sigmoid(temperature * logit(x) - logit(mean)). ``mean`` is P(X > 1/2), the mean of the Bernoulli it
  relaxes (the limit as temperature -> 0); temperature 1 with mean 1/2 is the uniform distribution.

Derivatives with respect to the parameters are closed forms for Normal and Relaxed Bernoulli. For Beta they
come from the continued fraction of the regularised incomplete beta function differentiated term by term
(forward mode, in float64): the fraction's convergents are rational functions of (a, b) that converge
uniformly on compact sets, so their derivatives converge to the derivatives of the limit (Weierstrass), and
a few more terms than the value needs suffice (the term counts in :data:`_CF_TERMS_BY_PARAM` are measured
for value and derivatives to 1e-13; tests check both against scipy and mpmath).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "BetaPrior",
    "NormalPrior",
    "ParametricPrior",
    "Prior",
    "RelaxedBernoulliPrior",
    "SymBetaPrior",
]

Param = float | Tensor
#: evaluate(v, j0, j1, need_pdf, want, pdf_scale, pdf_clip) -> (cdf, pdf, dcdf/dparams): see
#: :meth:`ParametricPrior._block_evaluator`.
BlockEvaluator = Callable[
    [Tensor, int, int, bool, Sequence[bool], float, float], tuple[Tensor, Tensor | None, list[Tensor | None]]
]


@runtime_checkable
class Prior(Protocol):
    """A prior distribution for :class:`~batchshaping.losses.BatchShapingLoss`.

    Any object with these two elementwise torch functions works; both take and return tensors of the same
    shape on the input's device. Autograd is not used through them (the loss's gradient is analytic). An
    optional attribute ``support = (lo, hi)`` states where values may lie (default (0, 1)); the loss checks
    its input against it.
    """

    def cdf(self, x: Tensor) -> Tensor:
        """Cumulative distribution function F(x), elementwise."""
        ...

    def pdf(self, x: Tensor) -> Tensor:
        """Density f(x) = F'(x), elementwise (may be inf at 0 or 1; the loss clips it)."""
        ...


# --------------------------------------------------------------------------------------------------------
# Parameters


class _Range:
    """Open interval a parameter must lie in, with the words an error uses for it."""

    def __init__(self, lo: float, hi: float, words: str) -> None:
        self.lo, self.hi, self.words = lo, hi, words

    def holds(self, value: float) -> bool:
        return math.isfinite(value) and self.lo < value < self.hi

    def holds_all(self, value: Tensor) -> Tensor:
        """0-d bool tensor, no host sync: every value finite and inside."""
        return (torch.isfinite(value) & (value > self.lo) & (value < self.hi)).all()


_POSITIVE = _Range(0.0, math.inf, "> 0")
_UNIT = _Range(0.0, 1.0, "in (0, 1)")
_FINITE = _Range(-math.inf, math.inf, "finite")


def _host_readable(t: Tensor) -> bool:
    """Reading t's values is free: eager, on CPU (not meta, not under torch.compile)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


class ParametricPrior:
    """Base of the built-in priors: named parameters (floats or tensors), a support, CDF, density and the
    CDF's derivatives with respect to the tensor parameters.

    Subclasses set ``param_names``, ``_ranges`` (one :class:`_Range` per parameter), ``support`` and
    implement :meth:`_evaluate`.
    """

    param_names: tuple[str, ...] = ()
    _ranges: tuple[_Range, ...] = ()
    #: Where values may lie; the loss rejects inputs outside it.
    support: tuple[float, float] = (0.0, 1.0)

    def __init__(self, *values: Param) -> None:
        checked = []
        for name, rng, value in zip(self.param_names, self._ranges, values, strict=True):
            if isinstance(value, Tensor):
                if not value.is_floating_point():
                    raise ValueError(
                        f"{type(self).__name__}: parameter {name} must be a float or a floating point "
                        f"tensor, got dtype {value.dtype}"
                    )
                if value.numel() == 0:
                    raise ValueError(f"{type(self).__name__}: parameter {name} is an empty tensor")
                if _host_readable(value) and not bool(rng.holds_all(value.detach())):
                    raise ValueError(self._bad_param_message(name, rng, value))
            else:
                value = float(value)
                if not rng.holds(value):
                    raise ValueError(self._bad_param_message(name, rng, value))
            checked.append(value)
        self._values: tuple[Param, ...] = tuple(checked)

    # ---- parameters

    @property
    def params(self) -> dict[str, Param]:
        """The parameters by name: floats or tensors (as given: nn.Parameters stay trainable)."""
        return dict(zip(self.param_names, self._values, strict=True))

    def tensor_params(self) -> list[Tensor]:
        """The tensor-valued parameters, in ``param_names`` order (what the loss can differentiate)."""
        return [v for v in self._values if isinstance(v, Tensor)]

    def _bad_param_message(self, name: str, rng: _Range, value: Param) -> str:
        if isinstance(value, Tensor):
            v = value.detach().double()
            bad = ~(torch.isfinite(v) & (v > rng.lo) & (v < rng.hi))
            shown = f"{int(bad.sum())} of its {v.numel()} values are not, e.g. {float(v[bad][0]):.6g}"
            fix = {
                "> 0": f" (a trainable {name} stays positive as e.g. {name}=raw.exp() or softplus(raw))",
                "in (0, 1)": f" (a trainable {name} stays inside as e.g. {name}=torch.sigmoid(raw))",
            }.get(rng.words, "")
        else:
            shown, fix = f"got {name}={value}", ""
        return f"{type(self).__name__} needs {name} {rng.words}: {shown}{fix}"

    def _check_values(self, values: Sequence[Param]) -> None:
        """Raise the ValueError for the first invalid tensor parameter (host-side, CPU; errors only)."""
        for name, rng, value in zip(self.param_names, self._ranges, values, strict=True):
            if isinstance(value, Tensor) and not bool(rng.holds_all(value.detach())):
                raise ValueError(self._bad_param_message(name, rng, value))

    def _values_ok(self, values: Sequence[Param]) -> Tensor | None:
        """0-d bool tensor: every tensor parameter valid (no host sync); None without tensor parameters."""
        ok = None
        for rng, value in zip(self._ranges, values, strict=True):
            if isinstance(value, Tensor):
                flag = rng.holds_all(value)
                ok = flag if ok is None else ok & flag
        return ok

    def __repr__(self) -> str:
        def show(v: Param) -> str:
            if isinstance(v, float):
                return f"{v:g}"
            grad = ", requires_grad" if v.requires_grad else ""
            return f"tensor(shape={tuple(v.shape)}{grad})"

        args = ", ".join(f"{n}={show(v)}" for n, v in zip(self.param_names, self._values, strict=True))
        return f"{type(self).__name__}({args})"

    # ---- evaluation

    def _evaluate(
        self, v: Tensor, p: Sequence[Param], need_pdf: bool, want: Sequence[bool], pdf_scale: float = 1.0
    ) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
        """CDF, density (if need_pdf) times pdf_scale, and dCDF/dparam for each parameter with want[k], at v.

        v: float32 or float64, any shape, inside the support (checked by the loss, clamped by cdf / pdf);
        p: the parameters, floats or tensors broadcastable to v, in v's dtype. Returns fresh tensors of v's
        shape and dtype (the density unclipped: inf where the density is). pdf_scale > 0 lets the loss fold
        its gradient factor into the density's own constant. Subclasses implement it.
        """
        raise NotImplementedError

    def _block_evaluator(self, values: Sequence[Param], dtype: torch.dtype) -> BlockEvaluator:
        """What the loss calls on each block of columns.

        values: the parameters as floats or flat tensors in ``dtype``, 0-d or one value per column (C,).
        Returns ``evaluate(v, j0, j1, need_pdf, want, pdf_scale, pdf_clip) -> (cdf, pdf, grads)`` for the
        values v (B, N) of columns j0:j1 (one column a row), the density times pdf_scale clipped to
        pdf_clip * pdf_scale.
        """
        # Scalar tensors read once on the host where that is free (eager CPU): the closed forms' float paths.
        values = [
            float(x) if isinstance(x, Tensor) and x.dim() == 0 and _host_readable(x) else x for x in values
        ]
        per_column = [isinstance(x, Tensor) and x.dim() == 1 for x in values]

        def evaluate(
            v: Tensor, j0: int, j1: int, need_pdf: bool, want: Sequence[bool], scale: float, clip: float
        ) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
            p = [x[j0:j1, None] if col else x for x, col in zip(values, per_column, strict=True)]
            cdf, pdf, grads = self._evaluate(v, p, need_pdf, want, scale)
            if pdf is not None and self._pdf_max(p) > clip:
                pdf = pdf.clamp_(max=clip * scale)
            return cdf, pdf, grads

        return evaluate

    def _pdf_max(self, p: Sequence[Param]) -> float:
        """An upper bound of the density (inf if unbounded or not known): no clip needed below it."""
        return math.inf

    def _broadcast_values(self, x: Tensor) -> tuple[Tensor, list[Param]]:
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        xv = x.to(dtype)
        lo, hi = self.support
        if math.isfinite(lo) or math.isfinite(hi):
            xv = xv.clamp(lo, hi)
        p = [v.detach().to(dtype) if isinstance(v, Tensor) else v for v in self._values]
        return xv, p

    def cdf(self, x: Tensor) -> Tensor:
        """CDF, elementwise; float64 x gives float64, other dtypes float32. Tensor parameters broadcast
        against x. Values outside the support clamp to it (CDF 0 below, 1 above); NaN stays NaN."""
        xv, p = self._broadcast_values(x)
        return self._evaluate(xv, p, False, [False] * len(p))[0]

    def pdf(self, x: Tensor) -> Tensor:
        """Density, elementwise; float64 x gives float64, other dtypes float32; 0 outside the support."""
        xv, p = self._broadcast_values(x)
        f = self._evaluate(xv, p, True, [False] * len(p))[1]
        assert f is not None
        lo, hi = self.support
        xd = x.to(f.dtype)
        return torch.where((xd < lo) | (xd > hi), 0.0, f)

    def cdf_grads(self, x: Tensor) -> dict[str, Tensor]:
        """dCDF/dparam at x for every tensor parameter, by name (float64 x: float64, else float32)."""
        xv, p = self._broadcast_values(x)
        want = [isinstance(v, Tensor) for v in p]
        grads = self._evaluate(xv, p, False, want)[2]
        return {n: g for n, g in zip(self.param_names, grads, strict=True) if g is not None}


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


#: (bound on max(alpha, beta), terms): continued-fraction terms for tensor parameters. Measured over alpha,
#: beta log-spaced from 1e-3 to 1e3 (37 values) and a dense x grid (1201 points, ends included): the most
#: any pair with max(alpha, beta) <= bound needs for the value and both derivatives to come within 1e-13
#: (relative to max(1, |value|)) of their converged values, + 4 for the parameters between grid points.
#: Beyond the last bound: not supported.
_CF_TERMS_BY_PARAM: tuple[tuple[float, int], ...] = (
    (1.0, 15),
    (2.0, 16),
    (5.0, 21),
    (10.0, 25),
    (20.0, 29),
    (50.0, 39),
    (100.0, 47),
    (200.0, 50),
    (500.0, 52),
    (1000.0, 63),
)
#: Largest alpha, beta accepted as tensors (the continued fraction's term count is bounded above by it).
BETA_TENSOR_PARAM_MAX = _CF_TERMS_BY_PARAM[-1][0]


def _cf_terms_for(a: Param, b: Param) -> int:
    """Terms for tensor parameters: from their largest value where reading it is free (eager CPU), else the
    count for the largest supported value (no host sync; larger parameters are flagged invalid)."""
    peak = 0.0
    for p in (a, b):
        if isinstance(p, Tensor):
            if not _host_readable(p):
                return _CF_TERMS_BY_PARAM[-1][1]
            peak = max(peak, float(p.max()))
        else:
            peak = max(peak, p)
    return next((t for bound, t in _CF_TERMS_BY_PARAM if peak <= bound), _CF_TERMS_BY_PARAM[-1][1])


def _betainc_grads(
    a: Param, b: Param, x: Tensor, terms: int, want_a: bool, want_b: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """I_x(a, b) and, if wanted, dI/da and dI/db, float64, for tensor (or float) a, b broadcastable to x.

    The continued fraction of :func:`_betainc` (same swap, same modified Lentz steps) carries the tangents
    of its state with respect to aa and bb (the parameters after the swap) through every step: forward-mode
    differentiation of the fixed-length fraction. The prefactor's derivatives are closed forms (digamma).
    x: float64 in [0, 1]; a, b > 0.
    """
    a = torch.as_tensor(a, dtype=torch.float64, device=x.device)
    b = torch.as_tensor(b, dtype=torch.float64, device=x.device)
    swap = x > (a + 1) / (a + b + 2)
    xs = torch.where(swap, 1 - x, x)
    aa, bb = torch.where(swap, b, a), torch.where(swap, a, b)
    grads = want_a or want_b
    tiny = 1e-300
    num = -(aa + bb) * xs / (aa + 1)
    d = 1 / (1 + num).clamp_min(tiny)
    c = torch.ones_like(xs)
    h = d
    if grads:  # tangents (wrt aa, wrt bb) of num, d, c, h
        dnum = (-xs * (1 - bb) / (aa + 1) ** 2, -xs / (aa + 1))
        dd = tuple(-d * d * t for t in dnum)
        dc = (torch.zeros_like(xs), torch.zeros_like(xs))
        dh = dd
    for m in range(1, terms + 1):
        den_e = (aa - 1 + 2 * m) * (aa + 2 * m)
        even = m * (bb - m) * xs / den_e
        odd_f = (aa + m) * (aa + bb + m)
        den_o = (aa + 2 * m) * (aa + 1 + 2 * m)
        odd = -odd_f * xs / den_o
        if grads:
            d_even = (-even * (1 / (aa - 1 + 2 * m) + 1 / (aa + 2 * m)), m * xs / den_e)
            s = 1 / (aa + bb + m)
            d_odd = (odd * (1 / (aa + m) + s - 1 / (aa + 2 * m) - 1 / (aa + 1 + 2 * m)), odd * s)
        for num, dnum in ((even, d_even), (odd, d_odd)) if grads else ((even, None), (odd, None)):
            den = 1 + num * d
            den = torch.where(den.abs() < tiny, tiny, den)
            d_new = 1 / den
            c_new = 1 + num / c
            c_new = torch.where(c_new.abs() < tiny, tiny, c_new)
            if grads:
                dd = tuple(-d_new * d_new * (dn * d + num * ddk) for dn, ddk in zip(dnum, dd, strict=True))
                dc = tuple((dn - num * dck / c) / c for dn, dck in zip(dnum, dc, strict=True))
                dh = tuple(
                    dhk * d_new * c_new + h * (ddk * c_new + d_new * dck)
                    for dhk, ddk, dck in zip(dh, dd, dc, strict=True)
                )
            d, c = d_new, c_new
            h = h * d * c
    # front = x^aa (1-x)^bb / (aa B(aa, bb)); lgamma(aa + 1) = lgamma(aa) + log(aa).
    log_front = (
        torch.xlogy(aa, xs)
        + torch.special.xlog1py(bb, -xs)
        - torch.lgamma(aa + 1)
        - torch.lgamma(bb)
        + torch.lgamma(aa + bb)
    )
    front = torch.exp(log_front)
    i_s = front * h
    out = torch.where(swap, 1 - i_s, i_s)
    if not grads:
        return out, None, None
    psi_ab = torch.digamma(aa + bb)
    # d log(front) / d aa, d bb; where front is 0 (xs = 0) so is the derivative (x^aa log x -> 0).
    dlog = (torch.log(xs) - torch.digamma(aa + 1) + psi_ab, torch.log1p(-xs) - torch.digamma(bb) + psi_ab)
    di = [torch.where(front > 0, front * (dhk + h * dl), 0.0) for dhk, dl in zip(dh, dlog, strict=True)]
    # Swapped: I = 1 - I_s(b, a), so dI/da = -dI_s/dbb and dI/db = -dI_s/daa.
    dida = torch.where(swap, -di[1], di[0]) if want_a else None
    didb = torch.where(swap, -di[0], di[1]) if want_b else None
    return out, dida, didb


def _beta_log_pdf(a: Param, b: Param, x: Tensor) -> Tensor:
    """log density of Beta(a, b) at x in [0, 1], x's dtype; xlogy makes a = 1 or b = 1 exact at the ends."""
    if isinstance(a, float) and isinstance(b, float):
        log_b = _log_beta(a, b)
    else:
        at, bt = (torch.as_tensor(p, dtype=torch.float64, device=x.device) for p in (a, b))
        log_b = (torch.lgamma(at) + torch.lgamma(bt) - torch.lgamma(at + bt)).to(x.dtype)
    return torch.xlogy(a - 1, x) + torch.special.xlog1py(b - 1, -x) - log_b


# --------------------------------------------------------------------------------------------------------
# Beta: float32 table of the CDF for float parameters


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


#: Bound on the cubic Hermite interpolation error of the per-call tables, h^4 max|g''''(t)| / 384.
_HERMITE_TOL = 1e-8
#: A derivative of the Beta CDF as (ca, cb): ca dF/dalpha + cb dF/dbeta.
Direction = tuple[float, float]


def _combine(ca: float, da: Tensor | None, cb: float, db: Tensor | None) -> Tensor:
    """ca da + cb db, skipping the terms with a zero coefficient (their tensor may be None)."""
    out = None if ca == 0 else ca * da  # type: ignore[operator]
    if cb != 0:
        out = cb * db if out is None else out + cb * db  # type: ignore[operator]
    assert out is not None
    return out


def _hermite_table(a: float, b: float, directions: Sequence[Direction]) -> tuple[float, int, Tensor]:
    """(1/h, k0, coef): cubic Hermite pieces over t = logit(x) of the Beta(a, b) CDF and of its derivatives
    ``ca dF/da + cb dF/db`` for each (ca, cb) in ``directions``, float32 (CPU).

    coef[k, 4 f : 4 f + 4] = (c0, c1, c2, c3): function f on the cell [t_k, t_k + h], t_k = (k - k0) h, is
    c0 + c1 s + c2 s^2 + c3 s^3 with s = (t - t_k) / h. Built per call for scalar tensor parameters (they
    change every step), so it must be cheap: the slopes in t are closed forms (dF/dt = x^a (1-x)^b / B(a, b),
    and d/dt dF/da = dF/dt (log x - psi(a) + psi(a + b)), likewise for b), so a cubic with exact end slopes
    interpolates to O(h^4) and a coarse grid does: h is the largest power of two in [2^-8, 2^-2] with
    h^4 max|g''''| / 384 <= _HERMITE_TOL for every function g (max|g''''| from third differences of the
    closed-form slopes on a 1/64 grid): 2^-4 for Beta(0.6, 0.4) (1937 nodes), 2^-6 for Beta(10, 10), 2^-8
    for Beta(100, 100). The values at the nodes come from the continued fraction in float64. As in
    :func:`_cdf_table`, the end nodes hold the exact values at x = 0 and 1 (F = 0, 1; derivatives 0) and
    finite float32 t do not reach the end cells.
    """
    ta, tb = (torch.tensor(v, dtype=torch.float64) for v in (a, b))
    log_b = _log_beta(a, b)
    psi_ab = float(torch.digamma(ta + tb))
    d_log = (-float(torch.digamma(ta)) + psi_ab, -float(torch.digamma(tb)) + psi_ab)

    def slopes(t: Tensor) -> list[Tensor]:
        lp, lm = torch.nn.functional.logsigmoid(t), torch.nn.functional.logsigmoid(-t)
        s = torch.exp(a * lp + b * lm - log_b)
        return [s] + [s * (ca * (lp + d_log[0]) + cb * (lm + d_log[1])) for ca, cb in directions]

    probe = torch.arange(_T_LO, _T_HI, 1 / 64, dtype=torch.float64)
    g4 = max(float((torch.diff(g, 3) * 64**3).abs().max()) for g in slopes(probe))  # max |g''''|
    log2_h = math.floor(0.25 * math.log2(384 * _HERMITE_TOL / g4)) if g4 > 0 else -2
    inv_h = 2.0 ** -min(-2, max(-8, log2_h))
    k0, k1 = math.ceil(-_T_LO * inv_h), math.ceil(_T_HI * inv_h)
    t = torch.arange(-k0, k1 + 1, dtype=torch.float64) / inv_h
    want_a, want_b = any(ca != 0 for ca, _ in directions), any(cb != 0 for _, cb in directions)
    cdf, da, db = _betainc_grads(a, b, torch.sigmoid(t), _cf_terms_for(a, b), want_a, want_b)
    values = [cdf] + [_combine(ca, da, cb, db) for ca, cb in directions]
    cols = []
    for val, slope in zip(values, slopes(t), strict=True):
        val, hs = val.clone(), slope / inv_h
        val[0], val[-1], hs[0], hs[-1] = 0.0, 0.0, 0.0, 0.0
        if not cols:
            val[-1] = 1.0  # the CDF at x = 1
        v0, v1, s0, s1 = val[:-1], val[1:], hs[:-1], hs[1:]
        piece = torch.stack([v0, s0, 3 * (v1 - v0) - 2 * s0 - s1, 2 * (v0 - v1) + s0 + s1], 1)
        last = torch.cat([val[-1:], val.new_zeros(3)])[None]  # the last node: its value, flat
        cols.append(torch.cat([piece, last]))
    return inv_h, k0, torch.cat(cols, 1).float()


class BetaPrior(ParametricPrior):
    """Beta(alpha, beta) prior on [0, 1], with CDF and density in torch on the input's device.

    Float parameters (the paper's gates): float64 inputs get the exact CDF (continued fraction, ~1e-15).
    Other inputs are computed in float32: the CDF is interpolated linearly in a table over
    t = logit(x) = log(x) - log(1 - x), built once per (alpha, beta) on the host and copied once to each
    device it is used on (1 MB for Beta(0.6, 0.4), up to 4 MB for peaked priors). For alpha, beta in
    [0.1, 10] the float32 CDF is within 1.1e-7 of the exact one (the table's own error is <= 2e-8; the rest
    is float32 rounding of t and of the result).

    Tensor parameters (per column, or trainable): the continued fraction in float64 for every value, with
    its derivatives in alpha and beta carried through it when they are needed (see the module docstring);
    its term count is set by the largest parameter (read on the host on eager CPU, else the count for the
    largest supported value); alpha, beta up to :data:`BETA_TENSOR_PARAM_MAX` (1000). In the loss, scalar
    tensor parameters on eager CPU with float32 input instead get a cubic Hermite table of the CDF and its
    derivatives built per call (:func:`_hermite_table`, error <= ~1e-8 plus float32 rounding), ~50x less
    work than the fraction at every value.

    ``pdf`` is the closed form ``exp((alpha-1) log x + (beta-1) log(1-x) - log B(alpha, beta))`` (inf at 0
    if alpha < 1 and at 1 if beta < 1); in float32 it is within 1e-5 relative for alpha, beta in [0.1, 10].
    """

    param_names = ("alpha", "beta")
    _ranges = (_POSITIVE, _POSITIVE)

    def __init__(self, alpha: Param = 0.6, beta: Param = 0.4) -> None:
        try:
            super().__init__(alpha, beta)
        except ValueError as e:  # the historical message first: "Beta prior needs finite alpha, beta > 0"
            raise ValueError(f"Beta prior needs finite alpha, beta > 0 ({e})") from None
        self._check_tensor_max(self._values)
        self._floats = all(isinstance(v, float) for v in self._values)
        if self._floats:
            self.log_beta = _log_beta(*self._values)
        self._tables: dict[torch.device, tuple[float, int, Tensor, Tensor]] = {}

    def _check_tensor_max(self, values: Sequence[Param]) -> None:
        for name, v in zip(("alpha", "beta"), values, strict=True):
            if not (isinstance(v, Tensor) and _host_readable(v)):
                continue
            peak = float(v.detach().max())
            if peak > BETA_TENSOR_PARAM_MAX:
                raise ValueError(
                    f"{type(self).__name__}: tensor parameter {name} up to {peak:.6g} is above "
                    f"{BETA_TENSOR_PARAM_MAX:g}, the largest its continued fraction's term count covers; "
                    f"keep it below (e.g. a clamp) or give a float parameter"
                )

    def _check_values(self, values: Sequence[Param]) -> None:
        super()._check_values(values)
        self._check_tensor_max(self._beta_values(values))

    def _values_ok(self, values: Sequence[Param]) -> Tensor | None:
        ok = super()._values_ok(values)
        for v in self._beta_values(values):
            if isinstance(v, Tensor):
                flag = (v <= BETA_TENSOR_PARAM_MAX).all()
                ok = flag if ok is None else ok & flag
        return ok

    # ---- the parameterisation: (alpha, beta) here, (alpha, 1 - alpha) in SymBetaPrior

    def _beta_values(self, p: Sequence[Param]) -> tuple[Param, Param]:
        """(alpha, beta) from the parameter values in ``param_names`` order."""
        return p[0], p[1]

    def _directions(self, want: Sequence[bool]) -> list[Direction]:
        """For each wanted parameter, its derivative as (ca, cb): ca dF/dalpha + cb dF/dbeta."""
        return [d for d, w in zip(((1.0, 0.0), (0.0, 1.0)), want, strict=True) if w]

    def _param_grads(self, want: Sequence[bool], grads: Sequence[Tensor]) -> list[Tensor | None]:
        """The wanted parameters' derivatives (in _directions order) placed by parameter, None elsewhere."""
        it = iter(grads)
        return [next(it) if w else None for w in want]

    def __repr__(self) -> str:
        if self._floats:
            return f"BetaPrior(alpha={self.alpha:g}, beta={self.beta:g})"
        return super().__repr__()

    @property
    def alpha(self) -> Param:
        return self._beta_values(self._values)[0]

    @property
    def beta(self) -> Param:
        return self._beta_values(self._values)[1]

    @property
    def mean(self) -> Param:
        """Mean alpha / (alpha + beta) of the prior (the on-rate batch-shaping drives each gate to)."""
        return self.alpha / (self.alpha + self.beta)

    def cdf(self, x: Tensor) -> Tensor:
        """CDF, elementwise. x: any shape; float64 -> exact float64, other dtypes -> float32 (from the table
        for float parameters). Values outside [0, 1] are clamped (0 below, 1 above); NaN stays NaN."""
        if self._floats and x.dtype != torch.float64:
            xf = x.float().clamp(0, 1)
            return torch.where(xf.isnan(), xf, self._cdf_pdf_f32(xf)[0])
        return super().cdf(x)

    def _evaluate(
        self, v: Tensor, p: Sequence[Param], need_pdf: bool, want: Sequence[bool], pdf_scale: float = 1.0
    ) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
        a, b = self._beta_values(p)
        dirs = self._directions(want)
        grads: list[Tensor] = []
        if isinstance(a, float) and isinstance(b, float) and not dirs:
            cdf = _betainc(a, b, v.double(), _cf_terms(a, b)).to(v.dtype)
        else:
            want_a, want_b = any(ca for ca, _ in dirs), any(cb for _, cb in dirs)
            cdf, ga, gb = _betainc_grads(a, b, v.double(), _cf_terms_for(a, b), want_a, want_b)
            cdf = cdf.to(v.dtype)
            grads = [_combine(ca, ga, cb, gb).to(v.dtype) for ca, cb in dirs]
        pdf = None
        if need_pdf:
            pdf = torch.exp(_beta_log_pdf(a, b, v) + math.log(pdf_scale))
        return cdf, pdf, self._param_grads(want, grads)

    def _block_evaluator(self, values: Sequence[Param], dtype: torch.dtype) -> BlockEvaluator:
        """Float parameters and float32: the cached linear table. Scalar tensor parameters, float32, eager
        CPU: a Hermite table built for this call. Otherwise the continued fraction at every value."""
        scalars = all(isinstance(v, float) or (v.dim() == 0 and _host_readable(v)) for v in values)
        if dtype != torch.float32 or not scalars:
            return super()._block_evaluator(values, dtype)
        if self._floats:
            return self._table_evaluator(len(values))
        return self._hermite_evaluator(*(float(x) for x in self._beta_values(values)))

    def _table_evaluator(self, n_params: int) -> BlockEvaluator:
        def table(
            v: Tensor, j0: int, j1: int, need_pdf: bool, want: Sequence[bool], scale: float, clip: float
        ) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
            cdf, pdf = self._cdf_pdf_f32(v, clip if need_pdf else None)
            # scaled after the clip, as before priors had parameters: exp(log f + log scale) would round
            # differently (the paper's loss keeps its exact float32 gradient)
            return cdf, None if pdf is None else pdf.mul_(scale), [None] * n_params

        return table

    def _hermite_evaluator(self, a: float, b: float) -> BlockEvaluator:
        log_b = _log_beta(a, b)
        tables: dict[tuple[bool, ...], tuple[float, int, Tensor]] = {}

        def hermite(
            v: Tensor, j0: int, j1: int, need_pdf: bool, want: Sequence[bool], scale: float, clip: float
        ) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
            key = tuple(want)
            if key not in tables:  # built once per call: the loss asks the same for every block
                tables[key] = _hermite_table(a, b, self._directions(want))
            inv_h, k0, coef = tables[key]
            lx, l1 = torch.log(v), torch.log1p(-v)
            u = torch.nan_to_num_((lx - l1).mul_(inv_h), nan=-k0).clamp_(-k0, coef.shape[0] - 1 - k0)
            cell = torch.floor(u)
            s = u.sub_(cell)
            co = torch.index_select(coef, 0, cell.add_(k0).to(torch.int32).view(-1)).view(*v.shape, -1)
            out = []
            for f in range(coef.shape[1] // 4):  # Horner: ((c3 s + c2) s + c1) s + c0
                c = co[..., 4 * f : 4 * f + 4]
                val = torch.addcmul(c[..., 2], s, c[..., 3])
                val = torch.addcmul(c[..., 1], s, val)
                out.append(torch.addcmul(c[..., 0], s, val))
            pdf = None
            if need_pdf:
                logf = torch.full_like(v, math.log(scale) - log_b)
                for coef_x, log_term in ((a - 1, lx), (b - 1, l1)):
                    if coef_x != 0:  # 0 * log 0 would give NaN at the boundary
                        logf.add_(log_term, alpha=coef_x)
                pdf = logf.exp_().clamp_(max=clip * scale)
            return out[0], pdf, self._param_grads(want, out[1:])

        return hermite

    def _cdf_pdf_f32(self, x: Tensor, pdf_clip: float | None = None) -> tuple[Tensor, Tensor | None]:
        """Table CDF and (if pdf_clip is given) the density clipped to [0, pdf_clip], both float32.

        Float parameters only. x: float32 in [0, 1], any shape. Values outside [0, 1] or NaN give garbage
        (never an invalid index).
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


class SymBetaPrior(BetaPrior):
    """Beta(alpha, 1 - alpha) on [0, 1], mean alpha: the reference code's ``Prior.SYMBETA`` ("symmetric"
    there means the two parameters sum to 1; the density is symmetric only for alpha = 1/2). One parameter,
    alpha in (0, 1); SymBetaPrior(0.6) is the paper's Beta(0.6, 0.4). Float alpha uses BetaPrior's table;
    dCDF/dalpha = dF/da - dF/db."""

    param_names = ("alpha",)
    _ranges = (_UNIT,)

    def __init__(self, alpha: Param = 0.6) -> None:
        ParametricPrior.__init__(self, alpha)
        self._floats = isinstance(self._values[0], float)
        if self._floats:
            self.log_beta = _log_beta(self.alpha, self.beta)
        self._tables = {}

    def __repr__(self) -> str:
        return ParametricPrior.__repr__(self)

    def _beta_values(self, p: Sequence[Param]) -> tuple[Param, Param]:
        return p[0], 1 - p[0]

    def _directions(self, want: Sequence[bool]) -> list[Direction]:
        return [(1.0, -1.0)] if want[0] else []


# --------------------------------------------------------------------------------------------------------
# Normal and Relaxed Bernoulli: closed forms

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _log(p: Param) -> Param:
    return math.log(p) if isinstance(p, float) else torch.log(p)


class NormalPrior(ParametricPrior):
    """Normal(mean, std) on the real line: features of any sign (no [0, 1] constraint).

    CDF 0.5 erfc((mean - x) / (std sqrt 2)) (accurate in both tails), density exp(-u^2 / 2) / (std sqrt(2 pi))
    with u = (x - mean) / std; dCDF/dmean = -density, dCDF/dstd = -u density. std > 0.
    """

    param_names = ("mean", "std")
    _ranges = (_FINITE, _POSITIVE)
    support = (-math.inf, math.inf)

    def __init__(self, mean: Param = 0.0, std: Param = 1.0) -> None:
        super().__init__(mean, std)

    @property
    def mean(self) -> Param:
        return self._values[0]

    @property
    def std(self) -> Param:
        return self._values[1]

    def _pdf_max(self, p: Sequence[Param]) -> float:
        std = p[1]
        return _INV_SQRT_2PI / std if isinstance(std, float) else math.inf

    def _evaluate(
        self, v: Tensor, p: Sequence[Param], need_pdf: bool, want: Sequence[bool], pdf_scale: float = 1.0
    ) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
        mean, std = p
        w = torch.sub(mean, v) if isinstance(mean, Tensor) else torch.rsub(v, mean)
        w = w.mul_(_SQRT_HALF / std)  # (mean - x) / (std sqrt 2) = -u / sqrt 2
        cdf = torch.special.erfc(w).mul_(0.5)
        if not (need_pdf or any(want)):
            return cdf, None, [None, None]
        # density * pdf_scale = exp(log(pdf_scale / (std sqrt(2 pi))) - w^2): one exp, constants folded
        log_c = _log(pdf_scale * _INV_SQRT_2PI / std)  # type: ignore[operator]
        ww = w * w
        pdf = (torch.rsub(ww, log_c) if isinstance(log_c, float) else log_c - ww).exp_()
        d_mean = pdf * (-1 / pdf_scale) if want[0] else None
        d_std = pdf * w * (math.sqrt(2) / pdf_scale) if want[1] else None  # -u f
        return cdf, pdf, [d_mean, d_std]


class RelaxedBernoulliPrior(ParametricPrior):
    """Relaxed Bernoulli (binary Concrete) on [0, 1] in the reference code's (mean, temperature) form.

    X = sigmoid((logit(U) + logit(mean)) / temperature), U ~ Uniform(0, 1); CDF
    F(x) = sigmoid(temperature * logit(x) - logit(mean)), density
    temperature F (1 - F) / (x (1 - x)) (inf at 0 and 1 for temperature < 1, 0 for temperature > 1).
    ``mean`` = P(X > 1/2) in (0, 1), the mean of the Bernoulli it relaxes; temperature > 0 (-> 0: that
    Bernoulli). Unlike the reference code, which clips x to [1e-3, 1 - 1e-3] first, this is the exact CDF up
    to the ends. dF/dtemperature = F (1 - F) logit(x), dF/dmean = -F (1 - F) / (mean (1 - mean)).
    """

    param_names = ("mean", "temperature")
    _ranges = (_UNIT, _POSITIVE)

    def __init__(self, mean: Param = 0.5, temperature: Param = 0.5) -> None:
        super().__init__(mean, temperature)

    @property
    def mean(self) -> Param:
        return self._values[0]

    @property
    def temperature(self) -> Param:
        return self._values[1]

    def _evaluate(
        self, v: Tensor, p: Sequence[Param], need_pdf: bool, want: Sequence[bool], pdf_scale: float = 1.0
    ) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
        mean, tau = p
        logit_m = math.log(mean / (1 - mean)) if isinstance(mean, float) else torch.logit(mean)
        t = torch.logit(v)  # ±inf at x = 0, 1 (exact: 1 - x is exact for x >= 1/2)
        z = t * tau
        z = z.sub_(logit_m) if isinstance(logit_m, float) or logit_m.dim() == 0 else z - logit_m
        cdf = torch.sigmoid(z)
        if not (need_pdf or any(want)):
            return cdf, None, [None, None]
        ff = torch.sigmoid(z.neg_()).mul_(cdf)  # F (1 - F), without 1 - F's cancellation near F = 1
        pdf = None
        if need_pdf:
            # tau F (1 - F) / (x (1 - x)) is 0 / 0 at x = 0, 1: there its limit, 0 (tau > 1), inf (tau < 1),
            # tau e^-logit(mean) at 0 and tau e^logit(mean) at 1 (tau = 1).
            pdf = (ff * (tau * pdf_scale)).div_(torch.rsub(v, 1).mul_(v))
            if isinstance(tau, float) and tau != 1:
                pdf = pdf.nan_to_num_(nan=0.0 if tau > 1 else math.inf, posinf=math.inf)
            else:
                sign = 1 - 2 * (v < 0.5).to(
                    v.dtype
                )  # in v's dtype: a Python float in where() would be float32
                ends = torch.exp(sign * logit_m) * (tau * pdf_scale)
                if isinstance(tau, Tensor):
                    ends = torch.where(tau < 1, math.inf, torch.where(tau > 1, 0.0, ends))
                pdf = torch.where(torch.isnan(pdf) & ~torch.isnan(v), ends, pdf)
        d_mean = ff / (-mean * (1 - mean)) if want[0] else None
        # F (1 - F) logit(x): 0 at x = 0, 1 (where logit is infinite and F (1 - F) is 0).
        d_tau = torch.where(ff > 0, ff * t, 0.0) if want[1] else None
        return cdf, pdf, [d_mean, d_tau]
