"""User-facing models (AnnData/MuData in, arrays out)."""

from __future__ import annotations

from ._base import BaseScgenvaeModel
from ._health import TrainingHealthWarning
from ._io import convert_legacy as convert_legacy_model
from ._multivae import MultiVAE
from ._plan import ScgenvaeTrainingPlan
from ._poissonvae import PoissonVAE

__all__ = [
    "BaseScgenvaeModel",
    "MultiVAE",
    "PoissonVAE",
    "ScgenvaeTrainingPlan",
    "TrainingHealthWarning",
    "convert_legacy_model",
]
