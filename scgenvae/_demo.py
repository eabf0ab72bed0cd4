"""The main job: train on bundled data and write annotated files and figures."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np

from scgenvae._quiet import quiet

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger(__name__)


def _umap_png(adata, keys: list[str], path: Path, title: str) -> Path:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    sc.pp.neighbors(adata, use_rep="X_scgenvae", key_added="scgenvae", random_state=0)
    sc.tl.umap(adata, neighbors_key="scgenvae", random_state=0)
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4.2))
    for ax, key in zip(np.atleast_1d(axes), keys, strict=True):
        with quiet():  # scanpy's own call of a deprecated AnnData method
            sc.pl.umap(adata, color=key, ax=ax, show=False, title=f"{title}: {key}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_cellbench(out: Path, *, max_epochs: int | None, seed: int) -> list[Path]:
    """PoissonVAE on CellBench (3 cell lines x 2 protocols), batch = protocol."""
    import scanpy as sc

    from scgenvae.datasets import cellbench
    from scgenvae.model import PoissonVAE

    adata = cellbench()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sc.pp.highly_variable_genes(
            adata, n_top_genes=2000, flavor="seurat_v3", batch_key="protocol", subset=True
        )
    PoissonVAE.setup_anndata(adata, batch_key="protocol")
    model = PoissonVAE(adata, n_latent=10)
    model.train(max_epochs=max_epochs or 200, seed=seed, enable_progress_bar=False)
    model.export_latent(adata)
    png = _umap_png(adata, ["protocol", "cell_line"], out / "cellbench_umap.png", "PoissonVAE")
    h5ad = out / "cellbench_poissonvae.h5ad"
    adata.write_h5ad(h5ad)
    return [h5ad, png]


def run_a549(out: Path, *, max_epochs: int | None, seed: int) -> list[Path]:
    """MultiVAE on the sci-CAR A549 multiome (RNA + ATAC), coloured by dexamethasone time."""
    from scgenvae.datasets import scicar_a549
    from scgenvae.model import MultiVAE

    mdata = scicar_a549()
    MultiVAE.setup_mudata(mdata, rna_mod="rna", atac_mod="atac")
    model = MultiVAE(mdata)
    model.train(max_epochs=max_epochs or 25, seed=seed, enable_progress_bar=False)
    model.export_latent(mdata)
    png = _umap_png(mdata, ["Time"], out / "a549_multivae_umap.png", "MultiVAE joint latent")
    # no cell-cycle figure here: the sci-CAR A549 panel holds too few cell-cycle markers to
    # orient a cycle (1 of 43 S, 2 of 54 G2/M Tirosh genes); the demo shows it on FUCCI cells
    paths = [png]
    h5mu = out / "a549_multivae.h5mu"
    with quiet():
        mdata.write_h5mu(h5mu)
    return [h5mu, *paths]


def _cycle_figures(data, traversal, out: Path, prefix: str) -> list[Path]:
    import matplotlib.pyplot as plt

    from scgenvae import pl

    paths = []
    for name, fig in (
        ("cell_cycle", pl.cell_cycle(data)),
        ("cell_cycle_traversal", pl.traversal_heatmap(traversal, n_top=30)),
    ):
        path = out / f"{prefix}_{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def run_fucci(out: Path, *, max_epochs: int | None, seed: int) -> list[Path]:
    """PoissonVAE + align_cell_cycle on FUCCI iPSCs (no labels used), traversal heatmap."""
    from scgenvae import tl
    from scgenvae.datasets import fucci_ipsc
    from scgenvae.model import PoissonVAE

    adata = fucci_ipsc()
    PoissonVAE.setup_anndata(adata, batch_key="chip_id")
    model = PoissonVAE(adata, n_latent=10)
    model.train(max_epochs=max_epochs or 200, seed=seed, enable_progress_bar=False)
    model.export_latent(adata)
    tl.align_cell_cycle(adata, use_rep="X_scgenvae", model=model, gene_symbols="hgnc")
    traversal = tl.latent_traversal(model, adata, along="cell_cycle", n_steps=50)
    traversal.var_names = adata.var["hgnc"].reindex(traversal.var_names).fillna("").to_numpy()
    paths = _cycle_figures(adata, traversal, out, "fucci")
    h5ad = out / "fucci_cell_cycle.h5ad"
    adata.write_h5ad(h5ad)
    return [h5ad, *paths]


def run_demo(out: Path, *, max_epochs: int | None = None, seed: int = 0) -> list[Path]:
    """Run every part of the demo; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = run_cellbench(out, max_epochs=max_epochs, seed=seed)
    paths += run_a549(out, max_epochs=max_epochs, seed=seed)
    paths += run_fucci(out, max_epochs=max_epochs, seed=seed)
    return paths
