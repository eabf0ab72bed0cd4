"""Find the cell-cycle plane of a representation and turn it into an oriented phase angle."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from scgenvae._circular import TWO_PI, circular_distance, circular_mean, wrap_angle
from scgenvae._circular import smooth_profile as _smooth_profile
from scgenvae._markers import phase_of as _phase_of

from ._score import PHASES, score_cell_cycle

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData
    from numpy.random import Generator, SeedSequence

    SeedLike = int | np.integer | SeedSequence | None
    RNGLike = Generator

logger = logging.getLogger(__name__)

_N_GRID = 360
_N_PROFILE = 72


# ----------------------------------------------------------------------------------------------
# representation and scores
# ----------------------------------------------------------------------------------------------
def _is_mudata(data) -> bool:
    try:
        from mudata import MuData
    except ImportError:  # pragma: no cover - mudata is a dependency
        return False
    return isinstance(data, MuData)


def _get_rep(data, use_rep: str, model) -> np.ndarray:
    if use_rep in data.obsm:
        rep = data.obsm[use_rep]
        rep = rep.to_numpy() if isinstance(rep, pd.DataFrame) else np.asarray(rep)
    elif model is not None:
        rep = np.asarray(model.get_latent_representation(data))
    else:
        msg = (
            f"`use_rep={use_rep!r}` not found in .obsm (available: {list(data.obsm)}); "
            "compute it first (e.g. `model.export_latent(adata)` or `sc.pp.pca(adata)`) or "
            "pass `model=` to compute the latent representation."
        )
        raise KeyError(msg)
    rep = np.asarray(rep, dtype=np.float64)
    if rep.ndim != 2 or rep.shape[0] != data.n_obs:
        msg = f"obsm[{use_rep!r}] must be cells x dimensions, got shape {rep.shape}."
        raise ValueError(msg)
    if rep.shape[1] < 2:
        msg = f"obsm[{use_rep!r}] has {rep.shape[1]} dimension; a cycle needs at least 2."
        raise ValueError(msg)
    return rep


def _get_scores(
    data,
    *,
    s_score_key: str,
    g2m_score_key: str,
    modality: str,
    score_kwargs: dict[str, Any],
    rng,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """S and G2/M scores aligned with ``data``'s cells; computed when missing.

    Nothing is written here: the caller writes computed scores once the fit has succeeded, so
    a failing call leaves the user's object as it was.
    """
    obs = data.obs
    if s_score_key in obs and g2m_score_key in obs:
        s = pd.to_numeric(obs[s_score_key], errors="coerce").to_numpy(dtype=np.float64)
        g = pd.to_numeric(obs[g2m_score_key], errors="coerce").to_numpy(dtype=np.float64)
        return s, g, False
    if _is_mudata(data):
        if modality not in data.mod:
            msg = (
                f"no {s_score_key!r}/{g2m_score_key!r} in mdata.obs and `modality={modality!r}` "
                f"is not in mdata.mod ({list(data.mod)}); score the cells first."
            )
            raise KeyError(msg)
        scored = score_cell_cycle(data.mod[modality], copy=True, rng=rng, **score_kwargs)
        cols = scored.obs[["S_score", "G2M_score"]].reindex(data.obs_names)
    else:
        scored = score_cell_cycle(data, copy=True, rng=rng, **score_kwargs)
        cols = scored.obs[["S_score", "G2M_score"]]
    s = cols["S_score"].to_numpy(dtype=np.float64)
    g = cols["G2M_score"].to_numpy(dtype=np.float64)
    return s, g, True


def _get_library(data, library_key: str | None, modality: str, layer: str | None):
    """Total counts per cell (aligned with ``data``), or None when no counts are at hand."""
    from ._score import _looks_like_counts

    if library_key is not None:
        if library_key not in data.obs:
            msg = f"`library_key={library_key!r}` not found in obs; available: {list(data.obs)}."
            raise KeyError(msg)
        return pd.to_numeric(data.obs[library_key], errors="coerce").to_numpy(dtype=np.float64)
    src = data.mod.get(modality) if _is_mudata(data) else data
    if src is None or src.n_vars == 0:
        return None
    x = src.X if layer is None else src.layers.get(layer)
    if (x is None or not _looks_like_counts(x)) and layer is None:
        # log-normalised .X: the raw counts are often kept in layers["counts"]
        x = src.layers.get("counts")
    if x is None or not _looks_like_counts(x):
        return None
    lib = pd.Series(np.asarray(x.sum(axis=1), dtype=np.float64).ravel(), index=src.obs_names)
    return lib.reindex(data.obs_names).to_numpy() if src is not data else lib.to_numpy()


# ----------------------------------------------------------------------------------------------
# the ellipse ("circular principal component")
# ----------------------------------------------------------------------------------------------
def _harmonics(angle: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(angle), np.cos(angle), np.sin(angle)], axis=1)


def _project_on_ellipse(p: np.ndarray, ax_cos: np.ndarray, ax_sin: np.ndarray) -> np.ndarray:
    """Parameter of the nearest point of ``ax_cos cos(phi) + ax_sin sin(phi)`` to each row of ``p``.

    ``p`` holds in-plane coordinates (n x 2) relative to the centre; a 1-degree grid search is
    refined by parabolic interpolation.
    """
    grid = np.linspace(0.0, TWO_PI, _N_GRID, endpoint=False)
    pts = np.outer(np.cos(grid), ax_cos) + np.outer(np.sin(grid), ax_sin)  # K x 2
    norm2 = (pts**2).sum(1)
    out = np.empty(len(p))
    for start in range(0, len(p), 8192):
        block = p[start : start + 8192]
        d = norm2[None, :] - 2.0 * block @ pts.T  # squared distance up to |p|^2
        k = d.argmin(1)
        rows = np.arange(len(block))
        dm, d0, dp = d[rows, (k - 1) % _N_GRID], d[rows, k], d[rows, (k + 1) % _N_GRID]
        den = dm - 2.0 * d0 + dp
        safe = np.where(den > 0, den, 1.0)
        offset = np.where(den > 0, 0.5 * (dm - dp) / safe, 0.0)
        out[start : start + 8192] = grid[k] + np.clip(offset, -1.0, 1.0) * TWO_PI / _N_GRID
    return wrap_angle(out)


def _plane_basis(ax_cos: np.ndarray, ax_sin: np.ndarray) -> np.ndarray:
    m = np.stack([ax_cos, ax_sin], axis=1)
    q, r = np.linalg.qr(m)
    if abs(r[1, 1]) < 1e-10 * max(abs(r[0, 0]), 1e-300):
        msg = (
            "the representation shows no cycle: the fitted ellipse collapsed to a line. "
            "Check that the cells cycle and that `use_rep` carries the cell cycle."
        )
        raise ValueError(msg)
    return q


def _fit_ellipse(
    x: np.ndarray, angle: np.ndarray, *, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Alternate least squares for ``x ~ c + a cos(phi) + b sin(phi)`` and nearest-point ``phi``.

    Returns the angles, the coefficients (3 x d: c, a, b), the iterations run and whether
    the median angle change fell below ``tol``.
    """
    coef = np.linalg.lstsq(_harmonics(angle), x, rcond=None)[0]
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is reported
        q = _plane_basis(coef[1], coef[2])
        p = (x - coef[0]) @ q
        new = _project_on_ellipse(p, q.T @ coef[1], q.T @ coef[2])
        change = float(np.median(circular_distance(new, angle)))
        angle = new
        coef = np.linalg.lstsq(_harmonics(angle), x, rcond=None)[0]
        if change < tol:
            converged = True
            break
    return angle, coef, n_iter, converged


