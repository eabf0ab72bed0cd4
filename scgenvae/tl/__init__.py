"""Tools: compute into AnnData/MuData (cell cycle, traversals) and circular statistics."""

from __future__ import annotations

from scgenvae._circular import best_shift, circular_correlation, circular_distance, circular_error
from scgenvae._markers import G2M_GENES, S_GENES, cell_cycle_genes

from ._baselines import cell_cycle_angle_baseline
from ._cell_cycle import align_cell_cycle, cell_cycle_direction, marker_peaks
from ._score import marker_var_names, score_cell_cycle
from ._transfer import transfer_labels
from ._traversal import latent_traversal

__all__ = [
    "G2M_GENES",
    "S_GENES",
    "align_cell_cycle",
    "best_shift",
    "cell_cycle_angle_baseline",
    "cell_cycle_direction",
    "cell_cycle_genes",
    "circular_correlation",
    "circular_distance",
    "circular_error",
    "latent_traversal",
    "marker_peaks",
    "marker_var_names",
    "score_cell_cycle",
    "transfer_labels",
]
