"""Torch modules (no AnnData): the generative models and their priors."""

from __future__ import annotations

from ._priors import GaussianMixturePrior, StandardNormalPrior, gumbel_softmax_sample
from ._vae import ModalitySpec, MultiModalVAEModule, log_library_mean

__all__ = [
    "GaussianMixturePrior",
    "ModalitySpec",
    "MultiModalVAEModule",
    "StandardNormalPrior",
    "gumbel_softmax_sample",
    "log_library_mean",
]
