"""The checks every fit runs (``model.training_report``), the default early stopping and its line."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from scgenvae.datasets import synthetic_multiome, synthetic_rna
from scgenvae.model import MultiVAE, PoissonVAE
from scgenvae.model._health import (
    TrainingHealthWarning,
    active_dimensions,
    divergence_ratio,
    stop_message,
)


def _health_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TrainingHealthWarning)]


def _fit(model, **kwargs) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(seed=0, enable_progress_bar=False, enable_model_summary=False, **kwargs)
    return _health_warnings(caught)


# ------------------------------------------------------------------ the measures, by hand
@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        ([10.0, 8.0, 6.0, 5.0], 1.0),  # only falls
        ([10.0, 8.0, 12.0, 5.0], 1.5),  # 12 against the best before it, 8
        ([10.0, 4.0, 9.0, 20.0], 5.0),  # 20 against 4
        ([-10.0, -12.0, -6.0], 1.5),  # negative losses: a rise of half the best's size
        ([5.0], 1.0),
        ([], 1.0),
        ([5.0, np.nan, 4.0], float("inf")),
    ],
)
def test_divergence_ratio_by_hand(loss, expected):
    assert divergence_ratio(np.array(loss)) == pytest.approx(expected)


def test_active_dimensions_by_hand():
    rng = np.random.default_rng(0)
    means = np.column_stack(
        [
            rng.normal(0, 1.0, 500),  # active
            rng.normal(0, 0.2, 500),  # variance 0.04 > 0.01: active
            rng.normal(0, 0.05, 500),  # variance 0.0025: inactive
            np.full(500, 3.0),  # constant: inactive
        ]
    )
    assert active_dimensions(means) == 2
    assert active_dimensions(means[:1]) == 0


def test_stop_message_says_when_and_why():
    assert stop_message(epochs_run=40, max_epochs=40, early_stopping=None) == (
        "training ran its 40 of 40 epochs (max_epochs reached)."
    )
    line = stop_message(
        epochs_run=57,
        max_epochs=400,
        early_stopping={"stopped": True, "patience": 30, "best": 812.5, "best_epoch": 27},
    )
    assert "stopped early at epoch 57 of at most 400" in line
    assert "not improved for 30 epochs" in line
    assert "epoch 27" in line


# ------------------------------------------------------------------ fits that must warn
def test_huge_learning_rate_is_reported_as_divergence(adata):
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4)
    caught = _fit(model, max_epochs=30, lr=1.0)
    assert any("training diverged" in w for w in caught), caught
    assert model.training_report["divergence_ratio"] > 1.5


def test_forced_posterior_collapse_is_reported(adata):
    """A KL weight of 10^4 drives every posterior onto the prior: no active dimension."""
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4)
    caught = _fit(model, max_epochs=30, plan_kwargs={"max_kl_weight": 1e4})
    assert any("posterior collapse: 0 of 4" in w for w in caught), caught
    assert model.training_report["active_dimensions"] == 0


def test_mispaired_modalities_are_reported():
    """ATAC rows shuffled across cells: no latent can tie a new cell's RNA to its ATAC.

    Measured on the validation cells (1,000 cells: default early stopping holds 10% out);
    FOSCTTM 0.50 here, 0.39 on the training cells, whose wrong pairs the model learnt; 0.15
    with the true pairing.
    """
    mdata = synthetic_multiome(n_obs=1000, n_genes=50, n_peaks=100, rng=0)
    atac = mdata.mod["atac"]
    atac.X = atac.X[np.random.default_rng(0).permutation(atac.n_obs)]
    MultiVAE.setup_mudata(mdata)
    model = MultiVAE(mdata, n_latent=5, n_hidden=32)
    caught = _fit(model, max_epochs=40)
    assert model.training_report["modality_foscttm_cells"] == "validation"
    assert model.training_report["modality_foscttm"] >= 0.4
    assert any("modalities are not tied together" in w for w in caught), caught


def test_non_finite_parameters_are_reported(adata, monkeypatch):
    import torch

    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4)
    original = model._check_fit

    def poisoned(**kwargs):
        with torch.no_grad():
            next(iter(model.module.decoders.values())).head.bias[0] = float("nan")
        original(**kwargs)

    monkeypatch.setattr(model, "_check_fit", poisoned)
    caught = _fit(model, max_epochs=2)
    assert model.training_report["finite"] is False
    assert any("non-finite values in the parameters" in w for w in caught), caught


# ------------------------------------------------------------------ fits that must not
def test_good_fits_are_silent(adata, mdata):
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    rna = PoissonVAE(adata, n_latent=4)
    assert _fit(rna, max_epochs=60) == []
    report = rna.training_report
    assert report["finite"] is True
    assert report["divergence_ratio"] <= 1.5
    assert report["active_dimensions"] >= 2
    assert report["problems"] == []

    MultiVAE.setup_mudata(mdata)
    multi = MultiVAE(mdata, n_latent=5, n_hidden=32)
    assert _fit(multi, max_epochs=60) == []
    assert multi.training_report["modality_foscttm"] < 0.3


def test_report_survives_save_and_load(adata, tmp_path):
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4)
    assert model.training_report is None
    _fit(model, max_epochs=3)
    model.save(tmp_path / "m")
    loaded = PoissonVAE.load(tmp_path / "m", adata.copy())
    assert loaded.training_report == model.training_report


# ------------------------------------------------------------------ default early stopping
def _stop_right_after_warmup(**kwargs) -> PoissonVAE:
    """1,000 cells (early stopping on by default); any epoch after the 5-epoch warm-up but the
    first fails to improve by 10^6, so training stops at epoch 7 with epoch 6 the best."""
    adata = synthetic_rna(n_obs=1000, n_vars=30, rng=1)
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4)
    model.train(
        max_epochs=200,
        n_epochs_kl_warmup=5,
        early_stopping_patience=1,
        early_stopping_min_delta=1e6,
        seed=0,
        enable_model_summary=False,
        **kwargs,
    )
    return model


def test_early_stopping_is_on_by_default_from_1000_cells_and_says_why(capsys):
    model = _stop_right_after_warmup()  # with the progress bar, which prints the line
    stop = model.training_report["stop"]
    assert stop["early_stopping"]["stopped"] is True
    assert stop["early_stopping"]["best_epoch"] == 6
    assert stop["epochs"] == 7  # first check at epoch 6 sets the best, epoch 7 fails it
    assert "elbo_validation" in model.history
    out = capsys.readouterr().out
    assert "training stopped early at epoch 7 of at most 200" in out


def test_early_stopping_keeps_the_parameters_of_the_best_epoch():
    import torch
    from lightning.pytorch import Callback

    class Snapshots(Callback):
        def __init__(self):
            self.states = {}

        def on_validation_end(self, trainer, pl_module):
            state = pl_module.module.state_dict()
            self.states[trainer.current_epoch + 1] = {k: v.clone() for k, v in state.items()}

    snapshots = Snapshots()
    model = _stop_right_after_warmup(callbacks=[snapshots], enable_progress_bar=False)
    final = model.module.state_dict()
    best, last = snapshots.states[6], snapshots.states[7]
    assert all(torch.equal(final[k], best[k]) for k in final)
    assert not all(torch.equal(final[k], last[k]) for k in final)
    assert "parameters of that epoch are kept" in model.training_report["stop"]["message"]


def test_early_stopping_is_off_below_1000_cells_and_with_train_size_1(adata):
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4)
    _fit(model, max_epochs=3)
    assert model.training_report["stop"]["early_stopping"] is None
    assert "elbo_validation" not in model.history
    assert model.training_report["stop"]["message"] == (
        "training ran its 3 of 3 epochs (max_epochs reached)."
    )

    big = synthetic_rna(n_obs=1000, n_vars=30, rng=1)
    PoissonVAE.setup_anndata(big, batch_key="batch")
    model = PoissonVAE(big, n_latent=4)
    _fit(model, max_epochs=2, train_size=1.0)
    assert model.training_report["stop"]["early_stopping"] is None
    with pytest.raises(ValueError, match="needs validation cells"):
        model.train(max_epochs=2, train_size=1.0, early_stopping=True)


def test_multiome_default_early_stopping_on_paired_cells():
    mdata = synthetic_multiome(n_obs=1000, n_genes=30, n_peaks=60, rng=2)
    MultiVAE.setup_mudata(mdata)
    model = MultiVAE(mdata, n_latent=4, n_hidden=32)
    _fit(model, max_epochs=4)
    assert model.training_report["stop"]["early_stopping"] is not None
    assert model.training_report["modality_foscttm"] is not None
