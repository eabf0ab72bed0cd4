"""Checks of user data, run in ``setup_anndata``/``setup_mudata`` before anything is registered.

Every error names the attribute, the key and the fix; nothing here modifies the user's object.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData


def in_memory(mat):
    """``mat`` itself, or an in-memory copy of a backed matrix (``backed="r"`` AnnData).

    A backed ``.X`` is an HDF5 dataset: it is read once into memory (the model trains in
    memory); the file is not changed.
    """
    if hasattr(mat, "to_memory"):  # backed sparse dataset
        return mat.to_memory()
    if type(mat).__module__.startswith("h5py"):  # backed dense dataset
        return mat[()]
    return mat


def streamable(mat) -> bool:
    """Whether ``mat`` is a backed matrix whose rows can be read block by block.

    A backed CSR sparse dataset or a dense HDF5 dataset; a backed CSC matrix is not (a block of
    its rows touches the whole file) and is read into memory as before.
    """
    if hasattr(mat, "to_memory"):  # backed sparse dataset
        return getattr(mat, "format", None) == "csr"
    return type(mat).__module__.startswith("h5py")


def get_matrix(
    adata: AnnData,
    layer: str | None,
    *,
    where: str = "adata",
    arg: str = "layer",
    keep_backed: bool = False,
):
    """``adata.X`` or ``adata.layers[layer]`` (in memory) with a clear error when it is missing.

    ``arg`` is the name of the user's argument that chose ``layer`` (named in the error). With
    ``keep_backed``, a backed matrix whose rows can be streamed (see :func:`streamable`) is
    returned as it is rather than read into memory.
    """
    if layer is None:
        if adata.X is None:
            msg = (
                f"{where}.X is empty (None); pass `{arg}=` naming the layer that holds the counts."
            )
            raise ValueError(msg)
        mat = adata.X
    elif layer not in adata.layers:
        msg = (
            f"`{arg}={layer!r}` not found in {where}.layers; available: {list(adata.layers)}. "
            f"Pass `{arg}=None` to use .X."
        )
        raise KeyError(msg)
    else:
        mat = adata.layers[layer]
    if keep_backed and streamable(mat):
        return mat
    return in_memory(mat)


#: rows read at a time when a backed matrix is validated and summarised
SCAN_ROWS = 10_000


@dataclass(frozen=True)
class MatrixScan:
    """Per-cell and per-feature sums of a matrix, gathered in one pass over its rows.

    ``*_nnz`` count the non-zero entries (the sums of the binarised matrix); ``binary`` says
    whether every value is 0 or 1.
    """

    row_sums: np.ndarray
    row_nnz: np.ndarray
    col_sums: np.ndarray
    col_nnz: np.ndarray
    binary: bool


#: values sampled by :func:`fingerprint` (at fixed, evenly spaced positions)
FINGERPRINT_SAMPLE = 4096


def backed_file(mat) -> str | None:
    """Path of the HDF5 file behind a backed matrix (``None`` in memory).

    Raises a ``ValueError`` naming the matrix when its file has been closed.
    """
    if hasattr(mat, "to_memory"):  # backed sparse dataset
        handle = getattr(mat, "group", None)
    elif type(mat).__module__.startswith("h5py"):
        handle = mat
    else:
        return None
    try:
        return str(handle.file.filename)
    except (ValueError, RuntimeError, AttributeError) as err:
        msg = (
            "a backed matrix of this data has its file closed; open it again with "
            "`anndata.read_h5ad(path, backed='r')` (or `mudata.read_h5mu(path, backed=True)`) "
            "and call the set-up again."
        )
        raise ValueError(msg) from err


def _sample_digest(*arrays: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for arr in arrays:
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def _positions(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, max(n - 1, 0), min(n, FINGERPRINT_SAMPLE)).astype(np.int64))


def fingerprint(mat) -> tuple:
    """A cheap summary of ``mat`` that changes when its values are changed.

    In memory: shape, dtype, number of stored values and a digest of values sampled at fixed
    positions (of the stored values, indices and row pointers of a sparse matrix); normalising
    or log-transforming a matrix in place changes it. Backed: the file's path, size,
    modification time and inode, and the shape.
    """
    path = backed_file(mat)  # first: a closed file's matrix cannot say its shape
    shape = tuple(int(d) for d in mat.shape)
    if path is not None:
        st = Path(path).stat()
        return ("file", path, st.st_size, st.st_mtime_ns, st.st_ino, shape)
    if sparse.issparse(mat):
        mat = mat.tocsr() if mat.format not in ("csr", "csc") else mat
        pos = _positions(mat.nnz)
        ptr = _positions(len(mat.indptr))
        digest = _sample_digest(mat.data[pos], mat.indices[pos], mat.indptr[ptr])
        return ("sparse", shape, mat.dtype.str, int(mat.nnz), digest)
    arr = np.asarray(mat)
    pos = _positions(arr.size)
    if arr.ndim == 2 and arr.shape[1]:
        values = arr[pos // arr.shape[1], pos % arr.shape[1]]
    else:
        values = arr.ravel()[pos]
    return ("dense", shape, arr.dtype.str, int(arr.size), _sample_digest(values))


def read_rows(mat, start: int, stop: int):
    """Rows ``start:stop`` of a backed or in-memory matrix: CSR sparse or a dense array."""
    block = mat[start:stop]
    if sparse.issparse(block):
        return sparse.csr_matrix(block)
    return np.asarray(block)


def scan_matrix(
    mat,
    *,
    where: str,
    counts: bool = True,
    binary_ok: bool = False,
    block_rows: int | None = None,
) -> MatrixScan:
    """Validate ``mat`` block by block (as :func:`check_values`) and sum its rows and columns.

    At most ``block_rows`` (default :data:`SCAN_ROWS`) rows are in memory at a time, so a backed matrix of any number of
    cells is checked in bounded memory; an error names the rows of the first bad block.
    """
    n_obs, n_vars = mat.shape
    block_rows = block_rows or SCAN_ROWS
    row_sums = np.zeros(n_obs, dtype=np.float64)
    row_nnz = np.zeros(n_obs, dtype=np.int64)
    col_sums = np.zeros(n_vars, dtype=np.float64)
    col_nnz = np.zeros(n_vars, dtype=np.int64)
    binary = True
    for start in range(0, n_obs, block_rows):
        stop = min(start + block_rows, n_obs)
        block = read_rows(mat, start, stop)
        check_values(
            block,
            where=f"{where} (rows {start:,}-{stop - 1:,})",
            counts=counts,
            binary_ok=binary_ok,
        )
        values = block.data if sparse.issparse(block) else block
        binary = binary and bool(np.isin(values, (0, 1)).all())
        nonzero = block != 0
        row_sums[start:stop] = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
        row_nnz[start:stop] = np.asarray(nonzero.sum(axis=1)).ravel()
        col_sums += np.asarray(block.sum(axis=0, dtype=np.float64)).ravel()
        col_nnz += np.asarray(nonzero.sum(axis=0)).ravel().astype(np.int64)
    return MatrixScan(row_sums, row_nnz, col_sums, col_nnz, binary)


def _values(mat) -> np.ndarray:
    mat = in_memory(mat)
    if sparse.issparse(mat):
        return np.asarray(mat.data)
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


def warn_empty_cells(
    mat, *, where: str, stacklevel: int = 3, totals: np.ndarray | None = None
) -> np.ndarray:
    """Warn about cells with no counts; return the per-cell totals (or use given ``totals``)."""
    if totals is None:
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
        if not pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
            msg = (
                f"continuous covariate {where}[{key!r}] has dtype {col.dtype}, not a number; "
                "pass it in `categorical_covariate_keys` instead."
            )
            raise TypeError(msg)
        if not np.isfinite(col.to_numpy(dtype=float)).all():
            msg = f"continuous covariate {where}[{key!r}] has NaN or infinite values."
            raise ValueError(msg)


#: fewest cells a model can be trained on: scvi-tools' data split drops a last minibatch of
#: fewer than 3 cells, so with fewer cells no training step would run at all
MIN_TRAIN_CELLS = 3


def check_trainable(n_obs: int, *, where: str = "adata") -> None:
    """Refuse to build a model for training on fewer than :data:`MIN_TRAIN_CELLS` cells."""
    if n_obs < MIN_TRAIN_CELLS:
        msg = (
            f"{where} has {n_obs} cell(s); training needs at least {MIN_TRAIN_CELLS}. Train on "
            "more cells, then embed these with `model.get_latent_representation(adata)`."
        )
        raise ValueError(msg)


def check_known_categories(
    obs: pd.DataFrame, registry: dict, keys: dict[str, str | None], *, where: str = "adata.obs"
) -> None:
    """Every category of new data must have been seen in training.

    Parameters
    ----------
    obs
        obs frame of the new data (columns named as in the user's object).
    registry
        The trained model's data registry (``AnnDataManager._registry``, as saved).
    keys
        Registry key -> obs column (``None`` when the field is not used), for the
        single-column categorical fields (batch, labels).
    """
    from scgenvae._constants import REGISTRY_KEYS

    fields = registry.get("field_registries", {})
    for reg_key, col in keys.items():
        if col is None or col not in obs.columns or reg_key not in fields:
            continue
        state = fields[reg_key].get("state_registry", {})
        seen = [str(c) for c in state.get("categorical_mapping", [])]
        _report_unseen(obs[col], seen, col, where)
    cat = fields.get(REGISTRY_KEYS.CAT_COVS_KEY, {}).get("state_registry", {})
    for col, seen in (cat.get("mappings") or {}).items():
        if col in obs.columns:
            _report_unseen(obs[col], [str(c) for c in seen], col, where)


def _report_unseen(values: pd.Series, seen: list[str], col: str, where: str) -> None:
    new = sorted(set(values.dropna().astype(str)) - set(seen))
    if new:
        msg = (
            f"{where}[{col!r}] has categories not seen in training: {new[:10]}"
            f"{' ...' if len(new) > 10 else ''}; the model knows {seen}. Relabel these cells "
            "to a training category or train a model that includes them."
        )
        raise ValueError(msg)


def resolve_indices(indices, obs_names: pd.Index) -> np.ndarray:
    """Cell positions from a boolean mask, integer positions or obs names.

    Raises a clear error for a mask of the wrong length, positions out of range, unknown names
    or values of another type.
    """
    n_obs = len(obs_names)
    if isinstance(indices, pd.Series | pd.Index):
        indices = indices.to_numpy()
    if isinstance(indices, slice):
        return np.arange(n_obs)[indices]
    arr = np.asarray(indices)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        msg = f"`indices` must be one-dimensional, got shape {arr.shape}."
        raise ValueError(msg)
    if arr.dtype.kind == "b":
        if len(arr) != n_obs:
            msg = f"`indices` is a boolean mask of length {len(arr):,}; the data has {n_obs:,} cells."
            raise ValueError(msg)
        return np.flatnonzero(arr)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < -n_obs or arr.max() >= n_obs):
            msg = (
                f"`indices` holds positions out of range ({int(arr.min())} to {int(arr.max())}) "
                f"for {n_obs:,} cells."
            )
            raise IndexError(msg)
        return np.where(arr < 0, arr + n_obs, arr).astype(np.int64)
    if arr.dtype.kind in "UO" and (arr.size == 0 or isinstance(arr[0], str)):
        pos = obs_names.get_indexer(arr)
        if (pos < 0).any():
            missing = [str(v) for v in arr[pos < 0][:5]]
            msg = f"`indices` names cells not in obs_names: {missing}."
            raise KeyError(msg)
        return pos.astype(np.int64)
    if arr.size == 0:
        return arr.astype(np.int64)
    msg = f"`indices` has dtype {arr.dtype}; pass a boolean mask, integer positions or obs names."
    raise TypeError(msg)
