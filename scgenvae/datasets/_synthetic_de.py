"""Seeded counts of two groups with planted differentially expressed genes of known effect."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._synthetic import check_sizes

if TYPE_CHECKING:
    from numpy.random import Generator, SeedSequence

    SeedLike = int | np.integer | SeedSequence | None
    RNGLike = Generator


def _shares(base, z, loadings, batch_effect, effect):
    """Expression shares of cells (rows sum to 1) from log-linear predictors."""
    logits = base + z @ loadings + batch_effect + effect
    shares = np.exp(logits - logits.max(1, keepdims=True))
    return shares / shares.sum(1, keepdims=True)


def synthetic_de(
    n_obs: int = 600,
    n_vars: int = 500,
    *,
    de_fraction: float = 0.1,
    lfc_range: tuple[float, float] = (0.5, 2.0),
    n_batches: int = 2,
    n_latent: int = 3,
    library_size: float = 3000.0,
    theta: float | None = 10.0,
    rng: SeedLike | RNGLike = 0,
) -> AnnData:
    """Counts of two groups of cells, ``"A"`` and ``"B"``, with planted DE genes.

    Both groups share the same cell-to-cell variation (a latent state of ``n_latent``
    dimensions), the same batch effects and the same library-size distribution; a random
    ``de_fraction`` of genes is up- or down-regulated in ``"B"`` (half each way) by a log2 fold
    change drawn uniformly in ``lfc_range``. The truth is recorded in ``var``:
    ``de`` (planted) and ``true_lfc``, the log2 ratio of the population mean expression shares
    of ``"A"`` over ``"B"`` (computed over 20,000 latent draws per group, so that it includes
    the small compositional shift every gene gets from the planted ones).

    Parameters
    ----------
    n_obs, n_vars
        Cells (split evenly between the groups and, within them, between the batches) and
        genes.
    de_fraction
        Fraction of genes with a planted effect.
    lfc_range
        Range of the planted absolute log2 fold changes.
    n_batches, n_latent
        Batches (``obs["batch"]``) and dimensions of the shared cell-to-cell variation.
    library_size
        Median total counts per cell.
    theta
        Inverse dispersion of the gamma-Poisson (negative binomial) noise; ``None``: Poisson.
    rng
        Seed or :class:`numpy.random.Generator`.
    """
    check_sizes(n_obs=n_obs, n_vars=n_vars, n_batches=n_batches, n_latent=n_latent)
    if not 0 <= de_fraction < 1:
        msg = f"`de_fraction` must be in [0, 1), got {de_fraction!r}."
        raise ValueError(msg)
    rng = np.random.default_rng(rng)
    group = np.arange(n_obs) % 2  # 0: A, 1: B
    batch = (np.arange(n_obs) // 2) % n_batches
    base = rng.normal(-np.log(n_vars), 1.0, size=n_vars)
    loadings = rng.normal(0.0, 0.4, size=(n_latent, n_vars))
    batch_effect = rng.normal(0.0, 0.3, size=(n_batches, n_vars))
    n_de = round(de_fraction * n_vars)
    de_genes = rng.choice(n_vars, size=n_de, replace=False)
    lfc = np.zeros(n_vars)
    signs = np.where(np.arange(n_de) % 2 == 0, 1.0, -1.0)
    lfc[de_genes] = signs * rng.uniform(*lfc_range, size=n_de)
    effect = np.outer(group, lfc * np.log(2))  # group B shifted, in natural log
    z = rng.normal(size=(n_obs, n_latent))
    shares = _shares(base, z, loadings, batch_effect[batch], effect)
    library = library_size * rng.lognormal(0.0, 0.3, size=(n_obs, 1))
    mean = library * shares
    if theta is not None:
        mean = mean * rng.gamma(theta, 1.0 / theta, size=mean.shape)
    x = sparse.csr_matrix(rng.poisson(mean).astype(np.float32))
    # population truth: mean shares of each group over many latent draws and the batches
    zz = rng.normal(size=(20_000, n_latent))
    bb = np.arange(20_000) % n_batches
    pop = [
        _shares(
            base, zz, loadings, batch_effect[bb], np.outer(np.full(20_000, g), lfc * np.log(2))
        ).mean(0)
        for g in (0, 1)
    ]
    is_de = np.zeros(n_vars, dtype=bool)
    is_de[de_genes] = True
    var = pd.DataFrame(
        {"de": is_de, "true_lfc": np.log2(pop[0]) - np.log2(pop[1])},
        index=[f"gene_{j}" for j in range(n_vars)],
    )
    obs = pd.DataFrame(
        {
            "group": pd.Categorical(np.where(group == 0, "A", "B")),
            "batch": pd.Categorical([f"batch_{b}" for b in batch]),
        },
        index=[f"cell_{i}" for i in range(n_obs)],
    )
    adata = AnnData(X=x, obs=obs, var=var)
    adata.layers["counts"] = x.copy()
    return adata
