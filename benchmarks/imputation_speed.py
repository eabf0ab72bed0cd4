"""Time and memory of cross-modal imputation on A549: MultiVAE's getters and MULTIVI's.

Each model is trained for a few epochs at the default architecture (MultiVAE: n_hidden 256,
n_latent 20, one layer; MULTIVI at the same sizes, one encoder and one decoder layer): the
cost of a getter depends on the sizes of the model and the data, not on how well the model
is trained. Each case is run once after a warm-up on 50 cells, with one torch thread. Memory
is the peak resident set size during the call above the resident size before it (Linux:
``/proc/self/clear_refs`` resets the peak, ``VmHWM`` reads it; free heap memory is returned
to the system first with ``malloc_trim``).

Usage::

    cd benchmarks && python imputation_speed.py [--max-epochs 3] [--model-dir DIR] [--out x.json]
    # the code before the getters were reworked (old API: dense cases only), same model
    PYTHONPATH=<old checkout> python imputation_speed.py --before --model-dir DIR --out y.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy import sparse

N_REGIONS = 1_000
THRESHOLD = 0.5
# below 1/2 the spread of the unobserved depth can lift a probability: a looser bound
LOW_THRESHOLD = 0.1


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    msg = f"{field} not in /proc/self/status"
    raise RuntimeError(msg)


def measure(fn) -> dict:
    """Wall and CPU time and peak extra resident memory (MiB) of one call of ``fn``.

    On a shared machine the wall time includes waiting for a core; the CPU time of this
    process (one torch thread) does not.
    """
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    rss0 = _status_kib("VmRSS")
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _status_kib("VmHWM")
    return {
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "peak_extra_mib": round((peak - rss0) / 1024, 1),
        "result": _describe(out),
        "result_mib": round(_nbytes(out) / 2**20, 1),
    }


def _nbytes(out) -> int:
    import pandas as pd

    if isinstance(out, pd.DataFrame):
        if all(isinstance(t, pd.SparseDtype) for t in out.dtypes):
            coo = out.sparse.to_coo()
            return coo.data.nbytes + coo.row.nbytes + coo.col.nbytes
        return int(out.memory_usage(index=False).sum())
    if sparse.issparse(out):
        return out.data.nbytes + out.indices.nbytes + out.indptr.nbytes
    return int(np.asarray(out).nbytes)


def _describe(out) -> str:
    kind = type(out).__name__
    if hasattr(out, "dtypes") and len(out.dtypes) and "Sparse" in str(out.dtypes.iloc[0]):
        kind = "sparse DataFrame"
    return f"{kind} {out.shape[0]} x {out.shape[1]}"


def _ours(mdata, max_epochs: int, model_dir: str | None) -> tuple[object, dict]:
    """MultiVAE at the defaults: loaded from ``model_dir`` if saved there, else trained."""
    import scgenvae

    scgenvae.model.MultiVAE.setup_mudata(mdata)
    if model_dir is not None and Path(model_dir).exists():
        return scgenvae.model.MultiVAE.load(model_dir, mdata), {"model": f"loaded {model_dir}"}
    model = scgenvae.model.MultiVAE(mdata)
    t0 = time.perf_counter()
    model.train(max_epochs=max_epochs, seed=0, enable_progress_bar=False)
    wall = time.perf_counter() - t0
    if model_dir is not None:
        model.save(model_dir)
    return model, {"model": f"trained {max_epochs} epochs", "train_seconds": round(wall, 1)}


def run_ours(mdata, max_epochs: int, *, before: bool, model_dir: str | None = None) -> dict:
    import warnings

    model, info = _ours(mdata, max_epochs, model_dir)
    rng = np.random.default_rng(0)
    regions = list(
        mdata.mod["atac"].var_names[rng.choice(mdata.mod["atac"].n_vars, N_REGIONS, replace=False)]
    )
    warm = np.arange(50)
    acc, expr = model.get_accessibility_estimates, model.get_normalized_expression
    if before:  # the API of the code before (arrays, no subsets or threshold)
        cases = {
            "ATAC from RNA, dense": lambda: acc(modality="rna"),
            "RNA from ATAC, dense": lambda: expr(modality="atac"),
        }
        acc(modality="rna", indices=warm)
        expr(modality="atac", indices=warm)
    else:
        cases = {
            "ATAC from RNA, dense array": lambda: acc(modality="rna", return_numpy=True),
            f"ATAC from RNA, threshold={THRESHOLD} (CSR)": lambda: acc(
                modality="rna", threshold=THRESHOLD, return_numpy=True
            ),
            f"ATAC from RNA, threshold={THRESHOLD} (sparse DataFrame, default)": lambda: acc(
                modality="rna", threshold=THRESHOLD
            ),
            f"ATAC from RNA, threshold={LOW_THRESHOLD} (CSR)": lambda: acc(
                modality="rna", threshold=LOW_THRESHOLD, return_numpy=True
            ),
            f"ATAC from RNA, {N_REGIONS:,} regions (DataFrame)": lambda: acc(
                modality="rna", region_list=regions
            ),
            "RNA from ATAC, dense (DataFrame)": lambda: expr(modality="atac"),
        }
        acc(modality="rna", indices=warm, return_numpy=True)
        expr(modality="atac", indices=warm, return_numpy=True)
    out = dict(info)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fn in cases.items():
            out[name] = measure(fn)
            print(name, out[name], flush=True)
    return out


def run_multivi(mdata, max_epochs: int) -> dict:
    import scvi
    from _quality import _MODALITIES, _zeroed

    scvi.settings.seed = 0
    train = mdata.copy()
    scvi.model.MULTIVI.setup_mudata(train, modalities=_MODALITIES)
    model = scvi.model.MULTIVI(
        train,
        gene_likelihood="poisson",
        n_hidden=256,
        n_latent=20,
        n_layers_encoder=1,
        n_layers_decoder=1,
    )
    t0 = time.perf_counter()
    model.train(
        max_epochs=max_epochs, train_size=1.0, early_stopping=False, enable_progress_bar=False
    )
    out = {"train_seconds": round(time.perf_counter() - t0, 1)}
    # RNA -> ATAC as MULTIVI does it: the cells' ATAC zeroed (it then encodes the RNA alone)
    rna_only = _zeroed(mdata, "atac")
    scvi.model.MULTIVI.setup_mudata(rna_only, modalities=_MODALITIES)
    atac_only = _zeroed(mdata, "rna")
    scvi.model.MULTIVI.setup_mudata(atac_only, modalities=_MODALITIES)
    rng = np.random.default_rng(0)
    regions = list(
        mdata.mod["atac"].var_names[rng.choice(mdata.mod["atac"].n_vars, N_REGIONS, replace=False)]
    )
    acc = model.get_normalized_accessibility
    acc(rna_only, indices=np.arange(50), return_numpy=True)
    model.get_normalized_expression(atac_only, indices=np.arange(50), return_numpy=True)
    cases = {
        "ATAC from RNA, dense array": lambda: acc(rna_only, return_numpy=True),
        f"ATAC from RNA, threshold={THRESHOLD} (CSR)": lambda: acc(
            rna_only, threshold=THRESHOLD, return_numpy=True
        ),
        f"ATAC from RNA, threshold={THRESHOLD} (sparse DataFrame, default)": lambda: acc(
            rna_only, threshold=THRESHOLD
        ),
        f"ATAC from RNA, {N_REGIONS:,} regions (DataFrame)": lambda: acc(
            rna_only, region_list=regions
        ),
        "RNA from ATAC, dense (DataFrame)": lambda: model.get_normalized_expression(atac_only),
    }
    for name, fn in cases.items():
        out[name] = measure(fn)
        print("MULTIVI", name, out[name], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--before", action="store_true", help="old API: dense cases only")
    parser.add_argument("--skip-multivi", action="store_true")
    parser.add_argument(
        "--model-dir", default=None, help="load MultiVAE from here (train and save it if absent)"
    )
    parser.add_argument("--out", default="imputation_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import scgenvae

    mdata = scgenvae.datasets.scicar_a549()
    result = {
        "n_cells": int(mdata.n_obs),
        "n_genes": int(mdata.mod["rna"].n_vars),
        "n_peaks": int(mdata.mod["atac"].n_vars),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg()[0],
    }
    from _machine import cpu_model

    result["cpu"] = cpu_model()
    result["MultiVAE"] = run_ours(
        mdata.copy(), args.max_epochs, before=args.before, model_dir=args.model_dir
    )
    if not (args.before or args.skip_multivi):
        result["MULTIVI"] = run_multivi(mdata.copy(), args.max_epochs)
    result["load_average_at_end"] = os.getloadavg()[0]
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
