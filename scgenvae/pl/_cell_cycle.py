"""Figures for the cell-cycle toolkit: they return the Figure and never save it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TWO_PI = 2 * np.pi
PHASE_COLORS = {"G1": "#4daf4a", "S": "#377eb8", "G2M": "#e41a1c"}


def _figure(figsize):
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize, layout="constrained")


def _angle_axis(ax: Axes, *, label: str = "cell-cycle angle") -> None:
    ax.set_xlim(0, TWO_PI)
    ax.set_xticks(np.arange(5) * np.pi / 2)
    ax.set_xticklabels(["0", r"$\pi/2$", r"$\pi$", r"$3\pi/2$", r"$2\pi$"])
    ax.set_xlabel(label)


def _details(adata, key: str) -> dict:
    if key not in adata.uns or "rotation" not in adata.uns[key]:
        msg = f"adata.uns[{key!r}] not found; run `scgenvae.tl.align_cell_cycle(adata)` first."
        raise KeyError(msg)
    return adata.uns[key]


def _phase_bands(ax: Axes, details: dict, *, alpha: float = 0.12) -> None:
    """Shade the G1/S/G2M arcs of the smoothed scores along the angle axis."""
    from scgenvae._markers import phase_of as _phase_of

    prof = details.get("profile")
    if prof is None:
        return
    grid = np.asarray(prof["angle"], dtype=np.float64)
    fine = np.linspace(0, TWO_PI, 361)
    s = np.interp(fine, grid, np.asarray(prof["S_score"]), period=TWO_PI)
    g = np.interp(fine, grid, np.asarray(prof["G2M_score"]), period=TWO_PI)
    labels = _phase_of(s, g)
    start = 0
    for i in range(1, len(fine) + 1):
        if i == len(fine) or labels[i] != labels[start]:
            ax.axvspan(
                fine[start],
                fine[min(i, len(fine) - 1)],
                color=PHASE_COLORS[labels[start]],
                alpha=alpha,
                lw=0,
            )
            start = i


def _smooth(angle: np.ndarray, values: np.ndarray, bandwidth: float, n: int = 200):
    from scgenvae._circular import smooth_profile as _smooth_profile

    grid = np.linspace(0, TWO_PI, n)
    ok = np.isfinite(angle) & np.isfinite(values)
    return grid, _smooth_profile(angle[ok], values[ok], grid, bandwidth)


def cell_cycle(
    adata: AnnData,
    *,
    key: str = "cell_cycle",
    basis: str | None = None,
    cmap: str = "twilight",
    show_scores: bool = True,
    point_size: float | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """The cell cycle found by :func:`~scgenvae.tl.align_cell_cycle`.

    Left: the cells in the cycle plane (the first two axes of ``obsm[use_rep + '_cycle']``),
    or in ``obsm[basis]``, coloured by the angle with a cyclic colour map, with the fitted
    ellipse, the direction of travel and the G1/S origin. Right (``show_scores``): the S and
    G2/M scores against the angle, their smoothed profiles and the phase arcs.

    Parameters
    ----------
    adata
        Annotated by :func:`~scgenvae.tl.align_cell_cycle`.
    key
        Its ``key_added``.
    basis
        obsm key of another 2-D embedding (e.g. ``"X_umap"``) to colour instead.
    cmap
        A cyclic colour map.
    show_scores
        Add the scores-versus-angle panel.
    point_size
        Marker size (default from the number of cells).
    figsize
        Figure size in inches.

    Returns
    -------
    The :class:`~matplotlib.figure.Figure`.
    """
    details = _details(adata, key)
    params = details.get("params", {})
    angle = adata.obs[f"{key}_angle"].to_numpy(dtype=np.float64)
    size = point_size if point_size is not None else max(2.0, min(30.0, 3000.0 / adata.n_obs))
    fig = _figure(figsize or ((10, 4.2) if show_scores else (5, 4.2)))
    axes = fig.subplots(1, 2 if show_scores else 1, squeeze=False)[0]
    ax = axes[0]
    if basis is None:
        coords = np.asarray(adata.obsm[params["obsm_key"]])[:, :2]
        xlabel, ylabel = "cycle axis 1", "cycle axis 2"
    else:
        if basis not in adata.obsm:
            msg = (
                f"`basis={basis!r}` not found in adata.obsm; available: {list(adata.obsm)}. "
                "Compute it first (e.g. `sc.tl.umap(adata)`) or pass `basis=None`."
            )
            raise KeyError(msg)
        coords = np.asarray(adata.obsm[basis])[:, :2]
        xlabel, ylabel = f"{basis} 1", f"{basis} 2"
    order = np.argsort(np.nan_to_num(angle, nan=-1.0))
    sc = ax.scatter(
        coords[order, 0],
        coords[order, 1],
        c=angle[order],
        cmap=cmap,
        vmin=0,
        vmax=TWO_PI,
        s=size,
        linewidths=0,
        rasterized=adata.n_obs > 5000,
    )
    if basis is None:
        rot = np.asarray(details["rotation"])[:, :2]
        t = np.linspace(0, TWO_PI, 200)
        offset = np.asarray(details["ellipse_center"]) - np.asarray(details["center"])
        ell = (
            offset
            + np.outer(np.cos(t), details["ellipse_cos"])
            + np.outer(np.sin(t), details["ellipse_sin"])
        ) @ rot
        ax.plot(ell[:, 0], ell[:, 1], color="0.2", lw=1.2)
        k = 12
        ax.annotate(
            "",
            xy=ell[k + 3],
            xytext=ell[k],
            arrowprops={"arrowstyle": "->", "color": "0.2", "lw": 1.5},
        )
        for name, a in (("G1/S", 0.0), ("S", details["s_peak"]), ("G2/M", details["g2m_peak"])):
            p = (
                offset + np.cos(a) * details["ellipse_cos"] + np.sin(a) * details["ellipse_sin"]
            ) @ rot
            ax.plot(*p, "o", color="0.1", ms=4)
            ax.annotate(name, p, textcoords="offset points", xytext=(5, 5), fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks([])
    ax.set_yticks([])
    cb = fig.colorbar(sc, ax=ax, ticks=np.arange(5) * np.pi / 2, shrink=0.8)
    cb.ax.set_yticklabels(["0", r"$\pi/2$", r"$\pi$", r"$3\pi/2$", r"$2\pi$"])
    cb.set_label("cell-cycle angle")
    ax.set_title("cell-cycle plane")
    if show_scores:
        ax2 = axes[1]
        _phase_bands(ax2, details)
        s_key, g_key = (
            params.get("s_score_key", "S_score"),
            params.get("g2m_score_key", "G2M_score"),
        )
        bw = float(params.get("bandwidth", np.pi / 8))
        for col, name, color in (
            (s_key, "S", PHASE_COLORS["S"]),
            (g_key, "G2/M", PHASE_COLORS["G2M"]),
        ):
            if col not in adata.obs:
                continue
            y = adata.obs[col].to_numpy(dtype=np.float64)
            ax2.scatter(angle, y, s=size * 0.6, color=color, alpha=0.35, linewidths=0)
            gx, gy = _smooth(angle, y, bw)
            ax2.plot(gx, gy, color=color, lw=2, label=f"{name} score")
        _angle_axis(ax2)
        ax2.set_ylabel("score")
        ax2.legend(frameon=False, loc="upper right")
        ax2.set_title("marker scores along the cycle")
    return fig


def _expression(adata: AnnData, genes: Sequence[str], gene_symbols: str | None, layer: str | None):
    from scgenvae._anndata import looks_like_counts as _looks_like_counts
    from scgenvae._anndata import matrix_of as _matrix
    from scgenvae._anndata import symbol_index as _symbol_index

    lookup = _symbol_index(adata, gene_symbols)
    missing = [g for g in genes if g not in lookup.index]
    if missing:
        where = "var_names" if gene_symbols is None else f"var[{gene_symbols!r}]"
        msg = f"genes not found in {where}: {missing}."
        raise KeyError(msg)
    x = _matrix(adata, layer)
    counts = _looks_like_counts(x)
    cols = adata.var_names.get_indexer(lookup[list(genes)].to_numpy())
    sub = x[:, cols]
    sub = np.asarray(sub.toarray() if sparse.issparse(sub) else sub, dtype=np.float64)
    if counts:
        lib = np.asarray(x.sum(axis=1), dtype=np.float64).reshape(-1, 1)
        sub = np.log1p(sub / np.where(lib > 0, lib, 1.0) * 1e4)
        label = "log1p(counts per 10k)"
    else:
        label = "expression"
    return sub, label


def angle_vs_genes(
    adata: AnnData,
    genes: Sequence[str],
    *,
    angle_key: str = "cell_cycle_angle",
    phase_key: str | None = "cell_cycle_phase",
    gene_symbols: str | None = None,
    layer: str | None = None,
    bandwidth: float = np.pi / 8,
    ncols: int = 4,
    point_size: float | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Expression of ``genes`` against the cell-cycle angle, one panel per gene.

    Counts are shown as ``log1p`` of counts per 10,000; log-normalised input as it is. Cells
    are coloured by phase and a kernel-smoothed curve (von Mises kernel, ``bandwidth``)
    follows the mean.

    Parameters
    ----------
    adata
        With ``obs[angle_key]`` (from :func:`~scgenvae.tl.align_cell_cycle`).
    genes
        Gene names (var_names, or symbols in ``var[gene_symbols]``).
    angle_key, phase_key
        obs columns of the angle and of the phase (``None``: no phase colours).
    gene_symbols
        var column with symbols.
    layer
        Layer to read (``None``: ``.X``).
    bandwidth
        Smoothing width in radians.
    ncols
        Panels per row.
    point_size
        Marker size.
    figsize
        Figure size in inches.

    Returns
    -------
    The :class:`~matplotlib.figure.Figure`.
    """
    genes = [genes] if isinstance(genes, str) else list(genes)
    if not genes:
        msg = "`genes` is empty."
        raise ValueError(msg)
    if angle_key not in adata.obs:
        msg = f"obs[{angle_key!r}] not found; run `scgenvae.tl.align_cell_cycle(adata)` first."
        raise KeyError(msg)
    angle = adata.obs[angle_key].to_numpy(dtype=np.float64)
    expr, ylabel = _expression(adata, genes, gene_symbols, layer)
    ncols = min(ncols, len(genes))
    nrows = int(np.ceil(len(genes) / ncols))
    fig = _figure(figsize or (3.2 * ncols, 2.6 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    size = point_size if point_size is not None else max(2.0, min(20.0, 2000.0 / adata.n_obs))
    if phase_key is not None and phase_key in adata.obs:
        phases = adata.obs[phase_key].astype(str).to_numpy()
        colors = np.array([PHASE_COLORS.get(p, "0.6") for p in phases], dtype=object)
    else:
        colors = np.full(adata.n_obs, "0.4", dtype=object)
    for i, gene in enumerate(genes):
        ax = axes[i]
        ax.scatter(angle, expr[:, i], s=size, c=list(colors), alpha=0.5, linewidths=0)
        gx, gy = _smooth(angle, expr[:, i], bandwidth)
        ax.plot(gx, gy, color="k", lw=1.8)
        _angle_axis(ax, label="angle")
        ax.set_title(gene)
        if i % ncols == 0:
            ax.set_ylabel(ylabel)
    for ax in axes[len(genes) :]:
        ax.set_visible(False)
    if phase_key is not None and phase_key in adata.obs:
        from matplotlib.patches import Patch

        handles = [Patch(color=c, label=p) for p, c in PHASE_COLORS.items()]
        fig.legend(handles=handles, loc="outside right center", frameon=False, title="phase")
    return fig


def traversal_heatmap(
    traversal: AnnData,
    *,
    genes: Sequence[str] | None = None,
    gene_symbols: str | None = None,
    modality: str | None = None,
    n_top: int = 30,
    standard_scale: str | None = "var",
    sort_by_peak: bool = True,
    cmap: str = "viridis",
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Heatmap of decoded features along a traversal (steps left to right, features as rows).

    Parameters
    ----------
    traversal
        Output of :func:`~scgenvae.tl.latent_traversal`.
    genes
        Features to show (names, or symbols in ``var[gene_symbols]``); default the ``n_top``
        with the largest relative change along the traversal.
    gene_symbols
        var column with symbols, also used as row labels.
    modality
        Restrict to one modality (``var["modality"]``).
    n_top
        Number of features when ``genes`` is None.
    standard_scale
        ``"var"``: scale each feature to [0, 1]; ``None``: the decoded values.
    sort_by_peak
        Order rows by the step of their maximum (a cascade for the cell cycle).
    cmap
        Colour map.
    figsize
        Figure size in inches.

    Returns
    -------
    The :class:`~matplotlib.figure.Figure`.
    """
    data = traversal
    if modality is not None:
        if "modality" not in data.var:
            msg = "the traversal has no var['modality']; pass `modality=None`."
            raise KeyError(msg)
        keep = (data.var["modality"] == modality).to_numpy()
        if not keep.any():
            msg = (
                f"`modality={modality!r}` has no features in the traversal; available: "
                f"{sorted(set(data.var['modality'].astype(str)))}."
            )
            raise ValueError(msg)
        data = data[:, keep]
    x = data.X.toarray() if sparse.issparse(data.X) else data.X
    x = np.asarray(x, dtype=np.float64)
    labels = (
        data.var[gene_symbols].astype(str).to_numpy()
        if gene_symbols is not None
        else data.var_names.astype(str).to_numpy()
    )
    if genes is not None:
        genes = [genes] if isinstance(genes, str) else list(genes)
        pos = {g: i for i, g in enumerate(labels)}
        missing = [g for g in genes if g not in pos]
        if missing:
            msg = f"features not in the traversal: {missing}."
            raise KeyError(msg)
        idx = np.array([pos[g] for g in genes])
    else:
        change = (x.max(0) - x.min(0)) / np.maximum(x.mean(0), 1e-12)
        idx = np.argsort(-change)[: min(n_top, x.shape[1])]
    m = x[:, idx]
    if standard_scale == "var":
        lo, hi = m.min(0), m.max(0)
        m = (m - lo) / np.where(hi > lo, hi - lo, 1.0)
    elif standard_scale is not None:
        msg = f"`standard_scale` must be 'var' or None, got {standard_scale!r}."
        raise ValueError(msg)
    if sort_by_peak:
        order = np.argsort(m.argmax(0), kind="stable")
        m, idx = m[:, order], idx[order]
    has_angle = "cell_cycle_angle" in data.obs
    has_phase = "cell_cycle_phase" in data.obs
    height = max(2.5, 0.18 * len(idx) + 1.2)
    fig = _figure(figsize or (7, height))
    if has_phase:
        ax_ph, ax = fig.subplots(2, 1, height_ratios=[0.6, max(4.0, len(idx) * 0.5)], sharex=True)
        phases = data.obs["cell_cycle_phase"].astype(str).to_numpy()
        from matplotlib.colors import ListedColormap

        keys = list(PHASE_COLORS)
        codes = np.array([keys.index(p) if p in keys else -1 for p in phases], dtype=float)
        codes[codes < 0] = np.nan
        ax_ph.imshow(
            codes[None, :],
            aspect="auto",
            cmap=ListedColormap(list(PHASE_COLORS.values())),
            vmin=0,
            vmax=len(keys) - 1,
            interpolation="nearest",
        )
        ax_ph.set_yticks([0])
        ax_ph.set_yticklabels(["phase"])
        ax_ph.tick_params(bottom=False, labelbottom=False)
    else:
        ax = fig.subplots(1, 1)
    im = ax.imshow(m.T, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_yticks(np.arange(len(idx)))
    ax.set_yticklabels(labels[idx], fontsize=8)
    n = data.n_obs
    if has_angle:
        ang = data.obs["cell_cycle_angle"].to_numpy(dtype=np.float64)
        ticks = [int(np.argmin(np.abs(ang - t))) for t in np.arange(4) * np.pi / 2]
        ax.set_xticks(ticks)
        ax.set_xticklabels(["0", r"$\pi/2$", r"$\pi$", r"$3\pi/2$"])
        ax.set_xlabel("cell-cycle angle")
    elif "latent_value" in data.obs:
        vals = data.obs["latent_value"].to_numpy(dtype=np.float64)
        ticks = np.linspace(0, n - 1, 5).round().astype(int)
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{vals[t]:.1f}" for t in ticks])
        along = data.uns.get("latent_traversal", {}).get("params", {}).get("along", "")
        ax.set_xlabel(f"latent dimension {along}")
    else:
        ax.set_xlabel("step")
    fig.colorbar(
        im, ax=ax, shrink=0.6, label="scaled decoded value" if standard_scale else "decoded value"
    )
    return fig
