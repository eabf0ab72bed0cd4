"""Speed of one-group-vs-rest differential expression, ours against scvi-tools' SCVI.

Synthetic negative-binomial counts (10,000 cells x 2,000 genes by default, 4 groups of equal
size, 2 batches; generated here, nothing downloaded). ``PoissonVAE`` and ``SCVI`` are built
with the same ``n_hidden``/``n_latent``/``n_layers`` (both packages' defaults: 128, 10, 1) and
trained for ``--epochs`` epochs only: the cost of ``differential_expression`` depends on the
numbers of cells, genes, draws and batches and on the network's size, not on how well the
model fits, so a briefly trained model times the same as a converged one. Each DE call is
``differential_expression(groupby="group", group1="g0")`` (``g0`` against the rest) at each
package's default DE arguments, timed with torch at 2 threads and at 1 thread.

Run: ``python benchmarks/de_speed.py [--n-obs 10000] [--n-vars 2000] [--repeats 2]``; writes
the section "Speed: one group vs rest" of ``benchmarks/results_de.md`` (the rest is kept).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy import sparse

import scgenvae

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}
#: the section of results_de.md this script writes (de_calibration.py keeps it)
SPEED_HEADING = "## Speed: one group vs rest"


def synthetic_counts(n_obs: int, n_vars: int, *, n_groups: int = 4, rng: int = 0) -> ad.AnnData:
    """NB counts (theta 10) of ``n_groups`` groups x 2 batches; 10% of genes differ per group."""
    gen = np.random.default_rng(rng)
    group = np.arange(n_obs) % n_groups
    batch = (np.arange(n_obs) // n_groups) % 2
    base = gen.normal(-np.log(n_vars), 1.0, n_vars)
    effect = np.zeros((n_groups, n_vars))
    for g in range(n_groups):
        genes = gen.choice(n_vars, n_vars // 10, replace=False)
        effect[g, genes] = gen.choice([-1.0, 1.0], len(genes)) * gen.uniform(0.5, 2.0, len(genes))
    batch_effect = gen.normal(0.0, 0.2, (2, n_vars))
    log_rate = base + effect[group] * np.log(2) + batch_effect[batch]
    share = np.exp(log_rate - log_rate.max(1, keepdims=True))
    share /= share.sum(1, keepdims=True)
    library = gen.lognormal(np.log(3000), 0.3, n_obs)[:, None]
    theta = 10.0
    counts = gen.poisson(gen.gamma(theta, share * library / theta))
    adata = ad.AnnData(
        sparse.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame(
            {
                "group": pd.Categorical([f"g{g}" for g in group]),
                "batch": pd.Categorical([f"b{b}" for b in batch]),
            },
            index=[f"cell{i}" for i in range(n_obs)],
        ),
        var=pd.DataFrame(index=[f"gene{j}" for j in range(n_vars)]),
    )
    return adata


def build_ours(adata: ad.AnnData, epochs: int):
    scgenvae.model.PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = scgenvae.model.PoissonVAE(adata)
    model.train(max_epochs=epochs, seed=0, **QUIET)
    return model, lambda: model.differential_expression(adata, groupby="group", group1="g0", rng=0)


def build_scvi(adata: ad.AnnData, epochs: int):
    import scvi

    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.SCVI(adata)  # n_hidden=128, n_latent=10, n_layers=1, as ours
    model.train(max_epochs=epochs, **QUIET)
    return model, lambda: model.differential_expression(
        adata, groupby="group", group1="g0", silent=True
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-obs", type=int, default=10_000)
    parser.add_argument("--n-vars", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--no-scvi", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    adata = synthetic_counts(args.n_obs, args.n_vars)
    builders = {"scgenvae PoissonVAE": build_ours}
    if not args.no_scvi:
        builders["scvi-tools SCVI"] = build_scvi
    calls = {}
    for name, build in builders.items():
        model, call = build(adata.copy(), args.epochs)
        sizes = [getattr(model.module, "n_latent", None)]
        print(f"{name}: trained {args.epochs} epochs, n_latent {sizes[0]}", flush=True)
        calls[name] = call
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, call in calls.items():
            times, cpu = [], []
            for _ in range(args.repeats):
                t, c = time.perf_counter(), time.process_time()
                de = call()
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            load = os.getloadavg()[0]
            rows.append(
                f"| {name} | {threads} | {' / '.join(f'{s:.1f}' for s in times)} | "
                f"{' / '.join(f'{s:.1f}' for s in cpu)} | {load:.1f} | {len(de):,} |"
            )
            print(rows[-1], flush=True)
    header = [
        f"`python benchmarks/de_speed.py --n-obs {args.n_obs} --n-vars {args.n_vars} "
        f"--epochs {args.epochs} --repeats {args.repeats}`; CPU: {cpu_model()} "
        f"({os.cpu_count()} cores).",
        "",
        "| method | torch threads | wall seconds per call | CPU seconds per call (all "
        "threads) | 1-min load average after | rows |",
        "|---|---|---|---|---|---|",
    ]
    note = [
        "",
        "The models were trained for "
        f"{args.epochs} epochs: the time of a DE call does not depend on the quality of the fit.",
    ]
    section = [SPEED_HEADING, "", *header, *rows, *note]
    print("\n".join(section))
    out = Path(__file__).with_name("results_de.md")
    text = out.read_text() if out.exists() else "# Differential expression\n"
    text = text.split(SPEED_HEADING)[0].rstrip("\n")
    out.write_text(text + "\n\n" + "\n".join(section) + "\n")


if __name__ == "__main__":
    main()
