"""scgenvae: variational autoencoders for single-cell RNA and multiome data."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import datasets, distributions, model, module, nn, pl, tl
from ._settings import settings

try:
    __version__ = version("scgenvae")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["datasets", "distributions", "model", "module", "nn", "pl", "settings", "tl"]
