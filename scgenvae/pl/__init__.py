"""Plotting: figures that return the Figure (none saves to a path)."""

from __future__ import annotations

from ._cell_cycle import angle_vs_genes, cell_cycle, traversal_heatmap
from ._clusters import cluster_probabilities

__all__ = ["angle_vs_genes", "cell_cycle", "cluster_probabilities", "traversal_heatmap"]
