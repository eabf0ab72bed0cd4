"""Speed jobs run inside a worker process: build one model, train it, time its epochs.

Also the analytic FLOP counts of each model and the matmul reference throughput. Imported only
by ``_worker.py`` (the orchestrator ``run.py`` never imports torch).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

OURS = ("MultiVAE", "PoissonVAE")
MULTIOME = ("MultiVAE", "MULTIVI")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class EpochTimer(Callback):
    """Wall time of each training epoch and step; optionally streams progress to a JSON file.

    A step is timed from ``on_train_batch_start`` to ``on_train_batch_end`` (loading the
    minibatch excluded), with the torch thread count it ended with (scgenvae's thread tuner
    sets the count of each step before it starts).

    The progress file lets the orchestrator report how far a run got when it had to be killed
    at its time limit (cells done and seconds spent in the current epoch).
    """

    def __init__(self, progress_file: str | None = None, every: int = 10):
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.progress_file = progress_file
        self.every = every
        self._cells = 0
        self._step_start = 0.0
        #: (epoch, seconds, torch threads) of every training step
        self.steps: list[tuple[int, float, int]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())
        self._cells = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import torch

        seconds = time.perf_counter() - self._step_start
        self.steps.append((len(self.starts), seconds, torch.get_num_threads()))
        if self.progress_file is None:
            return
        self._cells += _batch_cells(batch)
        if batch_idx % self.every == 0:
            elapsed = time.perf_counter() - self.starts[-1]
            Path(self.progress_file).write_text(
                json.dumps(
                    {
                        "epoch": len(self.starts),
                        "cells": self._cells,
                        "seconds": elapsed,
                        "peak_rss_mib": peak_rss_mib(),
                    }
                )
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.ends.append(time.perf_counter())

    @property
    def seconds(self) -> list[float]:
        """Seconds of each completed epoch."""
        return [e - s for s, e in zip(self.starts, self.ends, strict=False)]


def _batch_cells(batch) -> int:
    for value in batch.values():
        if hasattr(value, "shape") and len(value.shape) >= 1:
            return int(value.shape[0])
    return 0


def median_epoch(seconds: list[float]) -> float:
    """Median of epochs 2 to the last (1-based); the first epoch is warm-up.

    Falls back to what exists (a single epoch).
    """
    steady = seconds[1:] or seconds
    return float(statistics.median(steady))


def step_summary(steps: list[tuple[int, float, int]]) -> dict:
    """Median and worst step time after the first epoch, and the thread counts used."""
    steady = [s for s in steps if s[0] > 1] or steps
    times = [s[1] for s in steady]
    counts: dict[int, int] = {}
    for _, _, threads in steady:
        counts[threads] = counts.get(threads, 0) + 1
    return {
        "median_step_seconds": float(statistics.median(times)) if times else float("nan"),
        "max_step_seconds": max(times, default=float("nan")),
        # the count most steps ran with (ties: the fewer threads)
        "step_threads": min(counts, key=lambda t: (-counts[t], t)) if counts else None,
        "step_thread_counts": {str(t): n for t, n in sorted(counts.items())},
    }


# --------------------------------------------------------------------------- FLOPs
#: scgenvae.nn._base._DENSE_ABOVE (not imported: the orchestrator never imports the package)
_DENSE_ABOVE = 0.15


def flops_per_cell(
    model: str,
    *,
    n_genes: int,
    n_peaks: int = 0,
    n_hidden: int,
    n_layers: int,
    n_latent: int,
    n_batch: int,
    nnz_peaks: float = 0.0,
    nnz_genes: float | None = None,
    n_sampled_peaks: int = 1024,
) -> dict:
    """Dense matmul multiply-adds of one training step, per cell, from the layer sizes.

    Each linear layer ``n_in -> n_out`` costs ``n_in * n_out`` multiply-adds (MACs) forward,
    the same again for the weight gradient and again for the input gradient, except for a
    layer whose input is the data (no input gradient). FLOPs = 2 x MACs. Element-wise work
    (activations, norms, likelihoods, embeddings lookups) is not counted. ``nnz_genes``: mean
    non-zero genes per cell of a sparse RNA matrix (``None`` for dense data); our encoders take
    sparse minibatches up to the density at which ``SparseLinear`` switches to a dense product.
    """
    g, p, h, n_l, d = n_genes, n_peaks, n_hidden, n_layers, n_latent
    nb = n_batch if n_batch > 1 else 0  # scvi one-hot encodes only covariates with >1 category
    hh = (n_l - 1) * h * h  # hidden-to-hidden layers of one stack
    # (name, forward MACs, multiplier): 3 = forward + weight grad + input grad; 2 = the input
    # is data (no input grad); 1 = forward only (output unused by the loss: no gradient)
    layers: list[tuple[str, float, int]] = []
    if model in ("MultiVAE", "PoissonVAE"):
        # FCLayers inject covariates with embeddings (lookups, no MACs)
        if nnz_genes is not None and nnz_genes <= _DENSE_ABOVE * g:
            layers += [("rna encoder in (sparse)", nnz_genes * h, 2)]
        else:
            layers += [("rna encoder in", g * h, 2)]
        layers += [("rna encoder", hh + 2 * h * d, 3)]
        layers += [("rna decoder", d * h + hh + d, 3), ("rna head", h * g, 3)]
        if model == "MultiVAE":
            # ATAC arrives as a sparse CSR minibatch: the first layer costs nnz x H
            layers += [("atac encoder in (sparse)", nnz_peaks * h, 2)]
            layers += [("atac encoder", hh + 2 * h * d, 3), ("atac decoder", d * h + hh + d, 3)]
            if p > 2 * n_sampled_peaks:
                # training scores n_sampled peaks per minibatch (a dense product) and the
                # accessible peaks through an embedding_bag sum of their weight rows (nnz x H
                # forward and for the weight gradient; the gradient to h is H per cell)
                layers += [("atac head, sampled peaks", h * n_sampled_peaks, 3)]
                layers += [("atac head, accessible peaks", h * nnz_peaks, 2)]
            else:
                layers += [("atac head", h * p, 3)]
        formula = _FORMULA_OURS[model]
    elif model == "SCVI":
        # scvi VAE: deeply_inject_covariates=True (one-hot batch into each decoder layer),
        # encode_covariates=False; the px_dropout head runs but a Poisson loss ignores it.
        layers += [("encoder in", g * h, 2), ("encoder", hh + 2 * h * d, 3)]
        layers += [("decoder", (d + nb) * h + (n_l - 1) * (h + nb) * h, 3)]
        layers += [("px_scale head", h * g, 3), ("px_dropout head", h * g, 1)]
        formula = _FORMULA_SCVI
    elif model == "MULTIVI":
        dec = (d + nb) * h + hh  # covariates one-hot into the first layer only
        deep = (d + nb) * h + (n_l - 1) * (h + nb) * h  # protein stacks inject every layer
        layers += [("expression encoders in (z, library)", 2 * g * h, 2)]
        layers += [("expression encoders", 2 * hh + 2 * h * d + h, 3)]
        layers += [("expression decoder", dec + h * g, 3), ("px_dropout head", h * g, 1)]
        layers += [("accessibility encoders in (z, library)", 2 * p * h, 2)]
        layers += [("accessibility encoders", 2 * hh + 2 * h * d + h, 3)]
        layers += [("accessibility decoder", dec + h * p, 3)]
        # the protein branch runs on a dummy 1-column input even without proteins
        layers += [("protein encoder in", h, 2), ("protein encoder", hh + 2 * h * d, 3)]
        layers += [("protein decoder (3 stacks)", 3 * deep, 1)]
        if n_batch > 1:
            # adversarial batch classifier: once on z.detach() (x2), once to fool it (x3)
            layers += [("adversarial classifier", 32 * d + 32 * 32 + 32 * n_batch, 5)]
        formula = _FORMULA_MULTIVI
    else:
        msg = f"unknown model {model!r}"
        raise ValueError(msg)
    forward = sum(m for _, m, _ in layers)
    train = sum(m * k for _, m, k in layers)
    return {"forward_macs": forward, "train_flops": 2 * train, "formula": formula}


_FORMULA_OURS = {
    "PoissonVAE": "2*[2*G'*H + 3*((L-1)*H^2 + 2*H*d) + 3*(d*H + (L-1)*H^2 + d) + 3*H*G]",
    "MultiVAE": (
        "2*[2*G'*H + 3*((L-1)*H^2 + 2*H*d) + 3*(d*H + (L-1)*H^2 + d) + 3*H*G"
        " + 2*nnz*H + 3*((L-1)*H^2 + 2*H*d) + 3*(d*H + (L-1)*H^2 + d)"
        " + 3*H*k + 2*H*nnz], the last two terms 3*H*P when P <= 2k"
    ),
}
_FORMULA_SCVI = "2*[2*G*H + 3*((L-1)*H^2 + 2*H*d) + 3*((d+B)*H + (L-1)*(H+B)*H) + 3*H*G + H*G]"
_FORMULA_MULTIVI = (
    "2*[2*2*G*H + 3*(2*(L-1)*H^2 + 2*H*d + H) + 3*(D + H*G) + H*G"
    " + 2*2*P*H + 3*(2*(L-1)*H^2 + 2*H*d + H) + 3*(D + H*P)"
    " + 2*H + 3*((L-1)*H^2 + 2*H*d) + 3*E + 5*(32*d + 32^2 + 32*n_batch)],"
    " D = (d+B)*H + (L-1)*H^2, E = (d+B)*H + (L-1)*(H+B)*H"
)


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    """Float32 ``n x n @ n x n`` throughput at the current torch thread count (median)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def env_job(job: dict) -> dict:
    """Versions, thread counts and the matmul reference throughput at 1, 2 and torch's default."""
    import lightning
    import scvi
    import torch

    import scgenvae

    threads = torch.get_num_threads()
    default = job["torch_default_threads"]
    by_threads = {}
    for count in sorted({1, 2, default, threads}):
        torch.set_num_threads(count)
        by_threads[str(count)] = matmul_gflops(job.get("matmul_n", 1024))
    torch.set_num_threads(threads)
    return {
        "torch": torch.__version__,
        "scvi": scvi.__version__,
        "lightning": lightning.__version__,
        "scgenvae": scgenvae.__version__,
        "python": platform.python_version(),
        "torch_threads": threads,
        "torch_default_threads": default,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "matmul_gflops": by_threads[str(threads)] if str(threads) in by_threads else float("nan"),
        "matmul_gflops_by_threads": by_threads,
        "matmul_n": job.get("matmul_n", 1024),
    }


