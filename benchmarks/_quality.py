"""A549 sci-CAR quality jobs (run inside a worker process): MultiVAE and MULTIVI, same split.

Ours is scored with ``a549_quality.evaluate``; MULTIVI with :func:`evaluate_multivi`, which
computes the same metrics through MULTIVI's API. Cross-modal predictions of MULTIVI come from
the held-out cells with the other modality zeroed: MULTIVI treats a cell whose modality sums
to zero as lacking it, so its latent then comes from the remaining modality alone.
"""

from __future__ import annotations

import time

import a549_quality as aq
import numpy as np
from _speed import peak_rss_mib
from lightning.pytorch.callbacks import Callback
from scipy import sparse

_MODALITIES = {"rna_layer": "rna", "atac_layer": "atac"}


def load_a549(n_cells: int | None = None, n_peaks: int | None = None):
    """The bundled A549 MuData, optionally subsampled (``--quick``) with a fixed seed."""
    import mudata as md

    import scgenvae

    mdata = scgenvae.datasets.scicar_a549()
    if n_cells is None and n_peaks is None:
        return mdata
    rng = np.random.default_rng(0)
    cells = np.sort(
        rng.choice(mdata.n_obs, size=min(n_cells or mdata.n_obs, mdata.n_obs), replace=False)
    )
    n_p = mdata.mod["atac"].n_vars
    peaks = np.sort(rng.choice(n_p, size=min(n_peaks or n_p, n_p), replace=False))
    sub = md.MuData(
        {"rna": mdata.mod["rna"][cells].copy(), "atac": mdata.mod["atac"][cells][:, peaks].copy()}
    )
    sub.obs = mdata.obs.iloc[cells][["Time"]].copy()
    return sub


def _zeroed(mdata, mod: str):
    """Copy of ``mdata`` with modality ``mod`` set to all zeros (same shape and names)."""
    out = mdata.copy()
    out.mod[mod].X = sparse.csr_matrix(out.mod[mod].shape, dtype=np.float32)
    return out


def _multivi_ready(mdata):
    """A copy set up for MULTIVI (its set-up reorders ``mdata.mod`` and writes ``obs``)."""
    import scvi

    out = mdata.copy()
    scvi.model.MULTIVI.setup_mudata(out, modalities=_MODALITIES)
    return out


def evaluate_multivi(model, mdata_test, mdata_all, time_key: str = "Time") -> dict:
    """The metrics of ``a549_quality.evaluate`` computed with MULTIVI's API."""
    from scgenvae import metrics

    test = _multivi_ready(mdata_test)
    z_rna = model.get_latent_representation(test, modality="expression")
    z_atac = model.get_latent_representation(test, modality="accessibility")
    rna_only = _multivi_ready(_zeroed(mdata_test, "atac"))
    # full predicted probability up to the cell factor: p * sigmoid(region factor)
    acc = model.get_normalized_accessibility(rna_only, normalize_regions=True, return_numpy=True)
    acc_default = model.get_normalized_accessibility(rna_only, return_numpy=True)
    atac_only = _multivi_ready(_zeroed(mdata_test, "rna"))
    expr = model.get_normalized_expression(atac_only, return_numpy=True)
    auroc, auprc = metrics.auroc_auprc(mdata_test.mod["atac"].X, acc)
    auroc_def, auprc_def = metrics.auroc_auprc(mdata_test.mod["atac"].X, acc_default)
    z_all = model.get_latent_representation(_multivi_ready(mdata_all))
    rec = model.get_reconstruction_error(test)
    elbo = model.get_elbo(test)
    return {
        "foscttm": metrics.foscttm(z_rna, z_atac),
        "auroc_atac_from_rna": auroc,
        "auprc_atac_from_rna": auprc,
        "auroc_atac_from_rna_no_region_factors": auroc_def,
        "auprc_atac_from_rna_no_region_factors": auprc_def,
        "spearman_rna_from_atac": metrics.mean_gene_spearman(mdata_test.mod["rna"].X, expr),
        "time_knn_accuracy": metrics.knn_accuracy(z_all, mdata_all.obs[time_key]),
        # per-cell means of the reconstruction losses (negative log-likelihoods)
        "heldout_nll_rna": float(rec["reconstruction_loss_expression"]),
        "heldout_nll_atac": float(rec["reconstruction_loss_accessibility"]),
        "heldout_elbo": float(elbo),
    }


