"""Tests of ``scgenvae.metrics`` written for the mutants that survived mutation testing.

Each test checks a metric against its definition (brute force loops, scipy, hand-computed
cases); the mutants it kills are named in docs/dev/mutation.md and benchmarks/mutation_notes.toml.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from scgenvae import metrics


def _foscttm_loops(x: np.ndarray, y: np.ndarray) -> float:
    """FOSCTTM from its definition, one cell and one direction at a time."""
    n = len(x)
    fractions = []
    for i in range(n):
        d_true = np.sum((x[i] - y[i]) ** 2)
        fractions.append(sum(np.sum((x[i] - y[j]) ** 2) < d_true for j in range(n)) / (n - 1))
    for j in range(n):
        d_true = np.sum((x[j] - y[j]) ** 2)
        fractions.append(sum(np.sum((x[i] - y[j]) ** 2) < d_true for i in range(n)) / (n - 1))
    return float(np.mean(fractions))


def test_foscttm_equals_its_definition_in_both_directions():
    """Both directions count: from each x to the ys and from each y to the xs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3))
    y = x + rng.normal(scale=1.5, size=(12, 3))
    # an asymmetric case by hand: x0 has y1 closer than y0, but y0 has no x closer than x0
    xs = np.array([[0.0], [10.0], [20.0]])
    ys = np.array([[4.0], [3.0], [20.0]])
    # x->y: x0 (true 4): y1 at 3 closer -> 1/2; x1 (true 7): y0 at 6 closer -> 1/2; x2: 0
    # y->x: y0 (true 4): none closer; y1 (true 7): x0 at 3 closer -> 1/2; y2: 0
    assert metrics.foscttm(xs, ys) == pytest.approx((1 / 2 + 1 / 2 + 0 + 0 + 1 / 2 + 0) / 6)
    assert metrics.foscttm(x, y) == pytest.approx(_foscttm_loops(x, y))
    assert metrics.foscttm(y, x) == pytest.approx(_foscttm_loops(y, x))


@pytest.mark.parametrize("block", [1, 7, 4 * 2**20])
def test_foscttm_in_blocks_equals_its_definition_with_ties(monkeypatch, block):
    """Row blocks of any size give the same count, ties (equal distances) included.

    The distances are computed a block of rows at a time (an n x n x d array of 2,000 cells
    took 640 MiB in the health check); integer coordinates make many distances tie with the
    true match's, which must not count as closer, in either direction.
    """
    monkeypatch.setattr(metrics, "_FOSCTTM_BLOCK_VALUES", block)
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, size=(15, 2)).astype(float)
    y = x + rng.integers(-1, 2, size=(15, 2))
    assert metrics.foscttm(x, y) == pytest.approx(_foscttm_loops(x, y))
    assert metrics.foscttm(y, x) == pytest.approx(_foscttm_loops(y, x))


def test_knn_accuracy_uses_n_folds():
    """Three cells a class: 3 folds work, 5 (the default) cannot stratify them."""
    rep = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
    labels = np.array(["a", "a", "a", "b", "b", "b"])
    assert metrics.knn_accuracy(rep, labels, n_neighbors=1, n_folds=3) == 1.0
    with pytest.raises(ValueError, match="n_splits"):
        metrics.knn_accuracy(rep, labels, n_neighbors=1)