# --------------------------------------------------------------------------- data
def make_synthetic_job(job: dict) -> dict:
    """Workload 1 data from ``scgenvae.datasets.synthetic_multiome``, written to an h5mu."""
    import scgenvae

    t0 = time.perf_counter()
    mdata = scgenvae.datasets.synthetic_multiome(
        job["n_obs"],
        job["n_genes"],
        job["n_peaks"],
        n_batches=3,
        peak_density=0.05,
        rng=0,
    )
    mdata.write(job["path"])
    return {**_data_stats(mdata), "seconds": time.perf_counter() - t0}


def make_scale_job(job: dict) -> dict:
    """Workload 4 data from the memory-light sparse generator, written as raw arrays."""
    from _sparse import save, sparse_multiome

    t0 = time.perf_counter()
    rna, atac, batch, _ = sparse_multiome(
        job["n_obs"], job["n_genes"], job["n_peaks"], peak_density=job["peak_density"], rng=0
    )
    save(Path(job["path"]), rna, atac, batch)
    return {
        "n_obs": rna.shape[0],
        "n_genes": rna.shape[1],
        "n_peaks": atac.shape[1],
        "rna_density": rna.nnz / (rna.shape[0] * rna.shape[1]),
        "atac_density": atac.nnz / (atac.shape[0] * atac.shape[1]),
        "seconds": time.perf_counter() - t0,
        "peak_rss_mib": peak_rss_mib(),
    }


