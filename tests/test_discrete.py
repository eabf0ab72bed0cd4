"""Discrete latent: the Gumbel-Softmax relaxation itself, and clustering with models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from scgenvae.model import PoissonVAE
from scgenvae.module import GaussianMixturePrior, gumbel_softmax_sample


def test_samples_approach_one_hot_as_tau_falls():
    logits = torch.randn(2000, 5, generator=torch.Generator().manual_seed(0))
    gaps = []
    for tau in (5.0, 1.0, 0.3, 0.05):
        s = gumbel_softmax_sample(logits, tau, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(s.sum(-1), torch.ones(2000))
        gaps.append(float((1 - s.max(-1).values).mean()))
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 0.05
    assert gaps[0] > 0.5


def test_argmax_of_sample_follows_categorical_probabilities():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20000, 3)
    s = gumbel_softmax_sample(logits, 0.5, generator=torch.Generator().manual_seed(2))
    freq = torch.bincount(s.argmax(-1), minlength=3).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.02, rtol=0)


def test_gradients_flow_through_the_soft_sample():
    logits = torch.randn(8, 4, requires_grad=True)
    w = torch.randn(4)
    s = gumbel_softmax_sample(logits, 0.5)
    (s * w).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_straight_through_is_one_hot_forwards_with_soft_gradients():
    logits = torch.randn(8, 4, requires_grad=True)
    s = gumbel_softmax_sample(logits, 0.5, hard=True)
    assert set(s.detach().unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(s.detach().sum(-1), torch.ones(8))
    (s * torch.randn(4)).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_mixture_prior_kl_terms():
    prior = GaussianMixturePrior(3, 2, n_hidden=8)
    prior.initialised.fill_(1)
    prior.eval()
    qz = torch.distributions.Normal(prior.means.detach()[[0, 1, 2]], torch.ones(3, 2))
    comp = prior.component_kl(qz)
    assert torch.allclose(torch.diagonal(comp), torch.zeros(3), atol=1e-6)  # q equals p(z|c=k)
    assert (comp - torch.diag(torch.diagonal(comp)) >= 0).all()
    out = prior.kl(qz, None, prior.infer_cluster(qz))
    assert (out["kl_c"] >= -1e-6).all()  # KL to the uniform prior is non-negative
    assert out["kl_z"].shape == (3,)


@pytest.mark.quality
def test_poissonvae_clusters_synthetic_groups(adata, quiet):
    """The model's own clusters (n_clusters=3, 80 epochs) find the 3 synthetic groups.

    Figure: ARI 1.000, 0.987, 0.968 on seeds 0, 1, 2 (range 0.032); 1 epoch: 0.33. Bar: the
    lowest seed minus twice the seed range, 0.968 - 0.064 = 0.904 -> ARI > 0.9.
    """
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4, n_clusters=3)
    model.train(max_epochs=80, seed=0, **quiet)
    probs = model.get_cluster_probabilities()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    labels = model.get_cluster_assignments()
    assert adjusted_rand_score(adata.obs["group"], labels) > 0.9
    assert "tau_train" in model.history or any("tau" in k for k in model.history)
    model.export_latent(adata)
    assert adata.obs["scgenvae_cluster"].dtype == "category"
    assert adata.obsm["scgenvae_cluster_probs"].shape == (200, 3)


def test_cluster_methods_need_a_discrete_latent(adata, quiet):
    PoissonVAE.setup_anndata(adata)
    model = PoissonVAE(adata, n_latent=4)
    model.train(max_epochs=1, **quiet)
    with pytest.raises(ValueError, match="n_clusters"):
        model.get_cluster_probabilities()


def _leiden_with_n_clusters(adata, n: int) -> np.ndarray:
    """Leiden on the latent's kNN graph at the resolution giving ``n`` clusters (bisection)."""
    import scanpy as sc

    sc.pp.neighbors(adata, use_rep="X_scgenvae", random_state=0)
    lo, hi = 0.01, 5.0
    labels = None
    for _ in range(30):
        res = (lo + hi) / 2
        sc.tl.leiden(adata, resolution=res, flavor="igraph", n_iterations=2, random_state=0)
        labels = adata.obs["leiden"].to_numpy()
        k = len(set(labels))
        if k == n:
            break
        lo, hi = (res, hi) if k < n else (lo, res)
    return labels


