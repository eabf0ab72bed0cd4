"""Figures of the discrete latent."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.figure import Figure


def cluster_probabilities(
    adata: AnnData,
    *,
    basis: str = "X_umap",
    probs_key: str = "scgenvae_cluster_probs",
    cluster_key: str = "scgenvae_cluster",
    ncols: int = 4,
    point_size: float = 8.0,
) -> Figure:
    """Embedding coloured by the assigned cluster, then by each cluster's probability.

    Parameters
    ----------
    adata
        AnnData with the embedding (``obsm[basis]``) and the outputs of
        ``model.export_latent`` for a model with ``n_clusters``.
    basis
        obsm key of a 2-D embedding (e.g. ``"X_umap"`` from ``sc.tl.umap``).
    probs_key, cluster_key
        obsm key of the probabilities and obs key of the assignment.
    ncols
        Panels per row.
    point_size
        Marker size.

    Returns
    -------
    The matplotlib Figure (the first panel shows assignments; the others ``q(c = k | x)``).
    """
    import matplotlib.pyplot as plt

    for where, key in (("obsm", basis), ("obsm", probs_key), ("obs", cluster_key)):
        container = adata.obsm if where == "obsm" else adata.obs
        if key not in container:
            msg = f"{where}[{key!r}] not found; run `model.export_latent(adata)` and `sc.tl.umap` first."
            raise KeyError(msg)
    emb = np.asarray(adata.obsm[basis])[:, :2]
    probs = np.asarray(adata.obsm[probs_key])
    labels = adata.obs[cluster_key]
    n_panels = probs.shape[1] + 1
    nrows = int(np.ceil(n_panels / ncols))
    fig, axes = plt.subplots(
        nrows,
        min(ncols, n_panels),
        figsize=(3.2 * min(ncols, n_panels), 3.0 * nrows),
        squeeze=False,
    )
    ax = axes.flat[0]
    cmap = plt.get_cmap("tab20")
    for i, cat in enumerate(labels.cat.categories):
        sel = (labels == cat).to_numpy()
        ax.scatter(
            emb[sel, 0],
            emb[sel, 1],
            s=point_size,
            color=cmap(i % 20),
            label=str(cat),
            linewidths=0,
        )
    ax.set_title("cluster")
    ax.legend(markerscale=2, fontsize=7, frameon=False, loc="best")
    for k in range(probs.shape[1]):
        ax = axes.flat[k + 1]
        sc = ax.scatter(
            emb[:, 0],
            emb[:, 1],
            c=probs[:, k],
            s=point_size,
            cmap="viridis",
            vmin=0,
            vmax=1,
            linewidths=0,
        )
        ax.set_title(f"q(c = {k} | x)")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n_panels:]:
        ax.set_visible(False)
    fig.colorbar(sc, ax=list(axes.flat)[1:n_panels], shrink=0.6, label="probability")
    return fig
