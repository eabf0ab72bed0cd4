"""Bernoulli likelihood in logit space that scores sparse observations without densifying them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli

from scgenvae.nn._sparse import csr_matmul, csr_matmul_and_rows


def _softplus(logits: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(l))`` to float64 precision.

    ``F.softplus`` returns ``l`` itself above its default threshold of 20 and so drops
    ``log1p(exp(-l))``, up to 2e-9 per entry (found by the property tests against torch's
    Bernoulli); above 40 what it drops is below 4.3e-18, under float64's resolution at 40.
    """
    return F.softplus(logits, threshold=40.0)


def _row_index(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows, columns and values of the non-zero entries of a CSR or COO tensor."""
    if x.layout == torch.sparse_csr:
        crow = x.crow_indices()
        rows = torch.repeat_interleave(
            torch.arange(x.shape[0], device=x.device), crow[1:] - crow[:-1]
        )
        return rows, x.col_indices(), x.values()
    x = x.coalesce()
    idx = x.indices()
    return idx[0], idx[1], x.values()


class BernoulliLogits(Bernoulli):
    """:class:`torch.distributions.Bernoulli` parametrised by logits, with a sparse ``log_prob``.

    Cell- and region-level factors enter as additive terms of the logits (see
    :class:`~scgenvae.module.MultiVAEModule`), never as products of probabilities, so the
    likelihood stays a proper Bernoulli and the loss is computed stably with ``softplus``.

    ``log_prob_sum(x)`` returns the per-cell sum over features of the log-likelihood; for a
    sparse binary ``x`` it uses ``sum_j x_j l_j - sum_j softplus(l_j)``, which touches the
    non-zero entries only through a gather.
    """

    def __init__(self, logits: torch.Tensor, *, validate_args: bool | None = False):
        super().__init__(logits=logits, validate_args=validate_args)

    def log_prob_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Per-row sum of ``log p(x)`` for a dense or sparse (CSR/COO) binary ``x``."""
        logits = self.logits
        if x.layout == torch.strided:
            return (x * logits - _softplus(logits)).sum(-1)
        rows, cols, vals = _row_index(x)
        pos = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
        pos.index_add_(0, rows, vals.to(logits.dtype) * logits[rows, cols])
        return pos - _softplus(logits).sum(-1)


def sparse_row_sums(x: torch.Tensor) -> torch.Tensor:
    """Row sums of a dense, CSR or COO matrix as a dense 1-D tensor."""
    if x.layout == torch.strided:
        return x.sum(-1)
    if x.layout == torch.sparse_csr:
        # one pass over the values, segmented by the row pointers (empty rows sum to 0)
        return torch.segment_reduce(x.values(), "sum", offsets=x.crow_indices())
    rows, _, vals = _row_index(x)
    out = torch.zeros(x.shape[0], dtype=vals.dtype, device=vals.device)
    return out.index_add_(0, rows, vals)


def sparse_map_values(x: torch.Tensor, fn) -> torch.Tensor:
    """Apply an elementwise ``fn`` with ``fn(0) == 0`` to a dense or sparse CSR tensor."""
    if x.layout == torch.strided:
        return fn(x)
    if x.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(
            x.crow_indices(), x.col_indices(), fn(x.values()), size=x.shape
        )
    x = x.coalesce()
    return torch.sparse_coo_tensor(x.indices(), fn(x.values()), size=x.shape)


def to_dense(x: torch.Tensor) -> torch.Tensor:
    """Densify a sparse tensor (no-op for dense)."""
    return x if x.layout == torch.strided else x.to_dense()


class FactorisedBernoulli(BernoulliLogits):
    """Bernoulli decoder output kept in factored form: ``logits = h W^T + b + cell/region terms``.

    ``logits[n, j] = h[n] . W[j] + bias[j] + region_bias[j] + region_depth[j] * depth[n]``.

    The full logits matrix (cells x peaks) is built only when asked for (``.logits``,
    ``.probs``). ``log_prob_sum(x, n_sampled=k)`` scores the accessible entries exactly (a
    gather over the non-zeros of sparse ``x``) and estimates ``sum_j softplus(logit)`` from
    ``k`` peaks drawn uniformly without replacement for the minibatch, scaled by
    ``n_peaks / k``: an unbiased estimate of the log-likelihood at a fraction of the cost.
    """

    def __init__(
        self,
        h: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        depth: torch.Tensor,
        region_depth: torch.Tensor,
    ):
        self.h, self.weight, self.bias = h, weight, bias
        self.depth, self.region_depth = depth, region_depth
        self._full: torch.Tensor | None = None
        torch.distributions.Distribution.__init__(
            self, batch_shape=torch.Size((h.shape[0], weight.shape[0])), validate_args=False
        )

    @property
    def logits(self) -> torch.Tensor:  # type: ignore[override]
        """Full logits matrix (built once, on demand)."""
        if self._full is None:
            self._full = self._columns(None)
        return self._full

    @property
    def probs(self) -> torch.Tensor:  # type: ignore[override]
        """Accessibility probabilities."""
        return torch.sigmoid(self.logits)

    @property
    def param_shape(self) -> torch.Size:
        return self.batch_shape

    def _columns(
        self, cols: torch.Tensor | None, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The logits of the peaks ``cols`` (all: ``None``); ``rows``: their loadings, if taken."""
        if cols is None:
            return F.linear(self.h, self.weight, self.bias) + self.region_depth * self.depth
        if rows is None:
            rows = self.weight.index_select(0, cols)
        return (
            F.linear(self.h, rows, self.bias.index_select(0, cols))
            + self.region_depth.index_select(0, cols) * self.depth
        )

    def log_prob_sum(self, x: torch.Tensor, n_sampled: int | None = None) -> torch.Tensor:
        """Per-row ``log p(x)``; exact when ``n_sampled`` is None, else an unbiased estimate."""
        n_peaks = self.weight.shape[0]
        if n_sampled is None or n_sampled >= n_peaks:
            return super().log_prob_sum(x)
        if x.layout == torch.strided:
            x = x.to_sparse_csr()
        # sum_j x_j logit_j is linear in the logits: h . (sum_j x_j W_j) + sum_j x_j (b_j + a_j d)
        sampled = torch.randperm(n_peaks, device=self.h.device)[:n_sampled]
        # one gradient buffer for the loadings of both terms (benchmarks/RESULTS.md)
        w_sum, w_sampled = csr_matmul_and_rows(x, self.weight, sampled)
        b_sum = csr_matmul(x, torch.stack([self.bias, self.region_depth], 1))
        pos = (self.h * w_sum).sum(-1) + b_sum[:, 0] + b_sum[:, 1] * self.depth[:, 0]
        neg = _softplus(self._columns(sampled, w_sampled)).sum(-1) * (n_peaks / n_sampled)
        return pos - neg
