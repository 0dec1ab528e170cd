"""Batch-shaping loss for any features and priors, and the L0 gate-sparsity loss (Bejnordi et al., ICLR 2020).

Batch-shaping matches, for every column ``j`` of a batch of features ``x`` (N samples, C columns), the
empirical distribution of the column to a prior CDF ``F`` (Beta(0.6, 0.4) on gate probabilities in the
paper; any prior of :mod:`batchshaping.priors`, or any object with ``cdf``/``pdf``)::

    loss_j = 1/N * sum_i (F(x_(i),j) - i / (N + 1))^2          x_(i),j: the i-th smallest value of column j

and its gradient is analytic: ``d loss_j / d x_ij = 2/N * (F(x_ij) - r_ij / (N + 1)) * f(x_ij)``, with
``r_ij`` the 1-based rank of ``x_ij`` in its column and ``f`` the prior density. Ranks are piecewise constant,
so they get no gradient. Prior parameters given as tensors get ``d loss_j / d theta = 2/N sum_i (F(x_(i),j) -
i / (N + 1)) dF/dtheta(x_(i),j)`` (the generalized batch-shaping of MSViT, Havtorn et al. 2023).

Everything is torch ops on the input's device, with no host synchronisation on accelerators: ranks come
from ``torch.sort`` along the batch dimension, each value's target ``r / (N + 1)`` is scattered to where
it stands, and the prior is evaluated (and the gradient written) in column order. :class:`BetaPrior`
interpolates its CDF in a table it builds once (float32 inputs, float parameters) or evaluates it exactly
by continued fraction (float64 inputs, tensor parameters). The one exception is eager float32 on CPU, where
``torch.sort`` costs twice the rest of the loss (benchmarks/README.md, "BatchShapingLoss"): there numpy
sorts exact int64 keys (value bits, row index) and gives the same ranks; and scalar tensor parameters are
read on the host there (free on CPU) for the float code paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from batchshaping.gates import GateOutput
from batchshaping.priors import (
    BetaPrior,
    BlockEvaluator,
    NormalPrior,
    ParametricPrior,
    Prior,
    RelaxedBernoulliPrior,
    SymBetaPrior,
)

__all__ = [
    "BatchShapingLoss",
    "BetaPrior",
    "NormalPrior",
    "Prior",
    "RelaxedBernoulliPrior",
    "SymBetaPrior",
    "l0_loss",
    "mac_target_loss",
]

#: Default clip of the prior density in the batch-shaping gradient (the authors' reference code clips the
#: density to [1e-3, 100]), see :class:`BatchShapingLoss`.
DEFAULT_PDF_CLIP = 100.0

#: ``dim`` of the classic use, the default: x is (N, G) gate probabilities, one column per gate.
GATES = "gates"

# --------------------------------------------------------------------------------------------------------
# Batch-shaping loss: input shapes and values


def _support(prior: Prior) -> tuple[float, float]:
    """Where the prior's values lie: its ``support`` attribute, else [0, 1] (gate probabilities)."""
    lo, hi = getattr(prior, "support", (0.0, 1.0))
    return float(lo), float(hi)