def _data_stats(mdata) -> dict:
    rna, atac = mdata.mod["rna"].X, mdata.mod["atac"].X
    return {
        "n_obs": int(mdata.n_obs),
        "n_genes": int(rna.shape[1]),
        "n_peaks": int(atac.shape[1]),
        "rna_density": rna.nnz / (rna.shape[0] * rna.shape[1]),
        "atac_density": atac.nnz / (atac.shape[0] * atac.shape[1]),
    }


def _load(job: dict):
    if job["data"] == "h5mu":
        import mudata as md

        return md.read_h5mu(job["path"])
    from _sparse import load_mudata

    return load_mudata(Path(job["path"]))


# --------------------------------------------------------------------------- models
def build_model(name: str, mdata, *, n_hidden: int, n_layers: int, n_latent: int):
    """One of the four models, set up on ``mdata`` (RNA-only models use ``mdata.mod['rna']``)."""
    if name in OURS:
        import scgenvae

        if name == "MultiVAE":
            scgenvae.model.MultiVAE.setup_mudata(mdata, batch_key="batch")
            return scgenvae.model.MultiVAE(
                mdata, n_latent=n_latent, n_hidden=n_hidden, n_layers=n_layers
            )
        rna = mdata.mod["rna"]
        scgenvae.model.PoissonVAE.setup_anndata(rna, batch_key="batch")
        return scgenvae.model.PoissonVAE(
            rna, n_latent=n_latent, n_hidden=n_hidden, n_layers=n_layers
        )
    import scvi

    if name == "MULTIVI":
        scvi.model.MULTIVI.setup_mudata(
            mdata, batch_key="batch", modalities={"rna_layer": "rna", "atac_layer": "atac"}
        )
        return scvi.model.MULTIVI(
            mdata,
            gene_likelihood="poisson",
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers_encoder=n_layers,
            n_layers_decoder=n_layers,
        )
    if name == "SCVI":
        rna = mdata.mod["rna"]
        scvi.model.SCVI.setup_anndata(rna, batch_key="batch")
        return scvi.model.SCVI(
            rna, gene_likelihood="poisson", n_latent=n_latent, n_hidden=n_hidden, n_layers=n_layers
        )
    msg = f"unknown model {name!r}"
    raise ValueError(msg)


