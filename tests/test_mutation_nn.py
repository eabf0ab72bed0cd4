"""Tests of ``scgenvae.nn`` for cases mutation testing found unchecked.

Covariate injection by hand, sparse and dense inputs through every layer type, the encoder's
variance floor, and the cached transposed pattern of ``csr_matmul`` across minibatches. The
mutants each test kills are listed in docs/dev/mutation.md.
"""

from __future__ import annotations

import pytest
import torch

from scgenvae.nn import CovariateInjection, Dropout, FCLayers, GaussianEncoder, SparseLinear
from scgenvae.nn import csr_matmul as csr_matmul_fn


def _sparse_rows(n: int, p: int, density: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, p, generator=gen) < density
    return (torch.rand(n, p, generator=gen) * 5 * mask).to(torch.float32)


def test_covariate_injection_by_hand():
    """One embedding row per category of each covariate with >1 category, plus W @ cont."""
    inj = CovariateInjection(3, n_cats_per_cov=(2, 1, 3), n_continuous_cov=2)
    # a covariate with a single category carries no information and gets no embedding
    assert len(inj.embeddings) == 2
    assert all(emb.weight.std() < 0.05 for emb in inj.embeddings)  # initialised near 0
    h = torch.randn(4, 3)
    batch = torch.tensor([[0], [1], [1], [0]])
    constant = torch.zeros(4, 1, dtype=torch.long)
    third = torch.tensor([[2], [0], [1], [2]])
    cont = torch.randn(4, 2)
    expected = (
        h
        + inj.embeddings[0].weight[batch[:, 0]]
        + inj.embeddings[1].weight[third[:, 0]]
        + cont @ inj.continuous.weight.T
    )
    torch.testing.assert_close(inj(h, [batch, constant, third], cont), expected)
    # no continuous values given: only the categorical effects
    torch.testing.assert_close(
        inj(h, [batch, constant, third], None), expected - cont @ inj.continuous.weight.T
    )
    plain = CovariateInjection(3)
    assert plain.continuous is None
    torch.testing.assert_close(plain(h, [], cont), h)


def test_dropout_zero_rate_and_repr():
    drop = Dropout(0.0)
    x = torch.randn(8, 4)
    assert drop(x) is x  # training mode, nothing to drop
    assert drop.effective_p == 0.0
    assert repr(Dropout(0.25)) == "Dropout(p=0.25)"
    assert Dropout(0.1).effective_p == round(0.1 * 65536) / 65536


@pytest.mark.parametrize("density", [0.05, 0.6])
def test_sparse_linear_equals_dense_at_any_density(density):
    """Below the crossover a gather-sum, above it a dense product: the same values."""
    lin = SparseLinear(30, 6)
    bound = 1 / 30**0.5
    assert lin.weight.abs().max() <= bound
    assert lin.bias.abs().max() <= bound
    x = _sparse_rows(9, 30, density, seed=1)
    expected = x @ lin.weight + lin.bias
    for layout in (x, x.to_sparse_csr(), x.to_sparse()):
        torch.testing.assert_close(lin(layout), expected)


@pytest.mark.parametrize("sparse_input", [False, True])
def test_fc_layers_take_sparse_minibatches(sparse_input):
    torch.manual_seed(0)
    net = FCLayers(20, 8, n_layers=2, n_cats_per_cov=(3,), sparse_input=sparse_input).eval()
    assert isinstance(net.linears[0], SparseLinear) == sparse_input
    assert len(net.linears) == len(net.norms) == len(net.injections) == 2
    x = _sparse_rows(5, 20, 0.1, seed=2)
    batch = torch.tensor([[0], [1], [2], [1], [0]])
    dense = net(x, [batch])
    torch.testing.assert_close(net(x.to_sparse_csr(), [batch]), dense)
    # every layer reads the batch: changing it changes the output
    assert not torch.allclose(net(x, [(batch + 1) % 3]), dense)
    # the layers end in ReLU
    assert (dense >= 0).all()
    with pytest.raises(ValueError, match="n_layers"):
        FCLayers(20, 8, n_layers=0)


def test_gaussian_encoder_variance_is_floored_and_finite():
    enc = GaussianEncoder(6, 2, n_hidden=4, dropout_rate=0.0, var_eps=1e-4).eval()
    x = torch.rand(3, 6)
    mean, var, h = enc(x)
    assert mean.shape == var.shape == (3, 2)
    assert h.shape == (3, 4)
    torch.testing.assert_close(var, torch.exp(enc.log_var(h)) + 1e-4)
    torch.testing.assert_close(mean, enc.mean(h))
    with torch.no_grad():
        enc.log_var.bias.fill_(-1e4)
    assert (enc(x)[1] >= 1e-4).all()
    assert torch.allclose(enc(x)[1], torch.full((3, 2), 1e-4), rtol=1e-2)
    with torch.no_grad():
        enc.log_var.bias.fill_(1e4)
    assert torch.isfinite(enc(x)[1]).all()


