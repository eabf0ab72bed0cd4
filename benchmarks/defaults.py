"""The defaults study: each model with the arguments a user gets, on each bundled real data set.

Every run calls ``Model(data)`` and ``model.train(seed=s)`` with nothing else (except what a
data set needs to be described: the batch key, and ``n_latent=10`` on FUCCI as in the cell-cycle
tutorial), for 3 seeds, and reports quality, training time and the health report of the fit.

- **CellBench** (499 cells, 3 lung cell lines x 2 protocols; 2,000 HVGs): PoissonVAE with
  ``batch_key="protocol"``. Cell-line ARI of k-means (k = 3) on the latent, cell-line 15-NN
  accuracy, and protocol mixing (mean fraction of a cell's 15 neighbours from the other protocol,
  0.5 ideal). Baseline: PCA of log-normalised counts.
- **A549** (sci-CAR, 2,641 cells): MultiVAE on the benchmarks' fixed 90/10 split
  (``a549_quality.py``), scored on the held-out cells; peak frequency and RNA PCA as baselines.
- **PBMC** (10x multiome subset, 1,000 cells): MultiVAE, same split rule and metrics (no time).
- **FUCCI** (448 iPSCs, 3 donors): PoissonVAE(n_latent=10) with ``batch_key="chip_id"`` and
  ``scgenvae.tl.align_cell_cycle``; circular correlation and median error against the FUCCI
  angle, oriented by the reporters (``cell_cycle_fucci._reference``).

Usage: ``python benchmarks/defaults.py [--seeds 0,1,2] [--datasets cellbench,a549,pbmc,fucci]
[--a549-epochs default,60,200,400] [--output benchmarks/RESULTS_defaults.md]``
(``make defaults`` runs it with its defaults).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import a549_quality as aq  # noqa: E402
from _machine import cpu_model  # noqa: E402

HEALTH_KEYS = ("n_epochs", "divergence_ratio", "active_dimensions", "modality_foscttm")


def _train(model, seed: int, max_epochs: int | None = None) -> tuple[float, dict]:
    kwargs = {} if max_epochs is None else {"max_epochs": max_epochs}
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(seed=seed, enable_progress_bar=False, **kwargs)
    elapsed = time.perf_counter() - t0
    report = model.training_report
    loss = np.asarray(model.history["train_loss"].iloc[:, 0], dtype=np.float64)
    health = {k: report[k] for k in HEALTH_KEYS}
    health["max_loss_over_epoch0"] = float(loss.max() / loss[0])
    health["stop"] = report["stop"]["message"]
    health["problems"] = report["problems"]
    health["warnings"] = sorted(
        {str(w.message) for w in caught if "training check" in str(w.message)}
    )
    return elapsed, health


def _mixing(z: np.ndarray, batch: np.ndarray, k: int = 15) -> float:
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1).fit(z)
    idx = nn.kneighbors(z, return_distance=False)[:, 1:]
    return float((batch[idx] != batch[:, None]).mean())


def _cluster_scores(z: np.ndarray, labels: np.ndarray, batch: np.ndarray) -> dict:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from scgenvae import metrics

    k = len(np.unique(labels))
    pred = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(z)
    return {
        "line_ari": float(adjusted_rand_score(labels, pred)),
        "line_knn": metrics.knn_accuracy(z, labels),
        "protocol_mixing": _mixing(z, batch),
    }


def _log_pca(adata, n_comps: int) -> np.ndarray:
    import scanpy as sc

    x = adata.copy()
    sc.pp.normalize_total(x, target_sum=1e4)
    sc.pp.log1p(x)
    sc.pp.pca(x, n_comps=n_comps, random_state=0)
    return x.obsm["X_pca"]


def run_cellbench(seeds: list[int]) -> list[dict]:
    import scanpy as sc

    import scgenvae

    adata = scgenvae.datasets.cellbench()
    sc.pp.highly_variable_genes(
        adata, n_top_genes=2000, flavor="seurat_v3", batch_key="protocol", subset=True
    )
    labels = adata.obs["cell_line"].astype(str).to_numpy()
    batch = adata.obs["protocol"].astype(str).to_numpy()
    rows = [
        {"dataset": "CellBench", "method": "PCA of log-normalised (baseline)", "seed": 0}
        | _cluster_scores(_log_pca(adata, 10), labels, batch)
    ]
    for seed in seeds:
        data = adata.copy()
        scgenvae.model.PoissonVAE.setup_anndata(data, batch_key="protocol")
        model = scgenvae.model.PoissonVAE(data)
        seconds, health = _train(model, seed)
        z = model.get_latent_representation()
        rows.append(
            {"dataset": "CellBench", "method": "PoissonVAE (defaults)", "seed": seed}
            | _cluster_scores(z, labels, batch)
            | {"train_seconds": seconds, "health": health}
        )
    return rows


def _multiome(name: str, mdata, seeds: list[int], epochs: list[int | None], time_key):
    import scgenvae
    from scgenvae import metrics

    train, test = aq.split(mdata.n_obs)
    m_train, m_test = mdata[train].copy(), mdata[test].copy()
    freq = np.asarray((m_train.mod["atac"].X > 0).mean(0)).ravel()
    pred = np.broadcast_to(freq, m_test.mod["atac"].shape)
    base = {
        "peak_frequency_auroc": metrics.auroc_auprc(m_test.mod["atac"].X, pred)[0],
        "peak_frequency_peak_auroc": metrics.mean_feature_auroc(m_test.mod["atac"].X, pred),
    }
    rows = []
    for max_epochs in epochs:
        for seed in seeds:
            data = m_train.copy()
            scgenvae.model.MultiVAE.setup_mudata(data)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="ATAC values are not binary")
                model = scgenvae.model.MultiVAE(data)
                seconds, health = _train(model, seed, max_epochs)
                if time_key is None:
                    scores = _multiome_scores(model, m_test)
                else:
                    scores = aq.evaluate(model, m_test, mdata, time_key=time_key)
            rows.append(
                {
                    "dataset": name,
                    "method": "MultiVAE (defaults)"
                    if max_epochs is None
                    else f"MultiVAE (max_epochs={max_epochs})",
                    "seed": seed,
                }
                | scores
                | base
                | {"train_seconds": seconds, "health": health}
            )
    return rows


def _multiome_scores(model, m_test) -> dict:
    from scgenvae import metrics

    # cells without ATAC counts (PBMC has some) have no ATAC latent nor expression from ATAC
    has_atac = np.asarray(m_test.mod["atac"].X.sum(1)).ravel() > 0
    z_rna = model.get_latent_representation(m_test, modality="rna", indices=has_atac)
    z_atac = model.get_latent_representation(m_test, modality="atac", indices=has_atac)
    acc = model.get_accessibility_estimates(m_test, modality="rna", return_numpy=True)
    expr = model.get_normalized_expression(
        m_test, modality="atac", indices=has_atac, return_numpy=True
    )
    return {
        "foscttm": metrics.foscttm(z_rna, z_atac),
        "auroc_atac_from_rna": metrics.auroc_auprc(m_test.mod["atac"].X, acc)[0],
        "peak_auroc_atac_from_rna": metrics.mean_feature_auroc(m_test.mod["atac"].X, acc),
        "spearman_rna_from_atac": metrics.mean_gene_spearman(m_test.mod["rna"].X[has_atac], expr),
    }


def run_a549(seeds: list[int], epochs: list[int | None]) -> list[dict]:
    import scgenvae

    return _multiome("A549", scgenvae.datasets.scicar_a549(), seeds, epochs, "Time")


def run_pbmc(seeds: list[int]) -> list[dict]:
    import scgenvae

    return _multiome("PBMC", scgenvae.datasets.pbmc_multiome_subset(), seeds, [None], None)


def run_fucci(seeds: list[int]) -> list[dict]:
    import cell_cycle_fucci as cc

    import scgenvae

    adata = scgenvae.datasets.fucci_ipsc()
    ref, _ = cc._reference(adata)
    rows = []
    pca = adata.copy()
    pca.obsm["X_pca"] = _log_pca(adata, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scgenvae.tl.align_cell_cycle(pca, use_rep="X_pca", gene_symbols="hgnc")
    corr, err = cc._metrics(pca.obs["cell_cycle_angle"].to_numpy(), ref, best_direction=False)
    rows.append(
        {"dataset": "FUCCI", "method": "PCA of log-normalised + align_cell_cycle", "seed": 0}
        | {"circular_corr": corr, "median_error": err}
    )
    for seed in seeds:
        data = adata.copy()
        scgenvae.model.PoissonVAE.setup_anndata(data, batch_key="chip_id")
        model = scgenvae.model.PoissonVAE(data, n_latent=10)
        seconds, health = _train(model, seed)
        model.export_latent(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scgenvae.tl.align_cell_cycle(data, use_rep="X_scgenvae", gene_symbols="hgnc")
        corr, err = cc._metrics(data.obs["cell_cycle_angle"].to_numpy(), ref, best_direction=False)
        rows.append(
            {
                "dataset": "FUCCI",
                "method": "PoissonVAE (defaults) + align_cell_cycle",
                "seed": seed,
            }
            | {"circular_corr": corr, "median_error": err}
            | {"train_seconds": seconds, "health": health}
        )
    return rows


_COLUMNS = {
    "CellBench": ["line_ari", "line_knn", "protocol_mixing"],
    "A549": [
        "foscttm",
        "auroc_atac_from_rna",
        "peak_frequency_auroc",
        "peak_auroc_atac_from_rna",
        "spearman_rna_from_atac",
        "time_knn_accuracy",
    ],
    "PBMC": [
        "foscttm",
        "auroc_atac_from_rna",
        "peak_frequency_auroc",
        "peak_auroc_atac_from_rna",
        "spearman_rna_from_atac",
    ],
    "FUCCI": ["circular_corr", "median_error"],
}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def report(rows: list[dict], header: str) -> str:
    """Markdown tables: one per data set, one row per run, with the health figures."""
    out = [header]
    for dataset, cols in _COLUMNS.items():
        sub = [r for r in rows if r["dataset"] == dataset]
        if not sub:
            continue
        out += ["", f"## {dataset}", ""]
        head = ["method", "seed", *cols, "train s", "epochs", "stop", "max loss / epoch 0"]
        head += ["active dims", "cross-modal FOSCTTM (check)", "health warnings"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for r in sub:
            h = r.get("health") or {}
            stop = h.get("stop", "")
            stop = "early" if "stopped early" in stop else ("max_epochs" if stop else "-")
            cells = [r["method"], str(r["seed"]), *[_fmt(r.get(c)) for c in cols]]
            cells += [
                _fmt(r.get("train_seconds")),
                _fmt(h.get("n_epochs")),
                stop,
                _fmt(h.get("max_loss_over_epoch0")),
                _fmt(h.get("active_dimensions")),
                _fmt(h.get("modality_foscttm")),
                "; ".join(w.split(":", 2)[1].strip() for w in h.get("warnings", [])) or "none",
            ]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--datasets", default="cellbench,a549,pbmc,fucci")
    parser.add_argument(
        "--a549-epochs",
        default="default",
        help="comma-separated max_epochs for A549 ('default' = train() with no max_epochs)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(HERE / "RESULTS_defaults.md"))
    parser.add_argument(
        "--merge",
        default=None,
        help="comma-separated JSON files of earlier runs: write one report of their rows",
    )
    args = parser.parse_args(argv)
    if args.merge:
        rows = [r for f in args.merge.split(",") for r in json.loads(Path(f).read_text())]
        header = f"# Defaults study\n\nMerged from {args.merge} (CPU: {cpu_model()})."
        text = report(rows, header)
        Path(args.output).write_text(text)
        Path(args.output).with_suffix(".json").write_text(json.dumps(rows, indent=1))
        print(text)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    epochs = [None if e == "default" else int(e) for e in args.a549_epochs.split(",")]
    runners = {
        "cellbench": lambda: run_cellbench(seeds),
        "a549": lambda: run_a549(seeds, epochs),
        "pbmc": lambda: run_pbmc(seeds),
        "fucci": lambda: run_fucci(seeds),
    }
    rows: list[dict] = []
    t0 = time.time()
    for name in args.datasets.split(","):
        rows += runners[name]()
        print(f"{name} done after {time.time() - t0:.0f} s", flush=True)
    header = (
        "# Defaults study\n\n"
        f"`python benchmarks/defaults.py --seeds {args.seeds} --datasets {args.datasets} "
        f"--a549-epochs {args.a549_epochs}`, {time.strftime('%Y-%m-%d')}, "
        f"{args.threads} torch thread(s), CPU: {cpu_model()}; {time.time() - t0:.0f} s in all.\n"
        "Every model is built and trained with its default arguments (see the docstring of "
        "`benchmarks/defaults.py`); held-out figures for the multiome data sets."
    )
    text = report(rows, header)
    out = Path(args.output)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()
