"""How much of A549 accessibility can RNA predict? The AUROC ceiling of issue 3's bar.

Trains MultiVAE on the fixed 90/10 split of ``a549_quality.py``, then scores the held-out cells'
accessibility (all cells x peaks, as ``a549_quality.evaluate``) with pieces of the model's
own predictor ``logit = h W_j + b_j + a_j d`` and with other depth predictors:

- the model's estimate from RNA alone (what the benchmark scores);
- ``b_j`` alone (the learned per-peak biases: a peak-frequency predictor);
- ``b_j + a_j d_hat`` with ``d_hat`` the model's own depth prediction from the RNA latent
  (no cell-state term ``h W_j``);
- the same with ``d_hat`` from regressors fitted on the training cells' RNA latents
  (ridge, 50-NN, gradient boosting), and from ridge on 50 PCs of log-normalised RNA;
- ``b_j + a_j d`` with the observed depth (an oracle, not available from RNA).

Usage: python benchmarks/a549_ceiling.py [--max-epochs 60] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import scanpy as sc
import torch
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import RidgeCV
from sklearn.neighbors import KNeighborsRegressor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from a549_quality import split

import scgenvae
from scgenvae import metrics


def _log_depth(mod) -> np.ndarray:
    return np.log(np.asarray((mod.X > 0).sum(1)).ravel().clip(1))


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    mdata = scgenvae.datasets.scicar_a549()
    train, test = split(mdata.n_obs)
    m_train, m_test = mdata[train].copy(), mdata[test].copy()
    scgenvae.model.MultiVAE.setup_mudata(m_train)
    model = scgenvae.model.MultiVAE(m_train, n_latent=20, n_hidden=256)
    model.train(max_epochs=args.max_epochs, seed=args.seed, enable_progress_bar=False)

    observed = m_test.mod["atac"].X > 0
    rows: list[tuple[str, str, float]] = []

    def score(name: str, logits: np.ndarray, r: float | None = None) -> None:
        auroc, _ = metrics.auroc_auprc(observed, logits)
        rows.append((name, "" if r is None else f"{r:.3f}", auroc))

    model_estimate = model.get_accessibility_estimates(m_test, modality="rna", return_numpy=True)
    score("MultiVAE, accessibility from RNA (the benchmark's figure)", model_estimate)
    freq = np.asarray((m_train.mod["atac"].X > 0).mean(0)).ravel()
    score("peak frequency in the training cells", np.broadcast_to(freq, observed.shape))

    dec = model.module.decoders["atac"]
    centre = model.module.library_log_means["atac"]
    with torch.no_grad():
        a = dec.region_depth.detach().numpy().astype(np.float64)
        b = (dec.head.bias + dec.region_bias).numpy().astype(np.float64)
    z_test = model.get_latent_representation(m_test, modality="rna")
    z_train = model.get_latent_representation(m_train, modality="rna")
    d_test = _log_depth(m_test.mod["atac"]) - centre
    d_train = _log_depth(m_train.mod["atac"]) - centre

    def with_depth(d: np.ndarray) -> np.ndarray:
        return b[None, :] + a[None, :] * d[:, None]

    score("b_j only (learned peak biases)", np.broadcast_to(b, observed.shape))
    with torch.no_grad():
        d_head = dec.library_head(torch.from_numpy(z_test)).squeeze(-1).numpy()
    score(
        "b_j + a_j d_hat, d_hat = model's depth head on the RNA latent",
        with_depth(d_head),
        np.corrcoef(d_head, d_test)[0, 1],
    )
    regressors = {
        "ridge": RidgeCV(alphas=np.logspace(-2, 4, 20)),
        "50-NN": KNeighborsRegressor(50),
        "gradient boosting": HistGradientBoostingRegressor(
            max_iter=200, learning_rate=0.05, random_state=0
        ),
    }
    for name, reg in regressors.items():
        pred = reg.fit(z_train, d_train).predict(z_test)
        score(
            f"b_j + a_j d_hat, d_hat = {name} on the RNA latent (fitted on training cells)",
            with_depth(pred),
            np.corrcoef(pred, d_test)[0, 1],
        )
    rna = mdata.mod["rna"].copy()
    sc.pp.normalize_total(rna, target_sum=1e4)
    sc.pp.log1p(rna)
    sc.pp.pca(rna, n_comps=50, random_state=0)
    pcs = np.c_[rna.obsm["X_pca"], np.log(np.asarray(mdata.mod["rna"].X.sum(1)).ravel())]
    pred = RidgeCV(alphas=np.logspace(-2, 4, 20)).fit(pcs[train], d_train).predict(pcs[test])
    score(
        "b_j + a_j d_hat, d_hat = ridge on 50 RNA PCs + log library",
        with_depth(pred),
        np.corrcoef(pred, d_test)[0, 1],
    )
    score("b_j + a_j d, observed depth (oracle, not available from RNA)", with_depth(d_test))

    lines = [
        f"A549 held-out accessibility AUROC (MultiVAE {args.max_epochs} epochs, seed "
        f"{args.seed}, {len(test)} held-out cells x {observed.shape[1]:,} peaks)",
        "",
        "| predictor | r(predicted, observed log depth) | AUROC |",
        "|---|---|---|",
        *[f"| {name} | {r} | {auroc:.4f} |" for name, r, auroc in rows],
    ]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
