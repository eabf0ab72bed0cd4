"""MultiVAE on real multiome data: train on 90% of cells, score the held-out 10%."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest

import scgenvae
from scgenvae import metrics
from scgenvae.model import MultiVAE

_spec = importlib.util.spec_from_file_location(
    "a549_quality", Path(__file__).parents[1] / "benchmarks" / "a549_quality.py"
)
a549_quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(a549_quality)


def _fit_split(mdata, quiet, *, epochs, **kwargs):
    train, test = a549_quality.split(mdata.n_obs)
    m_train, m_test = mdata[train].copy(), mdata[test].copy()
    MultiVAE.setup_mudata(m_train)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ATAC values are not binary")
        model = MultiVAE(m_train, **kwargs)
        model.train(max_epochs=epochs, seed=0, **quiet)
    return model, m_train, m_test


@pytest.mark.quality
def test_pbmc_subset_held_out_cells(quiet):
    """PBMC multiome subset, 100 epochs, scored on the held-out 10% of cells.

    Figures on seeds 0, 1, 2: FOSCTTM 0.2425, 0.2416, 0.2404 (range 0.0022; 1 epoch 0.499);
    AUROC of ATAC from RNA 0.8493, 0.8483, 0.8486 (range 0.0010) against peak frequency's
    0.8183 (1 epoch: 0.8181); Spearman of RNA from ATAC 0.366, 0.363, 0.370 (range 0.007;
    1 epoch -0.005). Bars: the worst seed plus/minus twice the seed range: FOSCTTM < 0.247,
    AUROC >= 0.846 and above peak frequency's, Spearman > 0.348.
    """
    mdata = scgenvae.datasets.pbmc_multiome_subset()
    model, m_train, m_test = _fit_split(mdata, quiet, epochs=100, n_latent=10, n_hidden=64)
    # held-out cells without ATAC counts have no ATAC latent nor expression from ATAC (NaN)
    has_atac = np.asarray(m_test.mod["atac"].X.sum(1)).ravel() > 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ATAC values are not binary")
        z_rna = model.get_latent_representation(m_test, modality="rna", indices=has_atac)
        z_atac = model.get_latent_representation(m_test, modality="atac", indices=has_atac)
        acc = model.get_accessibility_estimates(m_test, modality="rna", return_numpy=True)
        expr = model.get_normalized_expression(
            m_test, modality="atac", indices=has_atac, return_numpy=True
        )
    assert metrics.foscttm(z_rna, z_atac) < 0.247
    auroc, _ = metrics.auroc_auprc(m_test.mod["atac"].X, acc)
    freq = np.asarray((m_train.mod["atac"].X > 0).mean(0)).ravel()
    base, _ = metrics.auroc_auprc(m_test.mod["atac"].X, np.broadcast_to(freq, acc.shape))
    assert auroc >= 0.846
    assert auroc > base
    assert metrics.mean_gene_spearman(m_test.mod["rna"].X[has_atac], expr) > 0.348


def _a549_scores(*, seed: int, max_epochs: int | None) -> tuple[dict, dict, np.ndarray, dict]:
    """Train MultiVAE as a user would (``train()``, or only ``max_epochs`` given) on the 90%."""
    mdata = scgenvae.datasets.scicar_a549()
    train, test = a549_quality.split(mdata.n_obs)
    m_train, m_test = mdata[train].copy(), mdata[test].copy()
    MultiVAE.setup_mudata(m_train)
    model = MultiVAE(m_train)
    kwargs = {} if max_epochs is None else {"max_epochs": max_epochs}
    model.train(seed=seed, enable_progress_bar=False, enable_model_summary=False, **kwargs)
    scores = a549_quality.evaluate(model, m_test, mdata)
    print(f"A549 seed {seed}, max_epochs {max_epochs}: {scores}")
    freq = np.asarray((m_train.mod["atac"].X > 0).mean(0)).ravel()
    base, _ = metrics.auroc_auprc(
        m_test.mod["atac"].X, np.broadcast_to(freq, m_test.mod["atac"].shape)
    )
    loss = np.asarray(model.history["train_loss"].iloc[:, 0], dtype=np.float64)
    return scores, {"peak_frequency_auroc": base}, loss, model.training_report


def _check_a549(scores: dict, base: dict, loss: np.ndarray, report: dict) -> None:
    """The bar of the defaults issue, on the held-out 10%.

    Measured (benchmarks/RESULTS_defaults.md, seeds 0-2) at the default ``train()`` (early
    stopping at epochs 94-109; the same run as ``max_epochs=200``): FOSCTTM 0.263-0.265, AUROC
    0.7560-0.7589 against peak frequency 0.7549, per-peak AUROC 0.547-0.558, Spearman
    0.070-0.072, time 15-NN 0.904-0.921, largest loss 1.09x epoch 0; at ``max_epochs=60``:
    FOSCTTM 0.264-0.279, AUROC 0.7560-0.7572, Spearman 0.072-0.074, time 0.900-0.920. The bars
    are the issue's; the tightest margin is the AUROC's (0.0011 over peak frequency at worst).
    Before the alignment fix the default run diverged (loss 125x epoch 0 in a reproduction of
    its first 60 epochs) and ended at chance (FOSCTTM 0.50, time 0.40).
    """
    assert report["problems"] == []
    assert loss.max() <= 1.5 * loss[0]
    assert scores["foscttm"] < 0.30
    assert scores["auroc_atac_from_rna"] > base["peak_frequency_auroc"]
    assert scores["peak_auroc_atac_from_rna"] > 0.5
    assert scores["spearman_rna_from_atac"] > 0.062
    assert scores["time_knn_accuracy"] > 0.85


@pytest.mark.quality
def test_a549_default_training():
    """sci-CAR A549 with the default ``train()`` (early stopping on the validation ELBO)."""
    _check_a549(*_a549_scores(seed=0, max_epochs=None))


@pytest.mark.slow
@pytest.mark.quality
@pytest.mark.parametrize(
    ("max_epochs", "seed"),
    [(None, 1), (None, 2), (60, 0), (60, 1), (60, 2)],
)
def test_a549_other_seeds_and_lengths(max_epochs, seed):
    """The same bar for the other seeds and at max_epochs 60 (200 and 400 give the default run)."""
    _check_a549(*_a549_scores(seed=seed, max_epochs=max_epochs))
