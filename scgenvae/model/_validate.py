"""Checks of user data, run in ``setup_anndata``/``setup_mudata`` before anything is registered.

Every error names the attribute, the key and the fix; nothing here modifies the user's object.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData


def get_matrix(adata: AnnData, layer: str | None, *, where: str = "adata"):
    """Return ``adata.X`` or ``adata.layers[layer]`` with a clear error when it is missing."""
    if layer is None:
        if adata.X is None:
            msg = (
                f"{where}.X is empty (None); pass `layer=` naming the layer that holds the counts."
            )
            raise ValueError(msg)
        return adata.X
    if layer not in adata.layers:
        msg = (
            f"`layer={layer!r}` not found in {where}.layers; available: {list(adata.layers)}. "
            "Pass `layer=None` to use .X."
        )
        raise KeyError(msg)
    return adata.layers[layer]


def _values(mat) -> np.ndarray:
    if sparse.issparse(mat):
        return np.asarray(mat.data)
    if hasattr(mat, "to_memory"):  # backed sparse dataset
        return _values(mat.to_memory())
    return np.asarray(mat)


def check_shape(adata: AnnData, *, where: str = "adata") -> None:
    """Reject empty objects."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        msg = f"{where} is empty ({adata.n_obs} cells x {adata.n_vars} features): nothing to fit."
        raise ValueError(msg)


def check_values(
    mat,
    *,
    where: str,
    counts: bool = True,
    binary_ok: bool = False,
) -> None:
    """Reject NaN/inf and negative values; with ``counts``, also non-integer values."""
    v = _values(mat)
    if v.dtype.kind not in "biuf":
        msg = f"{where} has dtype {v.dtype}; expected a numeric matrix of counts."
        raise TypeError(msg)
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        n_bad = int((~np.isfinite(v)).sum())
        msg = (
            f"{where} contains {n_bad} NaN or infinite values; remove or impute them before setup."
        )
        raise ValueError(msg)
    if v.size and v.min() < 0:
        msg = (
            f"{where} contains negative values (min {v.min():g}); a count likelihood needs raw "
            "non-negative counts. Pass the raw counts layer with `layer=`."
        )
        raise ValueError(msg)
    if counts and v.dtype.kind == "f" and v.size and not np.all(np.mod(v, 1) == 0):
        msg = (
            f"{where} contains non-integer values, so it does not look like raw counts "
            "(normalised or log-transformed data?). Pass the raw counts with `layer=`"
            + (", or use `atac_likelihood='bernoulli'`." if binary_ok else ".")
        )
        raise ValueError(msg)


def warn_empty_cells(mat, *, where: str, stacklevel: int = 3) -> np.ndarray:
    """Warn about cells with no counts; return the per-cell totals."""
    totals = np.asarray(mat.sum(axis=1)).ravel()
    n_zero = int((totals == 0).sum())
    if n_zero:
        warnings.warn(
            f"{n_zero} of {len(totals)} cells have no counts in {where}; they are embedded from "
            "their covariates alone (filter them with `sc.pp.filter_cells(adata, min_counts=1)` "
            "to drop them).",
            UserWarning,
            stacklevel=stacklevel,
        )
    return totals


def check_obs_keys(obs, keys: Sequence[str | None], *, where: str = "adata.obs") -> None:
    """Every non-None key must be a column of ``obs``."""
    for key in keys:
        if key is not None and key not in obs.columns:
            msg = f"{key!r} not found in {where}; available: {list(obs.columns)}."
            raise KeyError(msg)
    for key in keys:
        if key is not None and obs[key].isna().any():
            msg = f"{where}[{key!r}] has missing values; fill or drop them before setup."
            raise ValueError(msg)


def check_continuous(obs, keys: Sequence[str], *, where: str = "adata.obs") -> None:
    """Continuous covariates must be finite numbers."""
    for key in keys:
        col = obs[key]
        if not np.issubdtype(col.dtype, np.number):
            msg = f"continuous covariate {where}[{key!r}] has dtype {col.dtype}; pass it in `categorical_covariate_keys` instead."
            raise TypeError(msg)
        if not np.isfinite(col.to_numpy(dtype=float)).all():
            msg = f"continuous covariate {where}[{key!r}] has NaN or infinite values."
            raise ValueError(msg)
