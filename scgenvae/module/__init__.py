"""Torch modules (no AnnData): the generative models and their priors."""

from __future__ import annotations

from ._heads import (
    HEADS,
    BernoulliHead,
    LikelihoodHead,
    NBHead,
    PoissonHead,
    ZINBHead,
    get_head,
    register_head,
)
from ._priors import GaussianMixturePrior, StandardNormalPrior, gumbel_softmax_sample
from ._vae import ModalitySpec, MultiModalVAEModule, log_library_mean

__all__ = [
    "HEADS",
    "BernoulliHead",
    "GaussianMixturePrior",
    "LikelihoodHead",
    "ModalitySpec",
    "MultiModalVAEModule",
    "NBHead",
    "PoissonHead",
    "StandardNormalPrior",
    "ZINBHead",
    "get_head",
    "gumbel_softmax_sample",
    "log_library_mean",
    "register_head",
]
