"""Small readers of AnnData shared by ``tl`` and ``pl`` (a layer, gene symbols, counts or not)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData


def matrix_of(adata: AnnData, layer: str | None):
    """``adata.X`` or ``adata.layers[layer]``, with an error naming the layers there are."""
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        msg = f"`layer={layer!r}` not found in adata.layers; available: {list(adata.layers)}."
        raise KeyError(msg)
    return adata.layers[layer]


def looks_like_counts(x) -> bool:
    """Non-negative and integer-valued, or with values too large for log-normalised data."""
    vals = x.data if sparse.issparse(x) else np.asarray(x).ravel()
    vals = vals[:200_000]
    if vals.size == 0:
        return False
    if vals.min() < 0:
        return False
    return bool(np.allclose(vals, np.round(vals)) or vals.max() > 20)


def symbol_index(adata: AnnData, gene_symbols: str | None) -> pd.Series:
    """Map symbol -> var_name (first occurrence of each symbol)."""
    if gene_symbols is None:
        symbols = pd.Series(adata.var_names, index=adata.var_names)
    else:
        if gene_symbols not in adata.var:
            msg = (
                f"`gene_symbols={gene_symbols!r}` not found in adata.var; "
                f"available: {list(adata.var.columns)}."
            )
            raise KeyError(msg)
        symbols = pd.Series(
            adata.var[gene_symbols].astype(object).to_numpy(), index=adata.var_names
        )
    symbols = symbols[symbols.notna()].astype(str)
    symbols = symbols[~symbols.duplicated()]
    return pd.Series(symbols.index, index=symbols.to_numpy())