def train_model(model, name: str, *, max_epochs: int, batch_size: int, callbacks: list) -> None:
    """Train on all cells, no validation and no early stopping, for exactly ``max_epochs``."""
    common = {
        "max_epochs": max_epochs,
        "batch_size": batch_size,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": callbacks,
    }
    if name in OURS:
        # train_size defaults to 1.0 when early_stopping is False
        model.train(seed=0, early_stopping=False, **common)
        return
    import scvi

    scvi.settings.seed = 0
    model.train(train_size=1.0, early_stopping=False, check_val_every_n_epoch=None, **common)


def _num_threads_setting():
    import scgenvae

    return scgenvae.settings.num_threads


def speed_job(job: dict) -> dict:
    """Train ``job['model']`` on the job's data and report epoch times, RSS and FLOPs."""
    import torch

    t0 = time.perf_counter()
    mdata = _load(job)
    load_s = time.perf_counter() - t0
    rss_data = peak_rss_mib()
    stats = _data_stats(mdata)
    n_batch = int(mdata.obs["batch"].nunique())
    atac = mdata.mod["atac"].X
    nnz_peaks = atac.nnz / atac.shape[0]
    rna = mdata.mod["rna"].X
    nnz_genes = rna.nnz / rna.shape[0] if hasattr(rna, "nnz") else None
    name = job["model"]
    model = build_model(
        name, mdata, n_hidden=job["n_hidden"], n_layers=job["n_layers"], n_latent=job["n_latent"]
    )
    timer = EpochTimer(progress_file=job.get("progress_file"))
    t1 = time.perf_counter()
    train_model(
        model, name, max_epochs=job["epochs"], batch_size=job["batch_size"], callbacks=[timer]
    )
    wall = time.perf_counter() - t1
    flops = flops_per_cell(
        name,
        n_genes=stats["n_genes"],
        n_peaks=stats["n_peaks"] if name in MULTIOME else 0,
        n_hidden=job["n_hidden"],
        n_layers=job["n_layers"],
        n_latent=job["n_latent"],
        n_batch=n_batch,
        nnz_peaks=nnz_peaks,
        nnz_genes=nnz_genes,
        n_sampled_peaks=getattr(model.module, "n_sampled_peaks", None) or stats["n_peaks"],
    )
    return {
        **stats,
        "model": name,
        "batch_size": job["batch_size"],
        "epochs": job["epochs"],
        "epoch_seconds": timer.seconds,
        "median_epoch_seconds": median_epoch(timer.seconds),
        "train_wall_seconds": wall,
        "load_seconds": load_s,
        "rss_after_data_mib": rss_data,
        "peak_rss_mib": peak_rss_mib(),
        "nnz_peaks_per_cell": nnz_peaks,
        "nnz_genes_per_cell": nnz_genes,
        "n_sampled_peaks": getattr(model.module, "n_sampled_peaks", None),
        "torch_threads": torch.get_num_threads(),
        "torch_default_threads": job.get("torch_default_threads"),
        "num_threads_setting": _num_threads_setting(),
        **step_summary(timer.steps),
        "epoch_of_step": [s[0] for s in timer.steps],
        "step_seconds": [s[1] for s in timer.steps],
        "pid": os.getpid(),
        **flops,
    }