def _check_shape(x: Tensor) -> None:
    """The classic input (dim="gates"): a 2-D (N, G) floating tensor of gate probabilities."""
    if not isinstance(x, Tensor):
        raise ValueError(f"BatchShapingLoss expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(
            f"BatchShapingLoss expects a 2-D (N, G) tensor of gate probabilities (batch x gates), "
            f"got a {x.dim()}-D tensor of shape {tuple(x.shape)}; for other features give dim=0 (each "
            f"column over the batch, the other dims flattened into columns) or dim=None (all values pooled)"
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


def _as_columns(x: Tensor, dim: int | tuple[int, ...] | None | str) -> Tensor:
    """x as a 2-D (S, C) tensor: S samples of C columns, a view where the layout allows (autograd maps the
    gradient back). dim: "gates" (x must be (N, G)), the sample dim(s), or None (one column of all values)."""
    if dim == GATES:
        _check_shape(x)
        return x
    if not isinstance(x, Tensor):
        raise ValueError(f"BatchShapingLoss expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"BatchShapingLoss expects floating point features, got dtype {x.dtype}")
    if dim is None:
        cols = x.reshape(-1, 1)
    else:
        dims = [dim] if isinstance(dim, int) else list(dim)
        if not dims or not all(isinstance(d, int) and -x.dim() <= d < x.dim() for d in dims):
            raise ValueError(
                f"BatchShapingLoss: dim={dim} does not name dims of the {x.dim()}-D input of shape "
                f"{tuple(x.shape)}; give the sample dim(s) (e.g. dim=0) or dim=None"
            )
        dims = sorted({d % x.dim() for d in dims})
        s = math.prod([x.shape[d] for d in dims])
        cols = x.movedim(dims, tuple(range(len(dims)))).reshape(s, -1) if x.numel() else x.reshape(s, 0)
    n, c = cols.shape
    if n < 2:
        raise ValueError(
            f"BatchShapingLoss needs at least 2 samples per column to compare their distribution with the "
            f"prior, got {n} (input shape {tuple(x.shape)}, dim={dim})"
        )
    if c < 1:
        raise ValueError(f"BatchShapingLoss got no columns: input shape {tuple(x.shape)}, dim={dim}")
    return cols


def _raise_bad_values(x: Tensor, prior: Prior) -> None:
    """Raise the ValueError describing why x has values outside the prior's support (CPU, errors only)."""
    lo, hi = _support(prior)
    bounded = math.isfinite(lo) or math.isfinite(hi)
    where = f"[{lo:g}, {hi:g}]"
    n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    if n_nan or n_inf:
        expected = f"values in {where}" if bounded else f"finite values (the support of {prior!r})"
        raise ValueError(
            f"BatchShapingLoss input contains {n_nan} NaN and {n_inf} inf value(s) (shape {tuple(x.shape)}); "
            f"expected {expected}"
        )
    vmin, vmax = torch.aminmax(x)
    raise ValueError(
        f"BatchShapingLoss expects values in {where} (gate probabilities, the support of {prior!r}), got "
        f"values outside: min={float(vmin):.6g}, max={float(vmax):.6g}; map features into it first (e.g. "
        f"torch.sigmoid) or use a prior on the real line (NormalPrior)"
    )


def _eager_cpu(x: Tensor) -> bool:
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def _sort_rows(v: Tensor, signed: bool = False, values: bool = True) -> tuple[Tensor | None, Tensor]:
    """torch.sort(v, dim=1, stable=True) of a contiguous 2-D v; eager float32 on CPU by numpy instead.

    numpy sorts int64 keys (float32 bits << 32 | position along dim 1) with SIMD, ~7x faster than
    torch.sort on CPU. The keys are unique and, for values >= 0 (+ 0.0 turns -0.0 into 0.0), ordered as
    (value, index): the same values and indices as the stable sort; the sorted values are the keys' high
    words, returned as a strided view (no copy). Unless ``signed``, values < 0 or NaN (rejected by the
    loss's check for priors on [0, 1]) sort to the front, negatives in reverse order; ``signed`` maps the
    bits of negative values to order-preserving keys first (b ^ 0x7FFFFFFF, undone on the way out), so any
    values sort like torch.sort, NaN at the ends (-NaN first, NaN last). ``values=False``: (None, indices).
    """
    if v.dtype != torch.float32 or not _eager_cpu(v):
        return torch.sort(v, dim=1, stable=True)
    bits = (v + 0.0).numpy().view(np.int32)
    if signed:
        bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    keys = np.empty(v.shape, np.int64)
    words = keys.view(np.int32).reshape(*v.shape, 2)  # little-endian: (low, high) word of each key
    words[..., 0] = np.arange(v.shape[1], dtype=np.int32)
    words[..., 1] = bits
    keys.sort(axis=1)
    idx = torch.from_numpy(keys & 0xFFFFFFFF)
    high = keys.view(np.int32)[:, 1::2]  # little-endian: the value bits
    if not values:
        return None, idx
    if signed:
        return torch.from_numpy((high ^ ((high >> 31) & 0x7FFFFFFF)).view(np.float32)), idx
    return torch.from_numpy(high).view(torch.float32), idx


# --------------------------------------------------------------------------------------------------------
# Batch-shaping loss: the computation


def _param_values(prior: Prior, tensors: Sequence[Tensor]) -> tuple[float | Tensor, ...]:
    """The prior's parameter values in order, its tensors replaced by ``tensors`` (the Function's inputs)."""
    if not isinstance(prior, ParametricPrior):
        return ()
    it = iter(tensors)
    return tuple(next(it) if isinstance(v, Tensor) else v for v in prior._values)


def _custom_evaluator(prior: Prior) -> BlockEvaluator:
    """A custom prior's cdf / pdf on a block: no parameters, the density clipped and scaled here."""

    def evaluate(
        v: Tensor, j0: int, j1: int, need_pdf: bool, want: Sequence[bool], scale: float, clip: float
    ) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
        # Its outputs may alias v, its own state or be expanded views: the loss's in-place ops need copies.
        cdf = prior.cdf(v).to(v.dtype, copy=True)
        pdf = prior.pdf(v).to(v.dtype).clamp(0, clip).mul_(scale) if need_pdf else None  # inf -> the clip
        if cdf.shape != v.shape or (pdf is not None and pdf.shape != v.shape):
            raise ValueError(f"prior {prior!r} gave a cdf/pdf of the wrong shape for {tuple(v.shape)} input")
        return cdf, pdf, []

    return evaluate


def _batch_shaping(
    x: Tensor,
    prior: Prior,
    reduction: str,
    pdf_clip: float,
    need_grad: bool,
    check: str | None,
    values: Sequence[float | Tensor] = (),
    want: Sequence[bool] = (),
) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
    """Batch-shaping loss of x: (N, C) float, detached, N samples of C columns.

    Returns (loss, grad_t, param_grads): the scalar loss; if need_grad, d loss / d x transposed, (C, N);
    for each parameter value with want[k], d loss / d value (float64, (C,) per column or () for a scalar),
    else None. values: the prior's parameter values (floats or tensors: a scalar or one per column). check:
    None, "raise" (ValueError for bad values: a host sync) or "nan" (bad values make everything NaN).
    """
    n, g = x.shape
    scale = 1.0 / n if reduction == "sum" else 1.0 / (n * g)  # per column (1/N) sum_i d^2, added or averaged
    q = (torch.arange(1, n + 1, device=x.device, dtype=torch.float64) / (n + 1)).to(x.dtype)
    lo, hi = _support(prior)
    # Tensor parameters: detached, in the compute dtype, flat: one value (0-d) or one per column (C,).
    flat = [
        v.detach().to(x.dtype).reshape(-1 if v.numel() > 1 else ()) if isinstance(v, Tensor) else v
        for v in values
    ]
    per_column = [isinstance(v, Tensor) and v.dim() == 1 for v in flat]
    if isinstance(prior, ParametricPrior):
        evaluate = prior._block_evaluator(flat, x.dtype)
    else:
        evaluate = _custom_evaluator(prior)
    want = list(want) or [False] * len(values)
    # Eager on CPU, blocks of ~32K values keep the temporaries in cache and reused by the allocator (multi-MB
    # ones are page-faulted in anew on every call); other devices and torch.compile take all columns at once.
    block = max(1, 32768 // n) if _eager_cpu(x) else g
    rows_b = min(block, g)
    # Sums over all values (the loss, the derivatives of scalar parameters) are added up elementwise over the
    # blocks into (B, N) float32 tensors, one in-place op a block, and summed in float64 at the end: each
    # element adds <= G / B terms (16 at (256, 2048)), their rounding errors independent across elements.
    squares = x.new_zeros(rows_b, n)
    # d loss / d param: per column, (C,) float64 filled block by block; scalar, elementwise as above.
    pgrads: list[Tensor | None] = [
        None if not w else x.new_zeros(g, dtype=torch.float64) if col else x.new_zeros(rows_b, n)
        for w, col in zip(want, per_column, strict=True)
    ]
    ok = None
    if check is not None and isinstance(prior, ParametricPrior) and values:
        if check == "raise":
            prior._check_values(values)
        else:
            ok = prior._values_ok(values)
    if check is not None:  # NaN fails every comparison
        vlo, vhi = torch.aminmax(x)
        ok_v = (vlo >= lo) & (vhi <= hi) & (vlo > -math.inf) & (vhi < math.inf)
        if check == "raise" and not bool(ok_v):
            _raise_bad_values(x, prior)
        ok = ok_v if ok is None else ok & ok_v
    xt = x.t().contiguous()  # columns as contiguous rows: torch.sort along the last dim is the fast case
    grad_t = torch.empty_like(xt) if need_grad else None
    targets = x.new_empty(rows_b, n)
    for j in range(0, g, block):
        j1 = min(g, j + block)
        rows = xt[j:j1]
        # Ranks from a stable sort (ties by row; signed keys only where negative values are valid), and
        # each value's target i / (N + 1) scattered to where it stands: the prior is then evaluated, and the
        # gradient written, in column order (contiguous, no sorted values, no scatter of the gradient).
        perm = _sort_rows(rows, signed=True, values=False)[1] if lo < 0 else _sort_rows(rows)[1]
        target = targets[: j1 - j].scatter_(1, perm, q.expand(j1 - j, n))
        # the density comes times the gradient's factor 2 * scale (folded into its constant)
        cdf, pdf, dcdf = evaluate(rows, j, j1, need_grad, want, 2 * scale, pdf_clip)
        d = cdf.sub_(target)  # cdf is a fresh tensor
        squares[: j1 - j].addcmul_(d, d)
        for pg, dk, col in zip(pgrads, dcdf, per_column, strict=True):
            if pg is not None and dk is not None:
                if col:
                    pg[j:j1] = (dk * d).sum(1, dtype=torch.float64)
                else:
                    pg[: j1 - j].addcmul_(dk, d)
        if grad_t is not None:
            torch.mul(pdf, d, out=grad_t[j:j1])  # type: ignore[arg-type]
    loss = (squares.sum(dtype=torch.float64) * scale).to(x.dtype)
    for k, pg in enumerate(pgrads):
        if pg is not None:
            pgrads[k] = (pg.sum(dtype=torch.float64) if pg.dim() == 2 else pg) * (2 * scale)
    if ok is not None and check == "nan":
        loss = torch.where(ok, loss, math.nan)
        grad_t = None if grad_t is None else torch.where(ok, grad_t, math.nan)
        pgrads = [None if pg is None else torch.where(ok, pg, math.nan) for pg in pgrads]
    return loss, grad_t, pgrads


#: Tensor parameters a prior may have (the Function's named slots for them).
_MAX_TENSOR_PARAMS = 4


class _BatchShapingFunction(torch.autograd.Function):
    """loss(x, *prior tensor parameters): x (N, C), the parameters those of ``prior.tensor_params()``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        prior: Prior,
        reduction: str,
        pdf_clip: float,
        check: str | None,
        p0: Tensor | None = None,
        p1: Tensor | None = None,
        p2: Tensor | None = None,
        p3: Tensor | None = None,
    ) -> Tensor:
        # Named slots, not *params: torch.compile traces autograd.Function.forward with a fixed signature.
        params = [p for p in (p0, p1, p2, p3) if p is not None]
        values = _param_values(prior, params)
        want, k = [], 5  # a plain loop: torch.compile traces ctx.needs_input_grad[i], not slices of it
        for v in values:
            want.append(isinstance(v, Tensor) and ctx.needs_input_grad[k])
            k += isinstance(v, Tensor)
        loss, grad_t, pgrads = _batch_shaping(
            x.detach(), prior, reduction, pdf_clip, ctx.needs_input_grad[0], check, values, want
        )
        # computed here: backward needs only them, not the sort
        tensor_grads = (pg for pg, v in zip(pgrads, values, strict=True) if isinstance(v, Tensor))
        ctx.save_for_backward(grad_t, *tensor_grads)
        ctx.param_meta = [(p.shape, p.dtype) for p in params]
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_t, *pgrads = ctx.saved_tensors
        grad = None
        if grad_t is not None:
            # (C, N) -> a fresh contiguous (N, C): the copy transposes in blocks, the scaling runs in place.
            grad = torch.empty(grad_t.shape[::-1], dtype=grad_t.dtype, device=grad_t.device)
            grad.copy_(grad_t.t()).mul_(grad_out)
        pout = [
            None if pg is None else (pg * grad_out).to(dtype).reshape(shape)
            for pg, (shape, dtype) in zip(pgrads, ctx.param_meta, strict=True)
        ]
        return grad, None, None, None, None, *pout, *[None] * (_MAX_TENSOR_PARAMS - len(pout))


def _is_prior(obj: object) -> bool:
    return callable(getattr(obj, "cdf", None)) and callable(getattr(obj, "pdf", None))


Hyperprior = Prior | Callable[[Tensor], Tensor]


class BatchShapingLoss(nn.Module):
    """Batch-shaping loss: match each column's distribution over the batch to a prior CDF.

    Input x: by default (``dim="gates"``) an (N, G) tensor of gate-on probabilities in [0, 1] (N >= 2
    samples, G gates). With ``dim`` given, any features: ``dim=0`` shapes x (N, ...) per column over the
    batch (the other dims flattened into columns: (N, C, H, W) has C*H*W columns of N samples), a tuple of
    dims takes its samples over all of them (``dim=(0, 2, 3)``: one column per channel, N*H*W samples),
    ``dim=None`` pools all values into one distribution (the reference code's ``dim=None``; its ``dim=d``,
    which names the dim that indexes the distributions, is ``dim`` = all the other dims here). Values must
    lie in the prior's support: [0, 1] for Beta and Relaxed Bernoulli priors, any finite value for
    :class:`NormalPrior`. Output: scalar tensor, float32 (float64 for float64 input; 16-bit inputs, e.g.
    under autocast, are computed in float32).

    For each column j, with r_ij the 1-based rank of x_ij within column j and F the prior CDF::

        loss_j = 1/N * sum_i (F(x_ij) - r_ij / (N + 1))^2 = 1/N * sum_i (F(x_(i),j) - i / (N + 1))^2

    Args:
        alpha, beta: parameters of the default :class:`BetaPrior` (0.6, 0.4 as in the paper: a U-shaped
            prior with mean 0.6, i.e. gates mostly fully on or fully off, on 60% of the time).
        prior: any prior: :class:`BetaPrior`, :class:`SymBetaPrior`, :class:`NormalPrior`,
            :class:`RelaxedBernoulliPrior` (:mod:`batchshaping.priors`; parameters floats, or tensors with one
            value or one per column, trainable), or any object with ``cdf``/``pdf`` torch functions (and an
            optional ``support``); overrides alpha, beta. The prior's ``nn.Parameter`` s are registered here,
            so ``loss.parameters()`` yields them (and ``state_dict`` saves them).
        reduction: ``"sum"`` (default) adds ``loss_j`` over the columns; ``"mean"`` averages them, as in the
            authors' reference code. With "mean" the loss (and its gradient per column) shrinks by 1/C, so a
            weight tuned for one is not right for the other (our recipes use "sum").
        pdf_clip: the prior density f in the gradient is clipped to [0, pdf_clip] (100: the upper clip of
            the authors' code; their lower one, 1e-3, is below the minimum 0.59 of Beta(0.6, 0.4)). f -> inf
            at 0 and 1, where a float32 sigmoid saturates (logit > ~17 or < ~-104) and inf * 0 would give NaN
            in the chain rule; Beta(0.6, 0.4) reaches 100 only for x < 5e-7 or 1 - x < 6.3e-5, where the
            sigmoid's derivative x (1 - x) already scales the logit gradient below 0.01. Each element's
            gradient is at most 2 * pdf_clip / N (times the reduction factor). Parameter gradients use the
            exact derivatives.
        check_inputs: validate values (NaN, inf, outside the support) and tensor parameters; see below.
        dim: ``"gates"`` (default), the sample dim(s) of x, or None; see above.
        hyperprior: terms on the prior's tensor parameters, by parameter name, added to the loss times
            ``hyperprior_weight``: a prior (batch-shaping of the parameter's values, one per column, pooled
            into one distribution: the generalized batch-shaping of MSViT, where e.g. a Beta(3, 7) keeps the
            learned means of Relaxed Bernoulli priors near a sparsity target) or any callable of the
            parameter tensor returning a scalar (e.g. ``lambda t: t.abs().mean()``).
        hyperprior_weight: weight of the hyperprior terms (1 as in the reference notebook).

    Gradient: analytic (a custom autograd Function), ``d loss / d x_ij = 2/N (F(x_ij) - r_ij/(N+1)) f(x_ij)``
    times the reduction factor (1 for "sum", 1/C for "mean"); for tensor parameters of a built-in prior,
    ``2/N sum_i (F(x_(i)j) - i/(N+1)) dF/dtheta(x_(i)j)`` likewise. Ranks are piecewise constant and get no
    gradient; the loss is not twice differentiable. Parameters that are computed tensors (``std=s.exp()``)
    are passed per call: ``loss(x, prior=NormalPrior(m, s.exp()))`` (that prior replaces the module's for
    the call).

    Ties: equal values are ranked in order of their row (batch) index, i.e. a stable sort. The loss value
    does not depend on how ties are broken; the gradient of tied elements does (the function has a kink).

    Bad input: a wrong shape (not 2-D for dim="gates", fewer than 2 samples, no columns, a parameter tensor
    whose size is neither 1 nor the number of columns) or a non-floating dtype raises ValueError. Bad values
    (NaN, inf, outside the support; one min/max pass) and invalid tensor parameters (std <= 0, ...) raise
    ValueError on CPU; on other devices and under torch.compile, where raising would need a host sync or a
    graph break, they make the loss and its gradients NaN instead: forward and backward then never sync,
    compile to one graph and can be captured in a CUDA graph (after a first call has put the prior's table
    on the device). ``check_inputs=False`` skips the checks.
    """

    def __init__(
        self,
        alpha: float = 0.6,
        beta: float = 0.4,
        prior: Prior | None = None,
        reduction: str = "sum",
        pdf_clip: float = DEFAULT_PDF_CLIP,
        check_inputs: bool = True,
        dim: int | Sequence[int] | None | str = GATES,
        hyperprior: Mapping[str, Hyperprior] | None = None,
        hyperprior_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if not pdf_clip > 0:
            raise ValueError(f"pdf_clip must be > 0, got {pdf_clip}")
        if isinstance(dim, str) and dim != GATES:
            raise ValueError(f"dim must be {GATES!r}, an int, a tuple of ints or None, got {dim!r}")
        given = prior is not None
        if prior is None:
            prior = BetaPrior(alpha, beta)
        elif not _is_prior(prior):
            raise ValueError(f"prior must have cdf(x) and pdf(x) methods, got {prior!r}")
        self.prior = prior
        self.reduction, self.pdf_clip = reduction, float(pdf_clip)
        self.check_inputs = check_inputs
        self.dim = dim if dim is None or isinstance(dim, int | str) else tuple(dim)
        self.hyperprior = dict(hyperprior or {})
        self.hyperprior_weight = float(hyperprior_weight)
        for name, hp in self.hyperprior.items():
            if not (_is_prior(hp) or callable(hp)):
                raise ValueError(f"hyperprior[{name!r}] must be a prior (cdf/pdf) or a callable, got {hp!r}")
        self._hyper_losses = {
            name: BatchShapingLoss(prior=hp, pdf_clip=pdf_clip, check_inputs=check_inputs, dim=None)
            for name, hp in self.hyperprior.items()
            if _is_prior(hp)
        }
        if given:  # else priors come with each call (loss(x, prior=...)), checked then
            self._check_hyperprior(prior)
        if isinstance(prior, ParametricPrior):  # trainable prior parameters come with loss.parameters()
            for name, value in prior.params.items():
                if isinstance(value, nn.Parameter):
                    self.register_parameter(f"prior_{name}", value)

    def extra_repr(self) -> str:
        text = f"prior={self.prior!r}, reduction={self.reduction!r}"
        if self.dim != GATES:
            text += f", dim={self.dim!r}"
        if self.hyperprior:
            text += f", hyperprior={self.hyperprior!r}, hyperprior_weight={self.hyperprior_weight:g}"
        return text

    def _check_hyperprior(self, prior: Prior) -> None:
        names = prior.param_names if isinstance(prior, ParametricPrior) else ()
        for name in self.hyperprior:
            if name not in names:
                raise ValueError(f"hyperprior names parameter {name!r}, but {prior!r} has parameters {names}")
            if not isinstance(prior.params[name], Tensor):  # type: ignore[union-attr]
                raise ValueError(
                    f"hyperprior on {name!r} needs a tensor parameter (learned), but {prior!r} has it fixed"
                )

    def hyperprior_loss(self, prior: Prior | None = None) -> Tensor | None:
        """The hyperprior terms on ``prior``'s (default: the module's) parameters, times hyperprior_weight;
        None without a hyperprior. Included in :meth:`forward`'s result."""
        if not self.hyperprior:
            return None
        prior = self.prior if prior is None else prior
        total: Tensor | None = None
        for name, hp in self.hyperprior.items():
            value = prior.params[name]  # type: ignore[union-attr]
            if name in self._hyper_losses:
                if value.numel() < 2:
                    raise ValueError(
                        f"hyperprior[{name!r}] shapes the distribution of the parameter's values over the "
                        f"columns: give one value per column (it has {value.numel()})"
                    )
                term = self._hyper_losses[name](value)
            else:
                term = hp(value)  # type: ignore[operator]
            total = term if total is None else total + term
        return total * self.hyperprior_weight  # type: ignore[operator]

    def forward(self, x: Tensor, prior: Prior | None = None) -> Tensor:
        """x: (N, G) probabilities in [0, 1] (dim="gates"), else features shaped per ``dim`` -> scalar
        loss (plus the hyperprior terms). prior: replaces the module's prior for this call."""
        if prior is None:
            prior = self.prior
        else:
            if not _is_prior(prior):
                raise ValueError(f"prior must have cdf(x) and pdf(x) methods, got {prior!r}")
            self._check_hyperprior(prior)
        cols = _as_columns(x, self.dim)
        if cols.dtype in (torch.float16, torch.bfloat16):
            cols = cols.float()
        params = prior.tensor_params() if isinstance(prior, ParametricPrior) else []
        self._check_params(prior, params, cols)
        # Raising needs the check's result on the host: free on CPU, a sync (or a graph break under
        # torch.compile) elsewhere, where NaN flags it.
        check = ("raise" if _eager_cpu(cols) else "nan") if self.check_inputs else None
        args = (cols, prior, self.reduction, self.pdf_clip, check, *params)
        kind = cols.device.type  # "meta" (shape checks) has no autocast state to ask
        if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
            with torch.autocast(kind, enabled=False):
                loss = _BatchShapingFunction.apply(*args)
        else:
            loss = _BatchShapingFunction.apply(*args)
        extra = self.hyperprior_loss(prior)
        return loss if extra is None else loss + extra

    @staticmethod
    def _check_params(prior: Prior, params: Sequence[Tensor], cols: Tensor) -> None:
        """Tensor parameters: one value or one per column, on the input's device (shapes only: no sync)."""
        n_cols = cols.shape[1]
        if len(params) > _MAX_TENSOR_PARAMS:
            raise ValueError(
                f"{type(prior).__name__} has {len(params)} tensor parameters; BatchShapingLoss takes at most "
                f"{_MAX_TENSOR_PARAMS}"
            )
        names = [n for n, v in prior.params.items() if isinstance(v, Tensor)] if params else []  # type: ignore[union-attr]
        for name, p in zip(names, params, strict=True):
            if p.numel() not in (1, n_cols):
                raise ValueError(
                    f"{type(prior).__name__} parameter {name!r} has {p.numel()} values (shape "
                    f"{tuple(p.shape)}) for {n_cols} columns: give a scalar or one value per column"
                )
            if p.device != cols.device:
                raise ValueError(
                    f"{type(prior).__name__} parameter {name!r} is on {p.device}, the input on "
                    f"{cols.device}: move the parameter (or the loss: loss.to(device)) to the input's device"
                )


# --------------------------------------------------------------------------------------------------------
# L0 loss


def l0_loss(
    outputs: Sequence[GateOutput | Tensor] | GateOutput | Tensor,
    reduction: str = "mean",
    weights: Sequence[Tensor] | Tensor | None = None,
) -> Tensor:
    """Expected gate usage: an L0 sparsity penalty on gate-on probabilities.

    Args:
        outputs: one entry per gating module: :class:`GateOutput` (its ``probs`` are used) or an (N, G_k)
            probability tensor; a single one may be given alone (then ``weights`` is its one (G,) tensor).
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
    if isinstance(outputs, GateOutput | Tensor):  # one gating module's output, not a list of them
        outputs = [outputs]
        weights = [weights] if isinstance(weights, Tensor) else weights
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
    if not dense > 0:  # a Python number (MacCounter.dense): checking it reads nothing from the device
        raise ValueError(f"mac_target_loss: dense must be the dense twin's MACs (> 0), got {dense!r}")
    ratio = macs.mean() / dense
    return (ratio - target).square()