def heldout_elbo_ours(model, mdata_test) -> dict:
    """Per-cell held-out reconstruction NLL of each modality, KL and ELBO (one z sample)."""
    import torch

    sums: dict[str, float] = {}
    internal = model._internal(mdata_test)
    model.module.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for tensors in model._loader(internal, batch_size=256):
            for key, value in model.module.log_likelihood_terms(tensors).items():
                sums[key] = sums.get(key, 0.0) + float(value.sum())
    n = mdata_test.n_obs
    out = {f"heldout_nll_{k}": v / n for k, v in sums.items() if k in ("rna", "atac")}
    out["heldout_elbo"] = -sum(v for v in sums.values()) / n
    return out


class CheckpointEval(Callback):
    """Evaluate the model at chosen epochs of one training run (time-to-quality).

    The recorded training time is wall time since ``train()`` was called minus the time spent
    evaluating. Evaluation runs with torch's RNG forked, so training draws the same random
    numbers as without it; the module is put back in training mode afterwards.
    """

    def __init__(self, model, epochs, evaluate, t_start: float):
        self.model = model
        self.epochs = set(epochs)
        self.evaluate = evaluate
        self.t_start = t_start
        self.eval_seconds = 0.0
        self.records: list[dict] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import torch

        epoch = trainer.current_epoch + 1
        if epoch not in self.epochs:
            return
        t0 = time.perf_counter()
        train_seconds = t0 - self.t_start - self.eval_seconds
        was_trained = self.model.is_trained_
        self.model.is_trained_ = True
        try:
            with torch.random.fork_rng(devices=[]):
                metrics = self.evaluate()
        finally:
            self.model.is_trained_ = was_trained
            pl_module.module.train()
        self.eval_seconds += time.perf_counter() - t0
        self.records.append({"epoch": epoch, "train_seconds": train_seconds, **metrics})


def a549_job(job: dict) -> dict:
    """Train one model on the fixed 90% split and score it on the held-out 10%."""
    import scvi

    import scgenvae

    mdata = load_a549(job.get("n_cells"), job.get("n_peaks"))
    train, test = aq.split(mdata.n_obs)
    m_train, m_test = mdata[train].copy(), mdata[test].copy()
    name, epochs = job["model"], job["epochs"]
    sizes = {"n_latent": job["n_latent"], "n_hidden": job["n_hidden"]}
    common = {"max_epochs": epochs, "enable_progress_bar": False, "enable_model_summary": False}
    out: dict = {"model": name, "epochs": epochs, "n_train": len(train), "n_test": len(test)}
    if name == "MultiVAE":
        scgenvae.model.MultiVAE.setup_mudata(m_train)
        model = scgenvae.model.MultiVAE(m_train, n_layers=job["n_layers"], **sizes)
        checkpoints = [e for e in job.get("checkpoints", []) if e < epochs]
        t0 = time.perf_counter()
        cb = CheckpointEval(
            model, checkpoints, lambda: aq.evaluate(model, m_test, mdata), t_start=t0
        )
        model.train(seed=0, callbacks=[cb], **common)
        wall = time.perf_counter() - t0 - cb.eval_seconds
        final = aq.evaluate(model, m_test, mdata)
        out["checkpoints"] = [*cb.records, {"epoch": epochs, "train_seconds": wall, **final}]
        out.update(final)
        out.update(heldout_elbo_ours(model, m_test))
        out["baselines"] = aq.baselines(m_train, m_test, mdata)
    elif name == "MULTIVI":
        scvi.settings.seed = 0
        m_train = _multivi_ready(m_train)
        model = scvi.model.MULTIVI(
            m_train,
            gene_likelihood="poisson",
            n_layers_encoder=job["n_layers"],
            n_layers_decoder=job["n_layers"],
            **sizes,
        )
        t0 = time.perf_counter()
        model.train(train_size=1.0, early_stopping=False, **common)
        wall = time.perf_counter() - t0
        out.update(evaluate_multivi(model, m_test, mdata))
    else:
        msg = f"unknown model {name!r}"
        raise ValueError(msg)
    out["train_seconds"] = wall
    out["peak_rss_mib"] = peak_rss_mib()
    return out
