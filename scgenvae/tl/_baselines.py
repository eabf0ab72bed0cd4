"""Simple cell-cycle angles to compare :func:`~scgenvae.tl.align_cell_cycle` with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from scgenvae._anndata import looks_like_counts as _looks_like_counts
from scgenvae._anndata import matrix_of as _matrix
from scgenvae._anndata import symbol_index as _symbol_index
from scgenvae._circular import wrap_angle

from ._score import score_cell_cycle

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from numpy.random import Generator, SeedSequence

    SeedLike = int | np.integer | SeedSequence | None
    RNGLike = Generator


def _log_normalized(adata: AnnData, layer: str | None, *, log2: bool = False) -> np.ndarray:
    x = _matrix(adata, layer)
    counts = _looks_like_counts(x)
    x = x.toarray() if sparse.issparse(x) else np.asarray(x)
    x = np.asarray(x, dtype=np.float64)
    if not counts:
        return x
    lib = x.sum(1, keepdims=True)
    lib[lib == 0] = 1.0
    if log2:  # scater's logNormCounts: size factors with mean 1, log2(x + 1)
        return np.log2(x / (lib / lib.mean()) + 1.0)
    return np.log1p(x / lib * 1e4)


def _pca_angle(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    pcs = u[:, :2] * s[:2]
    return wrap_angle(np.arctan2(pcs[:, 1], pcs[:, 0]))


def cell_cycle_angle_baseline(
    adata: AnnData,
    *,
    method: Literal["pca", "scores", "tricycle"],
    use_rep: str | None = None,
    layer: str | None = None,
    gene_symbols: str | None = None,
    organism: Literal["human", "mouse"] = "human",
    reference: pd.DataFrame | None = None,
    rng: SeedLike | RNGLike | None = 0,
) -> np.ndarray:
    """A cell-cycle angle from a simple published recipe, for benchmarking (nothing is written).

    ``"pca"``
        ``atan2(PC2, PC1)`` of the top two principal components of the log-normalised
        expression (``log1p`` of counts per 10,000), or of ``obsm[use_rep]`` when given.
    ``"scores"``
        ``atan2`` of the centred G2/M score against the centred S score
        (:func:`~scgenvae.tl.score_cell_cycle`, i.e. scanpy's scores).
    ``"tricycle"``
        tricycle's projection :cite:p:`Zheng2022`: ``log2`` size-factor-normalised expression,
        genes centred, projected on the reference loadings (``pc1.rot``, ``pc2.rot``;
        default :func:`scgenvae.datasets.tricycle_reference`, mouse genes mapped to the data by
        upper-cased symbol for human), angle ``atan2(PC2, PC1)``. Its direction is tricycle's
        own (increasing G1 -> S -> G2/M for its reference).

    The ``"pca"`` and ``"scores"`` angles have no intrinsic direction; orient them with
    :func:`~scgenvae.tl.cell_cycle_direction` before comparing.

    Parameters
    ----------
    adata
        Cells x genes.
    method
        Which recipe.
    use_rep
        ``"pca"`` only: an obsm key to take the PCs of instead of the expression.
    layer
        Layer with counts or log-normalised values (``None``: ``.X``).
    gene_symbols
        var column with gene symbols (``"scores"``, ``"tricycle"``).
    organism
        ``"human"`` or ``"mouse"`` (``"scores"``, ``"tricycle"``).
    reference
        ``"tricycle"``: loadings with columns ``pc1.rot``, ``pc2.rot`` and ``symbol``.
    rng
        ``"scores"``: seed for the control genes.

    Returns
    -------
    Angles in ``[0, 2*pi)``, one per cell.
    """
    if method == "pca":
        if use_rep is not None:
            if use_rep not in adata.obsm:
                msg = f"`use_rep={use_rep!r}` not in adata.obsm; available: {list(adata.obsm)}."
                raise KeyError(msg)
            return _pca_angle(np.asarray(adata.obsm[use_rep], dtype=np.float64))
        return _pca_angle(_log_normalized(adata, layer))
    if method == "scores":
        scored = score_cell_cycle(
            adata, organism=organism, gene_symbols=gene_symbols, layer=layer, rng=rng, copy=True
        )
        s = scored.obs["S_score"].to_numpy(dtype=np.float64)
        g = scored.obs["G2M_score"].to_numpy(dtype=np.float64)
        return wrap_angle(np.arctan2(g - g.mean(), s - s.mean()))
    if method == "tricycle":
        if reference is None:
            from scgenvae._files import tricycle_reference_table

            reference = tricycle_reference_table()
        ref = reference.copy()
        ref["key"] = ref["symbol"].astype(str)
        if organism == "human":
            ref["key"] = ref["key"].str.upper()
        ref = ref.drop_duplicates("key").set_index("key")
        lookup = _symbol_index(adata, gene_symbols)
        common = [k for k in ref.index if k in lookup.index]
        if len(common) < 5:
            msg = (
                f"only {len(common)} of the {len(ref)} tricycle reference genes are in the data; "
                "check `gene_symbols` and `organism`."
            )
            raise ValueError(msg)
        x = _log_normalized(adata, layer, log2=True)
        cols = adata.var_names.get_indexer(lookup[common].to_numpy())
        xs = x[:, cols]
        xs = xs - xs.mean(0)
        proj = xs @ ref.loc[common, ["pc1.rot", "pc2.rot"]].to_numpy(dtype=np.float64)
        return wrap_angle(np.arctan2(proj[:, 1], proj[:, 0]))
    msg = f"`method` must be 'pca', 'scores' or 'tricycle', got {method!r}."
    raise ValueError(msg)
