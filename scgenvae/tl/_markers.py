"""Cell-cycle marker genes: defined in :mod:`scgenvae._markers` (shared with ``datasets``)."""

from __future__ import annotations

from scgenvae._markers import (
    G2M_GENES,
    S_GENES,
    UPDATED_SYMBOLS,
    cell_cycle_genes,
)

__all__ = ["G2M_GENES", "S_GENES", "UPDATED_SYMBOLS", "cell_cycle_genes"]