def test_knn_accuracy_default_is_15_neighbours_in_5_folds():
    """Defaults pinned against scikit-learn: 15 neighbours, 5 stratified shuffled folds."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(1)
    rep = rng.normal(size=(60, 2))
    labels = (rep[:, 0] + rng.normal(scale=1.0, size=60) > 0).astype(int)
    default = metrics.knn_accuracy(rep, labels)
    # the same split (same rng) at other sizes gives other figures: the defaults are visible
    assert default == metrics.knn_accuracy(rep, labels, n_neighbors=15, n_folds=5, rng=0)
    assert default != metrics.knn_accuracy(rep, labels, n_neighbors=16)
    # an unshuffled 5-fold split (scikit-learn's default cv) scores differently
    unshuffled = cross_val_score(
        KNeighborsClassifier(n_neighbors=15), rep, labels, cv=StratifiedKFold(5)
    ).mean()
    figures = {metrics.knn_accuracy(rep, labels, rng=seed) for seed in range(5)} | {
        float(unshuffled)
    }
    assert len(figures) > 2  # the split depends on rng and is shuffled


def test_mean_feature_auroc_skips_never_open_features_and_gives_nan_without_any():
    observed = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    predicted = np.array([[0.9, 0.3], [0.2, 0.1], [0.8, 0.7], [0.5, 0.2]])
    assert metrics.mean_feature_auroc(observed, predicted) == pytest.approx(1.0)
    assert np.isnan(metrics.mean_feature_auroc(np.zeros((3, 2)), np.ones((3, 2))))


def _spearman_by_gene(obs: np.ndarray, pred: np.ndarray) -> float:
    """Mean over genes of scipy's Spearman correlation of proportions vs predictions."""
    tot = obs.sum(1, keepdims=True)
    prop = np.where(tot > 0, obs / np.where(tot > 0, tot, 1), 0.0)
    rhos = [
        stats.spearmanr(prop[:, g], pred[:, g]).statistic
        for g in range(obs.shape[1])
        if np.ptp(prop[:, g]) > 0 and np.ptp(pred[:, g]) > 0
    ]
    return float(np.mean(rhos))


def test_mean_gene_spearman_equals_scipy_per_gene():
    """Ranks across cells (axis 0) of proportions, against scipy.stats.spearmanr."""
    rng = np.random.default_rng(2)
    obs = rng.poisson(3.0, size=(9, 5)).astype(float)
    pred = rng.random((9, 5))
    assert metrics.mean_gene_spearman(obs, pred) == pytest.approx(_spearman_by_gene(obs, pred))


def test_mean_gene_spearman_cells_with_zero_or_one_count():
    """An empty cell has proportions 0 (no division by 0); a one-count cell has a 1."""
    obs = np.array([[0, 0, 0], [1, 0, 0], [2, 2, 4], [0, 3, 1], [5, 1, 0]], dtype=float)
    pred = np.array(
        [[0.0, 0.1, 0.4], [0.9, 0.0, 0.1], [0.3, 0.3, 0.6], [0.1, 0.6, 0.2], [0.5, 0.2, 0.3]]
    )
    expected = _spearman_by_gene(obs, pred)
    assert metrics.mean_gene_spearman(obs, pred) == pytest.approx(expected)
    # the empty cell's proportions are zeros, not whatever memory numpy hands out: fill its
    # cache of small buffers of this size with NaN first, so uninitialised entries would show
    for _ in range(3):
        dirty = [np.full(obs.shape, np.nan) for _ in range(16)]
        del dirty
        assert metrics.mean_gene_spearman(obs, pred) == pytest.approx(expected)
    # the one-count cell matters: as an empty cell its gene-0 rank would drop to the bottom
    as_empty = obs.copy()
    as_empty[1] = 0
    assert _spearman_by_gene(as_empty, pred) != pytest.approx(expected)


def test_mean_gene_spearman_skips_genes_with_a_constant_prediction():
    rng = np.random.default_rng(3)
    obs = rng.poisson(3.0, size=(8, 4)).astype(float)
    pred = rng.random((8, 4))
    pred[:, 1] = 0.5  # exactly representable: its std is exactly 0
    kept = [0, 2, 3]
    tot = obs.sum(1, keepdims=True)
    rhos = [stats.spearmanr(obs[:, g] / tot[:, 0], pred[:, g]).statistic for g in kept]
    assert metrics.mean_gene_spearman(obs, pred) == pytest.approx(np.mean(rhos))


def test_mean_gene_spearman_skips_a_constant_prediction_of_0_1():
    obs = np.array([[1, 2, 0], [3, 1, 1], [0, 5, 2]], dtype=float)
    pred = np.array([[0.1, 1, 2], [0.1, 3, 1], [0.1, 2, 2]])
    assert np.isfinite(metrics.mean_gene_spearman(obs, pred))