def test_gaussian_encoder_log_variance_is_clamped_to_plus_minus_15():
    """The documented clamp: log-variance in [-15, 15] before the floor is added."""
    enc = GaussianEncoder(6, 2, n_hidden=4, dropout_rate=0.0, var_eps=1e-4).eval()
    x = torch.rand(3, 6)
    for bias, log_var in ((-1e4, -15.0), (1e4, 15.0), (-14.0, None), (14.0, None)):
        with torch.no_grad():
            enc.log_var.weight.zero_()
            enc.log_var.bias.fill_(bias)
        expected = torch.exp(torch.tensor(bias if log_var is None else log_var)) + 1e-4
        torch.testing.assert_close(enc(x)[1], expected.expand(3, 2), rtol=1e-6, atol=0.0)


def test_transpose_pattern_on_device_matches_the_cpu_path():
    """The torch path (taken on a GPU) gives the CPU path's (scipy's) transposed pattern:
    empty rows, features without non-zeros (also at the end) and a single non-zero."""
    from scgenvae.nn._sparse import _transpose_pattern, _transpose_pattern_on_device

    for seed, (n, p, density) in enumerate([(7, 9, 0.3), (1, 5, 0.2), (12, 40, 0.05)]):
        x = _sparse_rows(n, p, density, seed)
        x[min(2, n - 1)] = 0.0  # an empty row
        x[:, -1] = 0.0  # the last feature has no non-zero
        if seed == 1:
            x.zero_()
            x[0, 2] = 1.0
        csr = x.to_sparse_csr()
        crow, cols = csr.crow_indices(), csr.col_indices()
        want = _transpose_pattern(crow, cols, p)
        got = _transpose_pattern_on_device(crow, cols, p)
        for a, b in zip(got, want, strict=True):
            assert a.dtype == torch.int64
            torch.testing.assert_close(a, b)
        order, rows, offsets = got
        assert offsets.shape == (p,)
        # by hand: each feature's run lists its non-zeros' rows in increasing order
        dense_rows = [torch.nonzero(x[:, j]).flatten().tolist() for j in range(p)]
        ends = torch.cat([offsets[1:], torch.tensor([cols.numel()])])
        assert [rows[o:e].tolist() for o, e in zip(offsets, ends, strict=True)] == dense_rows


def test_csr_matmul_weight_gradient_across_minibatches():
    """The transposed pattern is cached per minibatch: a new minibatch must not reuse it."""
    weight = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    for seed, n in ((0, 5), (1, 5), (2, 7), (0, 5)):
        x = _sparse_rows(n, 12, 0.3, seed).to(torch.float64)
        upstream = torch.randn(n, 3, dtype=torch.float64)
        (expected,) = torch.autograd.grad(x @ weight, weight, upstream)
        for layout in (x.to_sparse_csr(), x.to_sparse()):
            (got,) = torch.autograd.grad(csr_matmul_fn(layout, weight), weight, upstream)
            torch.testing.assert_close(got, expected)
    # an empty feature (no non-zero in any row) gets a zero gradient
    x = torch.zeros(4, 12, dtype=torch.float64)
    x[:, 0] = 1.0
    (got,) = torch.autograd.grad(csr_matmul_fn(x.to_sparse_csr(), weight).sum(), weight)
    assert torch.equal(got[1:], torch.zeros(11, 3, dtype=torch.float64))
    torch.testing.assert_close(got[0], torch.full((3,), 4.0, dtype=torch.float64))


def test_sparse_linear_initialisation_spans_the_bound():
    """Weights and biases uniform on (-1/sqrt(n_in), 1/sqrt(n_in)), as torch's nn.Linear."""
    torch.manual_seed(0)
    lin = SparseLinear(30, 40)
    bound = 1 / 30**0.5
    for param in (lin.weight, lin.bias):
        assert param.abs().max() <= bound
        assert param.max() > 0.8 * bound
        assert param.min() < -0.8 * bound


def test_dropout_rounds_p_to_multiples_of_2_to_the_minus_16():
    assert Dropout().p == 0.1  # the default
    assert Dropout(0.75).effective_p == 0.75  # already a multiple: kept exactly
    assert Dropout(0.25).effective_p == 0.25


@pytest.mark.parametrize("p", [1 - 2 / 65536, 1 - 3 / 65536])
def test_dropout_keeps_the_mean_when_almost_everything_is_dropped(p):
    """With 2 or 3 lanes of 65536 kept, one lane more or less would show in the mean."""
    drop = Dropout(p)
    assert drop.effective_p == p
    x = torch.ones(2**23)
    torch.manual_seed(0)
    y = drop(x)
    kept = int((y != 0).sum())
    expected = 2**23 * (1 - p)  # 256 or 384 units
    assert abs(kept - expected) < 5 * expected**0.5
    assert abs(float(y.mean()) - 1.0) < 0.3


def test_covariate_injection_rejects_a_wrong_number_of_covariates():
    inj = CovariateInjection(3, n_cats_per_cov=(2, 3))
    h = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="shorter|longer"):
        inj(h, [torch.tensor([[0], [1]])], None)


