"""Decode a model along the cell-cycle ellipse or along one latent axis."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from scgenvae._circular import TWO_PI
from scgenvae._markers import phase_of as _phase_of

from ._cell_cycle import _get_rep
from ._score import PHASES

if TYPE_CHECKING:
    from mudata import MuData

logger = logging.getLogger(__name__)


def _phase_along(details: dict, angle: np.ndarray) -> np.ndarray:
    """Phase labels at ``angle`` from the smoothed score profiles stored by align_cell_cycle."""
    prof = details.get("profile")
    if prof is None:
        return np.full(len(angle), None, dtype=object)
    grid = np.asarray(prof["angle"], dtype=np.float64)
    s = np.interp(angle, grid, np.asarray(prof["S_score"], dtype=np.float64), period=TWO_PI)
    g = np.interp(angle, grid, np.asarray(prof["G2M_score"], dtype=np.float64), period=TWO_PI)
    return _phase_of(s, g)


def latent_traversal(
    model,
    adata: AnnData | MuData,
    *,
    along: Literal["cell_cycle"] | int = "cell_cycle",
    n_steps: int = 50,
    key: str = "cell_cycle",
    use_rep: str | None = None,
    quantiles: tuple[float, float] = (0.01, 0.99),
    transform_batch: str | None = None,
) -> AnnData:
    """Decode the model at points along the cell cycle or along one latent axis.

    ``along="cell_cycle"`` walks once round the ellipse fitted by
    :func:`~scgenvae.tl.align_cell_cycle` (``adata.uns[key]``) at ``n_steps`` equally spaced
    angles starting at the G1/S transition (angle 0); the coordinates outside the cycle plane
    are held at the cells' mean. ``along=j`` (an int) moves latent dimension ``j`` from its
    ``quantiles[0]`` to its ``quantiles[1]`` quantile over the cells, the other dimensions at
    the cells' mean. Each point is decoded with :meth:`model.decode_latent`.

    The result is one AnnData with the features of all modalities side by side (a single
    steps x features matrix is what heatmaps and trajectories need); ``var["modality"]`` says
    which modality each column belongs to. RNA values are normalised expression (each
    modality's block of a row sums to 1), ATAC values accessibility probabilities.

    Parameters
    ----------
    model
        A trained scgenvae model (:class:`~scgenvae.model.PoissonVAE`, or a multimodal one).
    adata
        The data the cycle was aligned on (AnnData or MuData).
    along
        ``"cell_cycle"`` or the index of a latent dimension.
    n_steps
        Number of points.
    key
        uns key written by :func:`~scgenvae.tl.align_cell_cycle`.
    use_rep
        obsm key of the model's latent; default the ``use_rep`` recorded in ``uns[key]`` for
        the cycle, ``"X_scgenvae"`` for an axis (computed with the model when missing).
    quantiles
        Range of an axis traversal.
    transform_batch
        Batch category to decode under (default the model's first batch).

    Returns
    -------
    :class:`~anndata.AnnData` of ``n_steps`` x features with ``obs["step"]``, and for the
    cycle ``obs["cell_cycle_angle"]`` and ``obs["cell_cycle_phase"]``, for an axis
    ``obs["latent_value"]``; ``obsm["X_latent"]`` (the decoded points); ``var["modality"]``
    (plus the RNA var columns of ``adata`` when its var_names are the model's genes);
    ``uns["latent_traversal"]["params"]``.

    Examples
    --------
    >>> scgenvae.tl.align_cell_cycle(adata)
    >>> trav = scgenvae.tl.latent_traversal(model, adata, n_steps=100)
    >>> scgenvae.pl.traversal_heatmap(trav, genes=["PCNA", "MCM6", "CDK1"], gene_symbols="hgnc")
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int | np.integer) or n_steps < 2:
        msg = f"`n_steps` must be an integer of at least 2, got {n_steps!r}."
        raise ValueError(msg)
    if isinstance(along, bool):
        msg = f"`along` must be 'cell_cycle' or a latent dimension (int), got {along!r}."
        raise TypeError(msg)
    lo_q, hi_q = (float(v) for v in quantiles)
    if not 0.0 <= lo_q < hi_q <= 1.0:
        msg = f"`quantiles` must be two increasing numbers in [0, 1], got {quantiles!r}."
        raise ValueError(msg)
    n_latent = int(model.module.n_latent)
    obs: dict[str, np.ndarray] = {"step": np.arange(n_steps)}
    if isinstance(along, str):
        if along != "cell_cycle":
            msg = f"`along` must be 'cell_cycle' or a latent dimension (int), got {along!r}."
            raise ValueError(msg)
        if key not in adata.uns or "ellipse_cos" not in adata.uns[key]:
            msg = (
                f"adata.uns[{key!r}] has no fitted cycle; run "
                "`scgenvae.tl.align_cell_cycle(adata)` on the model's latent first."
            )
            raise KeyError(msg)
        details = adata.uns[key]
        rep_key = use_rep or details.get("params", {}).get("use_rep", "X_scgenvae")
        ax_cos = np.asarray(details["ellipse_cos"], dtype=np.float64)
        ax_sin = np.asarray(details["ellipse_sin"], dtype=np.float64)
        centre = np.asarray(details["ellipse_center"], dtype=np.float64)
        mean = np.asarray(details["center"], dtype=np.float64)
        if ax_cos.shape[0] != n_latent:
            msg = (
                f"the cycle in uns[{key!r}] was fitted on a {ax_cos.shape[0]}-dimensional "
                f"representation ({rep_key!r}), the model's latent has {n_latent} dimensions; "
                "align the cycle on the model's latent (`use_rep='X_scgenvae'`)."
            )
            raise ValueError(msg)
        angle = np.linspace(0.0, TWO_PI, n_steps, endpoint=False)
        q = np.linalg.qr(np.stack([ax_cos, ax_sin], axis=1))[0]
        # in-plane position of the ellipse; outside the plane the cells' mean
        in_plane = centre + np.outer(np.cos(angle), ax_cos) + np.outer(np.sin(angle), ax_sin)
        z = mean + (in_plane - mean) @ q @ q.T
        obs["cell_cycle_angle"] = angle
        obs["cell_cycle_phase"] = pd.Categorical(
            _phase_along(details, angle), categories=list(PHASES)
        )
        along_param: str | int = "cell_cycle"
    else:
        j = int(along)
        if not 0 <= j < n_latent:
            msg = f"`along={along}` is not a latent dimension of this model (0..{n_latent - 1})."
            raise ValueError(msg)
        rep_key = use_rep or "X_scgenvae"
        rep = _get_rep(adata, rep_key, model)
        if rep.shape[1] != n_latent:
            msg = f"obsm[{rep_key!r}] has {rep.shape[1]} dimensions, the model {n_latent}."
            raise ValueError(msg)
        lo, hi = np.quantile(rep[:, j], quantiles)
        values = np.linspace(lo, hi, n_steps)
        z = np.tile(rep.mean(0), (n_steps, 1))
        z[:, j] = values
        obs["latent_value"] = values
        along_param = j

    decoded = model.decode_latent(z, transform_batch=transform_batch)
    names = model.feature_names
    blocks, var_frames = [], []
    for mod, values in decoded.items():
        feat = pd.Index(names[mod]).astype(str)
        var = pd.DataFrame({"modality": mod}, index=feat)
        src = adata.mod[mod] if hasattr(adata, "mod") and mod in adata.mod else adata
        if (
            isinstance(src, AnnData)
            and len(src.var_names) == len(feat)
            and (src.var_names.astype(str) == feat).all()
        ):
            extra = src.var.drop(columns=["modality"], errors="ignore").set_axis(feat)
            var = pd.concat([var, extra], axis=1)
        blocks.append(np.asarray(values, dtype=np.float32))
        var_frames.append(var)
    var = pd.concat(var_frames, axis=0)
    var["modality"] = pd.Categorical(var["modality"])
    if not var.index.is_unique:
        var.index = [f"{m}:{n}" for m, n in zip(var["modality"], var.index, strict=True)]
    out = AnnData(
        X=np.concatenate(blocks, axis=1),
        obs=pd.DataFrame(obs, index=[f"step_{i}" for i in range(n_steps)]),
        var=var,
    )
    out.obsm["X_latent"] = np.asarray(z, dtype=np.float64)
    out.uns["latent_traversal"] = {
        "params": {
            "along": along_param if isinstance(along_param, str) else int(along_param),
            "n_steps": int(n_steps),
            "key": key,
            "use_rep": rep_key,
            "transform_batch": "" if transform_batch is None else str(transform_batch),
        }
    }
    logger.info("decoded %d points along %r into %d features", n_steps, along_param, out.n_vars)
    return out
