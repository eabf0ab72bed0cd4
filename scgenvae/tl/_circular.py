"""Circular statistics: defined in :mod:`scgenvae._circular` (shared with ``pl``)."""

from __future__ import annotations

from scgenvae._circular import (
    TWO_PI,
    best_shift,
    circular_correlation,
    circular_distance,
    circular_error,
    circular_mean,
    smooth_profile,
    wrap_angle,
)

__all__ = [
    "TWO_PI",
    "best_shift",
    "circular_correlation",
    "circular_distance",
    "circular_error",
    "circular_mean",
    "smooth_profile",
    "wrap_angle",
]
