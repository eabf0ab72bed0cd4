"""Tests that fail under the mutants of issue 15 (each checked by applying the mutant by hand).

Each test names the behaviour it pins down; the mutant it kills is noted in its docstring.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from scipy import sparse, stats
from scvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial
from torch.distributions import Normal, kl_divergence

import scgenvae
from scgenvae._constants import MODULE_KEYS, REGISTRY_KEYS
from scgenvae.datasets import synthetic_multiome, synthetic_rna
from scgenvae.model import MultiVAE, PoissonVAE
from scgenvae.tl._markers import G2M_GENES, S_GENES

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def rna_data():
    return synthetic_rna(n_obs=200, n_vars=50, rng=0)


@pytest.fixture(scope="module")
def rna_model(rna_data):
    """A trained PoissonVAE (default arguments but size); tests must not change it."""
    adata = rna_data.copy()
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4, n_hidden=32)
    model.train(max_epochs=5, seed=0, **QUIET)
    return model, adata


@pytest.fixture(scope="module")
def multi_model():
    """A trained MultiVAE on paired synthetic data; tests must not change it."""
    mdata = synthetic_multiome(n_obs=200, n_genes=50, n_peaks=100, rng=0)
    MultiVAE.setup_mudata(mdata, batch_key="batch")
    model = MultiVAE(mdata, n_latent=4, n_hidden=32)
    model.train(max_epochs=5, seed=0, **QUIET)
    return model, mdata


def _tensors(x, batch_codes, **extra) -> dict[str, torch.Tensor]:
    """A minibatch as the module reads it (dense counts, batch codes as a column)."""
    dense = x.toarray() if sparse.issparse(x) else np.asarray(x)
    out = {
        REGISTRY_KEYS.X_KEY: torch.as_tensor(dense, dtype=torch.float32),
        REGISTRY_KEYS.BATCH_KEY: torch.as_tensor(np.asarray(batch_codes).reshape(-1, 1)),
    }
    out.update(extra)
    return out


def _batch_codes(obs: pd.DataFrame) -> np.ndarray:
    return obs["batch"].cat.codes.to_numpy().astype(np.int64)


def _nb_logpmf(x, mu, theta):
    return stats.nbinom.logpmf(x, theta, theta / (theta + mu))


# ---------------------------------------------------------------------------- 1. likelihoods
def _check_count_likelihood(px, x, reconstruction, likelihood):
    """``reconstruction`` equals ``-sum log p(x)`` of an NB (or ZINB) computed by scipy."""
    mu = px.mu.detach().numpy().astype(np.float64)
    theta = np.broadcast_to(px.theta.detach().numpy().astype(np.float64), mu.shape)
    # the mean is the observed library times the decoded shares
    np.testing.assert_allclose(mu, x.sum(1, keepdims=True) * px.scale.numpy(), rtol=1e-5)
    nb = _nb_logpmf(x, mu, theta)
    if likelihood == "nb":
        assert isinstance(px, NegativeBinomial)
        assert not isinstance(px, ZeroInflatedNegativeBinomial)
        expected = -nb.sum(1)
    else:
        assert isinstance(px, ZeroInflatedNegativeBinomial)
        pi = 1 / (1 + np.exp(-px.zi_logits.detach().numpy().astype(np.float64)))
        zinb = np.where(x == 0, np.log(pi + (1 - pi) * np.exp(nb)), np.log1p(-pi) + nb)
        expected = -zinb.sum(1)
        # the zero inflation matters: the plain NB of the same mu, theta scores otherwise
        assert np.abs(expected + nb.sum(1)).mean() > 1.0
    np.testing.assert_allclose(reconstruction, expected, rtol=1e-4)
    # and it is not a Poisson of the same mean
    poisson = -stats.poisson.logpmf(x, mu).sum(1)
    assert np.abs(reconstruction - poisson).mean() > 1.0


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_poissonvae_nb_zinb_reconstruction_matches_scipy(rna_data, likelihood):
    """Mutant 1: NB/ZINB decoders silently replaced by Poisson."""
    adata = rna_data[:40].copy()
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4, n_hidden=16, gene_likelihood=likelihood)
    module = model.module.eval()
    tensors = _tensors(adata.X, _batch_codes(adata.obs))
    with torch.no_grad():
        _, gen, losses = module.forward(tensors, compute_loss=True)
    x = adata.X.toarray().astype(np.float64)
    px = gen["rna"][MODULE_KEYS.PX_KEY]
    _check_count_likelihood(px, x, losses.reconstruction_loss["rna"].numpy(), likelihood)


def test_multivae_nb_reconstruction_matches_scipy():
    """Mutant 1: MultiVAE(rna_likelihood="nb") decoded with a Poisson."""
    mdata = synthetic_multiome(n_obs=40, n_genes=30, n_peaks=40, rng=1)
    MultiVAE.setup_mudata(mdata, batch_key="batch")
    model = MultiVAE(mdata, n_latent=4, n_hidden=16, rna_likelihood="nb")
    module = model.module.eval()
    atac = torch.as_tensor(mdata.mod["atac"].X.toarray(), dtype=torch.float32)
    tensors = _tensors(
        mdata.mod["rna"].X, _batch_codes(mdata.obs), **{REGISTRY_KEYS.ATAC_KEY: atac}
    )
    with torch.no_grad():
        _, gen, losses = module.forward(tensors, compute_loss=True)
    x = mdata.mod["rna"].X.toarray().astype(np.float64)
    px = gen["rna"][MODULE_KEYS.PX_KEY]
    _check_count_likelihood(px, x, losses.reconstruction_loss["rna"].numpy(), "nb")


# ---------------------------------------------------------------------------- 2. KL weight
def test_loss_is_reconstruction_plus_weighted_kl(rna_data):
    """Mutant 2: the KL term ignored or weighted 0 in the module's loss."""
    adata = rna_data[:60].copy()
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    module = PoissonVAE(adata, n_latent=4, n_hidden=16).module.eval()
    tensors = _tensors(adata.X, _batch_codes(adata.obs))
    with torch.no_grad():
        inf, gen, _ = module.forward(tensors, compute_loss=True)
        qz = inf[MODULE_KEYS.QZ_KEY]
        kl = kl_divergence(qz, Normal(torch.zeros_like(qz.loc), 1.0)).sum(-1)
        assert float(kl.min()) > 0
        totals = {}
        for w in (0.0, 0.5, 1.0):
            out = module.loss(tensors, inf, gen, kl_weight=w)
            recon = out.reconstruction_loss["rna"]
            torch.testing.assert_close(out.kl_local["kl_z"], kl, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.loss, (recon + w * kl).mean(), rtol=1e-5, atol=1e-4)
            totals[w] = float(out.loss)
    assert totals[1.0] - totals[0.0] == pytest.approx(float(kl.mean()), abs=1e-3)
    assert totals[0.0] < totals[0.5] < totals[1.0]


