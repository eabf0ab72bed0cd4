from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from matplotlib.figure import Figure

import scgenvae
from scgenvae.datasets._cell_cycle import synthetic_cell_cycle
from scgenvae.tl import align_cell_cycle

TWO_PI = 2 * np.pi


@pytest.fixture(scope="module")
def _aligned():
    adata = synthetic_cell_cycle(n_obs=300, rng=0)
    lg = adata.copy()
    sc.pp.normalize_total(lg, target_sum=1e4)
    sc.pp.log1p(lg)
    sc.pp.pca(lg, n_comps=8, random_state=0)
    adata.obsm["X_pca"] = lg.obsm["X_pca"]
    align_cell_cycle(adata, use_rep="X_pca")
    adata.obsm["X_umap"] = lg.obsm["X_pca"][:, [2, 3]]  # any 2-D embedding
    return adata


@pytest.fixture
def aligned(_aligned):
    return _aligned.copy()


@pytest.fixture
def traversal(_aligned):
    """A traversal-shaped AnnData: steps x features with angle, phase and modality."""
    n, rng = 40, np.random.default_rng(0)
    angle = np.linspace(0, TWO_PI, n, endpoint=False)
    peaks = rng.uniform(0, TWO_PI, 30)
    x = np.exp(np.cos(angle[:, None] - peaks[None, :]))
    x /= x.sum(1, keepdims=True)
    phase = np.where(angle < 2, "S", np.where(angle < 4, "G2M", "G1"))
    return ad.AnnData(
        X=x.astype(np.float32),
        obs=pd.DataFrame(
            {
                "step": np.arange(n),
                "cell_cycle_angle": angle,
                "cell_cycle_phase": pd.Categorical(phase, categories=["G1", "S", "G2M"]),
            },
            index=[f"step_{i}" for i in range(n)],
        ),
        var=pd.DataFrame(
            {
                "modality": pd.Categorical(["rna"] * 20 + ["atac"] * 10),
                "symbol": [f"G{i}" for i in range(30)],
            },
            index=[f"f{i}" for i in range(30)],
        ),
    )


def test_cell_cycle_figure(aligned):
    fig = scgenvae.pl.cell_cycle(aligned)
    assert isinstance(fig, Figure)
    ax0 = fig.axes[0]
    assert ax0.collections[0].get_cmap().name == "twilight"
    assert ax0.collections[0].get_clim() == (0, TWO_PI)
    assert len(ax0.lines) >= 1  # the fitted ellipse
    assert any(ax.get_title() == "marker scores along the cycle" for ax in fig.axes)
    fig2 = scgenvae.pl.cell_cycle(aligned, basis="X_umap", show_scores=False, cmap="hsv")
    assert fig2.axes[0].collections[0].get_cmap().name == "hsv"
    assert fig2.axes[0].get_xlabel() == "X_umap 1"


def test_cell_cycle_figure_needs_alignment(aligned):
    del aligned.uns["cell_cycle"]
    with pytest.raises(KeyError, match="align_cell_cycle"):
        scgenvae.pl.cell_cycle(aligned)


def test_angle_vs_genes(aligned):
    fig = scgenvae.pl.angle_vs_genes(aligned, ["PCNA", "MCM6", "CDK1", "TOP2A", "AURKA"], ncols=3)
    assert isinstance(fig, Figure)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["PCNA", "MCM6", "CDK1", "TOP2A", "AURKA"]
    assert visible[0].get_ylabel() == "log1p(counts per 10k)"
    assert scgenvae.pl.angle_vs_genes(aligned, "PCNA", phase_key=None) is not None
    with pytest.raises(KeyError, match="not found"):
        scgenvae.pl.angle_vs_genes(aligned, ["NOT_A_GENE"])
    with pytest.raises(ValueError, match="empty"):
        scgenvae.pl.angle_vs_genes(aligned, [])
    sym = aligned.copy()
    sym.var["symbol"] = sym.var_names
    sym.var_names = [f"ENSG{i:011d}" for i in range(sym.n_vars)]
    fig = scgenvae.pl.angle_vs_genes(sym, ["PCNA"], gene_symbols="symbol")
    assert fig.axes[0].get_title() == "PCNA"


def test_traversal_heatmap(traversal):
    fig = scgenvae.pl.traversal_heatmap(traversal)
    assert isinstance(fig, Figure)
    heat = [ax for ax in fig.axes if ax.images and ax.get_yticklabels()]
    assert heat
    fig = scgenvae.pl.traversal_heatmap(
        traversal, genes=["G3", "G1", "G2"], gene_symbols="symbol", sort_by_peak=False
    )
    labels = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    assert labels == ["G3", "G1", "G2"]
    fig = scgenvae.pl.traversal_heatmap(traversal, modality="atac", standard_scale=None)
    assert isinstance(fig, Figure)
    with pytest.raises(KeyError, match="not in the traversal"):
        scgenvae.pl.traversal_heatmap(traversal, genes=["nope"])
    with pytest.raises(ValueError, match="standard_scale"):
        scgenvae.pl.traversal_heatmap(traversal, standard_scale="obs")


def test_traversal_heatmap_axis_traversal(traversal):
    axis = traversal.copy()
    del axis.obs["cell_cycle_angle"], axis.obs["cell_cycle_phase"]
    axis.obs["latent_value"] = np.linspace(-2, 2, axis.n_obs)
    axis.uns["latent_traversal"] = {"params": {"along": 3}}
    fig = scgenvae.pl.traversal_heatmap(axis, n_top=5)
    assert fig.axes[0].get_xlabel() == "latent dimension 3"
    assert len(fig.axes[0].get_yticklabels()) == 5


def test_figures_do_not_touch_data(aligned):
    before = aligned.copy()
    scgenvae.pl.cell_cycle(aligned)
    scgenvae.pl.angle_vs_genes(aligned, ["PCNA"])
    assert set(aligned.obs) == set(before.obs)
    assert set(aligned.uns) == set(before.uns)
    assert (aligned.X != before.X).nnz == 0
