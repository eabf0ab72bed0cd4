"""Reference mapping on CellBench: a CEL-seq2 reference, the Drop-seq cells as query.

Data: the bundled CellBench (499 cells of 3 lung cancer lines, ``obs["cell_line"]``, by two
protocols, ``obs["protocol"]``), restricted to the 2,000 most variable genes of the reference
(scanpy's ``seurat_v3`` on the CEL-seq2 counts). The query (Drop-seq) loses a random 10% of
these genes (per seed) before mapping, so that padding is exercised.

Scenarios, each with both methods and each seed:

- ``all lines``: the reference holds all three lines; figures: label-transfer accuracy on the
  query (15-NN, :func:`scgenvae.tl.transfer_labels`) and the integration of the joint
  (reference + query) latent: ``kNN mixing`` and ``cell-line ARI`` (see :func:`knn_mixing`
  and :func:`cell_line_ari`).
- ``held-out line``: the reference lacks HCC827; figures: accuracy on the two other lines,
  the mean uncertainty of held-out and held-in query cells, the AUROC of the uncertainty
  for telling held-out cells from the others, and the same integration figures (mixing over
  the two lines both protocols have; ARI over all cells, HCC827 included).

Methods: scgenvae's ``PoissonVAE.prepare_query_anndata`` / ``load_query_data`` (frozen) and
scvi-tools' ``SCVI.prepare_query_anndata`` / ``load_query_data`` with the settings of
scvi-tools' scArches tutorial (layer norm, no batch norm, encoded covariates, two layers,
dropout 0.2; ``weight_decay=0`` in query training). Training is ``train()`` without
``max_epochs`` for the reference and the query, for both methods (each library's heuristic,
400 epochs on these cell numbers); ``--ref-epochs`` / ``--query-epochs`` give tuned runs.
Both latents go through the same label transfer and the same metrics, so the figures
compare the embeddings. "ref. latent change" is the largest absolute change of the reference
cells' latent after query training.

Usage::

    python benchmarks/mapping.py                 # seeds 0 1 2, defaults; ours 3-5 min a run, SCVI more
    python benchmarks/mapping.py --seeds 0 --ref-epochs 200 --query-epochs 100 \\
        --output /tmp/mapping_tuned.md
    # methods in separate processes, one report from the rows both append to
    python benchmarks/mapping.py --methods scvi --rows rows.jsonl --output /tmp/m.md
    python benchmarks/mapping.py --methods ours --rows rows.jsonl --output /tmp/m.md
    # development split (issue 18's hold-out discipline): protocols swapped, H1975 held out
    python benchmarks/mapping.py --reference Drop-seq --held-out H1975 --output /tmp/dev.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, roc_auc_score
from sklearn.neighbors import NearestNeighbors

import scgenvae
from scgenvae.model import PoissonVAE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model

HELD_OUT = "HCC827"
N_NEIGHBORS = 15


def knn_mixing(z: np.ndarray, batch: np.ndarray, *, n_neighbors: int = N_NEIGHBORS) -> float:
    """Mean over cells of the share of k-NN from another batch, over the share expected.

    For each cell, the share of its ``n_neighbors`` nearest other cells (Euclidean, in ``z``)
    that belong to another batch, divided by the share of other-batch cells among all other
    cells. 1 is perfect mixing, 0 none (batches apart).
    """
    batch = np.asarray(batch)
    nn = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(z)
    idx = nn.kneighbors(z, return_distance=False)[:, 1:]
    observed = (batch[idx] != batch[:, None]).mean(1)
    counts = pd.Series(batch).value_counts()
    expected = (len(batch) - counts.loc[batch].to_numpy()) / (len(batch) - 1)
    return float((observed / expected).mean())


def cell_line_ari(z: np.ndarray, labels: np.ndarray, *, seed: int) -> float:
    """ARI of k-means (k = number of labels, 10 starts) on ``z`` with ``labels``."""
    k = len(np.unique(labels))
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(z)
    return float(adjusted_rand_score(labels, clusters))


def _data(reference: str = "CEL-seq2"):
    adata = scgenvae.datasets.cellbench()
    adata.obs["cell_line"] = adata.obs["cell_line"].astype(str)
    adata.obs["protocol"] = adata.obs["protocol"].astype(str)
    ref_all = adata[(adata.obs["protocol"] == reference).to_numpy()].copy()
    sc.pp.filter_genes(ref_all, min_cells=3)
    sc.pp.highly_variable_genes(ref_all, flavor="seurat_v3", n_top_genes=2000)
    genes = ref_all.var_names[ref_all.var["highly_variable"].to_numpy()]
    return adata[:, genes].copy()


def _split(adata, scenario: str, seed: int, *, reference: str = "CEL-seq2"):
    is_ref = (adata.obs["protocol"] == reference).to_numpy()
    ref = adata[is_ref].copy()
    if scenario == "held-out line":
        ref = ref[(ref.obs["cell_line"] != HELD_OUT).to_numpy()].copy()
    query = adata[~is_ref].copy()
    rng = np.random.default_rng(seed)
    drop = rng.choice(query.n_vars, size=query.n_vars // 10, replace=False)
    keep = np.setdiff1d(np.arange(query.n_vars), drop)
    return ref, query[:, keep].copy()


def _epochs(model, qmodel) -> str:
    """Epochs run, reference + query (from the training histories)."""
    return f"{len(model.history['elbo_train'])}+{len(qmodel.history['elbo_train'])}"


def _ours(ref, query, seed: int, epochs) -> tuple[np.ndarray, np.ndarray, float, float, str]:
    scgenvae.settings.seed = seed
    PoissonVAE.setup_anndata(ref, batch_key="protocol")
    model = PoissonVAE(ref)
    t0 = time.perf_counter()
    model.train(max_epochs=epochs[0], seed=seed, enable_progress_bar=False)
    z_ref = model.get_latent_representation(ref)
    prepared = PoissonVAE.prepare_query_anndata(query, model)
    qmodel = PoissonVAE.load_query_data(prepared, model)
    qmodel.train(max_epochs=epochs[1], seed=seed, enable_progress_bar=False)
    seconds = time.perf_counter() - t0
    change = float(np.abs(qmodel.get_latent_representation(ref) - z_ref).max())
    return (
        z_ref,
        qmodel.get_latent_representation(prepared),
        change,
        seconds,
        _epochs(model, qmodel),
    )


def _scvi(ref, query, seed: int, epochs) -> tuple[np.ndarray, np.ndarray, float, float, str]:
    import scvi

    scvi.settings.seed = seed
    ref = ref.copy()
    scvi.model.SCVI.setup_anndata(ref, batch_key="protocol")
    model = scvi.model.SCVI(
        ref,
        use_layer_norm="both",
        use_batch_norm="none",
        encode_covariates=True,
        dropout_rate=0.2,
        n_layers=2,
    )
    t0 = time.perf_counter()
    model.train(max_epochs=epochs[0], enable_progress_bar=False)
    z_ref = model.get_latent_representation(ref)
    query = query.copy()
    scvi.model.SCVI.prepare_query_anndata(query, model)
    qmodel = scvi.model.SCVI.load_query_data(query, model)
    qmodel.train(
        max_epochs=epochs[1], plan_kwargs={"weight_decay": 0.0}, enable_progress_bar=False
    )
    seconds = time.perf_counter() - t0
    change = float(np.abs(qmodel.get_latent_representation(ref) - z_ref).max())
    return z_ref, qmodel.get_latent_representation(query), change, seconds, _epochs(model, qmodel)


def _figures(ref, query, z_ref, z_query, seed: int) -> dict[str, float]:
    ref, query = ref.copy(), query.copy()
    ref.obsm["X_map"], query.obsm["X_map"] = z_ref, z_query
    scgenvae.tl.transfer_labels(ref, query, "cell_line", use_rep="X_map")
    truth = query.obs["cell_line"].astype(str).to_numpy()
    held = truth == HELD_OUT
    known = (
        ~held if held.any() and HELD_OUT not in set(ref.obs["cell_line"]) else np.ones_like(held)
    )
    hit = query.obs["transferred"].astype(str).to_numpy() == truth
    u = query.obs["transferred_uncertainty"].to_numpy()
    out = {"accuracy": float(hit[known].mean())}
    if not known.all():
        out["uncertainty held-out"] = float(u[held].mean())
        out["uncertainty held-in"] = float(u[~held].mean())
        out["AUROC held-out"] = float(roc_auc_score(held, u))
    z = np.concatenate([z_ref, z_query])
    lines = np.concatenate([ref.obs["cell_line"].astype(str), truth])
    protocol = np.concatenate([ref.obs["protocol"].astype(str), query.obs["protocol"]])
    shared = np.isin(lines, np.unique(ref.obs["cell_line"].astype(str)))
    out["kNN mixing"] = knn_mixing(z[shared], protocol[shared])
    out["cell-line ARI"] = cell_line_ari(z, lines, seed=seed)
    return out


METHODS = {"ours": ("scgenvae PoissonVAE", "_ours"), "scvi": ("scvi-tools SCVI", "_scvi")}


def main(argv=None) -> None:
    global HELD_OUT  # set once, before any split
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--ref-epochs", type=int, default=None, help="tuned; default: train()'s heuristic"
    )
    parser.add_argument(
        "--query-epochs", type=int, default=None, help="tuned; default: train()'s heuristic"
    )
    parser.add_argument(
        "--reference", default="CEL-seq2", help="protocol of the reference (the other: query)"
    )
    parser.add_argument("--held-out", default=HELD_OUT, help="line the reference lacks")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument(
        "--scenarios", nargs="+", default=["all lines", "held-out line"], help="which scenarios"
    )
    parser.add_argument(
        "--rows",
        type=Path,
        default=None,
        help="JSON-lines file: each run is appended; the report is written from all its rows "
        "(so that methods or seeds run in separate processes end in one report)",
    )
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).with_name("results_mapping.md")
    )
    args = parser.parse_args(argv)
    HELD_OUT = args.held_out
    torch.set_num_threads(1)
    epochs = (args.ref_epochs, args.query_epochs)
    logging.getLogger("scvi").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    adata = _data(args.reference)
    rows = []
    for seed in args.seeds:
        for scenario in args.scenarios:
            ref, query = _split(adata, scenario, seed, reference=args.reference)
            for key in args.methods:
                method, fn = METHODS[key][0], globals()[METHODS[key][1]]
                z_ref, z_query, change, seconds, n_epochs = fn(
                    ref.copy(), query.copy(), seed, epochs
                )
                figs = _figures(ref, query, z_ref, z_query, seed)
                row = {
                    "scenario": scenario,
                    "method": method,
                    "seed": seed,
                    **figs,
                    "ref. latent change": change,
                    "train s": seconds,
                    "epochs": n_epochs,
                }
                print(row, flush=True)
                if args.rows is not None:
                    with args.rows.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
                    rows = [json.loads(line) for line in args.rows.read_text().splitlines()]
                else:
                    rows.append(row)
                frame = pd.DataFrame(rows).sort_values(
                    ["scenario", "method", "seed"], kind="stable"
                )
                _write(frame, adata, args)  # after each run: a partial report survives


def _write(frame: pd.DataFrame, adata, args) -> None:
    metrics = [c for c in frame.columns if c not in ("scenario", "method", "seed", "epochs")]
    if args.ref_epochs is None and args.query_epochs is None:
        training = (
            "`train()` without `max_epochs` for reference and query, both methods (each "
            "library's default heuristic)"
        )
    else:
        training = (
            f"**tuned**: {args.ref_epochs or 'default'} reference epochs, "
            f"{args.query_epochs or 'default'} query epochs"
        )
    epochs = ", ".join(
        f"{m}: {'/'.join(sorted(set(part['epochs'])))}"
        for m, part in frame.groupby("method", sort=False)
    )
    lines = [
        "# Reference mapping on CellBench",
        "",
        f"Generated by `benchmarks/mapping.py`; CPU: {cpu_model()}; seeds "
        f"{sorted(set(frame['seed']))}; "
        f"scgenvae {scgenvae.__version__}. Reference: {args.reference} cells; query: the "
        f"other protocol's cells; held-out line: {HELD_OUT}; the query has "
        f"10% of the {adata.n_vars:,} reference genes removed (zero-padded by "
        f"`prepare_query_anndata`). Training: {training}; epochs run (reference+query): "
        f"{epochs}. Our query model is frozen (`load_query_data(freeze=True)`, the default); "
        "SCVI's follows scvi-tools' scArches tutorial (layer norm, no batch norm, encoded "
        "covariates, 2 layers, dropout 0.2, query `weight_decay=0`). Label transfer: "
        "`scgenvae.tl.transfer_labels`, 15-NN, on each method's latent. `kNN mixing`: mean over "
        "reference and query cells of the cell lines both protocols have of the share of their "
        "15 nearest neighbours (joint latent) from the other protocol, over the share expected "
        "(1 = mixed, 0 = apart). `cell-line ARI`: k-means (k = 3, 10 starts) on the joint "
        "latent of all cells against the cell lines. Mean ± standard deviation over seeds. "
        "`train s` (reference plus query training) was measured on 2 cores shared with other "
        "jobs: indicative only.",
        "",
    ]
    for scenario, part in frame.groupby("scenario", sort=True):
        lines += [f"## {scenario}", ""]
        cols = [m for m in metrics if part[m].notna().any()]
        lines.append("| method | " + " | ".join(cols) + " |")
        lines.append("|---" * (len(cols) + 1) + "|")
        for method, rows in part.groupby("method", sort=False):
            cells = [f"{rows[c].mean():.3g} ± {rows[c].std(ddof=0):.2g}" for c in cols]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Per seed", "", frame.to_markdown(index=False, floatfmt=".4g"), ""]
    args.output.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
