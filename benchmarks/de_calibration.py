"""Calibration of differential expression: planted DE genes and random-halves nulls.

Writes benchmarks/results_de.md. For each seed, ``datasets.synthetic_de`` (600 cells, two
groups, 500 genes, 10% planted DE with |log2 FC| in [0.5, 2], negative-binomial counts) is
tested with ``PoissonVAE.differential_expression`` (NB and Poisson likelihoods), scanpy's
Wilcoxon (BH-adjusted p <= 0.05, on log-normalised counts) and, with ``--scvi``, scvi-tools'
SCVI change mode. Models train for their default number of epochs unless ``--max-epochs``.
FDR and power are measured against the planted genes. ``--cellbench`` adds
the random-halves null on CellBench (H1975, CEL-seq2; 3 splits).

Run: ``OMP_NUM_THREADS=1 python benchmarks/de_calibration.py --seeds 0 1 2 [--scvi] [--cellbench]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scanpy as sc
import torch

import scgenvae

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model

FDR = 0.05
SPEED_HEADING = "## Speed: one group vs rest"  # as in de_speed.py
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def _score(called: np.ndarray, truth: np.ndarray) -> tuple[int, float, float]:
    n = int(called.sum())
    fdr = float((called & ~truth).sum() / max(n, 1))
    return n, fdr, float((called & truth).sum() / truth.sum())


def ours(adata, likelihood: str, seed: int, max_epochs: int | None):
    scgenvae.model.PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = scgenvae.model.PoissonVAE(adata, n_latent=5, gene_likelihood=likelihood)
    model.train(max_epochs=max_epochs, seed=seed, **QUIET)
    de = model.differential_expression(groupby="group", group1="A", group2="B", rng=seed)
    return de.loc[adata.var_names, f"is_de_fdr_{FDR}"].to_numpy()


def wilcoxon(adata):
    a = adata.copy()
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    sc.tl.rank_genes_groups(a, "group", groups=["A"], reference="B", method="wilcoxon")
    df = sc.get.rank_genes_groups_df(a, "A").set_index("names").loc[a.var_names]
    return (df["pvals_adj"] <= FDR).to_numpy()


def scvi_de(adata, seed: int, max_epochs: int | None):
    import scvi

    scvi.settings.seed = seed
    a = adata.copy()
    scvi.model.SCVI.setup_anndata(a, batch_key="batch")
    model = scvi.model.SCVI(a, n_latent=5)
    model.train(max_epochs=max_epochs, **QUIET)
    de = model.differential_expression(
        groupby="group", group1="A", group2="B", mode="change", batch_correction=True, silent=True
    )
    return de.loc[a.var_names, f"is_de_fdr_{FDR}"].to_numpy()


def cellbench_null(seed: int = 0) -> tuple[int, int]:
    adata = scgenvae.datasets.cellbench()
    scgenvae.model.PoissonVAE.setup_anndata(adata, batch_key="protocol")
    model = scgenvae.model.PoissonVAE(adata)
    model.train(seed=seed, **QUIET)
    cells = np.flatnonzero(
        (adata.obs["cell_line"] == "H1975").to_numpy()
        & (adata.obs["protocol"] == "CEL-seq2").to_numpy()
    )
    calls = 0
    for split in range(3):
        half = np.random.default_rng(split).permutation(cells)
        de = model.differential_expression(
            idx1=half[: len(half) // 2], idx2=half[len(half) // 2 :], rng=split, n_samples=100
        )
        calls += int(de[f"is_de_fdr_{FDR}"].sum())
    return calls, 3 * adata.n_vars


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--scvi", action="store_true")
    parser.add_argument("--cellbench", action="store_true")
    parser.add_argument(
        "--max-epochs", type=int, default=None, help="default: each model's own default"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results_de.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_name = cpu_model()
    rows = []
    for seed in args.seeds:
        adata = scgenvae.datasets.synthetic_de(n_obs=600, n_vars=500, rng=seed)
        truth = adata.var["de"].to_numpy()
        methods = {
            "scgenvae PoissonVAE (nb)": lambda a, s=seed: ours(a, "nb", s, args.max_epochs),
            "scgenvae PoissonVAE (poisson)": lambda a, s=seed: ours(
                a, "poisson", s, args.max_epochs
            ),
            "scanpy wilcoxon (BH)": wilcoxon,
        }
        if args.scvi:
            methods["scvi-tools SCVI change"] = lambda a, s=seed: scvi_de(a, s, args.max_epochs)
        for name, fn in methods.items():
            t = time.time()
            n, fdr, power = _score(fn(adata.copy()), truth)
            rows.append(
                f"| {seed} | {name} | {n} | {fdr:.3f} | {power:.3f} | {time.time() - t:.0f} |"
            )
            print(rows[-1], flush=True)
    lines = [
        "# Differential expression calibration",
        "",
        f"`python benchmarks/de_calibration.py --seeds {' '.join(map(str, args.seeds))}"
        f"{' --scvi' if args.scvi else ''}{' --cellbench' if args.cellbench else ''}"
        f"{f' --max-epochs {args.max_epochs}' if args.max_epochs else ''}`; CPU: "
        f"{model_name}, 1 torch thread.",
        "",
        "Planted DE (`datasets.synthetic_de(n_obs=600, n_vars=500, rng=seed)`: 2 groups x 2 "
        "batches, 50 genes with |log2 FC| in [0.5, 2], NB counts theta=10); models trained "
        f"{args.max_epochs or 'their default number of'} epochs with `seed=seed`; calls at FDR target 0.05 (ours: posterior expected FDR, "
        "delta 0.25; Wilcoxon: BH on log-normalised counts, which tests any difference).",
        "",
        "| seed | method | calls | empirical FDR | power | seconds |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    if args.cellbench:
        calls, tests = cellbench_null()
        lines += [
            "",
            f"CellBench random halves (H1975, CEL-seq2, 3 splits; PoissonVAE batch_key='protocol',"
            f" default train(), seed 0): {calls} calls in {tests:,} gene tests "
            f"({100 * calls / tests:.4f}%; the bar is 0.1%).",
        ]
    out = args.out
    speed = ""  # the section written by de_speed.py is kept
    if out.exists() and SPEED_HEADING in out.read_text():
        speed = "\n" + SPEED_HEADING + out.read_text().split(SPEED_HEADING, 1)[1]
    out.write_text("\n".join(lines) + "\n" + speed)
    print(out.read_text())


if __name__ == "__main__":
    main()
