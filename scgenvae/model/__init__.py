"""User-facing models (AnnData/MuData in, arrays out)."""

from __future__ import annotations

from ._base import BaseScgenvaeModel, ScgenvaeTrainingPlan
from ._health import TrainingHealthWarning
from ._multivae import MultiVAE
from ._poissonvae import PoissonVAE

__all__ = [
    "BaseScgenvaeModel",
    "MultiVAE",
    "PoissonVAE",
    "ScgenvaeTrainingPlan",
    "TrainingHealthWarning",
]
