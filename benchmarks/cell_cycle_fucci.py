"""Cell-cycle angle on the FUCCI iPSC data: PoissonVAE + align_cell_cycle against baselines.

The FUCCI angle ``obs["theta"]`` (Hsiao et al. 2020) is used only to measure: the methods never
see it. Its direction relative to G1 -> S -> G2/M is established from the FUCCI reporters alone
(``cell_cycle_lodo.reporter_direction``), never from the rule ``align_cell_cycle`` uses.

Figures: Jammalamadaka-SenGupta circular correlation with the (oriented) FUCCI angle, and the
median circular error after the best global shift without reflection, as a fraction of the
cycle. Our angle keeps the direction it chose from the markers; the PCA and score baselines
have no direction of their own and are given the better of the two, as is tricycle's (its
reference direction disagrees with these data).

Usage::

    python benchmarks/cell_cycle_fucci.py                   # 5 seeds x 4 settings, ~5 min on 1 core
    python benchmarks/cell_cycle_fucci.py --seeds 0 1 --epochs 100 --output /tmp/cc.md
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import time
import warnings
from pathlib import Path

import numpy as np

import scgenvae
from scgenvae.tl import (
    align_cell_cycle,
    cell_cycle_angle_baseline,
    circular_correlation,
    circular_error,
    score_cell_cycle,
)

TWO_PI = 2 * np.pi
SETTINGS = [  # (batch_key, n_latent); the first is the headline setting used by the tests
    ("chip_id", 10),
    ("chip_id", 5),
    ("experiment", 10),
    ("experiment", 5),
]


def _reporter_direction(obs) -> int:
    spec = importlib.util.spec_from_file_location(
        "cell_cycle_lodo", Path(__file__).with_name("cell_cycle_lodo.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reporter_direction(obs)


def _reference(adata) -> tuple[np.ndarray, int]:
    """The FUCCI angle oriented by the reporters (Cdt1, Geminin, DNA content) only."""
    direction = _reporter_direction(adata.obs)
    return np.mod(direction * adata.obs["theta"].to_numpy(), TWO_PI), direction


def _metrics(angle: np.ndarray, ref: np.ndarray, *, best_direction: bool) -> tuple[float, float]:
    if best_direction:
        angle = max((angle, -angle), key=lambda a: circular_correlation(a, ref))
    return circular_correlation(angle, ref), circular_error(angle, ref)


def run(seeds: list[int], epochs: int, settings: list[tuple[str, int]]) -> str:
    """Train, align and measure; return the markdown report."""
    base = scgenvae.datasets.fucci_ipsc()
    score_cell_cycle(base, gene_symbols="hgnc")
    ref, direction = _reference(base)
    n_s, n_g = (
        base.uns["cell_cycle_scores"]["n_s_genes"],
        base.uns["cell_cycle_scores"]["n_g2m_genes"],
    )

    baselines = {}
    for name, kwargs in {
        "PCA angle of log-normalised expression": {"method": "pca"},
        "scanpy S/G2M score angle": {"method": "scores"},
        "tricycle-style projection (reference loadings, symbols upper-cased)": {
            "method": "tricycle"
        },
    }.items():
        a = cell_cycle_angle_baseline(base, gene_symbols="hgnc", **kwargs)
        baselines[name] = _metrics(a, ref, best_direction=True)

    results: dict[tuple[str, int], list[tuple[float, float, float, float, float]]] = {}
    for batch_key, n_latent in settings:
        for seed in seeds:
            adata = base.copy()
            scgenvae.model.PoissonVAE.setup_anndata(adata, batch_key=batch_key)
            model = scgenvae.model.PoissonVAE(adata, n_latent=n_latent)
            t0 = time.perf_counter()
            model.train(
                max_epochs=epochs, enable_progress_bar=False, enable_model_summary=False, seed=seed
            )
            model.export_latent(adata)
            align_cell_cycle(adata)
            secs = time.perf_counter() - t0
            ours = _metrics(adata.obs["cell_cycle_angle"].to_numpy(), ref, best_direction=False)
            pca_latent = _metrics(
                cell_cycle_angle_baseline(adata, method="pca", use_rep="X_scgenvae"),
                ref,
                best_direction=True,
            )
            results.setdefault((batch_key, n_latent), []).append((*ours, *pca_latent, secs))
            logging.getLogger("benchmark").info(
                "%s n_latent=%d seed=%d: corr %.3f err %.3f (%.0fs)",
                batch_key,
                n_latent,
                seed,
                ours[0],
                ours[1],
                secs,
            )

    lines = [
        "# Cell-cycle angle on FUCCI iPSCs",
        "",
        f"Data: 448 iPSCs of 3 donors x 101 cyclic genes (Hsiao et al. 2020); {n_s} of 43 S and "
        f"{n_g} of 54 G2/M Tirosh markers present. The FUCCI angle runs "
        f"{'in' if direction == 1 else 'against'} the G1 -> S -> G2/M direction by the FUCCI "
        "reporters, and is used only to measure.",
        "",
        "Metrics: circular correlation (Jammalamadaka-SenGupta) with the oriented FUCCI angle; "
        "median circular error after the best global shift, same direction, as a fraction of "
        "the cycle. Ours: `PoissonVAE` latent + `scgenvae.tl.align_cell_cycle` with defaults, "
        "direction chosen from the markers (no flipping). Baselines: better of both directions.",
        f"Training: {epochs} epochs, seeds {', '.join(map(str, seeds))}; mean +- sd (min) over "
        "seeds.",
        "",
        "| method | circ. corr | median error |",
        "|---|---|---|",
    ]
    for (batch_key, n_latent), rows in results.items():
        r = np.asarray(rows)
        lines.append(
            f"| **ours**: PoissonVAE(n_latent={n_latent}, batch_key={batch_key!r}) "
            f"+ align_cell_cycle | {r[:, 0].mean():.3f} +- {r[:, 0].std():.3f} "
            f"(min {r[:, 0].min():.3f}) | {r[:, 1].mean():.1%} +- {r[:, 1].std():.1%} "
            f"(max {r[:, 1].max():.1%}) |"
        )
    for (batch_key, n_latent), rows in results.items():
        r = np.asarray(rows)
        lines.append(
            f"| PCA angle of the same latent (n_latent={n_latent}, {batch_key!r}) | "
            f"{r[:, 2].mean():.3f} +- {r[:, 2].std():.3f} | {r[:, 3].mean():.1%} +- "
            f"{r[:, 3].std():.1%} |"
        )
    for name, (c, e) in baselines.items():
        lines.append(f"| {name} | {c:.3f} | {e:.1%} |")
    lines += [
        "",
        "Figures quoted in the issue for other donors: SCVI latent PCA angle 0.49, CycleVI "
        "0.45 (reversed), tricycle-style projection 0.23, scanpy S/G2M scores 0.22; target "
        ">= 0.55 and <= 10%.",
        "",
        "Per seed (corr, error, seconds for training + alignment on one CPU thread):",
        "",
    ]
    for (batch_key, n_latent), rows in results.items():
        per = ", ".join(f"{c:.3f}/{e:.1%}/{s:.0f}s" for c, e, _, _, s in rows)
        lines.append(f"- n_latent={n_latent}, batch_key={batch_key!r}: {per}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="headline setting only")
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).with_name("results_cell_cycle.md")
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("scgenvae", "lightning", "lightning.pytorch", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    report = run(args.seeds, args.epochs, SETTINGS[:1] if args.quick else SETTINGS)
    args.output.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