def test_training_loss_follows_kl_warmup(rna_data):
    """Mutant 2: training with the KL weighted 0 (train_loss = recon + w_epoch * KL)."""
    adata = rna_data.copy()
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4, n_hidden=16)
    model.train(max_epochs=4, n_epochs_kl_warmup=4, seed=0, **QUIET)
    h = model.history
    loss = h["train_loss"]["train_loss"].to_numpy(dtype=float)
    recon = h["reconstruction_loss_train"]["reconstruction_loss_train"].to_numpy(dtype=float)
    kl = h["kl_local_train"]["kl_local_train"].to_numpy(dtype=float)
    weights = np.arange(4) / 4  # scvi-tools' linear warm-up per epoch
    assert (kl > 0).all()
    np.testing.assert_allclose(loss, recon + weights * kl, rtol=1e-4)


# ---------------------------------------------------------------------------- 3. no leak
def _permuted(mdata, mod: str, seed: int = 0):
    """A copy of ``mdata`` whose modality ``mod`` has its cells' rows shuffled."""
    out = mdata.copy()
    perm = np.random.default_rng(seed).permutation(out.n_obs)
    out.mod[mod].X = out.mod[mod].X[perm]
    return out


def test_expression_from_atac_does_not_read_the_rna(multi_model):
    """Mutant 3: expression "imputed from ATAC" computed from the cell's own RNA."""
    model, mdata = multi_model
    other = _permuted(mdata, "rna")
    # cells with ATAC counts (a cell without any gets NaN from the ATAC encoder)
    has = np.asarray(mdata.mod["atac"].X.sum(1)).ravel() > 0
    from_atac = model.get_normalized_expression(
        mdata, modality="atac", indices=has, return_numpy=True
    )
    np.testing.assert_allclose(
        model.get_normalized_expression(other, modality="atac", indices=has, return_numpy=True),
        from_atac,
        rtol=1e-5,
    )
    # the test can fail: the joint posterior does read the RNA
    joint = model.get_normalized_expression(mdata, return_numpy=True)
    assert np.abs(model.get_normalized_expression(other, return_numpy=True) - joint).max() > 1e-3
    assert np.abs(joint[has] - from_atac).max() > 1e-3


