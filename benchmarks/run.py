"""Benchmark harness: scgenvae against scvi-tools, in one run on one machine.

Usage::

    python benchmarks/run.py --output benchmarks/RESULTS.md           # full run (make bench)
    python benchmarks/run.py --quick --output /tmp/results.md          # tiny sizes, smoke test
    python benchmarks/run.py --workloads 1,4 --threads 2 --output ...  # a subset

Workloads: (1) training speed on synthetic paired multiome, MultiVAE vs MULTIVI and PoissonVAE vs
SCVI; (2) held-out quality on the A549 sci-CAR multiome, MultiVAE vs MULTIVI; (3) the FUCCI
cell-cycle benchmark (``cell_cycle_fucci.py``, when present); (4) one epoch at 200,000 cells.

This process only orchestrates and writes markdown; it never imports torch. Every model runs
in a fresh worker process (``_worker.py``) so that its peak RSS is its own; ``--quick`` runs all
jobs in one shared worker to save start-up time (RSS is then cumulative).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("benchmarks.run")

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_worker.py"
FUCCI_SCRIPT = HERE / "cell_cycle_fucci.py"
FUCCI_RESULTS = HERE / "results_cell_cycle.md"

PAIRS = (("MultiVAE", "MULTIVI"), ("PoissonVAE", "SCVI"))
TARGETS = {"MultiVAE": 4.0, "PoissonVAE": 2.0}
MATMUL_TARGET = 0.40
SCALE_RSS_TARGET_MIB = 6 * 1024

# table headers; tests/test_benchmarks_smoke.py checks that each appears in the output
SPEED_COLUMNS = (
    "model",
    "batch size",
    "s/epoch (median, epochs 2-5)",
    "cells/s",
    "train() wall s",
    "peak RSS MiB",
    "RSS after data MiB",
    "MFLOP/cell (train step)",
    "GFLOP/s",
    "% of matmul",
)
RATIO_COLUMNS = (
    "ours / theirs",
    "batch size",
    "cells/s ratio",
    "s/epoch ratio",
    "peak RSS ratio",
    "FLOP/cell ratio",
)
TARGET_COLUMNS = ("target", "batch size", "measured", "goal", "met", "distance")
QUALITY_COLUMNS = ("metric", "MultiVAE", "MULTIVI", "ours - theirs", "better", "trivial baseline")
TTQ_COLUMNS = (
    "epoch",
    "train s",
    "FOSCTTM",
    "AUROC ATAC from RNA",
    "Spearman RNA from ATAC",
    "time 15-NN acc.",
    "reached MULTIVI",
)
SCALE_COLUMNS = (
    "model",
    "status",
    "epoch s",
    "cells/s",
    "peak RSS MiB",
    "RSS after data MiB",
    "MFLOP/cell (train step)",
    "% of matmul",
)


@dataclass(frozen=True)
class Config:
    """Sizes, epochs and limits of one run."""

    # workload 1 (speed)
    n_obs: int = 10_000
    n_genes: int = 2_000
    n_peaks: int = 10_000
    n_hidden: int = 256
    n_layers: int = 1
    n_latent: int = 20
    epochs: int = 5
    batch_sizes: tuple[int, ...] = (128, 1024)
    # workload 2 (A549 quality)
    a549_cells: int | None = None
    a549_peaks: int | None = None
    a549_hidden: int = 256
    a549_multivi_epochs: int = 100
    a549_ours_epochs: int = 60
    a549_checkpoints: tuple[int, ...] = (5, 10, 15, 20, 25, 35)
    # workload 4 (scale)
    scale_obs: int = 200_000
    scale_genes: int = 2_000
    scale_peaks: int = 50_000
    scale_density: float = 0.03
    scale_batch_size: int = 1024
    scale_timeout: int = 420
    # any other job
    job_timeout: int = 3600
    shared_worker: bool = False
    quick: bool = False


QUICK = Config(
    n_obs=256,
    n_genes=100,
    n_peaks=9_000,  # > 2 x n_sampled_peaks: exercises MultiVAE's sampled-peak decoder
    n_hidden=32,
    n_latent=8,
    epochs=2,
    batch_sizes=(64, 128),
    a549_cells=300,
    a549_peaks=3_000,
    a549_hidden=32,
    a549_multivi_epochs=2,
    a549_ours_epochs=3,
    a549_checkpoints=(1, 2),
    scale_obs=2_000,
    scale_genes=100,
    scale_peaks=9_000,
    scale_batch_size=256,
    scale_timeout=300,
    job_timeout=600,
    shared_worker=True,
    quick=True,
)


# --------------------------------------------------------------------------- workers
class JobTimeout(Exception):
    """A job ran past its limit (its worker was killed)."""


class Worker:
    """A ``_worker.py`` process in its own process group, fed one JSON job per line."""

    def __init__(self, threads: int | None, log_path: Path):
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(threads or 0)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=HERE.parent,
            start_new_session=True,
            text=True,
        )

    def run(self, job: dict, timeout: float) -> dict:
        """Send ``job`` and wait for its answer; raise :class:`JobTimeout` past ``timeout``."""
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.kill()
            msg = f"worker died before the job was sent; log tail:\n{self.log_tail()}"
            raise RuntimeError(msg) from None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise JobTimeout
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=30)
            self._close_files()
            msg = f"worker exited with code {code} (killed for memory?); log tail:\n{self.log_tail()}"
            raise RuntimeError(msg)
        return json.loads(line)

    def log_tail(self, n: int = 15) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def kill(self) -> None:
        """Kill the worker's process group (only processes this harness started)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._close_files()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_files()

    def _close_files(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout, self._log):
            if f is not None and not f.closed:
                with contextlib.suppress(BrokenPipeError):
                    f.close()


