"""Tests of ``scgenvae.module`` against closed forms, for cases mutation testing found unchecked.

KL terms against torch's ``kl_divergence``, the product of experts against the Gaussian
product formula, decoder initialisation against the data's profile, the library-size centre by
hand, and the loss as the sum of its parts. The mutants each test kills are listed in
docs/dev/mutation.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Normal, kl_divergence

from scgenvae.module import GaussianMixturePrior, ModalitySpec, MultiModalVAEModule
from scgenvae.module._priors import StandardNormalPrior
from scgenvae.module._vae import _product_of_experts, log_library_mean


def _qz(n: int = 5, d: int = 3, seed: int = 0) -> Normal:
    gen = torch.Generator().manual_seed(seed)
    loc = torch.randn(n, d, generator=gen, dtype=torch.float64)
    scale = torch.rand(n, d, generator=gen, dtype=torch.float64) + 0.2
    return Normal(loc, scale)


def test_standard_normal_kl_equals_torch():
    qz = _qz()
    expected = kl_divergence(qz, Normal(0.0, 1.0)).sum(-1)
    out = StandardNormalPrior().kl(qz, None, {})
    torch.testing.assert_close(out["kl_z"], expected)
    assert StandardNormalPrior().infer_cluster(qz) == {}


def test_mixture_prior_terms_equal_torch_kls():
    torch.manual_seed(0)
    prior = GaussianMixturePrior(4, 3).double()
    with torch.no_grad():
        prior.log_scales.copy_(torch.tensor([[0.1, -0.3, 0.5]]))
    qz = _qz()
    comp = torch.stack(
        [
            kl_divergence(qz, Normal(prior.means[k], prior.log_scales[0].exp())).sum(-1)
            for k in range(4)
        ],
        -1,
    )
    torch.testing.assert_close(prior.component_kl(qz), comp)
    torch.testing.assert_close(prior.cluster_logits(qz), -comp)
    # before initialise() the prior is N(0, I) and there is no cluster KL
    qc = prior.infer_cluster(qz)["qc"]
    warm = prior.kl(qz, None, {"qc": qc})
    torch.testing.assert_close(warm["kl_z"], kl_divergence(qz, Normal(0.0, 1.0)).sum(-1))
    assert torch.equal(warm["kl_c"], torch.zeros(5, dtype=torch.float64))
    prior.initialised.fill_(1)
    prior.eval()
    out = prior.kl(qz, None, {"qc": qc}, tau=0.5)
    # outside training: expectation over q(c), and KL(q(c) || uniform)
    torch.testing.assert_close(out["kl_z"], (qc.probs * comp).sum(-1))
    uniform = Categorical(logits=torch.zeros(5, 4, dtype=torch.float64))
    torch.testing.assert_close(out["kl_c"], kl_divergence(qc, uniform))
    assert float(out["tau"]) == 0.5
    assert "tau" not in prior.kl(qz, None, {"qc": qc})
    # in training, with a temperature: weighted by a relaxed one-hot sample (rows sum to 1)
    prior.train()
    sampled = prior.kl(qz, None, {"qc": qc}, tau=0.5)["kl_z"]
    assert (
        (sampled >= comp.min(-1).values - 1e-9) & (sampled <= comp.max(-1).values + 1e-9)
    ).all()
    assert not torch.allclose(sampled, out["kl_z"])


def test_mixture_prior_initialise_places_components_on_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[-5.0, 0.0], [5.0, 0.0], [0.0, 6.0]])
    z = np.concatenate([c + rng.normal(scale=[0.5, 1.0], size=(50, 2)) for c in centres])
    prior = GaussianMixturePrior(3, 2)
    with pytest.raises(ValueError, match="n_clusters"):
        GaussianMixturePrior(1, 2)
    prior.initialise(torch.as_tensor(z, dtype=torch.float32))
    assert bool(prior.initialised)
    found = prior.means.detach().numpy()
    for c in centres:
        assert np.min(np.linalg.norm(found - c, axis=1)) < 0.5
    # the shared scale is the within-cluster spread per dimension
    np.testing.assert_allclose(prior.log_scales.exp().detach().numpy()[0], [0.5, 1.0], rtol=0.25)
    # initial means (before initialise) lie on a sphere of radius 2
    fresh = GaussianMixturePrior(5, 4)
    torch.testing.assert_close(fresh.means.norm(dim=1), torch.full((5,), 2.0))
    assert torch.equal(fresh.log_scales, torch.zeros(1, 4))


def test_product_of_experts_closed_form():
    mu = [torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [-1.0]])]
    var = [torch.tensor([[0.5], [2.0]]), torch.tensor([[1.0], [4.0]])]
    masks = [torch.tensor([True, True]), torch.tensor([True, False])]
    q = _product_of_experts(mu, var, masks)
    # cell 0: prior N(0,1) x N(1,0.5) x N(3,1): precision 1+2+1 = 4, mean (0+2+3)/4
    # cell 1: prior x N(2,2) (the second expert is masked): precision 1.5, mean 1/1.5
    torch.testing.assert_close(q.loc, torch.tensor([[5 / 4], [1 / 1.5]]))
    torch.testing.assert_close(q.scale, torch.tensor([[0.5], [(1 / 1.5) ** 0.5]]))


def test_log_library_mean_by_hand():
    assert log_library_mean(np.array([0.0, math.e, math.e**3])) == pytest.approx(2.0)
    assert log_library_mean(np.zeros(4)) == 0.0
    assert log_library_mean([[1.0, 0.0]]) == 0.0


def test_init_feature_biases_start_at_the_data_profile():
    mods = {"rna": ModalitySpec("X", 4), "atac": ModalitySpec("atac", 3, "bernoulli")}
    mod = MultiModalVAEModule(mods, n_latent=2)
    rna_mean = np.array([1.0, 3.0, 0.0, 4.0])
    peak_freq = np.array([0.1, 0.5, 0.0])
    mod.init_feature_biases({"rna": rna_mean, "atac": peak_freq})
    share = torch.softmax(mod.decoders["rna"].head.bias.double(), 0)
    torch.testing.assert_close(
        share, torch.tensor([0.125, 0.375, 0.0, 0.5]).double(), atol=1e-7, rtol=1e-4
    )
    p = torch.sigmoid(mod.decoders["atac"].region_bias.double())
    torch.testing.assert_close(p, torch.tensor([0.1, 0.5, 1e-5]).double(), rtol=1e-4, atol=1e-7)


def test_loss_is_the_sum_of_its_terms():
    mods = {"rna": ModalitySpec("X", 6), "atac": ModalitySpec("atac", 5, "bernoulli")}
    mod = MultiModalVAEModule(mods, n_latent=2, alignment_weight=0.7).eval()
    gen = torch.Generator().manual_seed(0)
    t = {
        "X": torch.poisson(torch.full((4, 6), 3.0), generator=gen),
        "atac": (torch.rand(4, 5, generator=gen) < 0.5).float(),
    }
    t["atac"][0] = 0.0  # one cell without ATAC
    inf = mod.inference(**mod._get_inference_input(t))
    out = mod.generative(**mod._get_generative_input(t, inf))
    loss = mod.loss(t, inf, out, kl_weight=0.3)
    rec = loss.reconstruction_loss
    assert torch.equal(rec["atac"][0], torch.tensor(0.0))  # unobserved: not scored
    qa, qb = inf["qz_modality"]["rna"], inf["qz_modality"]["atac"]
    align = (kl_divergence(qa, qb) + kl_divergence(qb, qa)).sum(-1) * torch.tensor([0, 1, 1, 1.0])
    kl = kl_divergence(inf["qz"], Normal(0.0, 1.0)).sum(-1)
    expected = rec["rna"] + rec["atac"] + 0.3 * kl + 0.7 * align
    torch.testing.assert_close(loss.loss, expected.mean())
    torch.testing.assert_close(loss.kl_local["kl_z"], kl)
    torch.testing.assert_close(loss.extra_metrics["kl_align"], align.mean())


def test_gumbel_softmax_sample_uses_the_given_generator():
    """A seeded generator makes the draw reproducible whatever the global random state."""
    from scgenvae.module import gumbel_softmax_sample

    logits = torch.randn(6, 4, dtype=torch.float64)
    torch.manual_seed(1)
    a = gumbel_softmax_sample(logits, 0.5, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(2)
    b = gumbel_softmax_sample(logits, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.dtype == torch.float64


def test_gumbel_softmax_sample_is_finite_when_the_uniform_draw_is_zero(monkeypatch):
    """u = 0 has probability 2^-24 per float32 draw; the sample must stay finite."""
    from scgenvae.module import _priors

    monkeypatch.setattr(
        _priors.torch, "rand", lambda shape, **kw: torch.zeros(shape, dtype=kw.get("dtype"))
    )
    out = _priors.gumbel_softmax_sample(torch.zeros(2, 3), 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full((2, 3), 1 / 3))


def test_gumbel_softmax_hard_sample_has_every_cluster_column():
    """hard=True gives one column per cluster even when no row picks the last cluster."""
    from scgenvae.module import gumbel_softmax_sample

    logits = torch.tensor([[9.0, 0.0, 0.0, -30.0], [0.0, 9.0, 0.0, -30.0]])
    out = gumbel_softmax_sample(logits, 0.5, hard=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 4)
    torch.testing.assert_close(out.sum(-1), torch.ones(2))
    assert out[:, 3].abs().max() < 1e-6


def test_mixture_prior_defaults_and_fixed_initial_means():
    assert not GaussianMixturePrior(2, 3).straight_through  # two clusters are allowed
    torch.manual_seed(1)
    first = GaussianMixturePrior(3, 2).means.detach().clone()
    torch.manual_seed(2)
    torch.testing.assert_close(GaussianMixturePrior(3, 2).means.detach(), first)


def test_straight_through_mixture_prior_weights_one_component():
    """With straight_through, training kl_z is the KL to the one sampled component."""
    prior = GaussianMixturePrior(4, 3, straight_through=True).double()
    prior.initialised.fill_(1)
    prior.train()
    qz = _qz()
    qc = prior.infer_cluster(qz)["qc"]
    comp = prior.component_kl(qz)
    torch.manual_seed(0)
    kl_z = prior.kl(qz, None, {"qc": qc}, tau=1.0)["kl_z"]
    matches = (kl_z.unsqueeze(-1) - comp).abs() < 1e-9
    assert matches.any(-1).all()


def _paired_batch(n=6, n_genes=6, n_peaks=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = {
        "X": torch.poisson(torch.full((n, n_genes), 3.0), generator=gen),
        "atac": (torch.rand(n, n_peaks, generator=gen) < 0.5).float(),
    }
    t["X"][0] = 0.0
    t["X"][0, 0] = 1.0  # a cell with a library of exactly 1
    t["atac"][1] = 0.0  # a cell without ATAC
    t["atac"][2] = 0.0
    t["atac"][2, 0] = 1.0  # one open peak: depth 1
    return t


def test_reconstruction_terms_equal_their_likelihoods():
    """-log p(x | z) per cell, computed here from the decoded distributions."""
    from torch.distributions import Bernoulli

    mods = {"rna": ModalitySpec("X", 6), "atac": ModalitySpec("atac", 5, "bernoulli")}
    mod = MultiModalVAEModule(mods, n_latent=2, library_log_means={"atac": 1.0}).eval()
    t = _paired_batch()
    inf = mod.inference(**mod._get_inference_input(t))
    out = mod.generative(**mod._get_generative_input(t, inf))
    rec = mod.loss(t, inf, out).reconstruction_loss
    px_rna = out["rna"]["px"]
    torch.testing.assert_close(rec["rna"], -px_rna.log_prob(t["X"]).sum(-1))
    torch.testing.assert_close(px_rna.log_library, torch.log(t["X"].sum(-1)))  # 0 for cell 0
    px_atac, pl_atac = out["atac"]["px"], out["atac"]["library"]
    depth = t["atac"].sum(-1)
    expected = Bernoulli(logits=px_atac.logits).log_prob(t["atac"]).sum(-1)
    expected = expected + pl_atac.log_prob(torch.log(depth.clamp(min=1.0)))
    observed = (depth > 0).float()
    torch.testing.assert_close(rec["atac"], -expected * observed)


def test_decoder_terms_by_hand():
    """Bernoulli logits h W^T + b + region bias + depth term; the library prior's centre."""
    mods = {"rna": ModalitySpec("X", 6), "atac": ModalitySpec("atac", 5, "bernoulli")}
    mod = MultiModalVAEModule(mods, n_latent=2, library_log_means={"rna": 5.0, "atac": 1.0})
    mod.eval()
    dec = mod.decoders["atac"]
    with torch.no_grad():
        dec.head.bias.normal_()
        dec.region_bias.normal_()
        dec.region_depth.normal_()
        mod.decoders["rna"].library_head.weight.zero_()
        mod.decoders["rna"].library_head.bias.zero_()
    t = _paired_batch()
    inf = mod.inference(**mod._get_inference_input(t))
    out = mod.generative(**mod._get_generative_input(t, inf))
    h = dec.trunk(inf["z"], [torch.zeros(6, 1, dtype=torch.long)], None)
    depth = out["atac"]["px"].depth
    logits = h @ dec.head.weight.T + dec.head.bias + dec.region_bias + dec.region_depth * depth
    torch.testing.assert_close(out["atac"]["px"].logits, logits)
    # p(log library | z) is centred on the data's mean log library
    torch.testing.assert_close(out["rna"]["library"].loc, torch.full((6,), 5.0))
    # without observed libraries the predicted ones are used
    pred = mod.generative(**mod._get_generative_input(t, inf), observed_library=False)
    torch.testing.assert_close(pred["rna"]["px"].log_library, torch.full((6,), 5.0))