def test_accessibility_from_rna_does_not_read_the_atac(multi_model):
    """Mutant 3 (other direction): accessibility "imputed from RNA" reading the ATAC."""
    model, mdata = multi_model
    other = _permuted(mdata, "atac")
    from_rna = model.get_accessibility_estimates(mdata, modality="rna", return_numpy=True)
    np.testing.assert_allclose(
        model.get_accessibility_estimates(other, modality="rna", return_numpy=True),
        from_rna,
        rtol=1e-5,
    )
    joint = model.get_accessibility_estimates(mdata, return_numpy=True)
    assert np.abs(model.get_accessibility_estimates(other, return_numpy=True) - joint).max() > 1e-3


# ---------------------------------------------------------------------------- 4. encoder batch
def _swap_batches(adata):
    out = adata.copy()
    codes = _batch_codes(out.obs)
    cats = out.obs["batch"].cat.categories
    out.obs["batch"] = pd.Categorical(cats[1 - codes], categories=cats)
    return out


def test_encoder_reads_the_batch(rna_model):
    """Mutant 4: the encoder ignores the batch although encode_covariates=True (default)."""
    model, adata = rna_model
    z = model.get_latent_representation(adata)
    z_swapped = model.get_latent_representation(_swap_batches(adata))
    assert np.abs(z - z_swapped).max(1).min() > 1e-4  # every cell moves


def test_encoder_without_covariates_ignores_the_batch(rna_data):
    """The control of the test above: with encode_covariates=False the latent does not move."""
    adata = rna_data.copy()
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4, n_hidden=16, encode_covariates=False)
    model.train(max_epochs=1, seed=0, **QUIET)
    np.testing.assert_allclose(
        model.get_latent_representation(_swap_batches(adata)),
        model.get_latent_representation(adata),
        rtol=1e-6,
    )


# ---------------------------------------------------------------------------- 5. metrics
def test_foscttm_by_hand():
    """Mutant 5: foscttm returning 0 or a wrong value."""
    # x = 0, 1, 2 and y = 1, 0, 2: cells 0 and 1 each have one closer wrong match of 2
    x, y = np.array([[0.0], [1.0], [2.0]]), np.array([[1.0], [0.0], [2.0]])
    assert scgenvae.metrics.foscttm(x, y) == pytest.approx(1 / 3)
    # asymmetric: x -> y: cell 1 (x=1, y=3) has y=0 closer (1/2); y -> x: no cell has one
    x, y = np.array([[0.0], [1.0], [5.0]]), np.array([[0.0], [3.0], [5.0]])
    assert scgenvae.metrics.foscttm(x, y) == pytest.approx((1 / 6 + 0) / 2)
    assert scgenvae.metrics.foscttm(x, x) == 0.0
    # reversed order on a line: all n-1 others of cell 0 are closer than its match
    line = np.arange(5.0).reshape(-1, 1)
    assert scgenvae.metrics.foscttm(line, line[::-1]) > 0.4
    with pytest.raises(ValueError, match="same shape"):
        scgenvae.metrics.foscttm(x, y[:2])


