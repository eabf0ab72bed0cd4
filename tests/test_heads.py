"""Likelihood heads (``scgenvae.module._heads``): one class per likelihood, checked in isolation.

Each head's log-likelihood is compared with scipy's, its predictive mean with its definition,
its data preparation with numpy; a toy head shows that a new likelihood is one class.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, sparse, stats
from scvi.distributions import NegativeBinomial
from torch import nn
from torch.distributions import Normal

from scgenvae._constants import MODULE_KEYS
from scgenvae.distributions import FactorisedBernoulli
from scgenvae.module import (
    HEADS,
    BernoulliHead,
    LikelihoodHead,
    ModalitySpec,
    MultiModalVAEModule,
    NBHead,
    PoissonHead,
    ZINBHead,
    get_head,
)

N_CELLS, N_HIDDEN, N_FEATURES = 6, 5, 8


def _decoded(head: LikelihoodHead, seed: int = 0, *, library_sd: float = 0.5):
    """A decoder's parameters (randomised), its output on random ``h`` and the library sizes."""
    gen = torch.Generator().manual_seed(seed)
    decoder = nn.Module()
    head.build(decoder, N_HIDDEN, N_FEATURES)
    with torch.no_grad():
        for p in decoder.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
    h = torch.randn(N_CELLS, N_HIDDEN, generator=gen)
    library = torch.randint(5, 60, (N_CELLS,), generator=gen).float()
    centre = 3.0
    px = head.distribution(decoder, h, torch.log(library), centre)
    pl = Normal(torch.full((N_CELLS,), centre), torch.full((N_CELLS,), library_sd))
    decoded = {MODULE_KEYS.PX_KEY: px, MODULE_KEYS.LIBRARY_KEY: pl, MODULE_KEYS.HEAD_KEY: head}
    return decoder, h, library, centre, decoded