def test_continuous_covariates_reach_the_decoder():
    mod = MultiModalVAEModule({"rna": ModalitySpec("X", 6)}, n_latent=2, n_continuous_cov=1)
    mod.eval()
    with torch.no_grad():
        for inj in mod.decoders["rna"].trunk.injections:
            inj.continuous.weight.normal_()
    t = _paired_batch()
    del t["atac"]
    t["extra_continuous_covs"] = torch.zeros(6, 1)
    inf = mod.inference(**mod._get_inference_input(t))
    gin = mod._get_generative_input(t, inf)
    a = mod.generative(**gin)["rna"]["px"].scale
    gin["cont_covs"] = torch.full((6, 1), 3.0)
    assert not torch.allclose(mod.generative(**gin)["rna"]["px"].scale, a)


@pytest.mark.parametrize(("n_peaks", "sampled"), [(25, True), (20, False)])
def test_peaks_are_sampled_in_training_only_above_twice_k(n_peaks, sampled):
    mods = {"rna": ModalitySpec("X", 6), "atac": ModalitySpec("atac", n_peaks, "bernoulli")}
    mod = MultiModalVAEModule(mods, n_latent=2, n_sampled_peaks=10).eval()
    gen = torch.Generator().manual_seed(1)
    t = {
        "X": torch.poisson(torch.full((8, 6), 3.0), generator=gen),
        "atac": (torch.rand(8, n_peaks, generator=gen) < 0.5).float(),
    }
    inf = mod.inference(**mod._get_inference_input(t))
    out = mod.generative(**mod._get_generative_input(t, inf))
    exact = mod.loss(t, inf, out).reconstruction_loss["atac"]
    mod.train()
    torch.manual_seed(0)
    training = mod.loss(t, inf, out).reconstruction_loss["atac"]
    assert torch.allclose(training, exact) != sampled