def test_knn_accuracy_by_hand():
    """Mutant 5: knn_accuracy wrong (1 on separated groups, chance on unrelated labels)."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    rep = rng.normal(scale=0.1, size=(100, 2)) + labels[:, None] * 10.0
    assert scgenvae.metrics.knn_accuracy(rep, labels, n_neighbors=5) == 1.0
    shuffled = rng.permutation(labels)
    acc = scgenvae.metrics.knn_accuracy(rep, shuffled, n_neighbors=5)
    assert 0.2 < acc < 0.8
    assert scgenvae.metrics.knn_accuracy(rep, shuffled, n_neighbors=5) == acc  # seeded
    # every training cell a neighbour: each fold predicts the majority class, so the mean
    # accuracy over the (unequal) stratified folds is about that class's share, 62 / 103
    labels = np.repeat([0, 1], [62, 41])
    rep = rng.normal(size=(103, 2))
    acc = scgenvae.metrics.knn_accuracy(rep, labels, n_neighbors=82)
    assert acc == pytest.approx(62 / 103, abs=0.002)


def test_auroc_auprc_by_hand():
    """Mutant 5: auroc_auprc wrong."""
    observed = sparse.csr_matrix(np.array([[3, 0], [1, 0]]))  # counts > 0 are positives
    predicted = np.array([[0.9, 0.8], [0.3, 0.1]])
    # pairs (pos, neg) won: 0.9>0.8, 0.9>0.1, 0.3>0.1 of 4; AP = 0.5 * 1 + 0.5 * 2/3
    auroc, auprc = scgenvae.metrics.auroc_auprc(observed, predicted)
    assert auroc == pytest.approx(0.75)
    assert auprc == pytest.approx(5 / 6)


def test_mean_gene_spearman_by_hand():
    """Mutant 5: mean_gene_spearman wrong (it ranks per-cell proportions, not counts)."""
    observed = np.array([[1, 1, 0], [2, 6, 0], [3, 1, 0]])
    # proportions: gene 0 is 0.5, 0.25, 0.75 (ranks 2, 1, 3); gene 1 ranks 2, 3, 1; gene 2 skipped
    predicted = np.array([[0.2, 0.1, 0.5], [0.1, 0.3, 0.1], [0.3, 0.2, 0.4]])
    # gene 0: same ranks -> 1; gene 1: pred ranks 1, 3, 2 -> 1 - 6 * 2 / (3 * 8) = 0.5
    assert scgenvae.metrics.mean_gene_spearman(observed, predicted) == pytest.approx(0.75)
    assert scgenvae.metrics.mean_gene_spearman(
        sparse.csr_matrix(observed), predicted
    ) == pytest.approx(0.75)
    assert np.isnan(scgenvae.metrics.mean_gene_spearman(observed, np.ones((3, 3))))


# ---------------------------------------------------------------------------- 6. tau
def test_gumbel_softmax_temperature_anneals(rna_data):
    """Mutant 6: the Gumbel-Softmax temperature never anneals."""
    adata = rna_data.copy()
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4, n_hidden=16, n_clusters=3)
    plan = {"tau_start": 1.0, "tau_min": 0.3, "n_epochs_tau_anneal": 3, "cluster_init_epoch": 1}
    model.train(max_epochs=6, seed=0, plan_kwargs=plan, **QUIET)
    tau = model.history["tau_train"]["tau_train"].astype(float)
    epochs = tau.index.to_numpy()
    assert {2, 3, 4, 5} <= set(epochs)
    # tau_start * (tau_min / tau_start) ** min(1, (epoch - cluster_init_epoch) / n_anneal)
    expected = 1.0 * 0.3 ** np.minimum(1.0, np.maximum(0, epochs - 1) / 3)
    np.testing.assert_allclose(tau.to_numpy(), expected, rtol=1e-5)
    assert tau.iloc[-1] == pytest.approx(0.3)
    assert tau.max() == pytest.approx(1.0)


# ---------------------------------------------------------------------------- 7. decode_latent
def test_decode_latent_uses_transform_batch(rna_model):
    """Mutant 7: decode_latent ignoring transform_batch."""
    model, _ = rna_model
    z = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    first = model.decode_latent(z, transform_batch="batch_0")["rna"]
    second = model.decode_latent(z, transform_batch="batch_1")["rna"]
    assert first.shape == second.shape == (7, 50)
    np.testing.assert_allclose(first.sum(1), 1.0, rtol=1e-5)
    assert np.abs(first - second).max(1).min() > 1e-5  # every point differs
    # default: the first batch
    np.testing.assert_allclose(model.decode_latent(z)["rna"], first, rtol=1e-6)
    with pytest.raises(ValueError, match="not a training batch"):
        model.decode_latent(z, transform_batch="batch_9")


def test_normalized_expression_transform_batch(rna_model):
    """Mutant 7 (the getter's side): transform_batch changes the decoded expression."""
    model, adata = rna_model
    a = model.get_normalized_expression(transform_batch="batch_0", return_numpy=True)
    b = model.get_normalized_expression(transform_batch="batch_1", return_numpy=True)
    assert a.shape == b.shape == (adata.n_obs, adata.n_vars)
    assert np.abs(a - b).max(1).min() > 1e-5
    # decoding each cell under its own batch is the plain getter
    own = np.where((adata.obs["batch"] == "batch_0").to_numpy()[:, None], a, b)
    np.testing.assert_allclose(model.get_normalized_expression(return_numpy=True), own, rtol=1e-5)


# ---------------------------------------------------------------------------- 8. cell cycle
@pytest.fixture(scope="module")
def cycling():
    """Counts where cells 0-19 express S markers, 20-39 G2/M markers, 40-59 neither."""
    rng = np.random.default_rng(0)
    genes = [*S_GENES, *G2M_GENES, *[f"OTHER{i}" for i in range(300)]]
    s = np.isin(genes, S_GENES)
    g2m = np.isin(genes, G2M_GENES)
    rate = np.full((60, len(genes)), 5.0)
    rate[:, ~(s | g2m)] = rng.gamma(2.0, 2.5, size=(~(s | g2m)).sum())
    rate[:20, s] *= 6
    rate[20:40, g2m] *= 6
    x = rng.poisson(rate).astype(np.float32)
    return AnnData(
        X=sparse.csr_matrix(x),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(60)]),
        var=pd.DataFrame(index=genes),
    )


