"""Poisson counts with a library-size offset, scored from the log-softmax in one pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, Poisson

from ._bernoulli import _row_index


class _SparseSoftmaxFit(torch.autograd.Function):
    """Per-row ``sum_g x_g log softmax(u)_g`` for a CSR ``x`` (no gradient to ``x``).

    ``x`` comes as its row offsets, the row and column of each non-zero, the values and the row
    totals ``n`` (which the caller needs too, for the library term).

    Forward: the log-softmax, then one segmented gather-sum of it at the non-zeros of ``x``.
    Backward: ``d/du = x - n softmax(u)`` (``n`` the row totals), built in place from the
    softmax with the counts added at their positions. This replaces autograd's chain of
    log-softmax, advanced indexing and scatter-add (and their backward passes) with one
    elementwise pass each way.
    """

    @staticmethod
    def forward(ctx, logits, offsets, rows, cols, vals, totals):
        log_scale = torch.log_softmax(logits, dim=-1)
        flat = rows * logits.shape[1] + cols
        fit = F.embedding_bag(
            flat, log_scale.reshape(-1, 1), offsets=offsets, mode="sum", per_sample_weights=vals
        ).squeeze(-1)
        ctx.save_for_backward(log_scale, rows, flat, vals, totals)
        return fit

    @staticmethod
    def backward(ctx, grad):
        log_scale, rows, flat, vals, totals = ctx.saved_tensors
        # softmax of the log-softmax is the softmax: this is faster than torch.exp on the CPU
        grad_logits = torch.softmax(log_scale, dim=-1).mul_((-(grad * totals)).unsqueeze(-1))
        grad_logits.view(-1).index_add_(0, flat, vals * grad.index_select(0, rows))
        return grad_logits, None, None, None, None, None


class SoftmaxPoisson(Poisson):
    """``x_g ~ Poisson(l * s_g)`` with ``s = softmax(logits)``, parametrised by ``logits`` and ``log l``.

    The distribution is :class:`torch.distributions.Poisson` with rate ``l * s``; what differs
    is how it is scored. Because the shares ``s`` sum to one, the per-cell log-likelihood is

    ``sum_g x_g log s_g + n log l - l - sum_g log(x_g!)``,  with ``n = sum_g x_g``,

    so :meth:`log_prob_sum` needs the log-softmax at the non-zero counts only (a gather for a
    sparse ``x``) and never builds the rate matrix, its logarithm or ``lgamma`` of every
    entry; for a sparse ``x`` its gradient is ``x - n s``, formed in one pass. The rates,
    shares and samples are built on demand.

    Parameters
    ----------
    logits
        Unnormalised log shares, cells x features (the decoder's output, or its
        ``log_softmax``: both give the same shares).
    log_library
        Log library size of each cell, shape ``(cells,)``.
    """

    def __init__(self, logits: torch.Tensor, log_library: torch.Tensor):
        self.logits = logits
        self.log_library = log_library
        self._log_scale: torch.Tensor | None = None
        self._scale: torch.Tensor | None = None
        Distribution.__init__(self, batch_shape=logits.shape, validate_args=False)

    @property
    def log_scale(self) -> torch.Tensor:
        """Log of the expected share of each feature (``log_softmax`` of the logits)."""
        if self._log_scale is None:
            self._log_scale = torch.log_softmax(self.logits, dim=-1)
        return self._log_scale

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
        dtype = self.logits.dtype
        if x.layout == torch.strided:
            x = x.to(dtype)
            fit = (x * self.log_scale).sum(-1)
            total = x.sum(-1)
            log_fact = torch.lgamma(x + 1).sum(-1)
        else:
            if x.layout != torch.sparse_csr:
                x = x.coalesce().to_sparse_csr()
            crow = x.crow_indices()
            rows, cols, vals = _row_index(x)
            vals = vals.to(dtype)
            total = torch.segment_reduce(vals, "sum", offsets=crow)
            fit = _SparseSoftmaxFit.apply(self.logits, crow[:-1], rows, cols, vals, total)
            log_fact = torch.segment_reduce(torch.lgamma(vals + 1), "sum", offsets=crow)
        return fit + total * self.log_library - self.log_library.exp() - log_fact


__all__ = ["SoftmaxPoisson"]