class Runner:
    """Runs jobs in fresh workers (default) or in one shared worker (``--quick``)."""

    def __init__(self, tmp: Path, *, threads: int | None, shared: bool):
        self.tmp, self.threads, self.shared = tmp, threads, shared
        self._worker: Worker | None = None
        self._n = 0

    def run(self, job: dict, timeout: float) -> dict:
        """``{"ok": True, "result": ...}`` or ``{"ok": False, "error": ..., "timeout": bool}``."""
        self._n += 1
        label = f"{self._n:02d}_{job['task']}_{job.get('model', '')}".rstrip("_")
        if self._worker is None:
            self._worker = Worker(self.threads, self.tmp / f"{label}.log")
        worker = self._worker
        logger.info("job %s (limit %d s)", label, timeout)
        t0 = time.perf_counter()
        try:
            answer = worker.run(job, timeout)
        except JobTimeout:
            self._worker = None
            return {"ok": False, "timeout": True, "error": f"did not finish in {timeout:.0f} s"}
        except RuntimeError as err:
            self._worker = None
            return {"ok": False, "timeout": False, "error": str(err)}
        finally:
            if not self.shared and self._worker is not None:
                self._worker.close()
                self._worker = None
        answer.setdefault("timeout", False)
        answer["job_seconds"] = time.perf_counter() - t0
        if not answer["ok"]:
            logger.warning("job %s failed: %s", label, answer["error"])
        return answer

    def close(self, *, kill: bool = False) -> None:
        """Let the worker finish (or kill it, when the harness itself is interrupted)."""
        if self._worker is not None:
            if kill:
                self._worker.kill()
            else:
                self._worker.close()
            self._worker = None


# --------------------------------------------------------------------------- formatting
def fmt(value, digits: int = 2) -> str:
    """Number for a table cell (``n/a`` for missing or NaN)."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    value = float(value)
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def table(columns, rows) -> list[str]:
    """Markdown table lines."""
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def ratio(a, b) -> float:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return float("nan")
    return a / b if b else float("nan")


def target_row(
    name: str, batch, measured: float, goal: float, unit: str = "x", *, at_most: bool = False
) -> list[str]:
    """A row of the targets table: met / not met and the distance to the goal.

    ``at_most``: the goal is an upper bound (memory, time), else a lower bound (speed-ups).
    Units: ``"x"`` (ratios), ``"%"``, ``"MiB"``.
    """
    sign = "<= " if at_most else ""
    if measured != measured:
        return [name, str(batch), "n/a", f"{sign}{goal:g}{unit}", "not measured", "n/a"]
    met = measured <= goal if at_most else measured >= goal
    rel = measured / goal
    if unit == "%":
        dist = f"{measured - goal:+.1f} points ({rel:.0%} of goal)"
        shown, goal_s = f"{measured:.1f}%", f"{goal:.0f}%"
    elif unit == "MiB":
        dist = f"{measured - goal:+,.0f} MiB ({rel:.0%} of goal)"
        shown, goal_s = f"{measured:,.0f} MiB", f"{goal:,.0f} MiB"
    else:
        dist = f"{measured - goal:+.2f}x ({rel:.0%} of goal)"
        shown, goal_s = f"{measured:.2f}x", f"{goal:g}x"
    return [name, str(batch), shown, sign + goal_s, "met" if met else "not met", dist]


# --------------------------------------------------------------------------- machine
def machine_info() -> dict:
    """What this process can see of the machine (the worker adds torch's view)."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    mem_gib = float("nan")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "mem_gib": mem_gib,
        "load_start": os.getloadavg(),
        "os": platform.platform(),
    }