def test_score_cell_cycle_finds_the_phases(cycling):
    """Mutant 8: score_cell_cycle labelling every cell G1."""
    adata = cycling.copy()
    scgenvae.tl.score_cell_cycle(adata)
    phase = adata.obs["phase"].astype(str).to_numpy()
    assert (phase[:20] == "S").all()
    assert (phase[20:40] == "G2M").all()
    assert (phase[40:] == "G1").mean() > 0.8
    assert (adata.obs["S_score"].to_numpy()[:20] > 0).all()
    assert (adata.obs["G2M_score"].to_numpy()[20:40] > 0).all()


# ---------------------------------------------------------------------------- more behaviours
def test_give_mean_false_samples_the_posterior(rna_model):
    """give_mean=False: samples differ from the mean and between calls; their mean is the mean."""
    model, _ = rna_model
    mean = model.get_latent_representation()
    a = model.get_latent_representation(give_mean=False)
    b = model.get_latent_representation(give_mean=False)
    assert a.shape == mean.shape
    assert np.abs(a - mean).min() > 0
    assert np.abs(a - b).min() > 0
    samples = np.stack([model.get_latent_representation(give_mean=False) for _ in range(100)])
    se = samples.std(0) / np.sqrt(len(samples))
    assert (np.abs(samples.mean(0) - mean) < 5 * se + 1e-6).all()


