"""Tests of batchshaping.priors: CDF and density against scipy / closed forms, parameter derivatives, the
continued fraction's term table, the per-call Hermite tables, parameter checks."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import special, stats

from batchshaping import priors
from batchshaping.priors import (
    BetaPrior,
    NormalPrior,
    ParametricPrior,
    Prior,
    RelaxedBernoulliPrior,
    SymBetaPrior,
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- reference formulas (numpy / scipy, float64) -----------------------------------------------------------


def rb_cdf(x, mean, tau):
    """The binary Concrete CDF in closed form: sigmoid(tau logit(x) - logit(mean))."""
    return special.expit(tau * special.logit(x) - special.logit(mean))


def rb_pdf(x, mean, tau):
    """Its density, written in logs (xlogy: exact at x = 0, 1): tau e^c x^(tau-1) (1-x)^(tau-1) / D^2 with
    D = x^tau + e^c (1-x)^tau and c = logit(mean)."""
    c = special.logit(mean)
    log_d = np.logaddexp(special.xlogy(tau, x), c + special.xlog1py(tau, -x))
    return np.exp(np.log(tau) + c + special.xlogy(tau - 1, x) + special.xlog1py(tau - 1, -x) - 2 * log_d)


UNIT_GRID = np.concatenate([np.linspace(0, 1, 2001), [1e-300, 1e-30, 1e-8, 1 - 1e-8, 1 - 1e-16]])
REAL_GRID = np.concatenate([np.linspace(-8, 8, 2001), [-1e3, 1e3, -math.inf, math.inf]])

# (prior, scipy-style reference cdf, pdf of (x, column) for the grid, grid)
SCALAR_CASES = [
    (
        BetaPrior(0.6, 0.4),
        lambda x: stats.beta.cdf(x, 0.6, 0.4),
        lambda x: stats.beta.pdf(x, 0.6, 0.4),
        UNIT_GRID,
    ),
    (BetaPrior(2.0, 5.0), lambda x: stats.beta.cdf(x, 2, 5), lambda x: stats.beta.pdf(x, 2, 5), UNIT_GRID),
    (
        SymBetaPrior(0.9),
        lambda x: stats.beta.cdf(x, 0.9, 0.1),
        lambda x: stats.beta.pdf(x, 0.9, 0.1),
        UNIT_GRID,
    ),
    (
        NormalPrior(0.5, 2.0),
        lambda x: stats.norm.cdf(x, 0.5, 2),
        lambda x: stats.norm.pdf(x, 0.5, 2),
        REAL_GRID,
    ),
    (
        NormalPrior(-1.0, 0.1),
        lambda x: stats.norm.cdf(x, -1, 0.1),
        lambda x: stats.norm.pdf(x, -1, 0.1),
        REAL_GRID,
    ),
    (
        RelaxedBernoulliPrior(0.2, 0.25),
        lambda x: rb_cdf(x, 0.2, 0.25),
        lambda x: rb_pdf(x, 0.2, 0.25),
        UNIT_GRID,
    ),
    (
        RelaxedBernoulliPrior(0.7, 1.0),
        lambda x: rb_cdf(x, 0.7, 1.0),
        lambda x: rb_pdf(x, 0.7, 1.0),
        UNIT_GRID,
    ),
    (
        RelaxedBernoulliPrior(0.5, 3.0),
        lambda x: rb_cdf(x, 0.5, 3.0),
        lambda x: rb_pdf(x, 0.5, 3.0),
        UNIT_GRID,
    ),
]


def as_tensor_prior(prior: ParametricPrior) -> ParametricPrior:
    """The same prior with every parameter a float64 0-d tensor (the code path of learned parameters)."""
    return type(prior)(*(torch.tensor(v, dtype=torch.float64) for v in prior.params.values()))


@pytest.mark.parametrize("case", SCALAR_CASES, ids=lambda c: repr(c[0]))
@pytest.mark.parametrize("kind", ["float", "tensor"])
def test_cdf_and_pdf_match_the_reference_formulas(case, kind):
    """float64: CDF within 1e-12 (the brief's bound is 1e-6) on a grid with the ends, density within 1e-9
    relative and infinite exactly where the reference's is; float32 CDF within 1e-6 at the float32 points."""
    prior, ref_cdf, ref_pdf, grid = case
    prior = as_tensor_prior(prior) if kind == "tensor" else prior
    x = torch.tensor(grid)
    cdf = prior.cdf(x)
    assert cdf.dtype == torch.float64
    np.testing.assert_allclose(cdf.numpy(), ref_cdf(grid), rtol=0, atol=1e-12)
    pdf, ref = prior.pdf(x).numpy(), ref_pdf(grid)
    assert np.array_equal(np.isinf(pdf), np.isinf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(pdf[fin], ref[fin], rtol=1e-9, atol=1e-300)
    x32 = x.float()
    cdf32 = prior.cdf(x32)
    assert cdf32.dtype == torch.float32
    np.testing.assert_allclose(cdf32.numpy(), ref_cdf(x32.double().numpy()), rtol=0, atol=1e-6)


def test_per_column_parameters_broadcast_against_the_last_dim():
    x = torch.tensor(np.linspace(0.001, 0.999, 41)).view(-1, 1).expand(41, 3)
    a, b = (
        torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64),
        torch.tensor([0.3, 2.0, 1.0], dtype=torch.float64),
    )
    got = BetaPrior(a, b).cdf(x).numpy()
    m, t = (
        torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64),
        torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64),
    )
    got_rb = RelaxedBernoulliPrior(m, t).cdf(x).numpy()
    got_n = NormalPrior(m, t).pdf(x).numpy()
    for j in range(3):
        col = x[:, j].numpy()
        np.testing.assert_allclose(got[:, j], stats.beta.cdf(col, a[j].item(), b[j].item()), atol=1e-12)
        np.testing.assert_allclose(got_rb[:, j], rb_cdf(col, m[j].item(), t[j].item()), atol=1e-12)
        np.testing.assert_allclose(got_n[:, j], stats.norm.pdf(col, m[j].item(), t[j].item()), rtol=1e-12)


