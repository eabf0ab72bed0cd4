"""Held-out quality of MultiVAE on the sci-CAR A549 multiome (train 90%, score the other 10%).

Usage: python benchmarks/a549_quality.py [--max-epochs N] [--seed S] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scanpy as sc

import scgenvae
from scgenvae import metrics

SPLIT_FILE = Path(__file__).parent / "a549_heldout_indices.npy"


def split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed 90/10 split of cells; the held-out indices are saved beside this script."""
    rng = np.random.default_rng(seed)
    test = np.sort(rng.choice(n, size=n // 10, replace=False))
    train = np.setdiff1d(np.arange(n), test)
    return train, test


def evaluate(model, mdata_test, mdata_all, time_key: str = "Time") -> dict:
    """FOSCTTM, cross-modal imputation scores on held-out cells, and time k-NN accuracy."""
    z_rna = model.get_latent_representation(mdata_test, modality="rna")
    z_atac = model.get_latent_representation(mdata_test, modality="atac")
    acc = model.get_accessibility_estimates(mdata_test, modality="rna", return_numpy=True)
    expr = model.get_normalized_expression(mdata_test, modality="atac", return_numpy=True)
    auroc, auprc = metrics.auroc_auprc(mdata_test.mod["atac"].X, acc)
    peak_auroc = metrics.mean_feature_auroc(mdata_test.mod["atac"].X, acc)
    z_all = model.get_latent_representation(mdata_all)
    return {
        "foscttm": metrics.foscttm(z_rna, z_atac),
        "auroc_atac_from_rna": auroc,
        "auprc_atac_from_rna": auprc,
        "peak_auroc_atac_from_rna": peak_auroc,
        "spearman_rna_from_atac": metrics.mean_gene_spearman(mdata_test.mod["rna"].X, expr),
        "time_knn_accuracy": metrics.knn_accuracy(z_all, mdata_all.obs[time_key]),
    }


def baselines(mdata_train, mdata_test, mdata_all, time_key: str = "Time") -> dict:
    """Trivial baselines: peak frequency for accessibility, RNA PCA for time."""
    freq = np.asarray(mdata_train.mod["atac"].X.mean(0)).ravel()
    pred = np.broadcast_to(freq, mdata_test.mod["atac"].shape)
    auroc, auprc = metrics.auroc_auprc(mdata_test.mod["atac"].X, pred)
    rna = mdata_all.mod["rna"].copy()
    sc.pp.normalize_total(rna, target_sum=1e4)
    sc.pp.log1p(rna)
    sc.pp.pca(rna, n_comps=20, random_state=0)
    return {
        "peak_frequency_auroc": auroc,
        "peak_frequency_auprc": auprc,
        "rna_pca_time_knn_accuracy": metrics.knn_accuracy(
            rna.obsm["X_pca"], mdata_all.obs[time_key]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--n-latent", type=int, default=20)
    parser.add_argument("--n-hidden", type=int, default=256)
    parser.add_argument("--n-sampled-peaks", type=int, default=None, help="default: the model's")
    args = parser.parse_args()
    mdata = scgenvae.datasets.scicar_a549()
    train, test = split(mdata.n_obs)
    np.save(SPLIT_FILE, test)
    m_train, m_test = mdata[train].copy(), mdata[test].copy()
    scgenvae.model.MultiVAE.setup_mudata(m_train)
    kwargs = {} if args.n_sampled_peaks is None else {"n_sampled_peaks": args.n_sampled_peaks}
    model = scgenvae.model.MultiVAE(
        m_train, n_latent=args.n_latent, n_hidden=args.n_hidden, **kwargs
    )
    t0 = time.perf_counter()
    model.train(max_epochs=args.max_epochs, seed=args.seed, enable_progress_bar=False)
    elapsed = time.perf_counter() - t0
    out = {
        "train_seconds": elapsed,
        **evaluate(model, m_test, mdata),
        **baselines(m_train, m_test, mdata),
    }
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