@pytest.mark.quality
def test_discrete_latent_vs_leiden_on_ten_groups(quiet):
    """10 known groups: the model's own clusters against leiden on the Gaussian latent.

    Figures (60 epochs, seeds 0, 1, 2): discrete-latent ARI 0.950, 0.959, 0.961 (range 0.011;
    1 epoch 0.12); leiden on the Gaussian latent at 10 clusters 0.992, 0.993, 0.888 (range
    0.105; 1 epoch 0.95); leiden minus discrete 0.042, 0.034, -0.073. The user guide quoted
    0.992 vs 0.994 from an earlier version of the model; it now quotes these figures. Bars:
    discrete ARI >= 0.950 - 2 x 0.011 -> 0.93; within 0.042 + 2 x 0.011 -> 0.065 of leiden's
    (the comparison the name claims: about as good as leiden, without choosing a resolution);
    leiden >= 0.888 - 2 x 0.105 -> 0.68 (the baseline works; it is no better at 1 epoch).
    """
    from scgenvae.datasets import synthetic_rna

    adata = synthetic_rna(n_obs=600, n_vars=100, n_groups=10, n_latent=8, rng=2)
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    discrete = PoissonVAE(adata, n_latent=8, n_clusters=10)
    discrete.train(max_epochs=60, seed=0, **quiet)
    ari_discrete = adjusted_rand_score(adata.obs["group"], discrete.get_cluster_assignments())
    gaussian = PoissonVAE(adata, n_latent=8)
    gaussian.train(max_epochs=60, seed=0, **quiet)
    gaussian.export_latent(adata)
    ari_leiden = adjusted_rand_score(adata.obs["group"], _leiden_with_n_clusters(adata, 10))
    print(f"ten groups: discrete latent ARI {ari_discrete:.3f}, leiden ARI {ari_leiden:.3f}")
    assert ari_discrete >= 0.93
    assert ari_discrete >= ari_leiden - 0.065
    assert ari_leiden >= 0.68


@pytest.mark.quality
def test_cellbench_three_clusters_recover_cell_lines(quiet):
    """n_clusters=3 on CellBench with batch = protocol: cell lines without leiden.

    Figures (200 epochs, seeds 0, 1, 2): ARI 0.951, 0.951, 0.970 (range 0.019; 1 epoch 0.25);
    the user guide quotes 0.945. Bar: the lowest seed minus twice the seed range, 0.951 -
    0.038 -> ARI >= 0.91.
    """
    import warnings

    import scanpy as sc

    from scgenvae.datasets import cellbench

    adata = cellbench()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(
            adata, n_top_genes=2000, flavor="seurat_v3", batch_key="protocol", subset=True
        )
    PoissonVAE.setup_anndata(adata, batch_key="protocol")
    model = PoissonVAE(adata, n_latent=10, n_clusters=3)
    model.train(max_epochs=200, seed=0, **quiet)
    ari = adjusted_rand_score(adata.obs["cell_line"], model.get_cluster_assignments())
    print(f"CellBench n_clusters=3: ARI {ari:.3f}")
    assert ari >= 0.91


def test_cluster_probability_plot(adata, quiet):
    import matplotlib.figure

    from scgenvae import pl

    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4, n_clusters=3)
    model.train(max_epochs=3, seed=0, **quiet)
    with pytest.raises(KeyError, match="export_latent"):
        pl.cluster_probabilities(adata)
    model.export_latent(adata)
    adata.obsm["X_umap"] = adata.obsm["X_scgenvae"][:, :2]
    fig = pl.cluster_probabilities(adata)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len([ax for ax in fig.axes if ax.get_visible()]) >= 4  # assignment + 3 probabilities
