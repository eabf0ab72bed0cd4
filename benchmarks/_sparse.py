"""Memory-light synthetic multiome for the scale workload (no dense cells x features array).

``scgenvae.datasets.synthetic_multiome`` draws every cell x peak entry from a dense logits
matrix, which for 200,000 cells x 50,000 peaks would be 80 GB. Here cells are generated in
chunks, RNA as a dense chunk of cells x genes at a time, and ATAC directly as the column indices
of the accessible peaks of each cell, so memory stays at the size of the final CSR matrices.

Generative process (seeded; the result depends on ``rng`` and ``chunk_size``):

- each cell has a group ``g`` (``n_groups``), a batch ``b`` (``n_batches``) and a latent
  ``z = centre_g + noise`` (5 dimensions);
- RNA: ``x ~ Poisson(l * softmax(z W + beta_b))`` with a log-normal library ``l``;
- ATAC: the number of accessible peaks ``k ~ Binomial(n_peaks, density * exp(depth))``; each
  accessible peak comes, with probability 1/2, from the block of peaks open in the cell's group,
  otherwise from all peaks (duplicates are merged, so the realised density is slightly lower).

Chunks of ``chunk_size`` cells (a dense boolean chunk x peaks array is the largest temporary).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from pathlib import Path

_N_LATENT = 5


def _stack(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_cols: int
) -> sparse.csr_matrix:
    """One CSR matrix from per-chunk ``(data, indices, row_counts)`` without a second copy."""
    nnz = sum(len(p[0]) for p in parts)
    idx_dtype = np.int32 if nnz < np.iinfo(np.int32).max else np.int64
    data = np.empty(nnz, dtype=np.float32)
    indices = np.empty(nnz, dtype=idx_dtype)
    counts = np.concatenate([p[2] for p in parts])
    indptr = np.zeros(len(counts) + 1, dtype=idx_dtype)
    np.cumsum(counts, out=indptr[1:])
    pos = 0
    while parts:  # free each chunk as soon as it is copied
        d, i, _ = parts.pop(0)
        data[pos : pos + len(d)] = d
        indices[pos : pos + len(i)] = i
        pos += len(d)
    return sparse.csr_matrix((data, indices, indptr), shape=(len(counts), n_cols), copy=False)


def sparse_multiome(
    n_obs: int,
    n_genes: int,
    n_peaks: int,
    *,
    n_batches: int = 3,
    n_groups: int = 10,
    peak_density: float = 0.03,
    library_mean: float = 3000.0,
    chunk_size: int = 1000,
    rng: int | np.random.Generator = 0,
) -> tuple[sparse.csr_matrix, sparse.csr_matrix, np.ndarray, np.ndarray]:
    """RNA counts (CSR float32), binary ATAC (CSR float32), batch codes and group codes."""
    rng = np.random.default_rng(rng)
    centres = rng.normal(scale=2.0, size=(n_groups, _N_LATENT))
    w_rna = rng.normal(size=(_N_LATENT, n_genes))
    beta = rng.normal(scale=0.5, size=(n_batches, n_genes))
    block = max(1, n_peaks // n_groups)
    perm = rng.permutation(n_peaks)
    batch = rng.integers(n_batches, size=n_obs)
    group = rng.integers(n_groups, size=n_obs)
    rna_parts, atac_parts = [], []
    mask = np.zeros((min(chunk_size, n_obs), n_peaks), dtype=bool)
    for start in range(0, n_obs, chunk_size):
        sl = slice(start, min(start + chunk_size, n_obs))
        g, b = group[sl], batch[sl]
        n = len(g)
        z = centres[g] + rng.normal(scale=0.5, size=(n, _N_LATENT))
        logits = z @ w_rna + beta[b]
        logits -= logits.max(1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(1, keepdims=True)
        lib = rng.lognormal(np.log(library_mean), 0.3, size=(n, 1))
        x = sparse.csr_matrix(rng.poisson(lib * probs).astype(np.float32))
        rna_parts.append((x.data, x.indices, np.diff(x.indptr)))
        del logits, probs, x
        depth = rng.normal(scale=0.3, size=n) + 0.1 * (b - (n_batches - 1) / 2)
        k = rng.binomial(n_peaks, np.clip(peak_density * np.exp(depth), 0.0, 1.0))
        rows = np.repeat(np.arange(n), k)
        from_block = rng.random(len(rows)) < 0.5
        cols = np.where(
            from_block,
            g[rows] * block + rng.integers(0, block, size=len(rows)),
            rng.integers(0, n_peaks, size=len(rows)),
        )
        # a boolean chunk merges duplicates and yields sorted (row, col) pairs, much faster
        # than np.unique on row * n_peaks + col
        mask[:] = False
        mask[rows, perm[cols]] = True
        rows, cols = np.nonzero(mask[:n])
        atac_parts.append(
            (np.ones(len(cols), np.float32), cols.astype(np.int32), np.bincount(rows, minlength=n))
        )
        del rows, cols, from_block
    return _stack(rna_parts, n_genes), _stack(atac_parts, n_peaks), batch, group


def save(path: Path, rna: sparse.csr_matrix, atac: sparse.csr_matrix, batch: np.ndarray) -> None:
    """Write the matrices as raw ``.npy`` arrays (fast to read back, no compression)."""
    path.mkdir(parents=True, exist_ok=True)
    for name, mat in (("rna", rna), ("atac", atac)):
        for part in ("data", "indices", "indptr"):
            np.save(path / f"{name}_{part}.npy", getattr(mat, part))
        np.save(path / f"{name}_shape.npy", np.asarray(mat.shape))
    np.save(path / "batch.npy", batch)


def load_mudata(path: Path):
    """MuData with ``mod["rna"]``, ``mod["atac"]`` and ``obs["batch"]`` from :func:`save`'s files."""
    import anndata as ad
    import mudata as md
    import pandas as pd

    mats = {}
    for name in ("rna", "atac"):
        parts = [np.load(path / f"{name}_{p}.npy") for p in ("data", "indices", "indptr")]
        shape = tuple(int(s) for s in np.load(path / f"{name}_shape.npy"))
        mats[name] = sparse.csr_matrix(tuple(parts), shape=shape, copy=False)
    batch = np.load(path / "batch.npy")
    n = len(batch)
    obs = pd.DataFrame(
        {"batch": pd.Categorical([f"batch_{b}" for b in batch])},
        index=pd.Index([f"cell_{i}" for i in range(n)]),
    )
    mods = {
        name: ad.AnnData(
            X=mat,
            obs=obs.copy(),
            var=pd.DataFrame(index=[f"{name}_{j}" for j in range(mat.shape[1])]),
        )
        for name, mat in mats.items()
    }
    mdata = md.MuData(mods)
    mdata.obs = obs.copy()
    return mdata