# --------------------------------------------------------------------------- workload 1
def speed_derived(r: dict, matmul: float) -> dict:
    """Cells per second, achieved GFLOP/s and fraction of the matmul reference."""
    med = r.get("median_epoch_seconds", float("nan"))
    cps = r["n_obs"] / med if med and med == med and med > 0 else float("nan")
    gflops = r.get("train_flops", float("nan")) * cps / 1e9
    return {
        "cells_per_second": cps,
        "gflops": gflops,
        "fraction": gflops / matmul if matmul else float("nan"),
    }


def workload_speed(cfg: Config, runner: Runner, tmp: Path, env: dict, report: dict) -> list[str]:
    path = tmp / "synthetic_multiome.h5mu"
    data = runner.run(
        {
            "task": "make_synthetic",
            "n_obs": cfg.n_obs,
            "n_genes": cfg.n_genes,
            "n_peaks": cfg.n_peaks,
            "path": str(path),
        },
        cfg.job_timeout,
    )
    lines = ["## 1. Training speed: synthetic paired multiome", ""]
    if not data["ok"]:
        return [*lines, f"Data generation failed: {data['error']}", ""]
    d = data["result"]
    lines += [
        f"Data: `scgenvae.datasets.synthetic_multiome({d['n_obs']}, {d['n_genes']}, {d['n_peaks']}, "
        f"n_batches=3, peak_density=0.05, rng=0)`: RNA density {d['rna_density']:.1%}, "
        f"ATAC density {d['atac_density']:.1%}. PoissonVAE and SCVI use `mdata.mod['rna']`.",
        f"Settings for every model: n_latent={cfg.n_latent}, n_hidden={cfg.n_hidden}, "
        f"n_layers={cfg.n_layers} (MULTIVI: n_layers_encoder = n_layers_decoder = {cfg.n_layers}), "
        f"{cfg.epochs} epochs, all cells used for training (`train_size=1.0`), no validation, "
        "no early stopping, gene likelihood Poisson. Otherwise each package's defaults "
        "(MULTIVI keeps its adversarial batch classifier, AdamW and lr 1e-4).",
        "",
    ]
    matmul = env.get("matmul_gflops", float("nan"))
    results: dict[tuple[str, int], dict] = {}
    for bs in cfg.batch_sizes:
        for pair in PAIRS:
            for name in pair:
                ans = runner.run(
                    {
                        "task": "speed",
                        "model": name,
                        "data": "h5mu",
                        "path": str(path),
                        "batch_size": bs,
                        "epochs": cfg.epochs,
                        "n_hidden": cfg.n_hidden,
                        "n_layers": cfg.n_layers,
                        "n_latent": cfg.n_latent,
                    },
                    cfg.job_timeout,
                )
                results[name, bs] = ans
    rows = []
    for pair in PAIRS:
        for bs in cfg.batch_sizes:
            for name in pair:
                ans = results[name, bs]
                if not ans["ok"]:
                    rows.append([name, bs, ans["error"].splitlines()[0], *["n/a"] * 7])
                    continue
                r = ans["result"]
                x = speed_derived(r, matmul)
                r.update(x)
                rows.append(
                    [
                        name,
                        bs,
                        fmt(r["median_epoch_seconds"]),
                        fmt(x["cells_per_second"], 0),
                        fmt(r["train_wall_seconds"], 1),
                        fmt(r["peak_rss_mib"], 0),
                        fmt(r["rss_after_data_mib"], 0),
                        fmt(r["train_flops"] / 1e6, 2),
                        fmt(x["gflops"], 1),
                        fmt(100 * x["fraction"], 1),
                    ]
                )
    lines += table(SPEED_COLUMNS, rows)
    lines += [
        "",
        "s/epoch: median over epochs 2-5 of the wall time from `on_train_epoch_start` to "
        "`on_train_epoch_end` (a Lightning callback). cells/s = cells / that median. "
        "GFLOP/s = FLOP/cell x cells/s; % of matmul = GFLOP/s / the matmul reference above.",
        "",
    ]
    ratio_rows, target_rows = [], []
    for ours, theirs in PAIRS:
        for bs in cfg.batch_sizes:
            a, b = results[ours, bs], results[theirs, bs]
            ra = a["result"] if a["ok"] else {}
            rb = b["result"] if b["ok"] else {}
            cps = ratio(ra.get("cells_per_second"), rb.get("cells_per_second"))
            ratio_rows.append(
                [
                    f"{ours} / {theirs}",
                    bs,
                    fmt(cps),
                    fmt(ratio(ra.get("median_epoch_seconds"), rb.get("median_epoch_seconds"))),
                    fmt(ratio(ra.get("peak_rss_mib"), rb.get("peak_rss_mib"))),
                    fmt(ratio(ra.get("train_flops"), rb.get("train_flops")), 3),
                ]
            )
            target_rows.append(target_row(f"{ours} cells/s vs {theirs}", bs, cps, TARGETS[ours]))
            report.setdefault("targets", []).append(target_rows[-1])
    for ours, theirs in PAIRS:
        for bs in cfg.batch_sizes:
            a, b = results[ours, bs], results[theirs, bs]
            rss = ratio(
                a["result"].get("peak_rss_mib") if a["ok"] else None,
                b["result"].get("peak_rss_mib") if b["ok"] else None,
            )
            report.setdefault("targets", []).append(
                target_row(
                    f"{ours} peak RSS / {theirs}'s (workload 1)", bs, rss, 1.0, at_most=True
                )
            )
    for ours, _ in PAIRS:
        for bs in cfg.batch_sizes:
            r = results[ours, bs]
            frac = r["result"]["fraction"] if r["ok"] else float("nan")
            report.setdefault("targets", []).append(
                target_row(
                    f"{ours} % of matmul throughput", bs, 100 * frac, 100 * MATMUL_TARGET, "%"
                )
            )
    lines += ["Ratios (ours / theirs, same run, same machine):", ""]
    lines += table(RATIO_COLUMNS, ratio_rows)
    lines += ["", *_flop_notes(results, cfg)]
    report["speed"] = {f"{k[0]}@{k[1]}": v for k, v in results.items()}
    return lines


