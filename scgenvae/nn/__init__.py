"""Neural-network building blocks."""

from __future__ import annotations

from ._base import (
    CovariateInjection,
    Dropout,
    FCLayers,
    GaussianEncoder,
    SparseLinear,
    reparameterize,
)
from ._sparse import csr_matmul

__all__ = [
    "CovariateInjection",
    "Dropout",
    "FCLayers",
    "GaussianEncoder",
    "SparseLinear",
    "csr_matmul",
    "reparameterize",
]
