"""Seeded synthetic data: the single source of generated test data."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from scgenvae._quiet import quiet

if TYPE_CHECKING:
    from mudata import MuData
    from numpy.random import Generator, SeedSequence

    SeedLike = int | np.integer | SeedSequence | None
    RNGLike = Generator


def check_sizes(**sizes) -> None:
    """Each size must be a positive integer (a clear error instead of numpy's)."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            msg = f"`{name}` must be a positive integer, got {value!r}."
            raise ValueError(msg)


def _programs(rng: Generator, n_obs: int, n_groups: int, n_batches: int, n_latent: int):
    group = rng.integers(n_groups, size=n_obs)
    batch = rng.integers(n_batches, size=n_obs)
    centres = rng.normal(scale=2.0, size=(n_groups, n_latent))
    z = centres[group] + rng.normal(scale=0.5, size=(n_obs, n_latent))
    return group, batch, z


def _obs(group: np.ndarray, batch: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "batch": pd.Categorical([f"batch_{b}" for b in batch]),
            "group": pd.Categorical([f"group_{g}" for g in group]),
        },
        index=[f"cell_{i}" for i in range(len(group))],
    )


def _rna(rng: Generator, z: np.ndarray, batch: np.ndarray, n_genes: int, n_batches: int):
    w = rng.normal(scale=1.0, size=(z.shape[1], n_genes))
    batch_effect = rng.normal(scale=0.5, size=(n_batches, n_genes))
    logits = z @ w + batch_effect[batch]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    library = rng.lognormal(mean=np.log(20 * n_genes), sigma=0.3, size=(len(z), 1))
    return sparse.csr_matrix(rng.poisson(library * probs).astype(np.float32))


def synthetic_rna(
    n_obs: int = 200,
    n_vars: int = 50,
    *,
    n_batches: int = 2,
    n_groups: int = 3,
    n_latent: int = 5,
    rng: SeedLike | RNGLike = 0,
) -> AnnData:
    """Counts of ``n_groups`` cell groups in ``n_batches`` batches (Poisson, CSR).

    ``obs["batch"]`` and ``obs["group"]`` hold the truth; ``layers["counts"]`` equals ``.X``.

    Parameters
    ----------
    n_obs, n_vars
        Cells and genes.
    n_batches, n_groups, n_latent
        Batches, groups and the dimension of the true latent space.
    rng
        Seed or :class:`numpy.random.Generator`.
    """
    check_sizes(
        n_obs=n_obs, n_vars=n_vars, n_batches=n_batches, n_groups=n_groups, n_latent=n_latent
    )
    rng = np.random.default_rng(rng)
    group, batch, z = _programs(rng, n_obs, n_groups, n_batches, n_latent)
    x = _rna(rng, z, batch, n_vars, n_batches)
    adata = AnnData(
        X=x, obs=_obs(group, batch), var=pd.DataFrame(index=[f"gene_{j}" for j in range(n_vars)])
    )
    adata.layers["counts"] = x.copy()
    return adata


def synthetic_multiome(
    n_obs: int = 200,
    n_genes: int = 50,
    n_peaks: int = 100,
    *,
    n_batches: int = 2,
    n_groups: int = 3,
    n_latent: int = 5,
    peak_density: float = 0.1,
    rng: SeedLike | RNGLike = 0,
) -> MuData:
    """Paired RNA counts and binary peaks sharing one latent state (``mod["rna"]``, ``mod["atac"]``).

    Parameters
    ----------
    n_obs, n_genes, n_peaks
        Cells, genes and peaks.
    n_batches, n_groups, n_latent
        Batches, groups and the dimension of the true latent space.
    peak_density
        Mean fraction of accessible peaks per cell.
    rng
        Seed or :class:`numpy.random.Generator`.
    """
    import mudata as md

    check_sizes(
        n_obs=n_obs,
        n_genes=n_genes,
        n_peaks=n_peaks,
        n_batches=n_batches,
        n_groups=n_groups,
        n_latent=n_latent,
    )
    if not 0 < peak_density < 1:
        msg = f"`peak_density` must be in (0, 1), got {peak_density!r}."
        raise ValueError(msg)
    rng = np.random.default_rng(rng)
    group, batch, z = _programs(rng, n_obs, n_groups, n_batches, n_latent)
    rna = _rna(rng, z, batch, n_genes, n_batches)
    w = rng.normal(scale=1.0, size=(n_latent, n_peaks))
    depth = rng.normal(scale=0.3, size=(n_obs, 1))
    signal = (z @ w) / np.sqrt(n_latent) * 1.5 + depth
    # intercept chosen (bisection) so that the mean accessibility equals peak_density
    sample = signal.ravel()
    if sample.size > 200_000:  # the mean is estimated well from a subsample
        sample = rng.choice(sample, size=200_000, replace=False)
    lo, hi = -30.0, 30.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if (1 / (1 + np.exp(-(sample + mid)))).mean() > peak_density:
            hi = mid
        else:
            lo = mid
    logits = signal + (lo + hi) / 2
    atac = sparse.csr_matrix(
        (rng.random((n_obs, n_peaks)) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    )
    obs = _obs(group, batch)
    mod = {
        "rna": AnnData(
            X=rna, obs=obs.copy(), var=pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)])
        ),
        "atac": AnnData(
            X=atac, obs=obs.copy(), var=pd.DataFrame(index=[f"peak_{j}" for j in range(n_peaks)])
        ),
    }
    with quiet():
        mdata = md.MuData(mod)
    mdata.obs = obs.copy()
    return mdata