def _flop_notes(results: dict, cfg: Config) -> list[str]:
    lines = [
        "FLOPs per cell of one training step, counted from the layer sizes: a linear layer "
        "n_in -> n_out costs n_in*n_out multiply-adds forward, the same for its weight gradient "
        "and again for its input gradient (not for a layer whose input is the data, nor for "
        "outputs the loss ignores); FLOPs = 2 x multiply-adds; element-wise work is not counted. "
        f"G genes, P peaks, H = {cfg.n_hidden}, L = {cfg.n_layers}, d = {cfg.n_latent}, "
        "B = number of batches (one-hot width in scvi-tools), nnz = accessible peaks per cell, "
        "G' = non-zero genes per cell when the RNA matrix is sparse with at most 15% non-zeros "
        "(our encoders then take sparse minibatches), else G, "
        "k = the peaks sampled per minibatch by MultiVAE's decoder when P > 2k "
        "(`n_sampled_peaks`). "
        "The formulas were checked against `torch.utils.flop_counter.FlopCounterMode` on one "
        "training step (exact for the dense layers; the counter does not see sparse products).",
        "",
    ]
    seen = set()
    for (name, _), ans in results.items():
        if name in seen or not ans["ok"]:
            continue
        seen.add(name)
        r = ans["result"]
        nnz = f" (nnz = {r['nnz_peaks_per_cell']:.0f})" if name in ("MultiVAE", "MULTIVI") else ""
        if r.get("nnz_genes_per_cell") is not None and name in ("MultiVAE", "PoissonVAE"):
            nnz += f" (G' = {r['nnz_genes_per_cell']:.0f})"
        if r.get("n_sampled_peaks") is not None and name == "MultiVAE":
            nnz += f" (k = {r['n_sampled_peaks']})"
        lines.append(f"- {name}: `{r['formula']}` = {r['train_flops'] / 1e6:.3f} MFLOP/cell{nnz}")
    return [*lines, ""]


# --------------------------------------------------------------------------- workload 2
_QUALITY_METRICS = (
    # key, label, which direction is better, trivial baseline key, digits
    ("foscttm", "FOSCTTM, RNA-only vs ATAC-only latent (held-out)", "lower", None, 3),
    (
        "auroc_atac_from_rna",
        "AUROC, accessibility imputed from RNA",
        "higher",
        "peak_frequency_auroc",
        3,
    ),
    (
        "auprc_atac_from_rna",
        "AUPRC, accessibility imputed from RNA",
        "higher",
        "peak_frequency_auprc",
        3,
    ),
    (
        "spearman_rna_from_atac",
        "mean per-gene Spearman, expression imputed from ATAC",
        "higher",
        None,
        3,
    ),
    (
        "time_knn_accuracy",
        "Time 15-NN accuracy, joint latent (5-fold CV)",
        "higher",
        "rna_pca_time_knn_accuracy",
        3,
    ),
    ("heldout_nll_rna", "held-out RNA reconstruction NLL (nats/cell)", "lower", None, 1),
    ("heldout_nll_atac", "held-out ATAC reconstruction NLL (nats/cell)", "lower", None, 1),
    ("heldout_elbo", "held-out ELBO (nats/cell)", "higher", None, 1),
    ("train_seconds", "training wall time (s)", "lower", None, 1),
    ("peak_rss_mib", "peak RSS of the run (MiB)", "lower", None, 0),
)


