"""Property-based tests of the likelihoods and of the circular (cell-cycle angle) helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial
from torch.distributions import Bernoulli, Poisson

from scgenvae.distributions import (
    BernoulliLogits,
    FactorisedBernoulli,
    SoftmaxPoisson,
    sparse_map_values,
    sparse_row_sums,
    to_dense,
)
from scgenvae.nn import csr_matmul
from scgenvae.tl import best_shift, circular_correlation, circular_distance, circular_error
from scgenvae.tl._circular import TWO_PI, circular_mean, wrap_angle

FAST = settings(max_examples=25, deadline=None, derandomize=True)

seeds = st.integers(0, 2**31 - 1)
shapes = st.tuples(st.integers(1, 6), st.integers(1, 12))
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


def _binary(seed: int, shape: tuple[int, int], density: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < density).to(torch.float64)


def _logits(seed: int, shape: tuple[int, int], scale: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


# ----------------------------------------------------------------------------------------------
# Bernoulli in logit space
# ----------------------------------------------------------------------------------------------
@FAST
@given(seeds, shapes, st.floats(0.0, 1.0), st.floats(0.01, 20.0))
def test_bernoulli_sparse_dense_and_torch_agree(seed, shape, density, scale):
    x = _binary(seed, shape, density)
    logits = _logits(seed, shape, scale)
    dist = BernoulliLogits(logits)
    dense = dist.log_prob_sum(x)
    expected = Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(dense, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dist.log_prob_sum(x.to_sparse_csr()), expected)
    torch.testing.assert_close(dist.log_prob_sum(x.to_sparse()), expected)
    assert (dense <= 0).all()


@FAST
@given(seeds, shapes, st.floats(0.0, 1.0), st.floats(0.01, 10.0), st.floats(-3.0, 8.0))
def test_softmax_poisson_equals_torch_poisson(seed, shape, density, scale, log_lib):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.poisson(torch.full(shape, 3.0, dtype=torch.float64), generator=gen)
    x = counts * _binary(seed, shape, density)
    logits = _logits(seed, shape, scale).requires_grad_()
    log_library = torch.full((shape[0],), log_lib, dtype=torch.float64)
    rate = torch.softmax(logits, -1) * log_library.exp().unsqueeze(-1)
    expected = Poisson(rate, validate_args=False).log_prob(x).sum(-1)
    (grad_expected,) = torch.autograd.grad(expected.sum(), logits)
    dist = SoftmaxPoisson(torch.log_softmax(logits, -1), log_library)
    torch.testing.assert_close(dist.rate, rate)
    torch.testing.assert_close(dist.log_prob(x).sum(-1), expected)
    # the decoder passes raw logits; log-softmaxed logits give the same distribution
    for first in (lambda: logits, lambda: torch.log_softmax(logits, -1)):
        for layout in (x, x.to_sparse_csr(), x.to_sparse()):
            got = SoftmaxPoisson(first(), log_library).log_prob_sum(layout)
            torch.testing.assert_close(got, expected)
            (grad,) = torch.autograd.grad(got.sum(), logits)
            torch.testing.assert_close(grad, grad_expected)


@FAST
@given(seeds, shapes, st.floats(0.0, 1.0), st.integers(1, 5))
def test_csr_matmul_value_and_weight_gradient_equal_dense(seed, shape, density, n_out):
    gen = torch.Generator().manual_seed(seed)
    x = _binary(seed, shape, density) * torch.rand(shape, generator=gen, dtype=torch.float64)
    weight = torch.randn(shape[1], n_out, generator=gen, dtype=torch.float64)
    weight.requires_grad_()
    upstream = torch.randn(shape[0], n_out, generator=gen, dtype=torch.float64)
    expected = x @ weight
    (grad_expected,) = torch.autograd.grad(expected, weight, upstream)
    for layout in (x.to_sparse_csr(), x.to_sparse()):
        got = csr_matmul(layout, weight)
        torch.testing.assert_close(got, expected)
        (grad,) = torch.autograd.grad(got, weight, upstream)
        torch.testing.assert_close(grad, grad_expected)


@FAST
@given(seeds, shapes, st.floats(0.0, 1.0))
def test_sparse_row_sums_equal_dense_sums(seed, shape, density):
    x = _binary(seed, shape, density) * _logits(seed, shape, 3.0)
    expected = x.sum(-1)
    torch.testing.assert_close(sparse_row_sums(x), expected)
    torch.testing.assert_close(sparse_row_sums(x.to_sparse_csr()), expected)
    torch.testing.assert_close(sparse_row_sums(x.to_sparse()), expected)


@FAST
@given(seeds, shapes, st.floats(0.0, 1.0))
def test_sparse_map_values_matches_dense_map(seed, shape, density):
    x = _binary(seed, shape, density) * _logits(seed, shape, 3.0).abs()
    for layout in (x, x.to_sparse_csr(), x.to_sparse()):
        torch.testing.assert_close(to_dense(sparse_map_values(layout, torch.log1p)), x.log1p())


def _factorised(seed: int, n: int, p: int, k: int) -> FactorisedBernoulli:
    gen = torch.Generator().manual_seed(seed)

    def randn(*size):
        return torch.randn(*size, generator=gen, dtype=torch.float64)

    return FactorisedBernoulli(randn(n, k), randn(p, k), randn(p), randn(n, 1), randn(p))


@FAST
@given(seeds, st.integers(1, 5), st.integers(1, 15), st.integers(1, 4), st.floats(0.0, 1.0))
def test_factorised_bernoulli_exact_equals_dense(seed, n, p, k, density):
    dist = _factorised(seed, n, p, k)
    x = _binary(seed, (n, p), density)
    expected = Bernoulli(logits=dist.logits).log_prob(x).sum(-1)
    torch.testing.assert_close(dist.log_prob_sum(x), expected)
    torch.testing.assert_close(dist.log_prob_sum(x.to_sparse_csr()), expected)
    # asking for every peak is the exact path too
    torch.testing.assert_close(dist.log_prob_sum(x, n_sampled=p), expected)
    torch.testing.assert_close(torch.sigmoid(dist.logits), dist.probs)


@settings(max_examples=4, deadline=None)
@given(seeds, st.integers(2, 4), st.integers(4, 12), st.floats(0.05, 0.9))
def test_factorised_bernoulli_sampled_estimate_is_unbiased(seed, n, p, density):
    dist = _factorised(seed, n, p, 3)
    x = _binary(seed, (n, p), density).to_sparse_csr()
    exact = dist.log_prob_sum(x)
    n_sampled = max(1, p // 3)
    torch.manual_seed(seed)
    draws = torch.stack([dist.log_prob_sum(x, n_sampled=n_sampled) for _ in range(400)])
    assert torch.isfinite(draws).all()
    # the mean of 400 draws is within 6 standard errors of the exact value
    se = draws.std(0) / np.sqrt(len(draws))
    assert ((draws.mean(0) - exact).abs() <= 6 * se + 1e-9).all()


# ----------------------------------------------------------------------------------------------
# count likelihoods
# ----------------------------------------------------------------------------------------------
counts = arrays(np.int64, st.integers(1, 20), elements=st.integers(0, 10_000))
rates = st.floats(1e-6, 1e5)


@FAST
@given(counts, rates, st.floats(1e-4, 1e4), st.floats(-10.0, 10.0))
def test_count_log_probs_are_finite_and_at_most_zero(x, mu, theta, zi_logit):
    value = torch.as_tensor(x, dtype=torch.float64)
    mu_t = torch.full_like(value, mu)
    theta_t = torch.full_like(value, theta)
    for dist in (
        Poisson(mu_t, validate_args=False),
        NegativeBinomial(mu=mu_t, theta=theta_t, validate_args=False),
        ZeroInflatedNegativeBinomial(
            mu=mu_t, theta=theta_t, zi_logits=torch.full_like(value, zi_logit), validate_args=False
        ),
    ):
        lp = dist.log_prob(value)
        assert torch.isfinite(lp).all(), type(dist).__name__
        assert (lp <= 1e-9).all(), type(dist).__name__


@FAST
@given(st.floats(1e-3, 50.0), st.floats(0.5, 1e3))
def test_negative_binomial_sums_to_one(mu, theta):
    """Over enough counts the probabilities add up to 1 (a proper likelihood)."""
    support = torch.arange(0, 4000, dtype=torch.float64)
    nb = NegativeBinomial(
        mu=torch.full_like(support, mu), theta=torch.full_like(support, theta), validate_args=False
    )
    total = nb.log_prob(support).exp().sum()
    assert abs(float(total) - 1.0) < 1e-6


# ----------------------------------------------------------------------------------------------
# circular helpers
# ----------------------------------------------------------------------------------------------
angles = arrays(np.float64, st.integers(3, 40), elements=st.floats(-20.0, 20.0))


def _spread(a: np.ndarray) -> bool:
    """Enough spread for the correlations to be defined away from rounding noise."""
    return np.ptp(wrap_angle(a)) > 0.1 and np.unique(np.round(wrap_angle(a), 3)).size >= 3


@FAST
@given(angles)
def test_wrap_angle_in_range_and_idempotent(a):
    w = wrap_angle(a)
    assert ((w >= 0) & (w < TWO_PI)).all()
    np.testing.assert_allclose(wrap_angle(w), w)
    np.testing.assert_allclose(np.cos(w), np.cos(a), atol=1e-9)
    assert 0 <= circular_mean(a) < TWO_PI


@FAST
@given(angles, st.data(), finite, st.sampled_from(["js", "fl"]))
def test_circular_correlation_properties(a, data, shift, method):
    noise = data.draw(arrays(np.float64, a.shape, elements=st.floats(-1.0, 1.0)))
    b = a + noise
    assume(_spread(a) and _spread(b))
    rho = circular_correlation(a, b, method=method)
    assume(np.isfinite(rho))
    assert -1.0 <= rho <= 1.0
    # invariant to a global shift of either angle
    np.testing.assert_allclose(circular_correlation(a + shift, b, method=method), rho, atol=1e-6)
    np.testing.assert_allclose(circular_correlation(a, b - shift, method=method), rho, atol=1e-6)
    # reversing the direction of one angle flips the sign
    np.testing.assert_allclose(circular_correlation(a, -b, method=method), -rho, atol=1e-6)
    # symmetric in its arguments
    np.testing.assert_allclose(circular_correlation(b, a, method=method), rho, atol=1e-9)


@FAST
@given(angles, finite)
def test_circular_correlation_of_a_rotated_copy_is_one(a, shift):
    assume(_spread(a))
    rho = circular_correlation(a, a + shift, method="fl")
    np.testing.assert_allclose(rho, 1.0, atol=1e-6)


@FAST
@given(angles, st.data())
def test_circular_distance_symmetric_and_bounded(a, data):
    b = data.draw(arrays(np.float64, a.shape, elements=st.floats(-20.0, 20.0)))
    d = circular_distance(a, b)
    np.testing.assert_allclose(d, circular_distance(b, a), atol=1e-9)
    assert ((d >= 0) & (d <= np.pi + 1e-12)).all()
    np.testing.assert_allclose(circular_distance(a, a + TWO_PI), 0.0, atol=1e-9)


@FAST
@given(angles, st.data(), st.booleans())
def test_circular_error_in_range_and_symmetric(a, data, shift):
    b = data.draw(arrays(np.float64, a.shape, elements=st.floats(-20.0, 20.0)))
    err = circular_error(a, b, shift=shift)
    assert 0.0 <= err <= 0.5
    if not shift:
        np.testing.assert_allclose(circular_error(b, a, shift=False), err, atol=1e-12)
    else:
        # optimising the shift never does worse than no shift
        assert err <= circular_error(a, b, shift=False) + 1e-9


@FAST
@given(angles, finite)
def test_circular_error_of_rotated_copy_is_zero(a, shift):
    assert circular_error(a, a + shift) == pytest.approx(0.0, abs=1e-3)
    s = best_shift(a, a + shift)
    assert 0 <= s < TWO_PI
    np.testing.assert_allclose(circular_distance(s, shift), 0.0, atol=1e-3)