def _initial_angle(x: np.ndarray, s: np.ndarray, g: np.ndarray, init: str) -> np.ndarray:
    """Starting angle: the marker-predictive plane (``"markers"``) or the top two PCs (``"pca"``)."""
    if init == "markers":
        y = np.stack([_robust_z(s), _robust_z(g)], axis=1)
        lam = 1e-3 * np.trace(x.T @ x) / x.shape[1]
        w = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)  # d x 2
        w = w / np.maximum(np.linalg.norm(w, axis=0, keepdims=True), 1e-300)
        # S and G2/M often peak half a cycle apart: then both directions nearly coincide and
        # the plane is completed with the leading PC of the cells orthogonal to the first
        # (the direction of most variance there, not the PC least aligned with the first)
        q, r = np.linalg.qr(w)
        if abs(r[1, 1]) < 0.3:
            first = q[:, 0]
            _, _, vt = np.linalg.svd(x - np.outer(x @ first, first), full_matrices=False)
            q = np.stack([first, vt[0]], axis=1)
    else:
        q = np.linalg.svd(x, full_matrices=False)[2][:2].T
    p = x @ q
    p = p / np.maximum(p.std(0), 1e-300)
    return wrap_angle(np.arctan2(p[:, 1], p[:, 0]))


# ----------------------------------------------------------------------------------------------
# orientation, origin and phases from the marker scores
# ----------------------------------------------------------------------------------------------
def _robust_z(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    sd = np.nanstd(v)
    return (v - np.nanmedian(v)) / (sd if sd > 0 else 1.0)


def marker_peaks(
    angle: np.ndarray, s_score: np.ndarray, g2m_score: np.ndarray, *, quantile: float = 0.25
) -> tuple[float, float]:
    """Angles where the S-phase and the G2/M markers peak.

    Each peak is the circular mean angle of the ``quantile`` of cells with the highest score.

    Parameters
    ----------
    angle
        Angles in radians.
    s_score, g2m_score
        S and G2/M scores of the same cells.
    quantile
        Fraction of cells used for each peak.

    Returns
    -------
    ``(s_peak, g2m_peak)`` in ``[0, 2*pi)``.
    """
    s_score, g2m_score = np.asarray(s_score), np.asarray(g2m_score)
    return (
        circular_mean(angle[s_score >= np.quantile(s_score, 1.0 - quantile)]),
        circular_mean(angle[g2m_score >= np.quantile(g2m_score, 1.0 - quantile)]),
    )


_N_BOOT = 200
_CONFIDENCE_LEVEL = 0.95
_OPPOSITE_MARGIN = np.pi / 4


def _cycle_vectors(angle: np.ndarray, values: list[np.ndarray]) -> np.ndarray:
    """First-harmonic correlation vectors of ``values`` along ``angle`` (k x 2).

    Each standardised value is regressed on the centred and *whitened* ``(cos, sin)`` of the
    angle: the vector points to the angle where the value peaks and its length is the
    multiple correlation with ``(cos, sin)`` (at most 1), however unevenly the cells are
    spread along the angle. Whitening is a positive-definite map, so it keeps which way the
    angle turns.
    """
    h = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    h = h - h.mean(0)
    cov = h.T @ h / len(h)
    evals, evecs = np.linalg.eigh(cov)
    if evals[0] <= 1e-12 * max(evals[1], 1e-300):
        return np.zeros((len(values), 2))
    hw = h @ (evecs / np.sqrt(evals)) @ evecs.T
    out = np.empty((len(values), 2))
    for i, v in enumerate(values):
        v = v - v.mean()
        sd = v.std()
        out[i] = hw.T @ v / (len(v) * sd) if sd > 0 else 0.0
    return out


def _signed_area(vectors: np.ndarray, *, with_library: bool) -> float:
    """Twice the signed area of the triangle (G1 vertex, S peak, G2/M peak)."""
    v_s, v_g = vectors[0], vectors[1]
    v_1 = vectors[2] if with_library else np.zeros(2)
    a, b = v_s - v_1, v_g - v_1
    return float(a[0] * b[1] - a[1] * b[0])


def _direction_details(
    angle: np.ndarray,
    s_score: np.ndarray,
    g2m_score: np.ndarray,
    library: np.ndarray | None,
    *,
    n_boot: int = _N_BOOT,
    rng: SeedLike | RNGLike | None = 0,
) -> dict[str, Any]:
    """The orientation rule of :func:`cell_cycle_direction` with its bootstrap confidence."""
    angle = np.asarray(angle, dtype=np.float64)
    values = [np.asarray(s_score, dtype=np.float64), np.asarray(g2m_score, dtype=np.float64)]
    with_library = False
    if library is not None:
        lib = np.log(np.maximum(np.asarray(library, dtype=np.float64), 1e-12))
        if np.ptp(lib) > 0:  # exact: the std of equal floats can round above 0
            values.append(-lib)  # the G1 vertex: the trough of the library size
            with_library = True
    vectors = _cycle_vectors(angle, values)
    area = _signed_area(vectors, with_library=with_library)
    sign = 1 if area >= 0 else -1
    gen = np.random.default_rng(rng)
    n = len(angle)
    agree = 0
    for _ in range(n_boot):
        idx = gen.integers(0, n, n)
        boot = _cycle_vectors(angle[idx], [v[idx] for v in values])
        agree += (_signed_area(boot, with_library=with_library) >= 0) == (sign > 0)
    confidence = agree / n_boot if n_boot > 0 else float("nan")
    peaks = np.arctan2(vectors[:, 1], vectors[:, 0])
    gap = float(wrap_angle(sign * (peaks[1] - peaks[0]))[()])
    near_opposite = abs(gap - np.pi) < _OPPOSITE_MARGIN
    weak = bool(confidence < _CONFIDENCE_LEVEL or (near_opposite and not with_library))
    return {
        "direction": sign,
        "evidence": abs(area),
        "confidence": float(confidence),
        "weak": weak,
        "library_used": with_library,
        "peak_gap": gap,
        "vectors": vectors,
    }


def cell_cycle_direction(
    angle: np.ndarray,
    s_score: np.ndarray,
    g2m_score: np.ndarray,
    *,
    library: np.ndarray | None = None,
) -> tuple[int, float]:
    """Whether ``angle`` runs in the biological direction G1 -> S -> G2/M.

    Three cues are placed along the angle as first-harmonic correlation vectors (each
    standardised signal regressed on the centred, whitened ``cos``/``sin`` of the angle: the
    vector points to where the signal peaks, its length is the correlation, at most 1):
    the S-marker peak ``v_S``, the G2/M-marker peak ``v_G2M`` and, when ``library`` is
    given, the trough of the log library size ``v_G1`` (a cell's mRNA content grows through
    S and G2 and halves at division, so it is smallest in early G1). The angle runs forward
    when the triangle ``v_G1 -> v_S -> v_G2M`` turns counterclockwise,
    ``cross(v_S - v_G1, v_G2M - v_G1) > 0``.

    Without ``library`` (``v_G1 = 0``) the rule says: going forward from the S peak the G2/M
    peak comes within less than half a cycle. That holds only when G1 is long. In cells with
    a short G1 (stem cells; the FUCCI iPSCs bundled here, where the two peaks lie 175-190
    degrees apart along the reporter angle) the two peaks are nearly opposite and the marker
    order alone does not tell the direction; the library trough does.

    Whitening makes the vectors independent of how unevenly the cells are spread along the
    angle: a fitted angle that bunches the cells at two poles (a common result on a PCA of
    log-normalised expression) would otherwise pull the peaks onto one axis.

    Parameters
    ----------
    angle
        Angles in radians.
    s_score, g2m_score
        S and G2/M scores of the same cells.
    library
        Total counts per cell (or ``None``).

    Returns
    -------
    ``(direction, evidence)``: ``+1`` if the angle runs G1 -> S -> G2/M, ``-1`` if the other
    way; ``evidence`` is the absolute value of the cross product above (near 0: weak; at
    most about 2.6). :func:`align_cell_cycle` adds a bootstrap confidence.
    """
    d = _direction_details(angle, s_score, g2m_score, library, n_boot=0)
    return d["direction"], d["evidence"]


def _longest_arc_start(mask: np.ndarray) -> int | None:
    """Start index of the longest circular run of True in ``mask`` (None if there is none)."""
    if not mask.any():
        return None
    if mask.all():
        return 0
    shift = int(np.argmin(mask))  # start scanning at a False
    rolled = np.roll(mask, -shift)
    best_len, best_start, run_start = 0, 0, None
    for i, v in enumerate(np.r_[rolled, False]):
        if v and run_start is None:
            run_start = i
        elif not v and run_start is not None:
            if i - run_start > best_len:
                best_len, best_start = i - run_start, run_start
            run_start = None
    return (best_start + shift) % len(mask)


def _origin(grid: np.ndarray, prof_s: np.ndarray, prof_g: np.ndarray, s_peak: float) -> float:
    """G1/S transition: start of the longest arc labelled S by the smoothed scores."""
    is_s = _phase_of(prof_s, prof_g) == "S"
    start = _longest_arc_start(is_s)
    if start is not None and not is_s.all():
        return float(grid[start])
    # no S arc (or only S): where S overtakes G2/M in standardised scores, else the S peak
    d = _robust_z(prof_s) - _robust_z(prof_g)
    up = np.flatnonzero((d >= 0) & (np.roll(d, 1) < 0))
    if len(up):
        return float(grid[up[np.argmin(circular_distance(grid[up], s_peak))]])
    return s_peak


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def align_cell_cycle(
    adata: AnnData | MuData,
    *,
    use_rep: str = "X_scgenvae",
    model=None,
    s_score_key: str = "S_score",
    g2m_score_key: str = "G2M_score",
    init: Literal["markers", "pca"] = "markers",
    bandwidth: float = np.pi / 8,
    max_iter: int = 200,
    tol: float = 1e-5,
    modality: str = "rna",
    organism: Literal["human", "mouse"] = "human",
    gene_symbols: str | None = None,
    layer: str | None = None,
    library_key: str | None = None,
    rng: SeedLike | RNGLike | None = 0,
    key_added: str = "cell_cycle",
    copy: bool = False,
) -> AnnData | MuData | None:
    """Find the plane of a representation that carries the cell cycle and a phase angle in it.

    The cells of a cycling population form a ring in a latent space. This fits that ring as an
    ellipse ``z ~ c + a cos(phi) + b sin(phi)`` in the full representation, by alternating
    least squares (regress the representation on ``cos``/``sin`` of the current angles) and
    projection (each cell's angle becomes that of the nearest point of the ellipse), starting
    from the plane that best predicts the S and G2/M marker scores. The fitted ellipse spans
    the *cycle plane*; its major axis is the single *direction* that carries most of the
    cycle.

    The marker scores then fix what the geometry cannot (no labels are used):

    * **direction** - the angle increases G1 -> S -> G2/M: the trough of the library size
      (G1, cells are smallest after division), the S-marker peak and the G2/M-marker peak
      follow each other counterclockwise, as whitened first-harmonic correlation vectors;
      without counts, going forward from the S peak the G2/M peak comes within less than half
      a cycle, which fails for cycles with a short G1
      (:func:`~scgenvae.tl.cell_cycle_direction`). A bootstrap over the cells gives the
      share of resamples that agree; below 95%, or without counts when the two marker peaks
      are within 45 degrees of opposite, the direction is flagged weak and a ``UserWarning``
      is raised;
    * **origin** - the S and G2/M scores are smoothed along the angle (von Mises kernel,
      ``bandwidth``) and labelled with scanpy's rule (G1 if both are negative, else the larger
      one); angle 0 is the start of the longest S arc, i.e. the G1/S transition;
    * **phase** - each cell gets the label of the smoothed scores at its angle.

    Parameters
    ----------
    adata
        AnnData or MuData with the representation in ``.obsm[use_rep]``.
    use_rep
        obsm key of the representation: a VAE latent (``"X_scgenvae"``), ``"X_pca"``, or the
        joint latent of a multimodal model.
    model
        A trained scgenvae model; used to compute the latent when ``use_rep`` is missing (it
        is not written into ``adata``).
    s_score_key, g2m_score_key
        obs columns with the S and G2/M scores. When missing they are computed with
        :func:`~scgenvae.tl.score_cell_cycle` (for MuData on ``mdata.mod[modality]``) and
        written to obs.
    init
        Starting plane: ``"markers"`` (directions predicting the scores, completed by the
        leading principal component) or ``"pca"`` (top two principal components).
    bandwidth
        Kernel width (radians) for smoothing the scores along the angle.
    max_iter, tol
        Iteration limit and convergence threshold (median change of the angle, radians).
    modality
        MuData modality to score when the scores are missing.
    organism, gene_symbols, layer
        Passed to :func:`~scgenvae.tl.score_cell_cycle` when the scores are missing
        (``layer`` also names the counts for the library size).
    library_key
        obs column with total counts per cell, for the direction rule. Default: the row sums
        of ``.X`` (or ``layer``; ``mdata.mod[modality]`` for MuData) when they hold counts,
        else of ``layers["counts"]`` when present, else the rule uses the marker peaks alone.
    rng
        Seed or generator for the control genes of the scores and for the bootstrap of the
        direction (the fit itself is deterministic).
    key_added
        Base name of the outputs: ``obs[key_added + '_angle']``,
        ``obs[key_added + '_phase']``, ``uns[key_added]`` and ``obsm[use_rep + '_cycle']``
        (``obsm[use_rep + '_' + key_added]`` for another ``key_added``).
    copy
        Return a new object instead of writing into ``adata``.

    Returns
    -------
    Returns `None` if `copy=False`, else returns the annotated copy. Sets the following fields:

    `adata.obs['cell_cycle_angle']` : :class:`pandas.Series` (dtype `float`)
        Phase angle in ``[0, 2*pi)``, increasing G1 -> S -> G2/M -> G1, 0 at G1/S
        (NaN for cells without a representation).
    `adata.obs['cell_cycle_phase']` : :class:`pandas.Categorical`
        ``G1``, ``S`` or ``G2M``.
    `adata.obsm[use_rep + '_cycle']` : :class:`numpy.ndarray`
        The centred representation rotated so that its first two axes span the cycle plane:
        axis 1 points to the G1/S point of the ellipse and ``atan2(axis 2, axis 1)`` increases
        with the angle; the other axes are the principal components of the rest.
    `adata.uns['cell_cycle']` : `dict`
        ``rotation`` (d x d, orthogonal; columns are the new axes), ``center`` (d),
        ``ellipse_center`` / ``ellipse_cos`` / ``ellipse_sin`` (the fitted cycle
        ``c + a cos(angle) + b sin(angle)`` in ``use_rep`` coordinates), ``direction`` (unit
        major axis), ``variance_ratio`` (share of the representation's variance in the plane),
        ``cycle_r2`` (share explained by ``cos``/``sin`` of the angle), ``dim_corr`` (circular-
        linear correlation of each dimension with the angle), ``best_dim`` and
        ``best_dim_corr``, ``s_peak`` / ``g2m_peak`` / ``peak_gap`` / ``direction_evidence`` /
        ``direction_confidence`` (bootstrap share agreeing) / ``direction_weak`` /
        ``library_used`` (orientation evidence), ``profile`` (smoothed scores along the angle), ``n_iter``, ``converged``
        and ``params``. Also `obs[s_score_key]` / `obs[g2m_score_key]` when they were missing.

    Examples
    --------
    >>> adata = scgenvae.datasets.fucci_ipsc()
    >>> scgenvae.model.PoissonVAE.setup_anndata(adata, batch_key="chip_id")
    >>> model = scgenvae.model.PoissonVAE(adata, n_latent=10)
    >>> model.train(max_epochs=200, enable_progress_bar=False)
    >>> model.export_latent(adata)
    >>> scgenvae.tl.align_cell_cycle(adata, gene_symbols="hgnc")
    >>> scgenvae.pl.cell_cycle(adata)

    See Also
    --------
    scgenvae.tl.score_cell_cycle : the marker scores.
    scgenvae.tl.latent_traversal : decode along the cycle.
    scgenvae.tl.circular_correlation : compare with a reference angle.
    """
    if adata.is_view:
        msg = "`adata` is a view; pass `adata.copy()`."
        raise ValueError(msg)
    if init not in ("markers", "pca"):
        msg = f"`init` must be 'markers' or 'pca', got {init!r}."
        raise ValueError(msg)
    if not 0 < bandwidth < np.pi:
        msg = f"`bandwidth` must be in (0, pi) radians, got {bandwidth}."
        raise ValueError(msg)
    adata = adata.copy() if copy else adata
    rep = _get_rep(adata, use_rep, model)
    s_all, g_all, scored = _get_scores(
        adata,
        s_score_key=s_score_key,
        g2m_score_key=g2m_score_key,
        modality=modality,
        score_kwargs={"organism": organism, "gene_symbols": gene_symbols, "layer": layer},
        rng=rng,
    )
    has_rep = np.isfinite(rep).all(1)
    fit = has_rep & np.isfinite(s_all) & np.isfinite(g_all)
    if fit.sum() < 10:
        msg = f"only {int(fit.sum())} cells have both a representation and scores; need >= 10."
        raise ValueError(msg)
    x_fit = rep[fit]
    center = x_fit.mean(0)
    x = x_fit - center
    if not np.any(x):
        msg = (
            f"obsm[{use_rep!r}] is the same for every cell: there is no cycle to fit. Check "
            "that the model was trained (`model.export_latent(adata)` after `model.train()`)."
        )
        raise ValueError(msg)
    s, g = s_all[fit], g_all[fit]

    phi0 = _initial_angle(x, s, g, init)
    phi, coef, n_iter, converged = _fit_ellipse(x, phi0, max_iter=max_iter, tol=tol)
    if not converged:
        warnings.warn(
            f"align_cell_cycle: the ellipse fit did not converge in {max_iter} iterations; "
            "the angle may be unreliable (increase `max_iter`).",
            RuntimeWarning,
            stacklevel=2,
        )

    # orientation and origin
    library = _get_library(adata, library_key, modality, layer)
    lib_fit = None
    if library is not None:
        lib_fit = library[fit]
        if not (np.isfinite(lib_fit).all() and (lib_fit > 0).all()):
            lib_fit = None
    orient = _direction_details(phi, s, g, lib_fit, rng=rng)
    sign = orient["direction"]
    theta = wrap_angle(sign * phi)
    s_peak, g_peak = marker_peaks(theta, s, g)
    grid = np.linspace(0.0, TWO_PI, _N_GRID, endpoint=False)
    zero = _origin(
        grid,
        _smooth_profile(theta, s, grid, bandwidth),
        _smooth_profile(theta, g, grid, bandwidth),
        s_peak,
    )
    theta = wrap_angle(theta - zero)
    s_peak, g_peak = (float(wrap_angle(v - zero)[()]) for v in (s_peak, g_peak))
    gap = float(wrap_angle(g_peak - s_peak)[()])
    if orient["weak"]:
        reason = (
            f"{100 * orient['confidence']:.0f}% of {_N_BOOT} bootstrap resamples of the cells "
            "agree with it"
        )
        if not orient["library_used"]:
            reason += (
                f"; no library sizes (counts), and the S and G2/M markers peak "
                f"{np.degrees(orient['peak_gap']):.0f} degrees apart, so their order alone "
                "cannot tell the direction of a cycle with a short G1"
            )
        warnings.warn(
            f"align_cell_cycle: the direction of the cell-cycle angle is weakly determined "
            f"({reason}). Pass the raw counts (`layer=`, `library_key=` or "
            f"layers['counts']) or check that `use_rep` carries the cycle; see "
            f"uns[{key_added!r}]['direction_confidence'].",
            UserWarning,
            stacklevel=2,
        )

    # ellipse in the final parametrisation: phi = sign * (theta + zero)
    c0, a0, b0 = coef
    ax_cos = a0 * np.cos(zero) + sign * b0 * np.sin(zero)
    ax_sin = -a0 * np.sin(zero) + sign * b0 * np.cos(zero)

    # rotation: axis 1 -> ellipse point at angle 0; axis 2 completes the plane so that the
    # in-plane polar angle increases with theta; the rest: PCs of the orthogonal complement
    q = _plane_basis(ax_cos, ax_sin)
    e0 = q.T @ ax_cos
    u1 = q @ (e0 / np.linalg.norm(e0))
    u2 = q @ (np.array([-e0[1], e0[0]]) / np.linalg.norm(e0))
    if np.dot(u2, ax_sin) < 0:
        u2 = -u2
    plane = np.stack([u1, u2], axis=1)
    full = np.linalg.qr(np.concatenate([plane, np.eye(x.shape[1])], axis=1))[0]
    rest = full[:, 2 : x.shape[1]]
    if rest.shape[1]:
        # principal axes of the complement, by decreasing variance: all d - 2 of them, also
        # with fewer cells than dimensions, from the (d - 2) x (d - 2) Gram matrix (a full SVD
        # of the cells would build a cells x cells matrix)
        proj = x @ rest
        rest = rest @ np.linalg.eigh(proj.T @ proj)[1][:, ::-1]
    rotation = np.concatenate([plane, rest], axis=1)
    # major axis of the ellipse
    m2 = np.stack([q.T @ ax_cos, q.T @ ax_sin], axis=1)
    evals, evecs = np.linalg.eigh(m2 @ m2.T)
    direction = q @ evecs[:, -1]
    direction = direction * (1.0 if direction[np.argmax(np.abs(direction))] >= 0 else -1.0)

    total_var = float((x**2).sum())
    variance_ratio = float(((x @ plane) ** 2).sum() / total_var) if total_var > 0 else 0.0
    h = _harmonics(theta)
    fitted = h @ np.linalg.lstsq(h, x, rcond=None)[0]
    resid_c = x - fitted
    cycle_r2 = float(1.0 - (resid_c**2).sum() / total_var) if total_var > 0 else 0.0
    ss = (x**2).sum(0)
    # a dimension without variance carries none of the cycle: r = 0 (not 1 - 0/0)
    dim_r2 = np.where(ss > 0, 1.0 - (resid_c**2).sum(0) / np.where(ss > 0, ss, 1.0), 0.0)
    dim_corr = np.sqrt(np.clip(dim_r2, 0.0, 1.0))
    best_dim = int(np.argmax(dim_corr))

    # profiles and phases
    prof_grid = np.linspace(0.0, TWO_PI, _N_PROFILE, endpoint=False)
    prof_s = _smooth_profile(theta, s, prof_grid, bandwidth)
    prof_g = _smooth_profile(theta, g, prof_grid, bandwidth)

    # write
    angle_out = np.full(adata.n_obs, np.nan)
    angle_out[fit] = theta
    # cells with a representation but no scores: nearest point of the fitted ellipse
    extra = has_rep & ~fit
    if extra.any():
        p = (rep[extra] - center - c0) @ q
        angle_out[extra] = _project_on_ellipse(p, q.T @ ax_cos, q.T @ ax_sin)
    ok = np.isfinite(angle_out)
    grid_phase = _phase_of(
        _smooth_profile(theta, s, grid, bandwidth), _smooth_profile(theta, g, grid, bandwidth)
    )
    phase = np.full(adata.n_obs, None, dtype=object)
    phase[ok] = grid_phase[np.rint(angle_out[ok] / TWO_PI * _N_GRID).astype(int) % _N_GRID]
    rotated = np.full(rep.shape, np.nan)
    rotated[has_rep] = (rep[has_rep] - center) @ rotation

    angle_key, phase_key = f"{key_added}_angle", f"{key_added}_phase"
    obsm_key = f"{use_rep}_cycle" if key_added == "cell_cycle" else f"{use_rep}_{key_added}"
    if scored:
        adata.obs[s_score_key] = s_all
        adata.obs[g2m_score_key] = g_all
        logger.info("added obs[%r] and obs[%r] (marker scores)", s_score_key, g2m_score_key)
    adata.obs[angle_key] = angle_out
    adata.obs[phase_key] = pd.Categorical(phase, categories=list(PHASES))
    adata.obsm[obsm_key] = rotated
    adata.uns[key_added] = {
        "rotation": rotation,
        "center": center,
        "ellipse_center": c0 + center,
        "ellipse_cos": ax_cos,
        "ellipse_sin": ax_sin,
        "direction": direction,
        "variance_ratio": variance_ratio,
        "cycle_r2": cycle_r2,
        "dim_corr": dim_corr,
        "best_dim": best_dim,
        "best_dim_corr": float(dim_corr[best_dim]),
        "s_peak": s_peak,
        "g2m_peak": g_peak,
        "peak_gap": gap,
        "direction_evidence": float(orient["evidence"]),
        "direction_confidence": float(orient["confidence"]),
        "direction_weak": bool(orient["weak"]),
        "library_used": bool(orient["library_used"]),
        "profile": {"angle": prof_grid, "S_score": prof_s, "G2M_score": prof_g},
        "n_iter": int(n_iter),
        "converged": bool(converged),
        "n_cells_fit": int(fit.sum()),
        "params": {
            "use_rep": use_rep,
            "obsm_key": obsm_key,
            "s_score_key": s_score_key,
            "g2m_score_key": g2m_score_key,
            "scores_computed": bool(scored),
            "library_key": "" if library_key is None else library_key,
            "init": init,
            "bandwidth": float(bandwidth),
            "max_iter": int(max_iter),
            "tol": float(tol),
        },
    }
    logger.info(
        "added obs[%r], obs[%r], obsm[%r] and uns[%r]; the cycle plane carries %.0f%% of the "
        "variance, best single dimension %d (r = %.2f)",
        angle_key,
        phase_key,
        obsm_key,
        key_added,
        100 * variance_ratio,
        best_dim,
        dim_corr[best_dim],
    )
    return adata if copy else None