def workload_quality(cfg: Config, runner: Runner, report: dict) -> list[str]:
    common = {
        "task": "a549",
        "n_cells": cfg.a549_cells,
        "n_peaks": cfg.a549_peaks,
        "n_hidden": cfg.a549_hidden,
        "n_latent": 20,
        "n_layers": 1,
    }
    mv = runner.run(
        {**common, "model": "MULTIVI", "epochs": cfg.a549_multivi_epochs}, cfg.job_timeout
    )
    ours = runner.run(
        {
            **common,
            "model": "MultiVAE",
            "epochs": cfg.a549_ours_epochs,
            "checkpoints": list(cfg.a549_checkpoints),
        },
        cfg.job_timeout,
    )
    sub = (
        ""
        if cfg.a549_cells is None
        else f" (--quick: {cfg.a549_cells} cells, {cfg.a549_peaks} peaks)"
    )
    lines = [
        "## 2. Quality: A549 sci-CAR multiome (real data)",
        "",
        f"Data: `scgenvae.datasets.scicar_a549()`{sub}; the fixed 90/10 split of "
        "`benchmarks/a549_quality.py` (`split`), scored on the held-out 10% with its `evaluate` "
        "(ours) and the same metrics through MULTIVI's API (`benchmarks/_quality.py`). "
        f"Both: n_latent=20, n_hidden={cfg.a549_hidden}, 1 layer, batch size 128, no batch key. "
        f"MultiVAE {cfg.a549_ours_epochs} epochs (its defaults otherwise: lr 1e-3); MULTIVI "
        f"{cfg.a549_multivi_epochs} epochs, gene_likelihood='poisson' (its defaults otherwise: "
        "AdamW, lr 1e-4), both on all training cells without early stopping.",
        "",
    ]
    if not (mv["ok"] and ours["ok"]):
        for name, ans in (("MULTIVI", mv), ("MultiVAE", ours)):
            if not ans["ok"]:
                lines.append(f"- {name} run failed: {ans['error'].splitlines()[0]}")
        lines.append("")
    rm = mv["result"] if mv["ok"] else {}
    ro = ours["result"] if ours["ok"] else {}
    base = ro.get("baselines", {})
    rows = []
    for key, label, better, base_key, digits in _QUALITY_METRICS:
        a, b = ro.get(key), rm.get(key)
        diff = float(a) - float(b) if a is not None and b is not None else None
        if diff is None or diff != diff:
            winner = "n/a"
        elif diff == 0:
            winner = "tie"
        else:
            winner = "MultiVAE" if (diff < 0) == (better == "lower") else "MULTIVI"
        rows.append(
            [
                label,
                fmt(a, digits),
                fmt(b, digits),
                fmt(diff, digits),
                winner,
                fmt(base.get(base_key), digits) if base_key else "",
            ]
        )
    lines += table(QUALITY_COLUMNS, rows)
    quality = [
        (label, row[4])
        for (key, label, *_), row in zip(_QUALITY_METRICS, rows, strict=True)
        if key not in ("train_seconds", "peak_rss_mib")  # cost, not quality
    ]
    n_metrics = len(quality)
    compared = [(label, winner) for label, winner in quality if winner != "n/a"]
    worse = [label for label, winner in compared if winner == "MULTIVI"]
    report.setdefault("targets", []).append(
        [
            "MultiVAE quality at least MULTIVI's (A549 metrics)",
            "128",
            f"{len(compared) - len(worse)} of {n_metrics}",
            f"{n_metrics} of {n_metrics}",
            "met" if len(compared) == n_metrics and not worse else "not met",
            "worse on: " + "; ".join(worse) if worse else "worse on none",
        ]
    )
    report["targets"].append(
        target_row(
            "MultiVAE peak RSS / MULTIVI's (workload 2)",
            "128",
            ratio(ro.get("peak_rss_mib"), rm.get("peak_rss_mib")),
            1.0,
            at_most=True,
        )
    )
    lines += [
        "",
        "Trivial baselines: accessibility predicted by each peak's frequency in the training "
        "cells; Time from 15-NN on 20 PCs of log-normalised RNA. MULTIVI's accessibility is "
        "`get_normalized_accessibility(normalize_regions=True)` (probability times its region "
        "factor) on held-out cells with ATAC zeroed; without the region factor (its default) "
        f"AUROC is {fmt(rm.get('auroc_atac_from_rna_no_region_factors'), 3)} and AUPRC "
        f"{fmt(rm.get('auprc_atac_from_rna_no_region_factors'), 3)}. Expression from ATAC "
        "alone: `get_normalized_expression` with RNA zeroed. Held-out NLL: one posterior "
        "sample per cell (MULTIVI: `get_reconstruction_error`, ELBO `get_elbo`); MultiVAE's "
        "ATAC term also contains the density of the cell's log ATAC depth under p(l | z), "
        "which MULTIVI does not model.",
        "",
    ]
    if ro.get("checkpoints"):
        lines += _time_to_quality(ro, rm, report)
    report["quality"] = {"MultiVAE": ours, "MULTIVI": mv}
    return lines


