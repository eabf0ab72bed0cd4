"""Metrics against small hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from scgenvae import metrics


def test_mean_feature_auroc_by_hand():
    observed = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    predicted = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.3], [0.5, 0.9]])
    # feature 0: positives 0.9, 0.4 vs negatives 0.2, 0.5 -> pairs won 2 + 1 of 4 = 0.75
    # feature 1: positive 0.8 vs 0.1, 0.3, 0.9 -> 2 of 3
    expected = (0.75 + 2 / 3) / 2
    assert metrics.mean_feature_auroc(observed, predicted) == pytest.approx(expected)
    assert metrics.mean_feature_auroc(sparse.csr_matrix(observed), predicted) == pytest.approx(
        expected
    )


def test_mean_feature_auroc_of_a_constant_prediction_is_one_half():
    rng = np.random.default_rng(0)
    observed = rng.random((40, 6)) < 0.3
    freq = np.broadcast_to(observed.mean(0), observed.shape)
    assert metrics.mean_feature_auroc(observed, freq) == pytest.approx(0.5)


def test_mean_feature_auroc_skips_constant_features_and_checks_shapes():
    observed = np.array([[1, 1], [0, 1], [1, 1]])
    predicted = np.array([[0.9, 0.0], [0.1, 0.0], [0.8, 0.0]])
    assert metrics.mean_feature_auroc(observed, predicted) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one shape"):
        metrics.mean_feature_auroc(observed, predicted[:, :1])