def test_values_outside_the_support_clamp():
    prior = RelaxedBernoulliPrior(0.3, 0.5)
    assert prior.cdf(torch.tensor([-1.0, 2.0])).tolist() == [0.0, 1.0]
    assert prior.pdf(torch.tensor([-1.0, 2.0])).tolist() == [0.0, 0.0]
    assert torch.isnan(prior.cdf(torch.tensor([math.nan])))[0]
    assert NormalPrior().cdf(torch.tensor([-math.inf, math.inf])).tolist() == [0.0, 1.0]


# ---- derivatives with respect to the parameters ------------------------------------------------------------


def central_difference(f, v: float, h: float) -> np.ndarray:
    return (f(v + h) - f(v - h)) / (2 * h)


def test_normal_and_relaxed_bernoulli_cdf_derivatives_are_their_closed_forms():
    x = np.concatenate([np.linspace(-3, 3, 401)])
    m, s = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    got = NormalPrior(m, s).cdf_grads(torch.tensor(x))
    h = 1e-6
    np.testing.assert_allclose(
        got["mean"], central_difference(lambda v: stats.norm.cdf(x, v, 0.7), 0.3, h), atol=1e-8
    )
    np.testing.assert_allclose(
        got["std"], central_difference(lambda v: stats.norm.cdf(x, 0.3, v), 0.7, h), atol=1e-8
    )
    u = np.concatenate([[0.0, 1.0, 1e-300], np.linspace(1e-4, 1 - 1e-4, 401)])
    got = RelaxedBernoulliPrior(m, s).cdf_grads(torch.tensor(u))
    np.testing.assert_allclose(
        got["mean"], central_difference(lambda v: rb_cdf(u, v, 0.7), 0.3, h), atol=1e-8
    )
    np.testing.assert_allclose(
        got["temperature"], central_difference(lambda v: rb_cdf(u, 0.3, v), 0.7, h), atol=1e-8
    )
    assert got["temperature"][:2].tolist() == [0.0, 0.0]  # F (1 - F) logit(x) -> 0 at the ends


