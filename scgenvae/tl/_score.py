"""Cell-cycle scores from the bundled Tirosh et al. marker lists (wrapping scanpy)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from scgenvae._anndata import looks_like_counts as _looks_like_counts
from scgenvae._anndata import matrix_of as _matrix
from scgenvae._anndata import symbol_index as _symbol_index
from scgenvae._markers import UPDATED_SYMBOLS, cell_cycle_genes

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.random import Generator, SeedSequence

    SeedLike = int | np.integer | SeedSequence | None
    RNGLike = Generator

logger = logging.getLogger(__name__)

PHASES = ("G1", "S", "G2M")


def _find(markers: Sequence[str], lookup: pd.Series, organism: str) -> list[str]:
    """var_names of the markers present (a renamed marker is matched by its current symbol)."""
    found = []
    for g in markers:
        key = g if g in lookup.index else None
        if key is None:
            new = UPDATED_SYMBOLS.get(g.upper())
            if new is not None:
                new = new if organism == "human" else new.capitalize()
                key = new if new in lookup.index else None
        if key is not None:
            found.append(str(lookup[key]))
    return found


def marker_var_names(
    adata: AnnData,
    *,
    organism: Literal["human", "mouse"] = "human",
    gene_symbols: str | None = None,
    s_genes: Sequence[str] | None = None,
    g2m_genes: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """var_names of the S and G2/M markers present in ``adata``.

    Parameters
    ----------
    adata
        Cells x genes.
    organism
        ``"human"`` or ``"mouse"`` (see :func:`score_cell_cycle`).
    gene_symbols
        var column with gene symbols (``None``: var_names are symbols).
    s_genes, g2m_genes
        Marker symbols to use instead of the bundled lists.

    Returns
    -------
    ``{"S": [...], "G2M": [...]}`` var_names.
    """
    bundled = cell_cycle_genes(organism)
    lookup = _symbol_index(adata, gene_symbols)
    return {
        "S": _find(bundled["S"] if s_genes is None else s_genes, lookup, organism),
        "G2M": _find(bundled["G2M"] if g2m_genes is None else g2m_genes, lookup, organism),
    }


def _random_state(rng) -> int:
    if rng is None:
        return int(np.random.default_rng().integers(2**31 - 1))
    if isinstance(rng, int | np.integer) and 0 <= int(rng) < 2**32:
        return int(rng)
    return int(np.random.default_rng(rng).integers(2**31 - 1))


def score_cell_cycle(
    adata: AnnData,
    *,
    organism: Literal["human", "mouse"] = "human",
    gene_symbols: str | None = None,
    layer: str | None = None,
    normalize: bool | None = None,
    s_genes: Sequence[str] | None = None,
    g2m_genes: Sequence[str] | None = None,
    min_genes: int = 5,
    n_bins: int = 25,
    rng: SeedLike | RNGLike | None = 0,
    key_added: str = "cell_cycle_scores",
    copy: bool = False,
) -> AnnData | None:
    """S and G2/M scores and a G1/S/G2M phase from the Tirosh et al. markers :cite:p:`Tirosh2016`.

    Wraps :func:`scanpy.tl.score_genes_cell_cycle` with the bundled lists (43 S and 54 G2/M
    genes, :mod:`scgenvae.tl._markers`). Scoring runs on an internal copy: when the matrix
    holds counts it is normalised to 10,000 per cell and ``log1p``-transformed there, so the
    user's ``.X`` and layers are never changed.

    scanpy 1.11 draws its control genes through NumPy's *global* generator, seeded with
    ``random_state``. This function passes a ``random_state`` derived from ``rng`` (an int
    ``rng`` is passed as is, so ``rng=0`` reproduces scanpy's default) and restores the global
    generator's state afterwards, so calling it has no effect on other code's random numbers.

    Parameters
    ----------
    adata
        Cells x genes (counts or log-normalised expression).
    organism
        ``"human"`` (HGNC symbols) or ``"mouse"`` (orthologue symbols: first letter capital,
        ``Mcm5``). Renamed markers (``MLF1IP``/``CENPU``, ``FAM64A``/``PIMREG``,
        ``HN1``/``JPT1``) are matched under both names.
    gene_symbols
        var column holding gene symbols, when var_names are not symbols (e.g. Ensembl ids).
    layer
        Layer to score (``None``: ``.X``).
    normalize
        Normalise and ``log1p`` the internal copy first. ``None`` decides from the data:
        non-negative integer values (or values above 20) are taken as counts.
    s_genes, g2m_genes
        Marker symbols to use instead of the bundled lists.
    min_genes
        Fewest markers of each list that must be present; fewer raise a ``ValueError``.
    n_bins
        Expression bins for drawing control genes (:func:`scanpy.tl.score_genes`).
    rng
        Seed or generator for the control-gene draw.
    key_added
        uns key of the details.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    Returns `None` if `copy=False`, else returns an `AnnData` object. Sets the following fields:

    `adata.obs['S_score']`, `adata.obs['G2M_score']` : :class:`pandas.Series` (dtype `float`)
        Scores as computed by scanpy.
    `adata.obs['phase']` : :class:`pandas.Categorical`
        ``G1`` (both scores negative), else ``S`` or ``G2M`` by the larger score.
    `adata.uns['cell_cycle_scores' | key_added]` : `dict`
        ``s_genes`` / ``g2m_genes`` (var_names used), ``n_s_genes`` / ``n_g2m_genes`` found and
        ``params``.

    Examples
    --------
    >>> adata = scgenvae.datasets.fucci_ipsc()
    >>> scgenvae.tl.score_cell_cycle(adata, gene_symbols="hgnc")
    >>> adata.obs[["S_score", "G2M_score", "phase"]].head()

    See Also
    --------
    scgenvae.tl.align_cell_cycle : the cycle angle from a latent representation.
    """
    import scanpy as sc

    if adata.is_view:
        msg = "`adata` is a view; pass `adata.copy()`."
        raise ValueError(msg)
    if adata.n_obs == 0:
        msg = "`adata` has no cells (0 observations): nothing to score."
        raise ValueError(msg)
    genes = marker_var_names(
        adata, organism=organism, gene_symbols=gene_symbols, s_genes=s_genes, g2m_genes=g2m_genes
    )
    n_s, n_g = len(genes["S"]), len(genes["G2M"])
    n_s_total = len(cell_cycle_genes(organism)["S"]) if s_genes is None else len(s_genes)
    n_g_total = len(cell_cycle_genes(organism)["G2M"]) if g2m_genes is None else len(g2m_genes)
    logger.info(
        "cell-cycle markers found: %d of %d S genes, %d of %d G2/M genes",
        n_s,
        n_s_total,
        n_g,
        n_g_total,
    )
    if min(n_s, n_g) < max(min_genes, 1):
        hint = (
            "var_names look like Ensembl ids: pass `gene_symbols=<var column with symbols>`"
            if gene_symbols is None
            and pd.Index(adata.var_names).str.startswith("ENS").mean() > 0.5
            else f"check `organism` (got {organism!r}) and `gene_symbols` (got {gene_symbols!r})"
        )
        msg = (
            f"too few cell-cycle markers to score: found {n_s} of {n_s_total} S genes and "
            f"{n_g} of {n_g_total} G2/M genes, need at least {min_genes} of each; {hint}."
        )
        raise ValueError(msg)

    x = _matrix(adata, layer)
    if normalize is None:
        normalize = _looks_like_counts(x)
    x = x.astype(np.float64) if sparse.issparse(x) else np.array(x, dtype=np.float64)
    internal = AnnData(
        X=x,
        obs=pd.DataFrame(index=adata.obs_names.copy()),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )
    if normalize:
        sc.pp.normalize_total(internal, target_sum=1e4)
        sc.pp.log1p(internal)

    random_state = _random_state(rng)
    state = np.random.get_state()  # noqa: NPY002 - undo scanpy's global seeding below
    try:
        sc.tl.score_genes_cell_cycle(
            internal,
            s_genes=genes["S"],
            g2m_genes=genes["G2M"],
            n_bins=n_bins,
            random_state=random_state,
            use_raw=False,
        )
    finally:
        np.random.set_state(state)  # noqa: NPY002

    adata = adata.copy() if copy else adata
    adata.obs["S_score"] = internal.obs["S_score"].to_numpy(dtype=np.float64)
    adata.obs["G2M_score"] = internal.obs["G2M_score"].to_numpy(dtype=np.float64)
    adata.obs["phase"] = pd.Categorical(
        internal.obs["phase"].astype(str).to_numpy(), categories=list(PHASES)
    )
    adata.uns[key_added] = {
        "s_genes": np.asarray(genes["S"], dtype=str),
        "g2m_genes": np.asarray(genes["G2M"], dtype=str),
        "n_s_genes": n_s,
        "n_g2m_genes": n_g,
        "params": {
            "organism": organism,
            "gene_symbols": "" if gene_symbols is None else gene_symbols,
            "layer": "" if layer is None else layer,
            "normalize": bool(normalize),
            "n_bins": int(n_bins),
            "random_state": random_state,
        },
    }
    logger.info("added obs['S_score'], obs['G2M_score'], obs['phase'] and uns[%r]", key_added)
    return adata if copy else None
