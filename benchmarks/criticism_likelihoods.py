"""Choosing a gene likelihood with the criticism getters: Poisson vs NB vs ZINB on CellBench.

Held-out cells (20%, seeded) of the bundled CellBench data (2,000 most variable genes of
log-normalised counts, genes seen in at least 10 cells), PoissonVAE at its default training
(``max_epochs`` heuristic, KL warm-up, no early stopping below 1,000 cells) with
``batch_key="protocol"``, one seed. Scores: held-out marginal log-likelihood (default 1,000
importance samples), ELBO and reconstruction error, in nats per cell; and a posterior
predictive check, the fraction of zeros per gene in the held-out data against that of the
draws. Writes ``benchmarks/results_criticism.md``.

Run: ``OMP_NUM_THREADS=1 python benchmarks/criticism_likelihoods.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import scanpy as sc
import torch

import scgenvae
from scgenvae.model import PoissonVAE

SEED = 0


def _data():
    adata = scgenvae.datasets.cellbench()
    sc.pp.filter_genes(adata, min_cells=10)
    norm = adata.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    var = np.asarray(norm.X.power(2).mean(0) - np.square(norm.X.mean(0))).ravel()
    keep = np.sort(np.argsort(-var)[:2000])
    adata = adata[:, keep].copy()
    rng = np.random.default_rng(SEED)
    test = rng.random(adata.n_obs) < 0.2
    return adata[~test].copy(), adata[test].copy()


def main() -> None:
    torch.set_num_threads(1)
    train, test = _data()
    rows = []
    zeros_obs = 1.0 - test.X.getnnz(0) / test.n_obs
    for likelihood in ("poisson", "nb", "zinb"):
        PoissonVAE.setup_anndata(train, batch_key="protocol")
        model = PoissonVAE(train, gene_likelihood=likelihood)
        t0 = time.perf_counter()
        model.train(seed=SEED, enable_progress_bar=False)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        mll = model.get_marginal_ll(test, rng=SEED)
        t_mll = time.perf_counter() - t0
        elbo = model.get_elbo(test, rng=SEED)
        rec = model.get_reconstruction_error(test, rng=SEED)["rna"]
        draws = model.posterior_predictive_sample(test, n_samples=20, rng=SEED)
        zeros_ppc = 1.0 - draws.getnnz(0) / draws.shape[0]
        rows.append(
            (
                likelihood,
                mll,
                elbo,
                rec,
                float(np.abs(zeros_ppc - zeros_obs).mean()),
                t_train,
                t_mll,
            )
        )
        print(rows[-1], flush=True)
    lines = [
        "# Choosing a gene likelihood on CellBench (held-out cells)",
        "",
        f"{train.n_obs} training / {test.n_obs} held-out cells, {train.n_vars} genes; "
        "PoissonVAE defaults, `batch_key='protocol'`, seed 0 (one seed). "
        "`benchmarks/criticism_likelihoods.py`.",
        "",
        "| gene_likelihood | marginal LL | ELBO | reconstruction error | "
        "zeros per gene, mean abs. error (PPC) | training (s) | marginal LL (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, mll, elbo, rec, zerr, t_train, t_mll in rows:
        lines.append(
            f"| {name} | {mll:.1f} | {elbo:.1f} | {rec:.1f} | {zerr:.4f} | {t_train:.0f} | "
            f"{t_mll:.0f} |"
        )
    out = Path(__file__).with_name("results_criticism.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