BETA_POINTS = [(0.6, 0.4), (0.1, 10.0), (10.0, 0.1), (3.0, 7.0), (50.0, 2.0), (0.02, 0.05)]


@pytest.mark.parametrize("a,b", BETA_POINTS)
def test_beta_cdf_derivatives_match_mpmath(a, b):
    """dI_x(a, b)/da and /db of the forward-differentiated continued fraction against mpmath (30 digits,
    numerical differentiation of the regularised incomplete beta function) on both sides of the switch
    point and near the ends."""
    mpmath.mp.dps = 30
    xs = [1e-6, 0.05, 0.3, 0.5, 0.7, 0.95, 1 - 1e-6]
    prior = BetaPrior(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    got = prior.cdf_grads(torch.tensor(xs, dtype=torch.float64))
    sym = SymBetaPrior(torch.tensor(a / (a + b), dtype=torch.float64)) if a + b == 1 else None
    for k, x in enumerate(xs):
        da = mpmath.diff(lambda t, x=x: mpmath.betainc(t, b, 0, x, regularized=True), a)
        db = mpmath.diff(lambda t, x=x: mpmath.betainc(a, t, 0, x, regularized=True), b)
        assert abs(got["alpha"][k].item() - float(da)) <= 1e-11 * max(1.0, abs(float(da)))
        assert abs(got["beta"][k].item() - float(db)) <= 1e-11 * max(1.0, abs(float(db)))
        if sym is not None:  # Beta(alpha, 1 - alpha): d/dalpha = dI/da - dI/db
            d_sym = sym.cdf_grads(torch.tensor([x], dtype=torch.float64))["alpha"].item()
            assert abs(d_sym - float(da - db)) <= 1e-11 * max(1.0, abs(float(da - db)))


def test_continued_fraction_term_table_covers_each_parameter_range():
    """For alpha, beta drawn in every bound of _CF_TERMS_BY_PARAM, the term count of the table gives the
    value and both derivatives within 1e-12 (relative to max(1, |value|)) of 200 terms."""
    gen = np.random.default_rng(0)
    x = torch.tensor(np.concatenate([np.linspace(0, 1, 401), [1e-12, 1 - 1e-12]]))
    lower = 1e-3
    for bound, _ in priors._CF_TERMS_BY_PARAM:
        a = torch.tensor(np.exp(gen.uniform(np.log(lower), np.log(bound), (6, 1))))
        b = torch.tensor(np.exp(gen.uniform(np.log(1e-3), np.log(bound), (6, 1))))
        a[0], b[1] = bound, bound  # the bound itself, on either side
        terms = priors._cf_terms_for(a, b)
        got = torch.stack(priors._betainc_grads(a, b, x, terms, True, True))
        ref = torch.stack(priors._betainc_grads(a, b, x, 200, True, True))
        err = ((got - ref).abs() / ref.abs().clamp_min(1)).max().item()
        assert err <= 1e-12, (bound, terms, err)
        lower = bound


@pytest.mark.parametrize(
    "a,b", [(0.6, 0.4), (0.1, 0.1), (0.1, 10.0), (10.0, 10.0), (2.5, 0.3), (100.0, 100.0)]
)
def test_hermite_table_of_learned_beta_parameters_matches_the_continued_fraction(a, b):
    """The per-call cubic Hermite table (scalar tensor parameters, float32, eager CPU) against the float64
    continued fraction on a float32 grid with subnormals and both ends: CDF within 3e-7, derivatives within
    4e-7 (|dF/da| reaches 3.7 here); SymBeta's derivative is dF/da - dF/db."""
    near0 = torch.logspace(-45, -0.3, 300, dtype=torch.float64)
    near1 = 1 - torch.logspace(-7.2, -0.3, 300, dtype=torch.float64)
    x = torch.cat([torch.linspace(0, 1, 2001, dtype=torch.float64), near0, near1, torch.tensor([2.0**-149])])
    x = x.float().view(2, -1)
    evaluate = BetaPrior(torch.tensor(a), torch.tensor(b))._block_evaluator(
        [torch.tensor(a), torch.tensor(b)], x.dtype
    )
    cdf, pdf, (da, db) = evaluate(x, 0, 2, True, [True, True], 2.0, 100.0)
    ref, ref_a, ref_b = priors._betainc_grads(a, b, x.double(), 200, True, True)
    assert (cdf.double() - ref).abs().max() <= 3e-7
    assert (da.double() - ref_a).abs().max() <= 4e-7 and (db.double() - ref_b).abs().max() <= 4e-7
    exact_pdf = torch.exp(priors._beta_log_pdf(a, b, x.double())).clamp(max=100.0) * 2.0
    # float32 exp of (a-1) log x + (b-1) log(1-x): relative error ~ 6e-8 times those terms' size
    assert torch.allclose(pdf.double(), exact_pdf, rtol=2e-5 * max(1.0, (a + b) / 10), atol=1e-30)
    if a + b == 1:
        sym = SymBetaPrior(torch.tensor(a))._block_evaluator([torch.tensor(a)], x.dtype)
        d_sym = sym(x, 0, 2, False, [True], 1.0, 100.0)[2][0]
        assert (d_sym.double() - (ref_a - ref_b)).abs().max() <= 8e-7


# ---- parameters --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: NormalPrior(0.0, 0.0), r"NormalPrior needs std > 0: got std=0"),
        (lambda: NormalPrior(math.nan, 1.0), r"NormalPrior needs mean finite"),
        (lambda: NormalPrior(0.0, torch.tensor([1.0, -2.0])), r"std > 0: 1 of its 2 values.*-2.*softplus"),
        (lambda: RelaxedBernoulliPrior(0.5, 0.0), r"temperature > 0"),
        (lambda: RelaxedBernoulliPrior(1.0, 0.5), r"mean in \(0, 1\)"),
        (lambda: RelaxedBernoulliPrior(torch.tensor([0.5, 1.5]), 0.5), r"mean in \(0, 1\).*torch.sigmoid"),
        (lambda: SymBetaPrior(1.2), r"alpha in \(0, 1\)"),
        (lambda: BetaPrior(torch.tensor([0.5, 2e3]), 1.0), r"above 1000.*clamp"),
        (lambda: BetaPrior(torch.tensor([1, 2]), 1.0), r"floating point"),
        (lambda: NormalPrior(torch.empty(0), 1.0), r"empty"),
    ],
)
def test_invalid_parameters_raise_with_the_fix(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_params_tensor_params_and_repr():
    m = torch.nn.Parameter(torch.zeros(3))
    prior = NormalPrior(m, 2.0)
    assert prior.params == {"mean": m, "std": 2.0} and prior.tensor_params() == [m]
    assert repr(prior) == "NormalPrior(mean=tensor(shape=(3,), requires_grad), std=2)"
    assert repr(SymBetaPrior(0.25)) == "SymBetaPrior(alpha=0.25)"
    sym = SymBetaPrior(0.7)
    assert (sym.alpha, sym.beta) == (0.7, pytest.approx(0.3)) and sym.mean == pytest.approx(0.7)
    for p in (sym, NormalPrior(), RelaxedBernoulliPrior(), BetaPrior(torch.tensor(2.0), 3.0)):
        assert isinstance(p, Prior)
    assert NormalPrior.support == (-math.inf, math.inf) and RelaxedBernoulliPrior.support == (0.0, 1.0)
