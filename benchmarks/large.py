"""Out-of-core training at 1,000,000 cells: write a backed file in chunks, train from disk.

Usage::

    python benchmarks/large.py --n-obs 1000000 --n-genes 2000               # PoissonVAE
    python benchmarks/large.py --n-obs 1000000 --n-genes 2000 --n-peaks 50000  # MultiVAE

Two phases, each in its own process so that the training's peak RSS is its own:

1. ``write``: synthetic counts generated ``--chunk`` cells at a time and appended to resizable
   HDF5 datasets of a CSR matrix (``X/data``, ``X/indices``, ``X/indptr``) in an ``.h5ad``
   (RNA) or ``.h5mu`` (RNA + ATAC) file; the writer never holds more than one chunk. RNA:
   ``x ~ Poisson(l * softmax(centre_group W + beta_batch))`` with a log-normal library ``l``
   (drawn as a Poisson total per cell spread over genes by the profile). ATAC
   (binary): ``k ~ Binomial(n_peaks, density * exp(depth))`` accessible peaks per cell, half of
   them in the block of peaks of the cell's group, half anywhere (duplicates merged).
2. ``train`` (subprocess): ``read_h5ad(backed="r")`` / ``read_h5mu(backed=True)``, set-up
   (validation scan), model construction, ``train(max_epochs=1)`` streaming from disk, and
   ``get_latent_representation`` (streamed), each timed; peak RSS from ``ru_maxrss``.

Results are printed as JSON (and written to ``--json``). Files are deleted afterwards unless
``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_N_LATENT = 5


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mib() -> float:
    with Path("/proc/self/statm").open() as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _CSRAppender:
    """A CSR matrix in an HDF5 group, grown by appending row chunks (anndata's encoding)."""

    def __init__(self, group, n_cols: int, *, index_dtype=np.int64):
        self.group = group
        self.n_cols = n_cols
        self.n_rows = 0
        self.nnz = 0
        group.attrs["encoding-type"] = "csr_matrix"
        group.attrs["encoding-version"] = "0.1.0"
        opts = {"maxshape": (None,), "chunks": (1 << 20,)}
        self.data = group.create_dataset("data", shape=(0,), dtype=np.float32, **opts)
        self.indices = group.create_dataset("indices", shape=(0,), dtype=index_dtype, **opts)
        self.indptr = group.create_dataset(
            "indptr", shape=(1,), dtype=np.int64, maxshape=(None,), chunks=(1 << 16,)
        )
        self.indptr[0] = 0

    def append(self, data: np.ndarray, indices: np.ndarray, row_counts: np.ndarray) -> None:
        n, k = len(row_counts), len(data)
        self.data.resize((self.nnz + k,))
        self.data[self.nnz :] = data.astype(np.float32, copy=False)
        self.indices.resize((self.nnz + k,))
        self.indices[self.nnz :] = indices
        self.indptr.resize((self.n_rows + n + 1,))
        self.indptr[self.n_rows + 1 :] = self.nnz + np.cumsum(row_counts, dtype=np.int64)
        self.n_rows += n
        self.nnz += k

    def close(self) -> None:
        self.group.attrs["shape"] = (self.n_rows, self.n_cols)


def _skeleton(path: Path, n_obs: int, n_genes: int, n_peaks: int, batch, group) -> None:
    """The file without its matrices: obs, var (and the MuData structure)."""
    import pandas as pd
    from anndata import AnnData

    obs = pd.DataFrame(
        {
            "batch": pd.Categorical.from_codes(batch, [f"b{i}" for i in range(batch.max() + 1)]),
            "group": pd.Categorical.from_codes(group, [f"g{i}" for i in range(group.max() + 1)]),
        },
        index=pd.RangeIndex(n_obs).astype(str),
    )
    rna = AnnData(obs=obs, var=pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)]))
    if not n_peaks:
        rna.write_h5ad(path)
        return
    import mudata as md

    atac = AnnData(obs=obs, var=pd.DataFrame(index=[f"peak_{j}" for j in range(n_peaks)]))
    md.MuData({"rna": rna, "atac": atac}).write(path)


