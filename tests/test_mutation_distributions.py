"""Tests of ``scgenvae.distributions`` written for the mutants that survived mutation testing.

Each test checks the distributions against torch's own (``Poisson``, ``Bernoulli``) on inputs
the property tests did not use: gradients under a non-unit upstream gradient, integer and
single-precision counts against double-precision logits, and samples. The mutants each test
kills are listed in docs/dev/mutation.md (benchmarks/mutation_notes.toml).
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli, Poisson

from scgenvae.distributions import FactorisedBernoulli, SoftmaxPoisson


def _problem(seed: int = 0, n: int = 5, g: int = 7):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.poisson(torch.full((n, g), 2.0, dtype=torch.float64), generator=gen)
    counts[0, :3] = torch.tensor([0.0, 850.0, 3000.0])  # large counts: lgamma needs float64
    counts[1] = 0.0  # an empty cell
    logits = torch.randn(n, g, generator=gen, dtype=torch.float64)
    log_library = torch.linspace(1.0, 9.0, n, dtype=torch.float64)
    return counts, logits, log_library


def _expected(counts, logits, log_library):
    rate = torch.softmax(logits, -1) * log_library.exp().unsqueeze(-1)
    return Poisson(rate, validate_args=False).log_prob(counts).sum(-1)


@pytest.mark.parametrize("layout", ["dense", "csr", "coo"])
def test_softmax_poisson_vector_jacobian_product_equals_torch_poisson(layout):
    """The sparse backward scales the counts by the upstream gradient of each cell."""
    counts, logits, log_library = _problem()
    logits.requires_grad_()
    upstream = torch.tensor([0.5, -2.0, 3.0, 1.5, -0.25], dtype=torch.float64)
    expected = _expected(counts, logits, log_library)
    (grad_expected,) = torch.autograd.grad(expected, logits, upstream)
    x = {"dense": counts, "csr": counts.to_sparse_csr(), "coo": counts.to_sparse()}[layout]
    got = SoftmaxPoisson(logits, log_library).log_prob_sum(x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-9)
    (grad,) = torch.autograd.grad(got, logits, upstream)
    torch.testing.assert_close(grad, grad_expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32])
@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_softmax_poisson_scores_counts_in_the_logits_precision(dtype, layout):
    """Counts stored as integers or float32 are scored in float64 when the logits are."""
    counts, logits, log_library = _problem(1)
    expected = _expected(counts, logits, log_library)
    x = counts.to(dtype)
    if layout == "csr":
        x = x.to_sparse_csr()
    got = SoftmaxPoisson(logits, log_library).log_prob_sum(x)
    assert got.dtype == torch.float64
    # float32 lgamma(3001) is off by ~1e-3; float64 agrees to ~1e-12
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-9)


def test_softmax_poisson_batch_shape_and_samples():
    """A cells x genes distribution: its batch shape, and samples with the rate as mean."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    log_library = torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64)
    dist = SoftmaxPoisson(logits, log_library)
    assert dist.batch_shape == (3, 4)
    torch.manual_seed(0)
    draws = dist.sample((4000,))
    assert draws.shape == (4000, 3, 4)
    assert (draws >= 0).all()
    assert torch.equal(draws, draws.round())
    # mean within 5 standard errors of the rate
    se = (dist.rate / 4000).sqrt()
    assert ((draws.mean(0) - dist.rate).abs() < 5 * se + 1e-3).all()


def test_factorised_bernoulli_batch_shape_and_samples():
    """Cells x peaks, whatever the loading width k: shape, and samples with mean ``probs``."""
    gen = torch.Generator().manual_seed(3)
    n, p, k = 3, 5, 2

    def randn(*size):
        return torch.randn(*size, generator=gen, dtype=torch.float64)

    dist = FactorisedBernoulli(randn(n, k), randn(p, k), randn(p), randn(n, 1), randn(p))
    assert dist.batch_shape == (n, p)
    assert dist.param_shape == (n, p)
    torch.manual_seed(0)
    draws = dist.sample((4000,))
    assert draws.shape == (4000, n, p)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    se = (dist.probs * (1 - dist.probs) / 4000).sqrt()
    assert ((draws.mean(0) - dist.probs).abs() < 5 * se + 1e-3).all()
    torch.testing.assert_close(
        dist.log_prob_sum(draws[0]), Bernoulli(logits=dist.logits).log_prob(draws[0]).sum(-1)
    )


@pytest.mark.parametrize("x_dtype", [torch.float64, torch.int64])
def test_bernoulli_logits_scores_sparse_data_of_another_dtype(x_dtype):
    """Double or integer accessibility against single-precision logits (the decoder's)."""
    from scgenvae.distributions import BernoulliLogits

    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 6, generator=gen)
    x = (torch.rand(4, 6, generator=gen) < 0.4).to(x_dtype)
    expected = Bernoulli(logits=logits).log_prob(x.float()).sum(-1)
    for layout in (x.to_sparse_csr(), x.to_sparse()):
        got = BernoulliLogits(logits).log_prob_sum(layout)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected)


