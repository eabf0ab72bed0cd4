"""Distributions that torch and scvi-tools lack (the rest are reused from them)."""

from __future__ import annotations

from ._bernoulli import (
    BernoulliLogits,
    FactorisedBernoulli,
    sparse_map_values,
    sparse_row_sums,
    to_dense,
)
from ._poisson import SoftmaxPoisson

__all__ = [
    "BernoulliLogits",
    "FactorisedBernoulli",
    "SoftmaxPoisson",
    "sparse_map_values",
    "sparse_row_sums",
    "to_dense",
]