def test_loss_with_a_mixture_prior_and_default_kl_weight():
    mod = MultiModalVAEModule({"rna": ModalitySpec("X", 6)}, n_latent=2, n_clusters=3).eval()
    mod.prior.initialised.fill_(1)
    t = _paired_batch()
    del t["atac"]
    inf = mod.inference(**mod._get_inference_input(t))
    out = mod.generative(**mod._get_generative_input(t, inf))
    loss = mod.loss(t, inf, out, tau=0.7)
    kl = mod.prior.kl(inf["qz"], inf["z"], inf, 0.7)
    torch.testing.assert_close(loss.kl_local["kl_z"], kl["kl_z"])
    torch.testing.assert_close(loss.kl_local["kl_c"], kl["kl_c"])
    assert float(loss.extra_metrics["tau"]) == pytest.approx(0.7)
    rec = loss.reconstruction_loss["rna"]
    torch.testing.assert_close(loss.loss, (rec + kl["kl_z"] + kl["kl_c"]).mean())
    torch.testing.assert_close(mod.loss(t, inf, out, kl_weight=1.0, tau=0.7).loss, loss.loss)


def test_modality_dropout_frequencies():
    """Paired cells keep both (1 - 2p), only RNA (p) or only ATAC (p); single ones are kept."""
    mods = {"rna": ModalitySpec("X", 6), "atac": ModalitySpec("atac", 5, "bernoulli")}
    mod = MultiModalVAEModule(mods, n_latent=2, modality_dropout=0.25)
    n = 40_000
    rna = torch.ones(n, dtype=torch.bool)
    atac = torch.ones(n, dtype=torch.bool)
    atac[: n // 4] = False  # a quarter of the cells without ATAC
    torch.manual_seed(0)
    new_rna, new_atac = mod._drop_modalities([rna, atac])
    single = slice(0, n // 4)
    assert new_rna[single].all()
    assert not new_atac[single].any()
    paired = slice(n // 4, n)
    both = (new_rna[paired] & new_atac[paired]).float().mean()
    only_rna = (new_rna[paired] & ~new_atac[paired]).float().mean()
    only_atac = (~new_rna[paired] & new_atac[paired]).float().mean()
    assert abs(float(both) - 0.5) < 0.02
    assert abs(float(only_rna) - 0.25) < 0.02
    assert abs(float(only_atac) - 0.25) < 0.02
    assert (new_rna | new_atac).all()


def test_module_defaults_errors_and_sizes():
    from scgenvae.module._priors import StandardNormalPrior as Standard

    mod = MultiModalVAEModule({"rna": ModalitySpec("X", 6)})
    assert (mod.n_latent, mod.n_batch, mod.n_sampled_peaks) == (10, 0, 1024)
    assert (mod.modality_dropout, mod.alignment_weight) == (0.25, 1.0)
    assert mod.encode_covariates
    assert isinstance(mod.prior, Standard)
    assert mod.library_log_means == {"rna": 0.0}
    assert mod.loading_prior_decay() == []  # no loading prior by default
    enc = mod.encoders["rna"]
    assert enc.mean.in_features == 128
    assert enc.mean.out_features == 10
    assert len(enc.net.linears) == 1
    assert enc.net.dropout.p == 0.1
    assert enc.net.sparse_input
    assert enc.net.injections[0].continuous is None
    with pytest.raises(ValueError, match="at least one modality"):
        MultiModalVAEModule({})
    for sd, n_obs in ((0.0, 100), (1.0, None)):
        with pytest.raises(ValueError, match="loading_prior_sd"):
            MultiModalVAEModule({"rna": ModalitySpec("X", 6)}, loading_prior_sd=sd, n_obs=n_obs)
    mods = {"rna": ModalitySpec("X", 6), "atac": ModalitySpec("atac", 5, "bernoulli")}
    mod = MultiModalVAEModule(
        mods,
        n_latent=3,
        n_hidden=7,
        n_layers=2,
        n_continuous_cov=2,
        dropout_rate=0.2,
        library_log_means={"rna": 2.0},
        n_clusters=4,
        straight_through=True,
        loading_prior_sd=1.0,
        n_obs=50,
    )
    assert mod.library_log_means == {"rna": 2.0, "atac": 0.0}
    assert len(mod.loading_prior_decay()) == 1  # the Bernoulli loadings are under the prior
    assert mod.prior.n_clusters == 4
    assert mod.prior.means.shape == (4, 3)
    assert mod.prior.straight_through
    mixture = MultiModalVAEModule({"rna": ModalitySpec("X", 6)}, n_clusters=2)
    assert not mixture.prior.straight_through
    enc = mod.encoders["atac"]
    assert len(enc.net.linears) == 2
    assert enc.net.dropout.p == 0.2
    assert enc.mean.in_features == 7
    assert enc.net.injections[0].continuous is not None
    assert mod.decoders["rna"].trunk.injections[0].continuous is not None
    plain = MultiModalVAEModule(mods, n_batch=3, n_continuous_cov=2, encode_covariates=False)
    assert plain.encoders["rna"].net.injections[0].continuous is None
    assert len(plain.encoders["rna"].net.injections[0].embeddings) == 0
    assert len(plain.decoders["rna"].trunk.injections[0].embeddings) == 1


def test_covariates_from_the_minibatch():
    mod = MultiModalVAEModule({"rna": ModalitySpec("X", 6)}, n_batch=2, n_cats_per_cov=(3, 4))
    batch = torch.tensor([[0], [1]])
    cats = torch.tensor([[2, 3], [0, 1]])
    cont = torch.randn(2, 1)
    cat_list, got_cont = mod._covariates(
        {"batch": batch, "extra_categorical_covs": cats, "extra_continuous_covs": cont}
    )
    assert len(cat_list) == 3
    assert torch.equal(cat_list[0], batch)
    assert torch.equal(cat_list[1], cats[:, :1])
    assert torch.equal(cat_list[2], cats[:, 1:])
    assert got_cont is cont
    cat_list, got_cont = mod._covariates({"X": torch.zeros(2, 6)})
    assert cat_list == [None]
    assert got_cont is None
    filled = mod._cat_list([None, cats[:, :1]], 2, "cpu")
    assert torch.equal(filled[0], torch.zeros(2, 1, dtype=torch.long))
    assert filled[1] is not None
    assert len(filled) == 2
    assert mod._cat_list([batch], 2, "cpu")[0] is batch


def test_log_library_mean_counts_cells_with_a_single_count():
    assert log_library_mean(np.array([1.0, math.e**2])) == pytest.approx(1.0)


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_nb_and_zinb_decoders_by_hand(likelihood):
    """Mean = library x softmax shares, per-gene theta; reconstruction = -log p per cell."""
    from scvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial

    mod = MultiModalVAEModule(
        {"rna": ModalitySpec("X", 6, likelihood)}, n_latent=2, n_layers=2, dropout_rate=0.3
    ).eval()
    dec = mod.decoders["rna"]
    assert len(dec.trunk.linears) == 2
    assert dec.trunk.dropout.p == 0.3
    with torch.no_grad():
        dec.log_theta.normal_()
    t = _paired_batch()
    del t["atac"]
    inf = mod.inference(**mod._get_inference_input(t))
    out = mod.generative(**mod._get_generative_input(t, inf))
    px = out["rna"]["px"]
    h = dec.trunk(inf["z"], [torch.zeros(6, 1, dtype=torch.long)], None)
    shares = torch.softmax(dec.head(h), -1)
    torch.testing.assert_close(px.scale, shares)
    torch.testing.assert_close(px.mu, t["X"].sum(-1, keepdim=True) * shares)
    if likelihood == "nb":
        ref = NegativeBinomial(mu=px.mu, theta=dec.log_theta.exp())
    else:
        ref = ZeroInflatedNegativeBinomial(
            mu=px.mu, theta=dec.log_theta.exp(), zi_logits=dec.dropout_head(h)
        )
    rec = mod.loss(t, inf, out).reconstruction_loss["rna"]
    torch.testing.assert_close(rec, -ref.log_prob(t["X"]).sum(-1))


def test_loading_prior_is_in_the_default_loss_and_logged():
    """loss() adds 0.5 * coef * |W|^2 of the peak loadings by default and logs it."""
    mods = {"rna": ModalitySpec("X", 6), "atac": ModalitySpec("atac", 5, "bernoulli")}
    mod = MultiModalVAEModule(mods, n_latent=2, loading_prior_sd=0.5, n_obs=10).eval()
    with torch.no_grad():
        mod.decoders["atac"].head.weight.normal_(
            0.0, 0.3, generator=torch.Generator().manual_seed(1)
        )
    t = _paired_batch()
    inf = mod.inference(**mod._get_inference_input(t))
    out = mod.generative(**mod._get_generative_input(t, inf))
    w = mod.decoders["atac"].head.weight
    penalty = 0.5 / (0.25 * 10) * w.square().sum()
    with_prior = mod.loss(t, inf, out)
    without = mod.loss(t, inf, out, loading_prior_in_loss=False)
    torch.testing.assert_close(with_prior.loss, without.loss + penalty)
    torch.testing.assert_close(with_prior.extra_metrics["loading_prior"], penalty.detach())
    assert "loading_prior" not in without.extra_metrics


def test_alignment_term_only_for_a_pair_of_posteriors_and_a_positive_weight():
    """kl_align is computed (and logged) only when two modality posteriors are aligned."""
    mods = {"rna": ModalitySpec("X", 6), "atac": ModalitySpec("atac", 5, "bernoulli")}
    t = _paired_batch()
    mod = MultiModalVAEModule(mods, n_latent=2).eval()
    inf = mod.inference(**mod._get_inference_input(t))
    out = mod.generative(**mod._get_generative_input(t, inf))
    assert "kl_align" in mod.loss(t, inf, out).extra_metrics
    # one modality's posterior (cross-modal prediction): nothing to align
    one = mod.inference(**mod._get_inference_input(t), use_modalities=("rna",))
    assert list(one["qz_modality"]) == ["rna"]
    out_one = mod.generative(**mod._get_generative_input(t, one))
    assert "kl_align" not in mod.loss(t, one, out_one).extra_metrics
    # weight 0: no alignment term
    off = MultiModalVAEModule(mods, n_latent=2, alignment_weight=0.0).eval()
    inf = off.inference(**off._get_inference_input(t))
    out = off.generative(**off._get_generative_input(t, inf))
    assert "kl_align" not in off.loss(t, inf, out).extra_metrics


def test_peaks_are_not_sampled_in_eval_mode():
    """Outside training every peak is scored: the loss is the exact likelihood, seed-free."""
    from torch.distributions import Bernoulli

    mods = {"rna": ModalitySpec("X", 6), "atac": ModalitySpec("atac", 25, "bernoulli")}
    mod = MultiModalVAEModule(mods, n_latent=2, n_sampled_peaks=10).eval()
    gen = torch.Generator().manual_seed(1)
    t = {
        "X": torch.poisson(torch.full((8, 6), 3.0), generator=gen),
        "atac": (torch.rand(8, 25, generator=gen) < 0.5).float(),
    }
    inf = mod.inference(**mod._get_inference_input(t))
    out = mod.generative(**mod._get_generative_input(t, inf))
    px, pl = out["atac"]["px"], out["atac"]["library"]
    expected = Bernoulli(logits=px.logits).log_prob(t["atac"]).sum(-1)
    expected = expected + pl.log_prob(torch.log(t["atac"].sum(-1).clamp(min=1.0)))
    for seed in (0, 1):
        torch.manual_seed(seed)
        rec = mod.loss(t, inf, out).reconstruction_loss["atac"]
        torch.testing.assert_close(rec, -expected)


def test_modality_dropout_of_a_minibatch_where_every_cell_draws_the_first_modality():
    """The one-hot of the kept modality is k wide even when no cell draws the last one."""
    mods = {"rna": ModalitySpec("X", 6), "atac": ModalitySpec("atac", 5, "bernoulli")}
    mod = MultiModalVAEModule(mods, n_latent=2, modality_dropout=0.4)
    both = [torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)]
    torch.manual_seed(3)
    u = torch.rand(3)
    assert (u < 0.4).all()  # every cell keeps only modality 0 (RNA)
    torch.manual_seed(3)
    new_rna, new_atac = mod._drop_modalities(both)
    assert new_rna.all()
    assert not new_atac.any()


def test_prior_log_densities_by_hand():
    """``log_prob`` of both priors against scipy's normal density (the marginal of the mixture)."""
    from scipy.stats import norm

    z = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.0, -0.7]], dtype=torch.float64)
    expected = norm.logpdf(z.numpy()).sum(1)
    np.testing.assert_allclose(StandardNormalPrior().log_prob(z).numpy(), expected, rtol=1e-12)

    prior = GaussianMixturePrior(2, 3).double()
    # before initialise: the standard normal it acts as
    np.testing.assert_allclose(prior.log_prob(z).detach().numpy(), expected, rtol=1e-12)
    means = np.array([[0.0, 1.0, -1.0], [2.0, -0.5, 0.5]])
    scales = np.array([0.5, 2.0, 1.5])
    with torch.no_grad():
        prior.means.copy_(torch.as_tensor(means))
        prior.log_scales.copy_(torch.log(torch.as_tensor(scales)).unsqueeze(0))
        prior.initialised.fill_(1)
    per_component = np.stack(
        [norm.logpdf(z.numpy(), loc=means[k], scale=scales).sum(1) for k in range(2)], 1
    )
    mixture = np.log(np.exp(per_component).mean(1))
    np.testing.assert_allclose(prior.log_prob(z).detach().numpy(), mixture, rtol=1e-10)
    # leading dimensions (samples x cells x n_latent) are kept, and reduced over nothing else
    stacked = torch.stack([z, z.flip(0), z, z])  # 4 samples x 2 cells x 3
    for p in (prior, StandardNormalPrior()):
        np.testing.assert_allclose(
            p.log_prob(stacked).detach().numpy(),
            torch.stack([p.log_prob(s) for s in stacked]).detach().numpy(),
            rtol=1e-12,
        )