def _counts(seed: int, *, binary: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.poisson(3.0, size=(N_CELLS, N_FEATURES)) * (rng.random((N_CELLS, N_FEATURES)) < 0.6)
    return (x > 0).astype(np.float64) if binary else x.astype(np.float64)


def _layouts(x: np.ndarray):
    dense = torch.as_tensor(x, dtype=torch.float32)
    return {"dense": dense, "csr": dense.to_sparse_csr()}


def _shares(decoder, h) -> np.ndarray:
    return torch.softmax(decoder.head(h), -1).detach().double().numpy()


# ---------------------------------------------------------------------------- registry
def test_registry_maps_each_likelihood_name_to_its_class():
    assert HEADS["poisson"] is PoissonHead
    assert HEADS["nb"] is NBHead
    assert HEADS["zinb"] is ZINBHead
    assert HEADS["bernoulli"] is BernoulliHead
    for name, cls in HEADS.items():
        spec = ModalitySpec("X", 3, name)
        assert type(spec.head) is cls
        assert spec.head is spec.head  # one instance per spec (the decoder's)
        assert spec.likelihood == name


def test_modality_spec_rejects_an_unknown_likelihood_at_construction():
    with pytest.raises(ValueError, match="unknown likelihood 'gauss'"):
        ModalitySpec("X", 3, "gauss")


def test_modality_spec_accepts_a_head_instance():
    head = NBHead()
    assert ModalitySpec("X", 3, head).head is head
    assert get_head(head) is head


@pytest.mark.parametrize(
    ("likelihood", "expected"),
    [
        ("poisson", ["head.weight", "head.bias"]),
        ("nb", ["log_theta", "head.weight", "head.bias"]),
        (
            "zinb",
            ["log_theta", "head.weight", "head.bias", "dropout_head.weight", "dropout_head.bias"],
        ),
        ("bernoulli", ["region_bias", "region_depth", "head.weight", "head.bias"]),
    ],
)
def test_state_dict_names_are_those_of_saved_models(likelihood, expected):
    """The head's parameters live on the decoder, under the names models were saved with."""
    mod = MultiModalVAEModule({"m": ModalitySpec("X", 7, likelihood)}, n_latent=3, n_hidden=4)
    keys = [k.removeprefix("decoders.m.") for k in mod.state_dict() if k.startswith("decoders.")]
    trunk = [k for k in keys if k.startswith("trunk.")]
    # parameters of the decoder itself come first, then its submodules in order of creation
    assert keys == [
        *[k for k in expected if "." not in k],
        "library_log_sd",
        *trunk,
        *[k for k in expected if "." in k],
        "library_head.weight",
        "library_head.bias",
    ]


# ---------------------------------------------------------------------------- log-likelihoods
@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_poisson_log_likelihood_is_scipy_poisson_of_library_times_shares(layout):
    head = PoissonHead()
    decoder, h, library, _, decoded = _decoded(head)
    x = _counts(1)
    ll = head.log_likelihood(decoded, _layouts(x)[layout], library=library)
    rate = library.double().numpy()[:, None] * _shares(decoder, h)
    expected = stats.poisson.logpmf(x, rate).sum(1)
    np.testing.assert_allclose(ll.detach().numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_nb_log_likelihood_is_scipy_nbinom(layout):
    head = NBHead()
    decoder, h, library, _, decoded = _decoded(head)
    x = _counts(2)
    ll = head.log_likelihood(decoded, _layouts(x)[layout], library=library)
    mu = library.double().numpy()[:, None] * _shares(decoder, h)
    theta = decoder.log_theta.detach().double().exp().numpy()
    expected = stats.nbinom.logpmf(x, theta, theta / (theta + mu)).sum(1)
    np.testing.assert_allclose(ll.detach().numpy(), expected, rtol=1e-5)
    assert type(decoded[MODULE_KEYS.PX_KEY]) is NegativeBinomial


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_zinb_log_likelihood_is_the_zero_inflated_mixture(layout):
    head = ZINBHead()
    decoder, h, library, _, decoded = _decoded(head)
    x = _counts(3)
    ll = head.log_likelihood(decoded, _layouts(x)[layout], library=library)
    mu = library.double().numpy()[:, None] * _shares(decoder, h)
    theta = decoder.log_theta.detach().double().exp().numpy()
    pi = 1 / (1 + np.exp(-decoder.dropout_head(h).detach().double().numpy()))
    nb = stats.nbinom.logpmf(x, theta, theta / (theta + mu))
    mixture = np.where(x == 0, np.log(pi + (1 - pi) * np.exp(nb)), np.log1p(-pi) + nb)
    np.testing.assert_allclose(ll.detach().numpy(), mixture.sum(1), rtol=1e-5)


def _bernoulli_expected(decoder, h, library, centre, decoded, x):
    depth = np.log(library.double().numpy()) - centre
    logits = (
        h.double().numpy() @ decoder.head.weight.detach().double().numpy().T
        + (decoder.head.bias + decoder.region_bias).detach().double().numpy()
        + decoder.region_depth.detach().double().numpy() * depth[:, None]
    )
    peaks = stats.bernoulli.logpmf(x, 1 / (1 + np.exp(-logits))).sum(1)
    pl = decoded[MODULE_KEYS.LIBRARY_KEY]
    log_depth = stats.norm.logpdf(
        np.log(library.double().numpy()), pl.loc.double().numpy(), pl.scale.double().numpy()
    )
    return peaks + log_depth, logits


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_bernoulli_log_likelihood_is_scipy_bernoulli_plus_the_depth_term(layout):
    head = BernoulliHead()
    decoder, h, library, centre, decoded = _decoded(head)
    x = _counts(4, binary=True)
    expected, _ = _bernoulli_expected(decoder, h, library, centre, decoded, x)
    ll = head.log_likelihood(decoded, _layouts(x)[layout], library=library)
    np.testing.assert_allclose(ll.detach().numpy(), expected, rtol=1e-5)
    # too few peaks to sample (not more than twice n_sampled): scored exactly
    ll = head.log_likelihood(decoded, _layouts(x)[layout], library=library, n_sampled=4)
    np.testing.assert_allclose(ll.detach().numpy(), expected, rtol=1e-5)


def test_bernoulli_samples_peaks_when_there_are_more_than_twice_n_sampled():
    head = BernoulliHead()
    decoder, h, library, centre, decoded = _decoded(head)
    x = _counts(5, binary=True)
    expected, _ = _bernoulli_expected(decoder, h, library, centre, decoded, x)
    torch.manual_seed(0)
    draws = np.stack(
        [
            head.log_likelihood(decoded, _layouts(x)["csr"], library=library, n_sampled=3)
            .detach()
            .numpy()
            for _ in range(1000)
        ]
    )
    assert not np.allclose(draws[0], expected)  # an estimate...
    se = draws.std(0) / np.sqrt(len(draws))
    assert (np.abs(draws.mean(0) - expected) < 5 * se + 1e-4).all()  # ...without bias


# ---------------------------------------------------------------------------- predictive means
@pytest.mark.parametrize("head", [PoissonHead(), NBHead(), ZINBHead()], ids=repr)
def test_count_predictive_mean_is_the_shares_whatever_the_library(head):
    decoder, h, _, _, decoded = _decoded(head)
    mean = head.predictive_mean(decoded, unobserved_depth=torch.ones(N_CELLS, dtype=torch.bool))
    np.testing.assert_allclose(mean.detach().double().numpy(), _shares(decoder, h), rtol=1e-6)
    np.testing.assert_allclose(mean.sum(-1).detach().numpy(), 1.0, rtol=1e-6)
    other = head.distribution(decoder, h, torch.full((N_CELLS,), 9.0), 0.0)
    again = head.predictive_mean({MODULE_KEYS.PX_KEY: other})
    torch.testing.assert_close(again, mean)


def test_bernoulli_predictive_mean_at_an_observed_depth_is_the_probability():
    head = BernoulliHead()
    decoder, h, library, centre, decoded = _decoded(head)
    _, logits = _bernoulli_expected(decoder, h, library, centre, decoded, _counts(6, binary=True))
    probs = 1 / (1 + np.exp(-logits))
    for unobserved in (None, torch.zeros(N_CELLS, dtype=torch.bool)):
        mean = head.predictive_mean(decoded, unobserved_depth=unobserved).detach().numpy()
        np.testing.assert_allclose(mean, probs, rtol=1e-5)


def test_bernoulli_predictive_mean_averages_over_an_unobserved_depth():
    """Where the depth is unobserved: E[sigmoid(logit + a * sd * u)], u ~ N(0, 1)."""
    head = BernoulliHead()
    decoder, h, library, centre, decoded = _decoded(head, library_sd=0.8)
    _, logits = _bernoulli_expected(decoder, h, library, centre, decoded, _counts(7, binary=True))
    unobserved = torch.tensor([True, False] * (N_CELLS // 2))
    mean = head.predictive_mean(decoded, unobserved_depth=unobserved).detach().numpy()
    slope = decoder.region_depth.detach().double().numpy() * 0.8
    for i in range(N_CELLS):
        for j in range(N_FEATURES):
            if unobserved[i]:
                expected = integrate.quad(
                    lambda u, i=i, j=j: (
                        stats.norm.pdf(u) / (1 + np.exp(-(logits[i, j] + slope[j] * u)))
                    ),
                    -12,
                    12,
                )[0]
            else:
                expected = 1 / (1 + np.exp(-logits[i, j]))
            assert mean[i, j] == pytest.approx(expected, abs=2e-4)
    assert ((mean > 0) & (mean < 1)).all()


# ---------------------------------------------------------------------------- data
@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_bernoulli_prepare_binarises_counts_and_keeps_binary_data(fmt):
    counts = _counts(8)
    x = counts if fmt == "dense" else sparse.csr_matrix(counts).asformat(fmt)
    head = BernoulliHead()
    got = head.prepare(x)
    dense = got.toarray() if sparse.issparse(got) else got
    np.testing.assert_array_equal(dense, (counts > 0).astype(np.float32))
    assert dense.dtype == np.float32
    assert sparse.issparse(got) == sparse.issparse(x)
    assert head.prepare(got) is got
    np.testing.assert_allclose(head.column_means(x), (counts > 0).mean(0))


@pytest.mark.parametrize("head", [PoissonHead(), NBHead(), ZINBHead()], ids=repr)
def test_count_heads_keep_the_counts(head):
    x = sparse.csr_matrix(_counts(9))
    assert head.prepare(x) is x
    np.testing.assert_allclose(head.column_means(x), x.toarray().mean(0))


def test_encoder_reads_log1p_counts_and_raw_binary_peaks():
    x = torch.as_tensor(_counts(10), dtype=torch.float32)
    for layout in (x, x.to_sparse_csr()):
        got = PoissonHead().encoder_input(layout)
        torch.testing.assert_close(got.to_dense(), torch.log1p(x))
        torch.testing.assert_close(BernoulliHead().encoder_input(layout).to_dense(), x)


def test_initial_bias_is_the_average_profile():
    mean = torch.tensor([0.0, 0.5, 0.25, 0.25], dtype=torch.float64)
    decoder = nn.Module()
    PoissonHead().build(decoder, 3, 4)
    PoissonHead().init_bias(decoder, mean)
    torch.testing.assert_close(
        torch.softmax(decoder.head.bias.double(), 0), mean, atol=1e-7, rtol=0
    )
    decoder = nn.Module()
    BernoulliHead().build(decoder, 3, 4)
    BernoulliHead().init_bias(decoder, mean)
    np.testing.assert_allclose(
        torch.sigmoid(decoder.region_bias).detach().numpy(), mean.clamp(1e-5, 1).numpy(), rtol=1e-5
    )


def test_only_bernoulli_loadings_carry_the_loading_prior():
    mods = {
        "rna": ModalitySpec("X", 6, "nb"),
        "atac": ModalitySpec("atac", 9, "bernoulli"),
        "adt": ModalitySpec("adt", 4, "poisson"),
    }
    mod = MultiModalVAEModule(mods, n_latent=3, n_hidden=4, loading_prior_sd=0.5, n_obs=8)
    decay = mod.loading_prior_decay()
    assert len(decay) == 1
    assert decay[0][0] is mod.decoders["atac"].head.weight
    assert decay[0][1] == pytest.approx(1 / (0.25 * 8))


# ---------------------------------------------------------------------------- a new likelihood
class _GeometricHead(LikelihoodHead):
    """A toy likelihood: negative binomial with dispersion fixed at 1 (geometric counts)."""

    name = "geometric_toy"

    def distribution(self, decoder, h, log_library, log_library_centre):
        scale = torch.softmax(decoder.head(h), dim=-1)
        mu = log_library.exp().unsqueeze(-1) * scale
        return NegativeBinomial(mu=mu, theta=torch.ones_like(mu), scale=scale)

    def log_likelihood(self, decoded, x, *, library, n_sampled=None):
        return decoded[MODULE_KEYS.PX_KEY].log_prob(x.to_dense().float()).sum(-1)


def test_a_new_likelihood_is_one_class(monkeypatch):
    """Registering one head class is all a module needs to train and decode with it."""
    from scgenvae.module import register_head

    monkeypatch.setitem(HEADS, _GeometricHead.name, _GeometricHead)  # undone after the test
    register_head(_GeometricHead)
    mod = MultiModalVAEModule(
        {"rna": ModalitySpec("X", 8, "geometric_toy")}, n_batch=2, n_latent=3, n_hidden=4
    )
    x = torch.as_tensor(_counts(11), dtype=torch.float32)
    tensors = {"X": x.to_sparse_csr(), "batch": torch.tensor([[0], [1]] * (N_CELLS // 2))}
    mod.init_feature_biases({"rna": x.numpy().mean(0)})
    _, gen, losses = mod.forward(tensors, compute_loss=True)
    assert torch.isfinite(losses.loss)
    losses.loss.backward()
    assert mod.decoders["rna"].head.weight.grad.abs().sum() > 0
    # the decoder's output names its head: the spec's, the decoder's
    assert gen["rna"][MODULE_KEYS.HEAD_KEY] is mod.modalities["rna"].head
    assert isinstance(mod.decoders["rna"].likelihood, _GeometricHead)
    px = gen["rna"][MODULE_KEYS.PX_KEY]
    mu = px.mu.detach().double().numpy()
    expected = stats.geom.logpmf(x.numpy() + 1, 1 / (1 + mu)).sum(1)  # failures before success
    np.testing.assert_allclose(
        -losses.reconstruction_loss["rna"].detach().numpy(), expected, rtol=1e-5
    )
    np.testing.assert_allclose(
        gen["rna"][MODULE_KEYS.HEAD_KEY].predictive_mean(gen["rna"]).sum(-1).detach().numpy(),
        1.0,
        rtol=1e-6,
    )


def test_a_loading_prior_without_bernoulli_heads_is_no_term():
    mod = MultiModalVAEModule(
        {"rna": ModalitySpec("X", 8, "nb")}, n_latent=3, n_hidden=4, loading_prior_sd=0.5, n_obs=8
    )
    assert mod.loading_prior_decay() == []
    x = torch.as_tensor(_counts(12), dtype=torch.float32)
    _, _, losses = mod.forward({"X": x}, compute_loss=True)
    assert torch.isfinite(losses.loss)
    assert "loading_prior" not in losses.extra_metrics


# ---------------------------------------------------------------------------- survivors of the
# vae mutation run (docs/dev/mutation.md)
def test_register_head_needs_a_name():
    from scgenvae.module import register_head

    class _Nameless(LikelihoodHead):
        pass

    with pytest.raises(ValueError, match=r"^_Nameless needs a `name` to be registered\.$"):
        register_head(_Nameless)
    assert "" not in HEADS


def test_head_repr_names_the_class():
    assert repr(PoissonHead()) == "PoissonHead()"
    assert repr(BernoulliHead()) == "BernoulliHead()"
    assert repr(get_head("zinb")) == "ZINBHead()"


def test_bernoulli_loadings_start_near_zero():
    """The peak loadings start as N(0, 1e-3^2), the region factors at 0 (bias) and 1 (depth)."""
    torch.manual_seed(0)
    decoder = nn.Module()
    BernoulliHead().build(decoder, 64, 500)
    w = decoder.head.weight.detach()
    assert w.shape == (500, 64)
    assert 0.97e-3 < float(w.std()) < 1.03e-3  # 32,000 draws: the sample sd is within 1%
    assert abs(float(w.mean())) < 2e-5
    assert torch.equal(decoder.region_bias.detach(), torch.zeros(500))
    assert torch.equal(decoder.region_depth.detach(), torch.ones(500))


def test_bernoulli_decodes_a_zero_library_as_unobserved():
    """A cell without fragments has no depth (NaN: use the predicted one); one fragment does."""
    got = BernoulliHead().library_for_decoding(torch.tensor([0.0, 1.0, 3.0]))
    assert torch.isnan(got[0])
    torch.testing.assert_close(got[1:], torch.tensor([1.0, 3.0]))
    counts = torch.tensor([0.0, 1.0, 3.0])
    assert PoissonHead().library_for_decoding(counts) is counts


def test_bernoulli_column_subset_is_those_columns_of_the_full_output():
    head = BernoulliHead()
    decoder, h, library, centre, decoded = _decoded(head, library_sd=0.8)
    columns = torch.tensor([5, 1, 6, 0])
    sub = {
        **decoded,
        MODULE_KEYS.PX_KEY: head.distribution(
            decoder, h, torch.log(library), centre, columns=columns
        ),
    }
    unobserved = torch.tensor([True, False] * (N_CELLS // 2))
    for flags in (None, unobserved):
        full = head.predictive_mean(decoded, unobserved_depth=flags).detach()
        part = head.predictive_mean(sub, unobserved_depth=flags).detach()
        np.testing.assert_allclose(part.numpy(), full[:, columns].numpy(), rtol=1e-6)


@pytest.mark.parametrize("head", [PoissonHead(), NBHead(), BernoulliHead()], ids=repr)
@pytest.mark.parametrize("depth", ["none", "mixed", "all"])
def test_predictive_mean_at_least_is_the_thresholded_dense_mean(head, depth):
    decoder, h, library, centre, decoded = _decoded(head, library_sd=1.5)
    flags = {
        "none": None,
        "mixed": torch.tensor([True, False] * (N_CELLS // 2)),
        "all": torch.ones(N_CELLS, dtype=torch.bool),
    }[depth]
    dense = head.predictive_mean(decoded, unobserved_depth=flags).detach()
    values = np.sort(dense.numpy().ravel())
    # a threshold equal to an entry (ties are kept) and one between entries
    for threshold in (float(values[len(values) // 2]), float(values[-5] + values[-4]) / 2):
        rows, cols, vals = head.predictive_mean_at_least(
            decoded, threshold, unobserved_depth=flags
        )
        got = sparse.csr_matrix(
            (vals.detach().numpy(), (rows.numpy(), cols.numpy())), shape=dense.shape
        ).toarray()
        expected = np.where(dense.numpy() >= threshold, dense.numpy(), 0.0)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        assert len(vals) == int((dense >= threshold).sum())


def _bernoulli_decoded(logits: np.ndarray, *, sd, region_depth: np.ndarray):
    """A BernoulliHead output with the given logits (cells x peaks) at observed depth 0 and a
    depth distribution of scale ``sd`` (one value, or one per cell): ``h`` is one-hot per
    cell, ``W`` holds the logits."""
    n, p = logits.shape
    px = FactorisedBernoulli(
        torch.eye(n),
        torch.as_tensor(logits.T, dtype=torch.float32).contiguous(),
        torch.zeros(p),
        torch.zeros(n, 1),
        torch.as_tensor(region_depth, dtype=torch.float32),
    )
    scale = torch.as_tensor(np.broadcast_to(sd, (n,)).copy(), dtype=torch.float32)
    return {MODULE_KEYS.PX_KEY: px, MODULE_KEYS.LIBRARY_KEY: Normal(torch.zeros(n), scale)}


def _sparse_at_least(head, decoded, threshold, flags, shape):
    rows, cols, vals = head.predictive_mean_at_least(decoded, threshold, unobserved_depth=flags)
    return sparse.csr_matrix(
        (vals.detach().numpy(), (rows.numpy(), cols.numpy())), shape=shape
    ).toarray()


@pytest.mark.parametrize("sd", [0.3, 2.0, 4.0])
def test_bernoulli_at_least_keeps_entries_lifted_by_a_wide_depth_distribution(sd):
    """With a wide p(log depth | z) (sd > 1) the quadrature lifts logits far below the
    threshold's above it: the skip bound must grow with sd (logit + max|node| * sd * |rd|)."""
    logits = np.linspace(-10.0, 2.0, 7 * 9).reshape(7, 9)
    rd = np.linspace(-1.5, 1.5, 9)
    decoded = _bernoulli_decoded(logits, sd=sd, region_depth=rd)
    head = BernoulliHead()
    flags = torch.ones(7, dtype=torch.bool)
    dense = head.predictive_mean(decoded, unobserved_depth=flags).numpy()
    lifted = (dense >= 0.05) & (logits < np.log(0.05 / 0.95))
    if sd > 1:
        assert lifted.sum() >= 5  # the case the bound is for is present
    for threshold in (0.05, 0.2, float(np.sort(dense.ravel())[-20])):
        got = _sparse_at_least(head, decoded, threshold, flags, dense.shape)
        np.testing.assert_allclose(got, np.where(dense >= threshold, dense, 0.0), rtol=1e-6)


def test_bernoulli_at_least_keeps_entries_just_above_the_threshold():
    """At observed depth (no quadrature) the bound equals the logit: entries a hair above
    logit(threshold) must be kept, a hair below dropped (the margin never loses one)."""
    head = BernoulliHead()
    for threshold in (0.02, 0.3, 0.5, 0.9):
        lt = np.log(threshold / (1 - threshold))
        logits = (lt + np.array([[-2e-3, -2e-4, 2e-4, 5e-4, 9e-4, 2e-3]])).astype(np.float32)
        decoded = _bernoulli_decoded(logits, sd=1.0, region_depth=np.ones(6))
        flags = torch.zeros(1, dtype=torch.bool)  # depth observed: sd 0
        dense = head.predictive_mean(decoded, unobserved_depth=flags).numpy()
        assert (dense >= threshold).sum() >= 3
        got = _sparse_at_least(head, decoded, threshold, flags, dense.shape)
        np.testing.assert_array_equal(got != 0, dense >= threshold)


def test_bernoulli_at_least_threshold_one_keeps_every_probability_that_rounds_to_one():
    """threshold=1 (allowed by the getters) keeps the entries whose predictive mean is 1.0 in
    float32, as thresholding the dense mean does: sigmoid rounds to 1 from logit ~17."""
    head = BernoulliHead()
    logits = np.array([[5.0, 14.0, 18.0, 20.0, 25.0, 29.0, 31.0, 40.0]])
    for unseen in (False, True):
        decoded = _bernoulli_decoded(logits, sd=0.5, region_depth=np.ones(8))
        flags = torch.full((1,), unseen)
        dense = head.predictive_mean(decoded, unobserved_depth=flags).numpy()
        assert (dense >= 1.0).sum() >= 4
        got = _sparse_at_least(head, decoded, 1.0, flags, dense.shape)
        np.testing.assert_array_equal(got, np.where(dense >= 1.0, dense, 0.0))


def test_bernoulli_at_least_column_bound_is_tight_when_h_is_parallel_to_the_loadings():
    """|h| |W_j| bounds h . W_j with equality when h is parallel to W_j, and the depth term
    is largest at the deepest cell for rd > 0, the shallowest for rd < 0: peaks whose only
    logit above the threshold is reached that way must still be decoded and kept."""
    head = BernoulliHead()
    for threshold in (0.1, 0.5, 0.8):
        lt = float(np.log(threshold / (1 - threshold)))
        h = torch.tensor([[3.0, 4.0], [-4.0, 3.0], [0.3, 0.4]])  # |h| 5, 5, 0.5
        w = torch.tensor([[0.6, 0.8], [-0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
        depth = torch.tensor([[0.5], [-0.7], [0.0]])
        rd = torch.tensor([1.0, -1.0, 0.5, 0.0])
        # peak 0: row 0 parallel, depth term +0.5; peak 1: row 1 parallel, depth term +0.7;
        # peak 2: below the threshold everywhere; peak 3: above it everywhere
        bias = torch.tensor([lt - 5.5 + 2e-4, lt - 5.7 + 2e-4, lt - 5.5 - 1e-2, lt + 4.5 + 2e-4])
        px = FactorisedBernoulli(h, w, bias, depth, rd)
        decoded = {MODULE_KEYS.PX_KEY: px, MODULE_KEYS.LIBRARY_KEY: Normal(torch.zeros(3), 1.0)}
        flags = torch.zeros(3, dtype=torch.bool)  # depth observed, sd 0: sigmoid(logit)
        dense = head.predictive_mean(decoded, unobserved_depth=flags).numpy()
        assert dense[0, 0] >= threshold
        assert dense[1, 1] >= threshold
        assert (dense[:, 2] < threshold).all()
        got = _sparse_at_least(head, decoded, threshold, flags, dense.shape)
        np.testing.assert_array_equal(got, np.where(dense >= threshold, dense, 0.0))
        # a positive bias with a small |h|: the bound adds the bias, it does not subtract it
        px = FactorisedBernoulli(h[2:], w[3:], bias[3:] - 5.0, torch.zeros(1, 1), rd[3:])
        decoded = {MODULE_KEYS.PX_KEY: px, MODULE_KEYS.LIBRARY_KEY: Normal(torch.zeros(1), 1.0)}
        flags = torch.zeros(1, dtype=torch.bool)
        dense = head.predictive_mean(decoded, unobserved_depth=flags).numpy()
        assert dense[0, 0] >= threshold
        got = _sparse_at_least(head, decoded, threshold, flags, dense.shape)
        np.testing.assert_array_equal(got, dense)


@pytest.mark.parametrize("threshold", [0.5, 0.6, 0.95])
def test_bernoulli_at_least_from_one_half_up_the_depth_spread_never_lifts(threshold):
    """From threshold 1/2 up the bound is the logit itself (each symmetric pair of nodes
    averages to between sigmoid(logit) and 1/2), whatever the depth sd: the sparse result
    is still the thresholded dense mean, with logits just above and below logit(threshold)."""
    lt = np.log(threshold / (1 - threshold))
    logits = lt + np.linspace(-3.0, 3.0, 6 * 11).reshape(6, 11)
    logits[:, 0] = lt + 1e-4
    rd = np.linspace(-2.0, 2.0, 11)
    head = BernoulliHead()
    for sd in (0.01, 1.0, 5.0):
        decoded = _bernoulli_decoded(logits, sd=sd, region_depth=rd)
        flags = torch.ones(6, dtype=torch.bool)
        dense = head.predictive_mean(decoded, unobserved_depth=flags).numpy()
        got = _sparse_at_least(head, decoded, threshold, flags, dense.shape)
        np.testing.assert_allclose(got, np.where(dense >= threshold, dense, 0.0), rtol=1e-6)
        assert (got > 0).sum() >= 6


def _logit_reaching(threshold: float, spread: float) -> float:
    """The logit whose Gauss-Hermite mean at ``spread`` equals ``threshold`` (float64)."""
    from scipy.special import expit

    from scgenvae.module._heads import _GH_NODES, _GH_WEIGHTS

    w = _GH_WEIGHTS / _GH_WEIGHTS.sum()
    lo, hi = -80.0, 80.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (
            (lo, mid) if (w * expit(mid + _GH_NODES * spread)).sum() >= threshold else (mid, hi)
        )
    return hi


@pytest.mark.parametrize("threshold", [0.02, 0.1, 0.3, 0.45])
def test_bernoulli_at_least_below_one_half_keeps_entries_just_lifted_by_their_spread(threshold):
    """Below 1/2 the logit needed falls with the spread s = sd |region_depth| (bisection on a
    grid of spreads, the upper grid point's value in between): entries a hair above the exact
    logit needed at their own s (off the grid) are kept, a hair below dropped."""
    rng = np.random.default_rng(int(threshold * 100))
    n, p = 5, 12
    sd = rng.uniform(0.2, 2.0, n)
    rd = rng.uniform(-1.5, 1.5, p)
    spread = sd[:, None] * np.abs(rd)[None, :]
    needed = np.vectorize(lambda s: _logit_reaching(threshold, s))(spread)
    assert needed.max() - needed.min() > 0.1  # the spread matters here
    logits = needed + np.where(rng.random((n, p)) < 0.5, 5e-4, -5e-4)
    decoded = _bernoulli_decoded(logits, sd=sd, region_depth=rd)
    head = BernoulliHead()
    flags = torch.ones(n, dtype=torch.bool)
    dense = head.predictive_mean(decoded, unobserved_depth=flags).numpy()
    np.testing.assert_array_equal(dense >= threshold, logits > needed)
    got = _sparse_at_least(head, decoded, threshold, flags, dense.shape)
    np.testing.assert_allclose(got, np.where(dense >= threshold, dense, 0.0), rtol=1e-6)


def test_bernoulli_at_least_follows_loadings_changed_in_place():
    """The per-peak norms |W_j| are kept between calls only while the loadings are the same,
    unchanged tensor: after an in-place update (an optimiser step) they are recomputed."""
    head = BernoulliHead()
    lt = float(np.log(0.5 / 0.5))
    h = torch.tensor([[3.0, 4.0]])  # |h| 5, parallel to the loadings: the bound is tight
    weight = nn.Parameter(torch.tensor([[0.6, 0.8], [0.6, 0.8]]))
    bias = torch.tensor([lt - 10.0 + 1e-2, -50.0])
    flags = torch.zeros(1, dtype=torch.bool)
    for scale, kept in ((1.0, 0), (2.0, 1), (0.5, 0)):
        with torch.no_grad():
            weight.mul_(scale)  # logit lt - 5 + 0.01, then lt + 0.01, then lt - 5 + 0.01
            px = FactorisedBernoulli(h, weight, bias, torch.zeros(1, 1), torch.ones(2))
            decoded = {
                MODULE_KEYS.PX_KEY: px,
                MODULE_KEYS.LIBRARY_KEY: Normal(torch.zeros(1), 1.0),
            }
            for _ in range(2):  # the second call reads the kept norms
                rows, cols, vals = head.predictive_mean_at_least(
                    decoded, 0.5, unobserved_depth=flags
                )
                assert len(vals) == kept
    # another tensor of the same shape (a second model): its own norms
    other = torch.tensor([[1.2, 1.6], [1.2, 1.6]])
    with torch.no_grad():
        for _ in range(weight._version):  # the same version number as the kept one
            other.mul_(1.0)
        assert other._version == weight._version
        px = FactorisedBernoulli(h, other, bias, torch.zeros(1, 1), torch.ones(2))
        decoded = {MODULE_KEYS.PX_KEY: px, MODULE_KEYS.LIBRARY_KEY: Normal(torch.zeros(1), 1.0)}
        assert len(head.predictive_mean_at_least(decoded, 0.5, unobserved_depth=flags)[2]) == 1
    # inference tensors have no version counter: their norms are computed each call
    with torch.inference_mode():
        frozen = torch.tensor([[1.2, 1.6], [0.0, 3.0], [0.0, 0.1]])
        px = FactorisedBernoulli(h, frozen, torch.tensor([lt - 10 + 1e-2, -50.0, -50.0]),
                                 torch.zeros(1, 1), torch.ones(3))  # fmt: skip
        decoded = {MODULE_KEYS.PX_KEY: px, MODULE_KEYS.LIBRARY_KEY: Normal(torch.zeros(1), 1.0)}
        rows, cols, vals = head.predictive_mean_at_least(decoded, 0.5, unobserved_depth=flags)
        assert cols.tolist() == [0]


@pytest.mark.parametrize("threshold", [0.02, 0.1, 0.3, 0.45])
@pytest.mark.parametrize("max_spread", [0.4, 1.0, 3.0])
def test_needed_logit_is_a_tight_lower_bound(threshold, max_spread):
    """``_NeededLogit(t, S)(s)`` never exceeds the exact logit needed at spread s (nothing is
    lost) and is within one grid step (S / 64) and the 1e-3 margin of it (the bound prunes)."""
    from scgenvae.module._heads import _NeededLogit

    needed = _NeededLogit(threshold, max_spread, torch.float64)
    spreads = np.concatenate(
        [[0.0, max_spread], np.random.default_rng(0).uniform(0, max_spread, 30)]
    )
    got = needed(torch.as_tensor(spreads))
    exact = np.array([_logit_reaching(threshold, s) for s in spreads])
    upper = np.array(
        [_logit_reaching(threshold, min(s + max_spread / 64, max_spread)) for s in spreads]
    )
    assert (got.numpy() <= exact - 9e-4).all()
    assert (got.numpy() >= upper - 1.1e-3).all()
    # from 1/2 up: logit(threshold) - 1e-3 whatever the spread
    high = _NeededLogit(1 - threshold, max_spread, torch.float64)
    assert high(torch.as_tensor(spreads)) == pytest.approx(
        np.log((1 - threshold) / threshold) - 1e-3
    )


def _decoded_peaks(head, decoded, threshold, flags):
    asked = []
    real = FactorisedBernoulli._columns

    def spy(self, cols):
        asked.append(cols.tolist())
        return real(self, cols)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FactorisedBernoulli, "_columns", spy)
        rows, cols, vals = head.predictive_mean_at_least(
            decoded, threshold, unobserved_depth=flags
        )
    return asked, cols.tolist()


@pytest.mark.parametrize("threshold", [0.2, 0.6])
def test_bernoulli_at_least_decodes_only_the_peaks_that_can_reach(threshold):
    """Peaks are decoded only where max|h| |W_j| + bias + depth term reaches the logit needed
    at the column's largest spread; with h parallel to W_j (h . W_j = 100) that bound is
    attained, so the peaks just above it are decoded and kept, those 0.1 below are not
    decoded at all."""
    head = BernoulliHead()
    sd = 1.2
    rd = np.array([0.5, 2.0, 1.5, 0.8, 2.0, 0.5])
    # from 1/2 up the bound is logit(threshold) itself: checked at observed depth (spread 0)
    spread = sd if threshold < 0.5 else 0.0
    need = np.array([_logit_reaching(threshold, spread * r) for r in rd])
    offset = np.array([5e-4, 5e-4, 5e-4, -0.1, -0.1, -0.1])
    h = torch.tensor([[30.0, 40.0]])  # |h| 50, parallel to every W_j (|W_j| 2)
    w = torch.tensor([[1.2, 1.6]] * 6)
    bias = torch.as_tensor(need - 100.0 + offset, dtype=torch.float32)
    px = FactorisedBernoulli(
        h, w, bias, torch.zeros(1, 1), torch.as_tensor(rd, dtype=torch.float32)
    )
    decoded = {MODULE_KEYS.PX_KEY: px, MODULE_KEYS.LIBRARY_KEY: Normal(torch.zeros(1), sd)}
    flags = torch.full((1,), threshold < 0.5)
    asked, kept = _decoded_peaks(head, decoded, threshold, flags)
    assert asked == [[0, 1, 2]]
    assert kept == [0, 1, 2]
    dense = head.predictive_mean(decoded, unobserved_depth=flags).numpy()
    np.testing.assert_array_equal(dense[0] >= threshold, offset > 0)