def _factors(gen: torch.Generator, n: int, p: int, k: int) -> tuple[torch.Tensor, ...]:
    """Random float64 ``(h, weight, bias, depth, region_depth)`` of a FactorisedBernoulli."""
    sizes = ((n, k), (p, k), (p,), (n, 1), (p,))
    return tuple(torch.randn(*size, generator=gen, dtype=torch.float64) for size in sizes)


def test_factorised_bernoulli_sampled_estimate_of_dense_and_sparse_input_agree():
    """The sampled (unbiased) estimate takes a dense minibatch as well as a sparse one."""
    gen = torch.Generator().manual_seed(5)
    n, p, k = 4, 12, 3
    dist = FactorisedBernoulli(*_factors(gen, n, p, k))
    x = (torch.rand(n, p, generator=gen) < 0.3).to(torch.float64)
    torch.manual_seed(0)
    dense = dist.log_prob_sum(x, n_sampled=4)
    torch.manual_seed(0)
    sparse = dist.log_prob_sum(x.to_sparse_csr(), n_sampled=4)
    torch.testing.assert_close(dense, sparse)
    exact = Bernoulli(logits=dist.logits).log_prob(x).sum(-1)
    assert not torch.allclose(dense, exact)  # an estimate from 4 of 12 peaks


def test_factorised_bernoulli_sampled_gradients_equal_the_dense_formula():
    """The sampled estimate's gradients, against the same estimate written out densely.

    The accessible-peak sum (a gather-sum with its own backward) and the sampled peaks' rows
    both reach the loadings' gradient; it must equal the dense formula's and stay dense (the
    fused Adam refuses sparse gradients).
    """
    gen = torch.Generator().manual_seed(6)
    n, p, k, n_sampled = 5, 40, 3, 8
    h, w, b, depth, rd = _factors(gen, n, p, k)
    for leaf in (h, w, b, rd):
        leaf.requires_grad_()
    x = (torch.rand(n, p, generator=gen) < 0.3).to(torch.float64)
    torch.manual_seed(0)
    got = FactorisedBernoulli(h, w, b, depth, rd).log_prob_sum(x.to_sparse_csr(), n_sampled)
    grads = torch.autograd.grad(got.sum(), (h, w, b, rd))
    torch.manual_seed(0)
    sampled = torch.randperm(p)[:n_sampled]
    logits = h @ w.T + b + rd * depth
    expected = (x * logits).sum(-1) - torch.nn.functional.softplus(logits[:, sampled]).sum(-1) * (
        p / n_sampled
    )
    expected_grads = torch.autograd.grad(expected.sum(), (h, w, b, rd))
    torch.testing.assert_close(got, expected)
    for g, e in zip(grads, expected_grads, strict=True):
        assert g.layout == torch.strided
        torch.testing.assert_close(g, e)


def test_factorised_bernoulli_columns_are_those_of_the_full_logits():
    """``_columns(cols)`` (the decoding of a subset of peaks) against the full matrix's columns."""
    dist = FactorisedBernoulli(*_factors(torch.Generator().manual_seed(8), 4, 10, 3))
    cols = torch.tensor([7, 2, 2, 9])
    full = dist.h @ dist.weight.T + dist.bias + dist.region_depth * dist.depth
    torch.testing.assert_close(dist._columns(cols), full[:, cols])
    torch.testing.assert_close(dist._columns(None), full)


def _exact_softplus(logits: torch.Tensor) -> torch.Tensor:
    return torch.logaddexp(torch.zeros_like(logits), logits)


def test_bernoulli_scores_logits_above_twenty_to_float64_precision():
    """``softplus`` keeps ``log1p(exp(-l))`` above 20 (torch's default threshold drops ~1e-9).

    Every path that sums ``softplus`` is checked: dense, CSR and COO data, and the sampled
    estimate of :class:`FactorisedBernoulli`.
    """
    from scgenvae.distributions import BernoulliLogits

    logits = torch.tensor(
        [[20.5, 25.0, 30.0, 39.0, -25.0, 0.5], [21.0, 22.0, -21.0, 35.0, 28.0, -0.5]],
        dtype=torch.float64,
    )
    x = torch.tensor([[0, 0, 1, 0, 1, 1], [1, 0, 0, 0, 1, 0]], dtype=torch.float64)
    expected = (x * logits - _exact_softplus(logits)).sum(-1)
    for layout in (x, x.to_sparse_csr(), x.to_sparse()):
        got = BernoulliLogits(logits).log_prob_sum(layout)
        torch.testing.assert_close(got, expected, rtol=0.0, atol=1e-12)
    # the sampled estimate: logits = bias (h, loadings and depth terms zero)
    n, p = logits.shape
    zeros = torch.zeros
    for row in range(n):
        dist = FactorisedBernoulli(
            zeros(1, 2, dtype=torch.float64),
            zeros(p, 2, dtype=torch.float64),
            logits[row],
            zeros(1, 1, dtype=torch.float64),
            zeros(p, dtype=torch.float64),
        )
        torch.manual_seed(row)
        got = dist.log_prob_sum(x[row : row + 1].to_sparse_csr(), n_sampled=4)
        torch.manual_seed(row)
        sampled = torch.randperm(p)[:4]
        want = (x[row] * logits[row]).sum() - _exact_softplus(logits[row, sampled]).sum() * p / 4
        torch.testing.assert_close(got, want.reshape(1), rtol=0.0, atol=1e-12)