def write(args) -> dict:
    """Write the synthetic file chunk by chunk; returns sizes and timings."""
    import h5py

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    n_obs, n_genes, n_peaks = args.n_obs, args.n_genes, args.n_peaks
    centres = rng.normal(scale=2.0, size=(args.n_groups, _N_LATENT))
    w = rng.normal(size=(_N_LATENT, n_genes))
    beta = rng.normal(scale=0.5, size=(args.n_batches, n_genes))
    batch = rng.integers(args.n_batches, size=n_obs)
    # one expression profile per (group, batch): softmax(centre W + beta_batch)
    logits = (centres @ w)[:, None, :] + beta[None, :, :]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    # cumulative profiles laid end to end: profile k covers [k, k + 1)
    cdf = (
        np.cumsum(probs.reshape(-1, n_genes), axis=1)
        + np.arange(probs.shape[0] * probs.shape[1])[:, None]
    ).ravel()
    group = rng.integers(args.n_groups, size=n_obs)
    path = Path(args.path)
    _skeleton(path, n_obs, n_genes, n_peaks, batch, group)
    prefix = "mod/rna/" if n_peaks else ""
    peak_block = max(1, n_peaks // args.n_groups) if n_peaks else 1
    w_peaks = rng.permutation(n_peaks) if n_peaks else None
    with h5py.File(path, "a") as f:
        for key in (f"{prefix}X", "mod/atac/X"):
            if key in f:
                del f[key]
        rna = _CSRAppender(f.create_group(f"{prefix}X"), n_genes, index_dtype=np.int32)
        atac = (
            _CSRAppender(f.create_group("mod/atac/X"), n_peaks, index_dtype=np.int32)
            if n_peaks
            else None
        )
        for start in range(0, n_obs, args.chunk):
            sl = slice(start, min(start + args.chunk, n_obs))
            g, b = group[sl], batch[sl]
            n = len(g)
            # Poisson counts with rates l * p_(group, batch): a Poisson total per cell, its
            # genes drawn from the profile's CDF (no dense cells x genes array)
            library = rng.lognormal(mean=np.log(args.library), sigma=0.4, size=n)
            total = rng.poisson(library)
            row = np.repeat(np.arange(n), total)
            profile = g[row] * args.n_batches + b[row]
            u = rng.random(row.size) + profile  # profile k's CDF is shifted to [k, k + 1)
            gene = np.searchsorted(cdf, u, side="right") % n_genes
            key, counts = np.unique(row.astype(np.int64) * n_genes + gene, return_counts=True)
            r = key // n_genes
            rna.append(counts.astype(np.float32), key % n_genes, np.bincount(r, minlength=n))
            if atac is not None:
                depth = np.exp(rng.normal(scale=0.3, size=n))
                k = rng.binomial(n_peaks, np.clip(args.peak_density * depth, 0, 1))
                row = np.repeat(np.arange(n), k)
                local = rng.random(row.size) < 0.5
                col = rng.integers(n_peaks, size=row.size)
                in_block = g[row] * peak_block + rng.integers(peak_block, size=row.size)
                col[local] = w_peaks[np.minimum(in_block[local], n_peaks - 1)]
                key = np.unique(row.astype(np.int64) * n_peaks + col)  # sorted, no duplicates
                r, c = key // n_peaks, key % n_peaks
                atac.append(np.ones(len(c), np.float32), c, np.bincount(r, minlength=n))
        rna.close()
        if atac is not None:
            atac.close()
        out = {
            "rna_nnz": int(rna.nnz),
            "rna_density": rna.nnz / (n_obs * n_genes),
            "atac_nnz": int(atac.nnz) if atac else 0,
            "atac_density": atac.nnz / (n_obs * n_peaks) if atac else 0.0,
        }
    out["write_s"] = time.perf_counter() - t0
    out["file_gib"] = path.stat().st_size / 2**30
    out["writer_peak_rss_mib"] = _peak_rss_mib()
    return out


def train(args) -> dict:
    """Set up, build and train one epoch from the backed file; time each step."""
    import torch

    torch.set_num_threads(args.threads)
    import scgenvae

    out = {"torch_threads": torch.get_num_threads(), "rss_after_import_mib": _rss_mib()}
    t = time.perf_counter()
    if args.n_peaks:
        import mudata as md

        data = md.read_h5mu(args.path, backed=True)
        cls = scgenvae.model.MultiVAE
        cls.setup_mudata(data, batch_key="batch")
        model_kwargs = {"n_hidden": 256, "n_latent": 20}
    else:
        import anndata as ad

        data = ad.read_h5ad(args.path, backed="r")
        cls = scgenvae.model.PoissonVAE
        cls.setup_anndata(data, batch_key="batch")
        model_kwargs = {"n_hidden": 128, "n_latent": 10}
    out["setup_s"] = time.perf_counter() - t
    t = time.perf_counter()
    model = cls(data, **model_kwargs)
    out["init_s"] = time.perf_counter() - t
    out["streamed"] = model.is_streamed
    out["rss_before_train_mib"] = _rss_mib()
    t = time.perf_counter()
    model.train(
        max_epochs=1,
        batch_size=args.batch_size,
        block_size=args.block_size,
        seed=0,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    out["train_1_epoch_s"] = time.perf_counter() - t
    out["cells_per_s"] = args.n_obs / out["train_1_epoch_s"]
    out["peak_rss_after_train_mib"] = _peak_rss_mib()
    if not args.skip_latent:
        t = time.perf_counter()
        z = model.get_latent_representation(batch_size=4096)
        out["latent_s"] = time.perf_counter() - t
        out["latent_finite"] = bool(np.isfinite(z).all())
        out["latent_shape"] = list(z.shape)
    out["peak_rss_mib"] = _peak_rss_mib()
    return out


def main(argv: list[str] | None = None) -> dict:
    """Write the file, train from it in a subprocess, report, clean up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", nargs="?", default="all", choices=["all", "write", "train"])
    parser.add_argument("--n-obs", type=int, default=1_000_000)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--n-peaks", type=int, default=0, help="0: RNA only (PoissonVAE)")
    parser.add_argument("--n-batches", type=int, default=3)
    parser.add_argument("--n-groups", type=int, default=10)
    parser.add_argument("--library", type=float, default=600.0, help="median RNA counts/cell")
    parser.add_argument("--peak-density", type=float, default=0.02)
    parser.add_argument("--chunk", type=int, default=10_000, help="cells per written chunk")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--block-size", type=int, default=32_768)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default="/tmp/scgenvae_large")
    parser.add_argument("--path", default=None, help="file (default: in --dir)")
    parser.add_argument("--json", default=None, help="write the results here too")
    parser.add_argument("--skip-latent", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the written file")
    args = parser.parse_args(argv)
    if args.path is None:
        suffix = "h5mu" if args.n_peaks else "h5ad"
        args.path = str(Path(args.dir) / f"large_{args.n_obs}_{args.n_peaks}.{suffix}")
    if args.phase == "write":
        return write(args)
    if args.phase == "train":
        return train(args)
    Path(args.path).parent.mkdir(parents=True, exist_ok=True)
    passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "all"]
    results = {"argv": passed, "path": args.path}
    try:
        for phase in ("write", "train"):
            cmd = [sys.executable, __file__, phase, *passed, "--path", args.path]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode:
                results[f"{phase}_error"] = proc.stderr[-4000:]
                break
            results.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    finally:
        if not args.keep:
            Path(args.path).unlink(missing_ok=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    sys.stdout.write(json.dumps(main()) + "\n")
