"""Model criticism: ELBO, reconstruction error, marginal log-likelihood, posterior predictive."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy import sparse

import scgenvae
from scgenvae.model import MultiVAE, PoissonVAE


def _frozen_epoch(model, quiet):
    """One more epoch at learning rate 0: the history's last values are those of the model."""
    model.train(max_epochs=1, train_size=1.0, lr=0.0, seed=1, **quiet)
    return {k: float(v.iloc[-1, 0]) for k, v in model.history_.items()}


@pytest.fixture(scope="module")
def rna_model():
    adata = scgenvae.datasets.synthetic_rna(n_obs=200, n_vars=50, rng=0)
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=5, n_hidden=32, dropout_rate=0.0)
    model.train(
        max_epochs=20,
        train_size=1.0,
        seed=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return adata, model


@pytest.fixture(scope="module")
def multi_model():
    mdata = scgenvae.datasets.synthetic_multiome(n_obs=200, n_genes=50, n_peaks=100, rng=0)
    MultiVAE.setup_mudata(mdata, batch_key="batch")
    # no dropout, modality dropout or peak sampling: training scores what evaluation scores
    model = MultiVAE(
        mdata,
        n_latent=4,
        n_hidden=32,
        dropout_rate=0.0,
        modality_dropout=0.0,
        n_sampled_peaks=None,
    )
    model.train(
        max_epochs=20,
        train_size=1.0,
        seed=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return mdata, model


# (a) agreement with the training history ---------------------------------------------------
def test_elbo_matches_training_history_poissonvae(rna_model, quiet):
    _, model = rna_model
    hist = _frozen_epoch(model, quiet)
    elbos = [model.get_elbo(rng=seed) for seed in range(4)]
    recs = [model.get_reconstruction_error(rng=seed) for seed in range(4)]
    assert set(recs[0]) == {"rna"}
    # sign: scvi-tools' get_elbo is the ELBO (higher is better), history's elbo_train its negative
    assert max(elbos) < 0
    # one posterior sample per cell on both sides: ~1% of Monte Carlo noise, averaged over 4
    assert -np.mean(elbos) == pytest.approx(hist["elbo_train"], rel=0.02)
    rec = np.mean([r["rna"] for r in recs])
    assert rec == pytest.approx(hist["reconstruction_loss_train"], rel=0.02)
    # same rng, same z: the difference is the KL term, analytic, at weight 1 (not the warm-up's)
    kls = [-e - r["rna"] for e, r in zip(elbos, recs, strict=True)]
    np.testing.assert_allclose(kls, hist["kl_local_train"], rtol=1e-3)


def test_elbo_matches_training_history_multivae(multi_model, quiet):
    _, model = multi_model
    hist = _frozen_epoch(model, quiet)
    elbos = [model.get_elbo(rng=seed) for seed in range(4)]
    recs = [model.get_reconstruction_error(rng=seed) for seed in range(4)]
    assert set(recs[0]) == {"rna", "atac"}
    # a young posterior: a few % of Monte Carlo noise per evaluation, averaged over 4
    assert -np.mean(elbos) == pytest.approx(hist["elbo_train"], rel=0.05)
    rec_total = np.mean([r["rna"] + r["atac"] for r in recs])
    assert rec_total == pytest.approx(hist["reconstruction_loss_train"], rel=0.05)
    kls = [-e - r["rna"] - r["atac"] for e, r in zip(elbos, recs, strict=True)]
    np.testing.assert_allclose(kls, hist["kl_local_train"], rtol=1e-3)


def test_per_cell_values_indices_and_new_data(rna_model):
    adata, model = rna_model
    per_cell = model.get_elbo(return_mean=False, rng=0)
    assert per_cell.shape == (adata.n_obs,)
    assert per_cell.mean() == pytest.approx(model.get_elbo(rng=0), rel=1e-9)
    # per-cell values in the order of the cells asked for: the deepest cell has the lowest
    # ELBO, the shallowest the highest (a few % of Monte Carlo noise, far below their gap)
    totals = np.asarray(adata.X.sum(1)).ravel()
    idx = [int(totals.argmax()), int(totals.argmin())]
    for getter in (model.get_elbo, functools.partial(model.get_marginal_ll, n_mc_samples=20)):
        every = np.mean([getter(return_mean=False, rng=s) for s in range(3)], 0)
        picked = np.mean([getter(indices=idx, return_mean=False, rng=s) for s in range(3, 6)], 0)
        assert picked.shape == (2,)
        assert picked[0] < picked[1]
        # each value is nearer the same cell's than the other cell's
        gap = np.abs(picked[:, None] - every[idx][None, :])
        assert (gap.argmin(1) == [0, 1]).all()
    rec = model.get_reconstruction_error(return_mean=False, rng=0)
    assert rec["rna"].shape == (adata.n_obs,)
    # new data: a copy with other cell names scores like the training cells
    new = adata[:50].copy()
    new.obs_names = [f"new_{i}" for i in range(50)]
    sub = model.get_marginal_ll(new, n_mc_samples=5, return_mean=False, rng=0)
    same = model.get_marginal_ll(indices=np.arange(50), n_mc_samples=5, return_mean=False, rng=0)
    np.testing.assert_allclose(sub, same, rtol=1e-5)


def test_seeded_and_global_rng_untouched(rna_model):
    _, model = rna_model
    state = torch.get_rng_state()
    assert model.get_elbo(rng=3) == model.get_elbo(rng=3)
    assert model.get_elbo(rng=3) != model.get_elbo(rng=4)
    assert torch.equal(state, torch.get_rng_state())


# (b) marginal log-likelihood ----------------------------------------------------------------
def test_marginal_ll_above_elbo_and_rises_with_samples(rna_model):
    _, model = rna_model
    elbo = model.get_elbo(rng=0)
    ll_1 = model.get_marginal_ll(n_mc_samples=1, rng=0)
    ll_10 = model.get_marginal_ll(n_mc_samples=10, rng=0)
    ll_100 = model.get_marginal_ll(n_mc_samples=100, rng=0)
    # one sample, the same z as the ELBO's: log p(x|z) + log p(z) - log q(z|x), the ELBO with
    # its KL by Monte Carlo (log p(z) alone is ~ -7 nats per cell here)
    assert ll_1 == pytest.approx(elbo, abs=1.0)
    assert elbo < ll_10 < ll_100


def test_marginal_ll_with_discrete_latent(quiet):
    adata = scgenvae.datasets.synthetic_rna(n_obs=200, n_vars=50, rng=0)
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4, n_hidden=32, n_clusters=3)
    model.train(max_epochs=6, train_size=1.0, seed=0, **quiet)
    assert bool(model.module.prior.initialised)
    elbo = np.mean([model.get_elbo(rng=s) for s in range(3)])
    assert elbo < model.get_marginal_ll(n_mc_samples=30, rng=0)


def test_mixture_prior_log_prob_is_the_mixture_density():
    from scgenvae.module import GaussianMixturePrior

    prior = GaussianMixturePrior(3, 2)
    z = torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    # before initialisation the prior acts as N(0, I)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(prior.log_prob(z), expected)
    with torch.no_grad():
        prior.log_scales.fill_(math.log(0.5))
    prior.initialised.fill_(1)
    dens = sum(
        torch.distributions.Normal(prior.means[k], 0.5).log_prob(z).sum(-1).exp() / 3
        for k in range(3)
    )
    torch.testing.assert_close(prior.log_prob(z), dens.log(), rtol=1e-5, atol=1e-5)


# (c) choosing a likelihood ------------------------------------------------------------------
def test_nb_beats_poisson_on_overdispersed_counts(quiet):
    data = scgenvae.datasets.synthetic_de(n_obs=400, n_vars=60, theta=2.0, rng=0)
    train, test = data[:300].copy(), data[300:].copy()
    scores = {}
    for likelihood in ("poisson", "nb"):
        PoissonVAE.setup_anndata(train, batch_key="batch")
        model = PoissonVAE(train, n_latent=4, n_hidden=32, gene_likelihood=likelihood)
        model.train(max_epochs=15, seed=0, **quiet)
        scores[likelihood] = model.get_marginal_ll(test, n_mc_samples=20, rng=0)
    # overdispersion the Poisson cannot describe: many nats per cell
    assert scores["nb"] > scores["poisson"] + 10


# (d) posterior predictive -------------------------------------------------------------------
def test_posterior_predictive_sample_sparse_shape_and_mean(rna_model):
    adata, model = rna_model
    one = model.posterior_predictive_sample(rng=0)
    assert isinstance(one, sparse.csr_matrix)
    assert one.shape == (adata.n_obs, adata.n_vars)
    n = 200
    many = model.posterior_predictive_sample(n_samples=n, rng=0)
    assert many.shape == (n * adata.n_obs, adata.n_vars)
    draws = many.toarray().reshape(n, adata.n_obs, adata.n_vars)
    # Poisson at the observed library: each cell's expected total is its library size
    totals = np.asarray(adata.X.sum(1)).ravel()
    np.testing.assert_allclose(draws.sum(2).mean(0), totals, rtol=0.02)
    expected = model.get_normalized_expression(library_size="latent", return_numpy=True)
    mean = draws.mean(0)
    # the predictive mean averages the rates over q(z | x); the posterior-mean decoding is close
    assert np.corrcoef(mean.ravel(), expected.ravel())[0, 1] > 0.99
    rel_dev = np.abs(mean - expected).sum() / expected.sum()
    assert rel_dev < 0.1


def test_posterior_predictive_gene_list_and_target(rna_model, multi_model):
    adata, model = rna_model
    genes = list(adata.var_names[[3, 1, 7]])
    x = model.posterior_predictive_sample(gene_list=genes, rng=0)
    assert x.shape == (adata.n_obs, 3)
    full = model.posterior_predictive_sample(rng=0)
    # columns in the model's feature order; the same draws as the full matrix
    np.testing.assert_array_equal(x.toarray(), full[:, [1, 3, 7]].toarray())
    mdata, mv = multi_model
    atac = mv.posterior_predictive_sample(target="atac", n_samples=2, modality="rna", rng=0)
    assert atac.shape == (2 * mdata.n_obs, mdata.mod["atac"].n_vars)
    assert set(np.unique(atac.data)) <= {1.0}


# (e) library and region factors -------------------------------------------------------------
def test_library_size_factors(rna_model, multi_model):
    adata, model = rna_model
    lib = model.get_library_size_factors()
    assert list(lib.columns) == ["rna"]
    assert lib.index.equals(adata.obs_names)
    np.testing.assert_allclose(lib["rna"], np.asarray(adata.X.sum(1)).ravel())
    sub = model.get_library_size_factors(indices=adata.obs_names[[5, 2]])
    assert list(sub.index) == list(adata.obs_names[[5, 2]])
    mdata, mv = multi_model
    lib = mv.get_library_size_factors()
    assert list(lib.columns) == ["rna", "atac"]
    assert lib.index.equals(mdata.obs_names)
    observed = np.asarray(mdata.mod["atac"].X.sum(1)).ravel()
    seen = observed > 0
    np.testing.assert_allclose(lib["atac"][seen], observed[seen])
    # a cell without ATAC (one here) gets the depth predicted from its latent
    assert (lib["atac"][~seen] > 0).all()


def test_library_size_predicted_where_a_modality_is_missing(multi_model):
    mdata, mv = multi_model
    missing = mdata.copy()
    x = missing.mod["atac"].X.tolil()
    x[:20] = 0
    missing.mod["atac"].X = sparse.csr_matrix(x)
    lib = mv.get_library_size_factors(missing)["atac"].to_numpy()
    assert np.isfinite(lib[:20]).all()
    assert (lib[:20] > 0).all()
    observed = np.asarray(mdata.mod["atac"].X.sum(1)).ravel()
    seen = observed > 0
    seen[:20] = False
    np.testing.assert_allclose(lib[seen], observed[seen])
    # the predicted depth is of the size of the observed ones, not the 0 of an empty row
    assert 0.2 * observed.mean() < lib[:20].mean() < 5 * observed.mean()


def test_region_factors(multi_model, quiet):
    mdata, mv = multi_model
    rf = mv.get_region_factors()
    assert list(rf.columns) == ["region_factor", "region_logit", "depth_response"]
    assert rf.index.equals(mdata.mod["atac"].var_names)
    assert ((rf["region_factor"] > 0) & (rf["region_factor"] < 1)).all()
    # the region factor follows how often each peak is open
    freq = np.asarray((mdata.mod["atac"].X > 0).mean(0)).ravel()
    assert np.corrcoef(rf["region_logit"], freq)[0, 1] > 0.5
    pois = MultiVAE(mdata, n_latent=4, n_hidden=32, atac_likelihood="poisson")
    pois.train(max_epochs=1, seed=0, **quiet)
    with pytest.raises(ValueError, match="atac_likelihood='poisson'"):
        pois.get_region_factors()


# (f) bad arguments --------------------------------------------------------------------------
def test_bad_arguments(rna_model):
    adata, model = rna_model
    with pytest.raises(ValueError, match="`n_mc_samples` must be a positive integer"):
        model.get_marginal_ll(n_mc_samples=0)
    with pytest.raises(ValueError, match="`n_samples` must be a positive integer"):
        model.posterior_predictive_sample(n_samples=1.5)
    with pytest.raises(ValueError, match="`target='atac'` is not one of"):
        model.posterior_predictive_sample(target="atac")
    with pytest.raises(ValueError, match=r"`gene_list`: 1 name\(s\) are not rna features"):
        model.posterior_predictive_sample(gene_list=[adata.var_names[0], "nope"])
    with pytest.raises(TypeError, match="list of feature names"):
        model.posterior_predictive_sample(gene_list=adata.var_names[0])
    with pytest.raises(ValueError, match="modality='atac'"):
        model.get_elbo(modality="atac")
    with pytest.raises(ValueError, match="transform_batch='nope'"):
        model.posterior_predictive_sample(transform_batch="nope")
    with pytest.raises(ValueError, match="trained on 50 features"):
        model.get_elbo(adata[:, :10].copy())


def test_untrained_model_refused(adata):
    PoissonVAE.setup_anndata(adata)
    model = PoissonVAE(adata)
    with pytest.raises(RuntimeError):
        model.get_elbo()
    with pytest.raises(RuntimeError):
        model.get_library_size_factors()
