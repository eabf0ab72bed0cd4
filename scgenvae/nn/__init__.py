"""Neural-network building blocks."""

from __future__ import annotations

from ._base import CovariateInjection, FCLayers, GaussianEncoder, SparseLinear, reparameterize

__all__ = ["CovariateInjection", "FCLayers", "GaussianEncoder", "SparseLinear", "reparameterize"]
