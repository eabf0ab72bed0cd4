"""Leave-one-donor-out check of the cell-cycle angle on the FUCCI iPSCs (3 donors).

Ground truth: the FUCCI angle ``obs["theta"]`` of Hsiao et al. 2020, oriented from the two
reporters alone (:func:`reporter_direction`: mCherry-Cdt1, ``rfp``, peaks in G1 and
EGFP-Geminin, ``gfp``, in S/G2/M, so going forward the Geminin peak follows the Cdt1 peak
within half a cycle; the DAPI peak, DNA content, must then follow the Geminin peak). Neither the
marker scores nor the library size, which ``align_cell_cycle`` uses, enter the reference.

Folds: each donor is held out once. What is chosen is chosen on the two other donors only:
the orientation cue (:data:`RULES`: the S -> G2/M marker order alone, or the cyclic order of
the library trough, S and G2/M peaks) is picked by how often it orients the angles of the two
training donors right; the figures are measured on the held-out donor's cells. The other
settings of ``align_cell_cycle`` (init, bandwidth, the 95% bootstrap level, the 45-degree
margin) are fixed a priori and not tuned here. The pipeline itself (PoissonVAE training and
alignment) uses no labels; it runs on all 448 cells (``batch_key="chip_id"`` needs the donors
together) and each fold is measured on its donor's cells. The PCA of log-normalised expression
is computed and aligned per donor (only that donor's cells).

Figures: Jammalamadaka-SenGupta (JS) and Fisher-Lee (FL) circular correlation with the
reference, and the median circular error after the best shift without reflection (fraction
of the cycle), in the orientation the method chose and reversed. "direction right" means FL > 0
and the error is smaller than reversed.

Usage::

    python benchmarks/cell_cycle_lodo.py                 # 5 seeds, default training, ~3 min, 1 core
    python benchmarks/cell_cycle_lodo.py --seeds 0 --output /tmp/lodo.md
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import scanpy as sc

import scgenvae
from scgenvae.tl import (
    align_cell_cycle,
    cell_cycle_angle_baseline,
    cell_cycle_direction,
    circular_correlation,
    circular_error,
    score_cell_cycle,
)

TWO_PI = 2 * np.pi
RFP, GFP, DAPI = (
    "rfp.median.log10sum.adjust",
    "gfp.median.log10sum.adjust",
    "dapi.median.log10sum.adjust",
)
RULES = ("markers only", "library trough + markers")


def _peak(angle: np.ndarray, values: np.ndarray) -> float:
    """Angle of the first-harmonic peak of ``values`` along ``angle`` (least squares)."""
    h = np.stack([np.ones_like(angle), np.cos(angle), np.sin(angle)], axis=1)
    coef = np.linalg.lstsq(h, values - values.mean(), rcond=None)[0]
    return float(np.arctan2(coef[2], coef[1]))


def reporter_direction(obs) -> int:
    """+1 if ``obs["theta"]`` runs G1 -> S -> G2/M by the FUCCI reporters, else -1."""
    theta = obs["theta"].to_numpy()
    rfp, gfp, dapi = (_peak(theta, obs[k].to_numpy(dtype=float)) for k in (RFP, GFP, DAPI))
    forward = np.mod(gfp - rfp, TWO_PI) < np.pi
    dapi_after = np.mod(dapi - gfp, TWO_PI) < np.pi
    if forward != dapi_after:
        msg = "the Cdt1 -> Geminin and Geminin -> DNA-content orders disagree"
        raise ValueError(msg)
    return 1 if forward else -1


def _figures(angle: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    out = {
        "js": circular_correlation(angle, ref),
        "fl": circular_correlation(angle, ref, method="fl"),
        "err": circular_error(angle, ref),
        "err_rev": circular_error(-angle, ref),
    }
    out["right"] = float(out["fl"] > 0 and out["err"] < out["err_rev"])
    return out


def _rule_verdicts(angle, s, g, lib) -> dict[str, int]:
    return {
        "markers only": cell_cycle_direction(angle, s, g)[0],
        "library trough + markers": cell_cycle_direction(angle, s, g, library=lib)[0],
    }


def _pca_rep(adata) -> np.ndarray:
    lg = adata.copy()
    sc.pp.normalize_total(lg, target_sum=1e4)
    sc.pp.log1p(lg)
    sc.pp.pca(lg, random_state=0)
    return lg.obsm["X_pca"]


def run(seeds: list[int], max_epochs: int | None) -> str:
    """Train, align and measure; return the markdown report."""
    log = logging.getLogger("benchmark")
    base = scgenvae.datasets.fucci_ipsc()
    score_cell_cycle(base, gene_symbols="hgnc")
    donors = list(base.obs["chip_id"].cat.categories)
    ref_all = np.mod(reporter_direction(base.obs) * base.obs["theta"].to_numpy(), TWO_PI)
    per_donor_dir = {d: reporter_direction(base.obs[base.obs["chip_id"] == d]) for d in donors}
    lib_all = np.asarray(base.layers["counts"].sum(1), dtype=float).ravel()
    s_all, g_all = base.obs["S_score"].to_numpy(), base.obs["G2M_score"].to_numpy()
    masks = {d: (base.obs["chip_id"] == d).to_numpy() for d in donors}

    # every angle judged: (donor, source, angle); verdicts of each rule vs the truth
    judged: list[tuple[str, str, np.ndarray, np.ndarray]] = []

    # PCA of log-normalised expression, per donor and pooled
    pca_rows = {}
    for d in [*donors, "all"]:
        m = masks[d] if d != "all" else np.ones(base.n_obs, dtype=bool)
        for mode in ("counts in .X", "log-normalised .X, no counts"):
            a = base[m].copy()
            a.obsm["X_pca"] = _pca_rep(a)
            if mode != "counts in .X":
                counts = np.asarray(a.layers["counts"].toarray(), dtype=float)
                a.X = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
                del a.layers["counts"]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                align_cell_cycle(a, use_rep="X_pca", gene_symbols="hgnc")
            warned = any("weakly determined" in str(w.message) for w in caught)
            ang = a.obs["cell_cycle_angle"].to_numpy()
            u = a.uns["cell_cycle"]
            pca_rows[d, mode] = {
                **_figures(ang, ref_all[m]),
                "confidence": u["direction_confidence"],
                "warned": warned,
            }
            if mode == "counts in .X" and d != "all":
                judged.append((d, "PCA", ang, m))
        if d != "all":
            bl = cell_cycle_angle_baseline(base[m].copy(), method="pca")
            best = max((bl, -bl), key=lambda v: circular_correlation(v, ref_all[m], method="fl"))
            pca_rows[d, "baseline"] = _figures(best, ref_all[m])

    # PoissonVAE(n_latent=10, batch_key="chip_id") + align_cell_cycle, default training
    vae_rows: dict[str, list[dict[str, float]]] = {d: [] for d in donors}
    pooled = []
    secs = []
    for seed in seeds:
        a = base.copy()
        scgenvae.model.PoissonVAE.setup_anndata(a, batch_key="chip_id")
        model = scgenvae.model.PoissonVAE(a, n_latent=10)
        t0 = time.perf_counter()
        model.train(
            max_epochs=max_epochs,
            enable_progress_bar=False,
            enable_model_summary=False,
            seed=seed,
        )
        model.export_latent(a)
        align_cell_cycle(a, gene_symbols="hgnc")
        secs.append(time.perf_counter() - t0)
        ang = a.obs["cell_cycle_angle"].to_numpy()
        pooled.append(_figures(ang, ref_all))
        for d in donors:
            vae_rows[d].append(_figures(ang[masks[d]], ref_all[masks[d]]))
            judged.append((d, f"PoissonVAE seed {seed}", ang[masks[d]], masks[d]))
        log.info(
            "seed %d: pooled JS %.3f err %.3f (%.0fs)",
            seed,
            *[pooled[-1][k] for k in ("js", "err")],
            secs[-1],
        )

    # which rule orients the angles right, per donor
    correct = {d: dict.fromkeys(RULES, 0) for d in donors}
    n_judged = dict.fromkeys(donors, 0)
    for d, _, ang, m in judged:
        truth = 1 if circular_correlation(ang, ref_all[m], method="fl") > 0 else -1
        for rule, verdict in _rule_verdicts(ang, s_all[m], g_all[m], lib_all[m]).items():
            correct[d][rule] += int(verdict == truth)
        n_judged[d] += 1

    epochs = (
        "default `train()` (400 epochs for 448 cells)"
        if max_epochs is None
        else f"{max_epochs} epochs"
    )
    lines = [
        "# Cell-cycle angle on FUCCI iPSCs: leave one donor out",
        "",
        "Written by `benchmarks/cell_cycle_lodo.py` (see its docstring for the protocol). "
        "Reference: the FUCCI angle oriented by the reporters alone (Cdt1 peak, then Geminin "
        "peak, then DNA content); by them it runs "
        + ", ".join(
            f"{d}: {'forward' if v == 1 else 'backward'}" for d, v in per_donor_dir.items()
        )
        + ". JS: Jammalamadaka-SenGupta, FL: Fisher-Lee circular correlation; error: median "
        "circular error after the best shift, no reflection (rev.: the angle reversed); "
        "direction right: FL > 0 and error < reversed error.",
        "",
        "## Orientation cue chosen on two donors, checked on the third",
        "",
        "Angles judged per donor: the PCA of that donor's log-normalised expression and the "
        f"{len(seeds)} PoissonVAE seeds. Count of angles each cue orients right (truth: sign of "
        "FL with the reporter angle).",
        "",
        "| held-out donor | cue right on the 2 training donors | chosen | chosen cue right on the held-out donor |",
        "|---|---|---|---|",
    ]
    for d in donors:
        train = [t for t in donors if t != d]
        n_train = sum(n_judged[t] for t in train)
        score = {r: sum(correct[t][r] for t in train) for r in RULES}
        chosen = max(RULES, key=lambda r: score[r])
        lines.append(
            f"| {d} | "
            + ", ".join(f"{r}: {score[r]}/{n_train}" for r in RULES)
            + f" | {chosen} | {correct[d][chosen]}/{n_judged[d]} |"
        )
    lines += [
        "",
        f"## PoissonVAE(n_latent=10, batch_key='chip_id') + align_cell_cycle, {epochs}",
        "",
        f"Seeds {', '.join(map(str, seeds))}; trained and aligned on all 448 cells, measured on "
        "the held-out donor's cells. Median over seeds (min-max).",
        "",
        "| held-out donor | cells | JS corr | FL corr | median error | error reversed | direction right |",
        "|---|---|---|---|---|---|---|",
    ]

    def fmt(vals, *, pct=False):
        v = np.asarray(vals)
        f = (lambda x: f"{x:.1%}") if pct else (lambda x: f"{x:.3f}")
        return f"{f(np.median(v))} ({f(v.min())} to {f(v.max())})"

    for d in donors:
        r = vae_rows[d]
        lines.append(
            f"| {d} | {int(masks[d].sum())} | {fmt([x['js'] for x in r])} | "
            f"{fmt([x['fl'] for x in r])} | {fmt([x['err'] for x in r], pct=True)} | "
            f"{fmt([x['err_rev'] for x in r], pct=True)} | "
            f"{int(sum(x['right'] for x in r))}/{len(r)} |"
        )
    lines.append(
        f"| all 3 pooled | {base.n_obs} | {fmt([x['js'] for x in pooled])} | "
        f"{fmt([x['fl'] for x in pooled])} | {fmt([x['err'] for x in pooled], pct=True)} | "
        f"{fmt([x['err_rev'] for x in pooled], pct=True)} | "
        f"{int(sum(x['right'] for x in pooled))}/{len(pooled)} |"
    )
    lines += [
        "",
        "## PCA of log-normalised expression, per donor",
        "",
        "`align_cell_cycle(use_rep='X_pca')` on `sc.pp.pca` of `normalize_total` + `log1p` of "
        "that donor's cells (50 components); with the counts in `.X` (library sizes available) "
        "and with only log-normalised `.X` (no counts anywhere). Peer: the PCA angle of the same "
        "expression (`cell_cycle_angle_baseline(method='pca')`), which has no direction of its "
        "own and is given the better one.",
        "",
        "| donor | input | JS corr | FL corr | median error | error reversed | direction right | bootstrap confidence | weak-direction warning |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in [*donors, "all"]:
        for mode in ("counts in .X", "log-normalised .X, no counts"):
            r = pca_rows[d, mode]
            lines.append(
                f"| {d} | {mode} | {r['js']:.3f} | {r['fl']:.3f} | {r['err']:.1%} | "
                f"{r['err_rev']:.1%} | {'yes' if r['right'] else 'no'} | "
                f"{r['confidence']:.2f} | {'yes' if r['warned'] else 'no'} |"
            )
        if d != "all":
            r = pca_rows[d, "baseline"]
            lines.append(
                f"| {d} | peer: PCA angle (better direction) | {r['js']:.3f} | {r['fl']:.3f} | "
                f"{r['err']:.1%} | {r['err_rev']:.1%} | (given) | | |"
            )
    lines += [
        "",
        "Figures quoted in issue 14 for three other FUCCI donors (not measured here): ours "
        "0.27-0.55 (median 0.365), SCVI-latent PCA angle 0.485, PCA of log-normalised "
        "expression 0.46, CycleVI 0.45 (reversed).",
        "",
        f"Training + alignment took {np.median(secs):.0f} s per seed on one CPU thread (median).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=None, help="default: train()'s own")
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).with_name("results_cell_cycle_lodo.md")
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("scgenvae", "lightning", "lightning.pytorch", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    report = run(args.seeds, args.epochs)
    args.output.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
