"""Poisson counts with a library-size offset, scored from the log-softmax in one pass."""

from __future__ import annotations

import torch
from torch.distributions import Distribution, Poisson

from ._bernoulli import _row_index


class SoftmaxPoisson(Poisson):
    """``x_g ~ Poisson(l * s_g)`` with ``s = softmax(logits)``, parametrised by ``log s`` and ``log l``.

    The distribution is :class:`torch.distributions.Poisson` with rate ``l * s``; what differs
    is how it is scored. Because the shares ``s`` sum to one, the per-cell log-likelihood is

    ``sum_g x_g log s_g + n log l - l - sum_g log(x_g!)``,  with ``n = sum_g x_g``,

    so :meth:`log_prob_sum` needs the log-softmax at the non-zero counts only (a gather for a
    sparse ``x``) and never builds the rate matrix, its logarithm or ``lgamma`` of every
    entry. The rates, shares and samples are built on demand.

    Parameters
    ----------
    log_scale
        ``log_softmax`` of the decoder's logits, cells x features.
    log_library
        Log library size of each cell, shape ``(cells,)``.
    """

    def __init__(self, log_scale: torch.Tensor, log_library: torch.Tensor):
        self.log_scale = log_scale
        self.log_library = log_library
        self._scale: torch.Tensor | None = None
        Distribution.__init__(self, batch_shape=log_scale.shape, validate_args=False)

    @property
    def scale(self) -> torch.Tensor:
        """Expected share of the library of each feature (rows sum to one)."""
        if self._scale is None:
            self._scale = self.log_scale.exp()
        return self._scale

    @property
    def rate(self) -> torch.Tensor:  # type: ignore[override]
        """Poisson rate ``l * s``."""
        return self.scale * self.log_library.exp().unsqueeze(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Elementwise ``log p(x)`` (dense), as :class:`torch.distributions.Poisson`."""
        log_rate = self.log_scale + self.log_library.unsqueeze(-1)
        return value * log_rate - log_rate.exp() - torch.lgamma(value + 1)

    def log_prob_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Per-cell ``sum_g log p(x_g)`` for a dense or sparse (CSR/COO) count matrix ``x``."""
        log_scale = self.log_scale
        if x.layout == torch.strided:
            x = x.to(log_scale.dtype)
            fit = (x * log_scale).sum(-1)
            total = x.sum(-1)
            log_fact = torch.lgamma(x + 1).sum(-1)
        else:
            rows, cols, vals = _row_index(x)
            vals = vals.to(log_scale.dtype)
            zeros = torch.zeros(x.shape[0], dtype=log_scale.dtype, device=log_scale.device)
            fit = zeros.index_add(0, rows, vals * log_scale[rows, cols])
            total = zeros.index_add(0, rows, vals)
            log_fact = zeros.index_add(0, rows, torch.lgamma(vals + 1))
        return fit + total * self.log_library - self.log_library.exp() - log_fact


__all__ = ["SoftmaxPoisson"]