def test_layers_and_encoder_defaults_and_continuous_covariates():
    net = FCLayers(5, 3)
    assert len(net.linears) == 1
    assert not isinstance(net.linears[0], SparseLinear)
    assert net.injections[0].continuous is None
    enc = GaussianEncoder(5, 2)
    assert enc.mean.in_features == 128
    assert len(enc.net.linears) == 1
    assert enc.net.dropout.p == 0.1
    assert enc.var_eps == 1e-4
    assert not enc.net.sparse_input
    assert enc.net.injections[0].continuous is None
    # arguments reach the layers
    enc = GaussianEncoder(5, 2, n_hidden=7, n_layers=2, n_continuous_cov=2, dropout_rate=0.3)
    assert len(enc.net.linears) == 2
    assert enc.net.dropout.p == 0.3
    enc.eval()
    x = torch.rand(4, 5)
    cont = torch.randn(4, 2)
    with torch.no_grad():
        for inj in enc.net.injections:
            inj.continuous.weight.normal_()
    assert not torch.allclose(enc(x, (), cont)[0], enc(x, (), torch.zeros(4, 2))[0])
    net = FCLayers(5, 3, n_continuous_cov=2).eval()
    assert not torch.allclose(net(x, (), cont), net(x, (), -cont))


def test_csr_matmul_of_double_data_with_float_weights():
    """The values are cast to the weight's dtype, forwards and backwards."""
    x = _sparse_rows(6, 10, 0.3, seed=4).to(torch.float64)
    weight = torch.randn(10, 3, requires_grad=True)
    upstream = torch.randn(6, 3)
    expected = x.float() @ weight
    (grad_expected,) = torch.autograd.grad(expected, weight, upstream)
    got = csr_matmul_fn(x.to_sparse_csr(), weight)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    (grad,) = torch.autograd.grad(got, weight, upstream)
    torch.testing.assert_close(grad, grad_expected)


def test_transposed_pattern_is_computed_once_per_minibatch(monkeypatch):
    """Two products of the same CSR minibatch (encoder and likelihood) share one transposed
    pattern in the backward pass; another minibatch gets its own."""
    from scgenvae.nn import _sparse

    calls = []
    real = _sparse._transpose_pattern

    def spy(crow, cols, n_features):
        calls.append(n_features)
        return real(crow, cols, n_features)

    monkeypatch.setattr(_sparse, "_transpose_pattern", spy)
    w1 = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(12, 2, dtype=torch.float64, requires_grad=True)
    x = _sparse_rows(6, 12, 0.3, 0).to(torch.float64).to_sparse_csr()
    (csr_matmul_fn(x, w1).sum() + csr_matmul_fn(x, w2).sum()).backward()
    assert calls == [12]
    other = _sparse_rows(6, 12, 0.3, 1).to(torch.float64).to_sparse_csr()
    csr_matmul_fn(other, w1).sum().backward()
    assert calls == [12, 12]


@pytest.mark.parametrize("use_rows", [True, False])
def test_csr_matmul_and_rows_equals_the_product_and_the_rows(use_rows):
    """Values and the shared weight gradient against ``x @ W`` and ``W[index]`` done densely.

    Repeated indices add their rows' gradients; with the rows unused, their gradient is None
    and the product's alone must come back.
    """
    from scgenvae.nn._sparse import csr_matmul_and_rows

    gen = torch.Generator().manual_seed(7)
    x = (torch.rand(6, 9, generator=gen) < 0.4).double() * torch.rand(6, 9, generator=gen)
    weight = torch.randn(9, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([4, 0, 4, 8])
    up = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    up_rows = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    product, rows = csr_matmul_and_rows(x.to_sparse_csr(), weight, index)
    torch.testing.assert_close(product, x @ weight)
    torch.testing.assert_close(rows, weight[index])
    loss = (product * up).sum() + ((rows * up_rows).sum() if use_rows else 0)
    (got,) = torch.autograd.grad(loss, weight)
    expected_loss = ((x @ weight) * up).sum() + (
        (weight[index] * up_rows).sum() if use_rows else 0
    )
    (expected,) = torch.autograd.grad(expected_loss, weight)
    torch.testing.assert_close(got, expected)
    frozen = weight.detach()
    product, rows = csr_matmul_and_rows(x.to_sparse_csr(), frozen, index)
    assert not product.requires_grad
    assert not rows.requires_grad


def test_csr_matmul_and_rows_of_double_data_with_float_weights():
    """Float64 data (a user's counts) with float32 loadings: the values take the weight's dtype."""
    from scgenvae.nn._sparse import csr_matmul_and_rows

    x = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]], dtype=torch.float64)
    weight = torch.arange(6, dtype=torch.float32).reshape(3, 2).requires_grad_()
    product, rows = csr_matmul_and_rows(x.to_sparse_csr(), weight, torch.tensor([1]))
    assert product.dtype == torch.float32
    torch.testing.assert_close(product, x.float() @ weight)
    torch.testing.assert_close(rows, weight[[1]])
