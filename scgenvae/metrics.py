"""Quality metrics of latent spaces and cross-modal imputation (used by tests and benchmarks)."""

from __future__ import annotations

import numpy as np
from scipy import sparse, stats

#: float64 values of the distance block ``foscttm`` holds at a time (32 MiB)
_FOSCTTM_BLOCK_VALUES = 4 * 2**20


def foscttm(x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of samples closer than the true match, averaged over both directions.

    ``x[i]`` and ``y[i]`` embed the same cell from two modalities. For each cell, the fraction
    of other cells of ``y`` closer to ``x[i]`` than ``y[i]`` is (0 is perfect, 0.5 chance).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        msg = f"x and y must have the same shape, got {x.shape} and {y.shape}."
        raise ValueError(msg)
    n = len(x)
    true = ((x - y) ** 2).sum(-1)
    closer_x = np.zeros(n, dtype=np.int64)  # per row: y closer to x[i] than y[i]
    closer_y = np.zeros(n, dtype=np.int64)  # per column: x closer to y[j] than x[j]
    # squared distances a block of rows at a time, computed as the diagonal is (same rounding,
    # so ties compare as they would in one n x n x d array), in ~32 MiB of temporaries
    step = max(1, _FOSCTTM_BLOCK_VALUES // max(n * x.shape[1], 1))
    for start in range(0, n, step):
        d = ((x[start : start + step, None, :] - y[None, :, :]) ** 2).sum(-1)
        closer_x[start : start + step] = (d < true[start : start + step, None]).sum(1)
        closer_y += (d < true[None, :]).sum(0)
    fx = closer_x / (n - 1)
    fy = closer_y / (n - 1)
    return float((fx.mean() + fy.mean()) / 2)


def knn_accuracy(
    rep: np.ndarray, labels, *, n_neighbors: int = 15, n_folds: int = 5, rng=0
) -> float:
    """Mean accuracy of a k-NN classifier of ``labels`` on ``rep`` in stratified k-fold CV."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    seed = int(np.random.default_rng(rng).integers(2**31 - 1))
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    scores = cross_val_score(
        KNeighborsClassifier(n_neighbors=n_neighbors), rep, np.asarray(labels), cv=cv
    )
    return float(scores.mean())


def _dense(x) -> np.ndarray:
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def auroc_auprc(observed, predicted: np.ndarray) -> tuple[float, float]:
    """AUROC and AUPRC of predicted probabilities against binary observations, all entries."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = (_dense(observed) > 0).ravel()
    p = np.asarray(predicted).ravel()
    return float(roc_auc_score(y, p)), float(average_precision_score(y, p))


def mean_gene_spearman(observed, predicted: np.ndarray) -> float:
    """Mean over genes of the Spearman correlation across cells (genes constant in either skipped).

    ``observed`` counts are normalised to proportions per cell before ranking.
    """
    obs = _dense(observed).astype(np.float64)
    tot = obs.sum(1, keepdims=True)
    obs = np.divide(obs, tot, out=np.zeros_like(obs), where=tot > 0)
    pred = np.asarray(predicted, dtype=np.float64)
    # ptp, not std: the std of a constant column can round to 1e-17 (0.1 in 3 cells)
    keep = (np.ptp(obs, 0) > 0) & (np.ptp(pred, 0) > 0)
    if not keep.any():
        return float("nan")
    ro = stats.rankdata(obs[:, keep], axis=0)
    rp = stats.rankdata(pred[:, keep], axis=0)
    ro -= ro.mean(0)
    rp -= rp.mean(0)
    r = (ro * rp).sum(0) / np.sqrt((ro**2).sum(0) * (rp**2).sum(0))
    return float(r.mean())


def mean_feature_auroc(observed, predicted: np.ndarray) -> float:
    """Mean over features of the AUROC across cells of predicted against binary observations.

    Features that are open (non-zero) in every cell or in none are skipped. A prediction that
    is the same for every cell, such as each peak's frequency, scores exactly 0.5: the figure
    measures the cell-specific part of a prediction that :func:`auroc_auprc` (all entries
    pooled) mixes with the features' frequencies. Ties share their average rank.
    """
    y = _dense(observed) > 0
    pred = np.asarray(predicted, dtype=np.float64)
    if y.shape != pred.shape:
        msg = f"observed and predicted must have one shape, got {y.shape} and {pred.shape}."
        raise ValueError(msg)
    n_pos = y.sum(0)
    n_neg = y.shape[0] - n_pos
    keep = (n_pos > 0) & (n_neg > 0)
    if not keep.any():
        return float("nan")
    ranks = stats.rankdata(pred[:, keep], axis=0)
    pos = n_pos[keep].astype(np.float64)
    rank_sum = (ranks * y[:, keep]).sum(0)
    auc = (rank_sum - pos * (pos + 1) / 2) / (pos * n_neg[keep])
    return float(auc.mean())