def _time_to_quality(ro: dict, rm: dict, report: dict) -> list[str]:
    fos, auc = rm.get("foscttm"), rm.get("auroc_atac_from_rna")
    rows, first = [], None
    for c in ro["checkpoints"]:
        ok = (
            fos is not None
            and auc is not None
            and c["foscttm"] <= fos
            and c["auroc_atac_from_rna"] >= auc
        )
        if ok and first is None:
            first = c
        rows.append(
            [
                c["epoch"],
                fmt(c["train_seconds"], 1),
                fmt(c["foscttm"], 3),
                fmt(c["auroc_atac_from_rna"], 3),
                fmt(c["spearman_rna_from_atac"], 3),
                fmt(c["time_knn_accuracy"], 3),
                "yes" if ok else "no",
            ]
        )
    lines = [
        "Time to MULTIVI's final quality: MultiVAE evaluated at checkpoints of its one training "
        "run (train s = wall time since `train()` was called, minus evaluation time; note the "
        "KL warm-up spans the first quarter of the run, so early checkpoints are not fully "
        "regularised models).",
        "",
        *table(TTQ_COLUMNS, rows),
        "",
    ]
    mv_s = rm.get("train_seconds")
    report.setdefault("targets", []).append(
        target_row(
            "MultiVAE time to MULTIVI's final quality / MULTIVI's training time",
            "128",
            ratio(first["train_seconds"], mv_s) if first is not None else float("nan"),
            0.333,
            at_most=True,
        )
    )
    if first is not None:
        lines.append(
            f"MultiVAE first reached MULTIVI's final FOSCTTM ({fmt(fos, 3)}) and AUROC "
            f"({fmt(auc, 3)}) at epoch {first['epoch']}, after {fmt(first['train_seconds'], 1)} s "
            f"of training; MULTIVI trained {fmt(mv_s, 1)} s for its final quality "
            f"(MULTIVI time / MultiVAE time = {fmt(ratio(mv_s, first['train_seconds']))})."
        )
    else:
        lines.append(
            "MultiVAE did not reach both MULTIVI's final FOSCTTM and AUROC at any checkpoint."
        )
    return [*lines, ""]


# --------------------------------------------------------------------------- workload 3
def workload_fucci(
    cfg: Config, runner: Runner, script: Path, results: Path, report: dict
) -> list[str]:
    lines = ["## 3. Cell cycle: FUCCI iPSCs", ""]
    if not script.exists():
        report["fucci"] = {"status": "missing"}
        return [*lines, f"`benchmarks/{script.name}` does not exist yet: not run.", ""]
    ans = runner.run(
        {"task": "fucci", "script": str(script), "results": str(results), "quick": cfg.quick},
        cfg.job_timeout,
    )
    report["fucci"] = ans
    if not ans["ok"]:
        return [*lines, f"`{script.name}` failed: {ans['error'].splitlines()[0]}", ""]
    r = ans["result"]
    if r["status"] != "ok":
        return [*lines, r["note"], ""]
    # nest its headings under this section's
    body = [("#" + ln if ln.startswith("#") else ln) for ln in r["markdown"].strip().splitlines()]
    return [*lines, f"From `{script.name}` ({fmt(r.get('seconds'), 0)} s):", "", *body, ""]