def test_generative_decodes_only_the_modalities_and_columns_asked():
    """``modalities`` runs those decoders only; ``columns`` gives those features of the full output."""
    mods = {"rna": ModalitySpec("X", 6), "atac": ModalitySpec("atac", 5, "bernoulli")}
    mod = MultiModalVAEModule(mods, n_latent=2, library_log_means={"rna": 5.0, "atac": 1.0})
    mod = mod.eval()
    t = _paired_batch()
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        inf = mod.inference(**mod._get_inference_input(t))
        gen_in = mod._get_generative_input(t, inf)
        full = mod.generative(**gen_in)
        cols = torch.tensor([4, 0, 2])
        part = mod.generative(**gen_in, modalities=("atac",), columns={"atac": cols})
    assert "rna" not in part
    torch.testing.assert_close(part["atac"]["px"].logits, full["atac"]["px"].logits[:, cols])
    torch.testing.assert_close(part["atac"]["library"].loc, full["atac"]["library"].loc)
    with pytest.raises(ValueError, match="cannot decode a subset"):
        mod.generative(**gen_in, columns={"rna": cols})


def test_module_argument_errors_are_exact():
    import re

    mods = {"rna": ModalitySpec("X", 6)}
    msg = (
        "`loading_prior_sd` must be positive and needs `n_obs` (the number of training "
        "cells); got loading_prior_sd=0.5, n_obs=None."
    )
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        MultiModalVAEModule(mods, n_latent=2, loading_prior_sd=0.5)
    with pytest.raises(
        ValueError, match="^" + re.escape("`modalities` must name at least one modality.") + "$"
    ):
        MultiModalVAEModule({}, n_latent=2)
