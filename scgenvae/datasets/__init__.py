"""Bundled real data sets (read from data/, never downloaded) and seeded synthetic data."""

from __future__ import annotations

from scgenvae._files import data_dir

from ._bundled import (
    cellbench,
    fucci_ipsc,
    pbmc_multiome_subset,
    scicar_a549,
    tricycle_neurosphere,
    tricycle_reference,
)
from ._cell_cycle import synthetic_cell_cycle
from ._synthetic import synthetic_multiome, synthetic_rna
from ._synthetic_de import synthetic_de

__all__ = [
    "cellbench",
    "data_dir",
    "fucci_ipsc",
    "pbmc_multiome_subset",
    "scicar_a549",
    "synthetic_cell_cycle",
    "synthetic_de",
    "synthetic_multiome",
    "synthetic_rna",
    "tricycle_neurosphere",
    "tricycle_reference",
]