# --------------------------------------------------------------------------- workload 4
def workload_scale(cfg: Config, runner: Runner, tmp: Path, env: dict, report: dict) -> list[str]:
    path = tmp / "scale"
    data = runner.run(
        {
            "task": "make_scale",
            "n_obs": cfg.scale_obs,
            "n_genes": cfg.scale_genes,
            "n_peaks": cfg.scale_peaks,
            "peak_density": cfg.scale_density,
            "path": str(path),
        },
        cfg.job_timeout,
    )
    lines = [f"## 4. Scale: {cfg.scale_obs:,} cells, one epoch", ""]
    if not data["ok"]:
        return [*lines, f"Data generation failed: {data['error'].splitlines()[0]}", ""]
    d = data["result"]
    lines += [
        f"Data: {d['n_obs']:,} cells x ({d['n_genes']:,} genes + {d['n_peaks']:,} peaks), held "
        f"sparse (CSR) throughout, from the memory-light generator `benchmarks/_sparse.py` "
        f"(RNA density {d['rna_density']:.1%}, ATAC density {d['atac_density']:.2%}; generated "
        f"in {d['seconds']:.0f} s, read back from .npy by each run). One epoch, batch size "
        f"{cfg.scale_batch_size}, n_latent={cfg.n_latent}, n_hidden={cfg.n_hidden}, "
        f"n_layers={cfg.n_layers}; each run is killed after {cfg.scale_timeout} s "
        "(loading and set-up included).",
        "",
    ]
    matmul = env.get("matmul_gflops", float("nan"))
    rows, res = [], {}
    for name in ("MultiVAE", "MULTIVI"):
        progress = tmp / f"scale_progress_{name}.json"
        ans = runner.run(
            {
                "task": "speed",
                "model": name,
                "data": "npy",
                "path": str(path),
                "batch_size": cfg.scale_batch_size,
                "epochs": 1,
                "n_hidden": cfg.n_hidden,
                "n_layers": cfg.n_layers,
                "n_latent": cfg.n_latent,
                "progress_file": str(progress),
            },
            cfg.scale_timeout,
        )
        res[name] = ans
        if ans["ok"]:
            r = ans["result"]
            x = speed_derived(r, matmul)
            r.update(x)
            rows.append(
                [
                    name,
                    "finished",
                    fmt(r["median_epoch_seconds"], 1),
                    fmt(x["cells_per_second"], 0),
                    fmt(r["peak_rss_mib"], 0),
                    fmt(r["rss_after_data_mib"], 0),
                    fmt(r["train_flops"] / 1e6, 2),
                    fmt(100 * x["fraction"], 1),
                ]
            )
            continue
        status = ans["error"].splitlines()[0]
        peak = "n/a"
        if progress.exists():
            p = json.loads(progress.read_text())
            if p.get("cells"):
                projected = p["seconds"] * cfg.scale_obs / p["cells"]
                status += (
                    f"; had trained {p['cells']:,} cells in {p['seconds']:.0f} s "
                    f"(~{projected:,.0f} s per epoch at that rate)"
                )
            if p.get("peak_rss_mib"):
                # the peak so far: a lower bound on the run's peak
                ans["peak_rss_lower_bound_mib"] = p["peak_rss_mib"]
                peak = f">= {fmt(p['peak_rss_mib'], 0)} (when stopped)"
        rows.append([name, status, "n/a", "n/a", peak, *["n/a"] * 3])
    lines += table(SCALE_COLUMNS, rows)
    ok = [res[n]["ok"] for n in ("MultiVAE", "MULTIVI")]
    if all(ok):
        a, b = res["MultiVAE"]["result"], res["MULTIVI"]["result"]
        lines += [
            "",
            f"MultiVAE / MULTIVI: cells/s ratio "
            f"{fmt(ratio(a['cells_per_second'], b['cells_per_second']))}, "
            f"peak RSS ratio {fmt(ratio(a['peak_rss_mib'], b['peak_rss_mib']))}.",
        ]
    ours_peak = res["MultiVAE"]["result"]["peak_rss_mib"] if ok[0] else float("nan")
    theirs = res["MULTIVI"]
    theirs_peak = (
        theirs["result"]["peak_rss_mib"] if ok[1] else theirs.get("peak_rss_lower_bound_mib")
    )
    report.setdefault("targets", []).append(
        target_row(
            "MultiVAE peak RSS / MULTIVI's (workload 4)"
            + ("" if ok[1] else "; MULTIVI's peak when it was stopped, a lower bound"),
            cfg.scale_batch_size,
            ratio(ours_peak, theirs_peak),
            1.0,
            at_most=True,
        )
    )
    report["targets"].append(
        target_row(
            f"MultiVAE peak RSS, {cfg.scale_obs:,} cells (workload 4)",
            cfg.scale_batch_size,
            ours_peak,
            SCALE_RSS_TARGET_MIB,
            "MiB",
            at_most=True,
        )
    )
    report["scale"] = res
    return [*lines, ""]


