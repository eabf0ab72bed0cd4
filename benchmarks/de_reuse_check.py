"""Before/after check of reusing latent samples across DE draws (``_de._LATENT_DRAWS``).

Trains the calibration benchmark's NB model on ``synthetic_de(n_obs=600, n_vars=500,
rng=data_seed)`` (100 epochs, ``seed=data_seed``; ``data_seed`` is the first argument, 0) and runs ``differential_expression(groupby="group", group1="A",
group2="B", rng=seed)`` for seeds 0-2 with the current ``_group_draws`` and with the one of
commit 4509c11 (fresh latent samples for every draw), printing calls, false calls, power and
the median ``lfc_std``, then the largest differences between runs.

Run: ``python benchmarks/de_reuse_check.py [data_seed]``
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import scgenvae

BEFORE = "4509c11"


def _old_module():
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(
        ["git", "-C", str(root), "show", f"{BEFORE}:scgenvae/model/_de.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "_de_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("scgenvae.model._de_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    torch.set_num_threads(1)
    data_seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    old = _old_module()
    adata = scgenvae.datasets.synthetic_de(n_obs=600, n_vars=500, rng=data_seed)
    scgenvae.model.PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = scgenvae.model.PoissonVAE(adata, n_latent=5, gene_likelihood="nb")
    model.train(
        max_epochs=100, seed=data_seed, enable_progress_bar=False, enable_model_summary=False
    )
    truth = adata.var["de"]
    cls = type(model)
    new_fn = cls._group_draws
    res = {}
    try:
        for name, fn in (("new", new_fn), ("old", old.DEMixin._group_draws)):
            cls._group_draws = fn
            for seed in range(3):
                de = model.differential_expression(
                    groupby="group", group1="A", group2="B", rng=seed
                ).loc[adata.var_names]
                res[name, seed] = de
                c = de["is_de_fdr_0.05"]
                print(
                    name,
                    seed,
                    "calls",
                    int(c.sum()),
                    "false",
                    int((c & ~truth).sum()),
                    "power",
                    round(float((c & truth).sum() / truth.sum()), 3),
                    "median lfc_std",
                    round(float(np.median(de["lfc_std"])), 4),
                    flush=True,
                )
    finally:
        cls._group_draws = new_fn
    for a, b in ((("old", 0), ("old", 1)), (("new", 0), ("new", 1)), (("old", 0), ("new", 0))):
        x, y = res[a], res[b]
        print(
            a,
            b,
            "max|dproba_de|",
            round(float((x["proba_de"] - y["proba_de"]).abs().max()), 4),
            "max|dlfc_mean|",
            round(float((x["lfc_mean"] - y["lfc_mean"]).abs().max()), 4),
            "lfc_std ratio median",
            round(float((x["lfc_std"] / y["lfc_std"]).median()), 4),
            "same calls",
            bool((x["is_de_fdr_0.05"] == y["is_de_fdr_0.05"]).all()),
        )


if __name__ == "__main__":
    main()