def test_numeric_library_size_scales_rows(rna_model):
    """get_normalized_expression(library_size=...): rows sum to the number given."""
    model, adata = rna_model
    base = model.get_normalized_expression(return_numpy=True)
    np.testing.assert_allclose(base.sum(1), 1.0, rtol=1e-5)
    scaled = model.get_normalized_expression(library_size=1e4, return_numpy=True)
    np.testing.assert_allclose(scaled.sum(1), 1e4, rtol=1e-5)
    np.testing.assert_allclose(scaled, 1e4 * base, rtol=1e-5)
    latent = model.get_normalized_expression(
        library_size="latent", indices=[3, 1], return_numpy=True
    )
    np.testing.assert_allclose(
        latent.sum(1), np.asarray(adata.X[[3, 1]].sum(1)).ravel(), rtol=1e-5
    )


def test_train_size_sets_the_training_cells(rna_data):
    """train(train_size=0.8): 80% of the cells train, the rest validate."""
    adata = rna_data.copy()
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4, n_hidden=16)
    model.train(max_epochs=1, train_size=0.8, seed=0, **QUIET)
    train, valid = np.asarray(model.train_indices), np.asarray(model.validation_indices)
    assert len(train) == 160
    assert len(valid) == 40
    assert set(train).isdisjoint(valid)
    assert set(train) | set(valid) == set(range(adata.n_obs))


@pytest.mark.usefixtures("_restore_verbosity")
def test_verbosity_info_shows_log_records(cycling, capsys, caplog):
    """settings.verbosity = "INFO" makes scgenvae's info records visible."""
    adata = cycling.copy()
    scgenvae.tl.score_cell_cycle(adata)
    assert "cell-cycle markers found" not in capsys.readouterr().err
    assert not [r for r in caplog.records if r.name.startswith("scgenvae")]
    scgenvae.settings.verbosity = "INFO"
    assert scgenvae.settings.verbosity == logging.INFO
    scgenvae.tl.score_cell_cycle(adata)
    assert "INFO: cell-cycle markers found" in capsys.readouterr().err
    assert any(r.name.startswith("scgenvae") and r.levelno == logging.INFO for r in caplog.records)


def test_multivae_poisson_atac_gives_rates():
    """MultiVAE(atac_likelihood="poisson") trains on fragment counts; estimates are rates."""
    mdata = synthetic_multiome(n_obs=100, n_genes=30, n_peaks=60, rng=2)
    atac = mdata.mod["atac"].X
    mdata.mod["atac"].X = atac.multiply(
        np.random.default_rng(0).integers(1, 4, size=atac.shape)
    ).tocsr()
    MultiVAE.setup_mudata(mdata, batch_key="batch")
    model = MultiVAE(mdata, n_latent=4, n_hidden=16, atac_likelihood="poisson")
    model.train(max_epochs=3, seed=0, **QUIET)
    assert np.isfinite(model.history["elbo_train"]["elbo_train"].astype(float)).all()
    for use in ("joint", "rna"):
        acc = model.get_accessibility_estimates(modality=use, return_numpy=True)
        assert acc.shape == (100, 60)
        assert np.isfinite(acc).all()
        assert (acc >= 0).all()
        # normalised rates (shares of the cell's fragments), not Bernoulli probabilities
        np.testing.assert_allclose(acc.sum(1), 1.0, rtol=1e-4)