# --------------------------------------------------------------------------- main
def render(
    cfg: Config,
    machine: dict,
    env: dict,
    command: str,
    started: str,
    sections: list[list[str]],
    report: dict,
) -> str:
    """The whole RESULTS.md."""
    load_end = os.getloadavg()
    lines = [
        "# scgenvae benchmarks",
        "",
        f"Command: `{command}`"
        + (
            " (--quick: tiny sizes, not for quoting; all jobs share one worker process, so "
            "RSS figures are cumulative)"
            if cfg.quick
            else ""
        ),
        "",
        "| machine | |",
        "|---|---|",
        f"| date | {started} |",
        f"| CPU | {machine['cpu']} |",
        f"| cores | {machine['logical_cores']} logical, {machine['usable_cores']} usable by this process |",
        f"| memory | {fmt(machine['mem_gib'], 1)} GiB |",
        f"| torch threads | {env.get('torch_threads', 'n/a')} |",
        f"| load average (1 min) | {machine['load_start'][0]:.2f} at start, {load_end[0]:.2f} at end |",
        f"| versions | torch {env.get('torch', '?')}, scvi-tools {env.get('scvi', '?')}, lightning "
        f"{env.get('lightning', '?')}, scgenvae {env.get('scgenvae', '?')}, Python {env.get('python', '?')} |",
        f"| matmul reference | {fmt(env.get('matmul_gflops'), 1)} GFLOP/s (float32 "
        f"{env.get('matmul_n', 1024)}x{env.get('matmul_n', 1024)} @ {env.get('matmul_n', 1024)}x"
        f"{env.get('matmul_n', 1024)}, median of 20, same thread count) |",
        "",
        "A load average above the core count means other processes shared the CPU during the "
        "run: absolute figures then understate the machine, while ours/theirs ratios, measured "
        "in the same run with interleaved jobs, are the figures to quote.",
        "",
    ]
    if report.get("targets"):
        lines += ["## Targets", ""]
        lines += table(TARGET_COLUMNS, report["targets"])
        lines.append("")
    for section in sections:
        lines += section
    lines += [
        "Measured outside this harness (with their own commands and dates): the A549 settings "
        "sweep, the discrete latent against leiden and the out-of-core runs at 1,000,000 cells, "
        "in `benchmarks/RESULTS_other.md`.",
    ]
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", default=str(HERE / "RESULTS.md"), help="markdown file to write"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1-3 epochs (smoke test)")
    parser.add_argument("--workloads", default="1,2,3,4", help="comma-separated subset of 1,2,3,4")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in the workers (default 1: per-core efficiency, steady on a shared "
        "machine; 0 = torch's default)",
    )
    parser.add_argument(
        "--scale-timeout", type=int, default=None, help="seconds per workload-4 run"
    )
    parser.add_argument(
        "--a549-epochs",
        default=None,
        metavar="MULTIVI,OURS",
        help="epochs of MULTIVI and MultiVAE on A549 (default 100,60)",
    )
    parser.add_argument("--fucci-script", default=str(FUCCI_SCRIPT), help=argparse.SUPPRESS)
    parser.add_argument("--fucci-results", default=str(FUCCI_RESULTS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the selected workloads and write the markdown report; returns an exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        workloads = sorted({int(w) for w in args.workloads.split(",") if w.strip()})
    except ValueError:
        workloads = []
    if not workloads or not set(workloads) <= {1, 2, 3, 4}:
        msg = f"--workloads must be a comma-separated subset of 1,2,3,4, got {args.workloads!r}"
        raise SystemExit(msg)
    cfg = QUICK if args.quick else Config()
    if args.scale_timeout is not None:
        cfg = dataclasses.replace(cfg, scale_timeout=args.scale_timeout)
    if args.a549_epochs:
        mv_epochs, ours_epochs = (int(e) for e in args.a549_epochs.split(","))
        cfg = dataclasses.replace(cfg, a549_multivi_epochs=mv_epochs, a549_ours_epochs=ours_epochs)
    command = "python benchmarks/run.py " + " ".join(argv)
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    machine = machine_info()
    tmp = Path(tempfile.mkdtemp(prefix="scgenvae-bench-"))
    runner = Runner(tmp, threads=args.threads, shared=cfg.shared_worker)
    report: dict = {}
    sections: list[list[str]] = []
    t0 = time.perf_counter()
    try:
        env_ans = runner.run({"task": "env"}, cfg.job_timeout)
        env = env_ans["result"] if env_ans["ok"] else {}
        if 1 in workloads:
            sections.append(workload_speed(cfg, runner, tmp, env, report))
        if 2 in workloads:
            sections.append(workload_quality(cfg, runner, report))
        if 3 in workloads:
            sections.append(
                workload_fucci(
                    cfg, runner, Path(args.fucci_script), Path(args.fucci_results), report
                )
            )
        if 4 in workloads:
            sections.append(workload_scale(cfg, runner, tmp, env, report))
    except BaseException:
        runner.close(kill=True)
        raise
    finally:
        runner.close()
        shutil.rmtree(tmp, ignore_errors=True)
    sections.append([f"Total harness wall time: {time.perf_counter() - t0:.0f} s.", ""])
    text = render(cfg, machine, env, command, started, sections, report)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="[bench %(asctime)s] %(message)s", datefmt="%H:%M:%S"
    )
    sys.exit(main())
