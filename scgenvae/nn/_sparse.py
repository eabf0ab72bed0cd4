"""Products of a sparse CSR minibatch with a dense weight matrix, with a fast weight gradient."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def csr_parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(crow_indices, col_indices, values)`` of a CSR tensor (COO is converted first)."""
    if x.layout != torch.sparse_csr:
        x = x.coalesce().to_sparse_csr() if x.layout == torch.sparse_coo else x.to_sparse_csr()
    return x.crow_indices(), x.col_indices(), x.values()


#: attribute of a sparse minibatch tensor holding its transposed sparsity patterns
_CACHE_ATTR = "_scgenvae_transposed"


def _pattern_cache(x: torch.Tensor) -> dict:
    """The transposed patterns computed for the minibatch ``x``, kept on ``x`` itself.

    Within a training step the same CSR minibatch enters several products (the encoder's first
    layer and the likelihood's accessible-peak sums), and each needs its transpose in the
    backward pass: it is computed once and lives as long as the minibatch does (nothing is
    kept between minibatches or keyed by memory addresses).
    """
    cache = getattr(x, _CACHE_ATTR, None)
    if cache is None:
        cache = {}
        setattr(x, _CACHE_ATTR, cache)
    return cache


def _transpose_pattern(crow: torch.Tensor, cols: torch.Tensor, n_features: int):
    """The transposed pattern as ``(order, rows, offsets)``.

    ``order``: the non-zeros ordered by feature (stable), ``rows``: their rows in that order,
    ``offsets``: where each feature's run starts.
    """
    n_rows = crow.numel() - 1
    if cols.device.type != "cpu":
        return _transpose_pattern_on_device(crow, cols, n_features)
    # counting sort in scipy's CSR -> CSC conversion: linear time, unlike a comparison sort
    from scipy import sparse

    positions = np.arange(cols.numel(), dtype=np.int64)
    csc = sparse.csr_matrix((positions, cols.numpy(), crow.numpy()), shape=(n_rows, n_features))
    csc = csc.tocsc()
    return (
        torch.from_numpy(csc.data),
        torch.from_numpy(csc.indices.astype(np.int64, copy=False)),
        torch.from_numpy(csc.indptr[:-1].astype(np.int64, copy=False)),
    )


def _transpose_pattern_on_device(crow: torch.Tensor, cols: torch.Tensor, n_features: int):
    """As :func:`_transpose_pattern`, in torch operations on the tensors' device (a GPU).

    Any device runs it (the tests compare it with the CPU path on the CPU).
    """
    n_rows = crow.numel() - 1
    order = torch.argsort(cols, stable=True)
    rows = torch.repeat_interleave(torch.arange(n_rows, device=cols.device), crow[1:] - crow[:-1])
    counts = torch.bincount(cols, minlength=n_features)
    return order, rows[order], torch.cumsum(counts, 0) - counts


class _CSRMatmul(torch.autograd.Function):
    """``x @ weight`` for a CSR ``x`` (data: no gradient), ``weight`` features x outputs.

    Forward: each row is the sum of the weight rows of its non-zero features, scaled by their
    values (an embedding-bag sum). Backward: the weight's gradient ``x^T g`` is the same kind of
    gather-sum over the transposed sparsity pattern (the rows of the small minibatch gradient
    ``g`` summed into each feature's row). torch's own embedding-bag backward instead writes a
    weighted copy of ``g``'s row for every non-zero, which on wide ATAC minibatches costs more
    than the whole forward pass.
    """

    @staticmethod
    def forward(ctx, weight, crow, cols, vals, cache):
        ctx.save_for_backward(crow, cols, vals)
        ctx.n_features = weight.shape[0]
        ctx.cache = cache
        return F.embedding_bag(
            cols, weight, offsets=crow[:-1], mode="sum", per_sample_weights=vals.to(weight.dtype)
        )

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        crow, cols, vals = ctx.saved_tensors
        return _weight_grad(ctx, grad, crow, cols, vals), None, None, None, None


def _weight_grad(ctx, grad, crow, cols, vals) -> torch.Tensor:
    """``x^T grad``: the gather-sum of ``grad``'s rows over the transposed pattern of ``x``."""
    if ctx.n_features not in ctx.cache:
        ctx.cache[ctx.n_features] = _transpose_pattern(crow, cols, ctx.n_features)
    order, rows, offsets = ctx.cache[ctx.n_features]
    return F.embedding_bag(
        rows,
        grad.contiguous(),
        offsets=offsets,
        mode="sum",
        per_sample_weights=vals.index_select(0, order).to(grad.dtype),
    )


class _CSRMatmulAndRows(torch.autograd.Function):
    """``(x @ weight, weight[index])`` with one gradient buffer for ``weight``.

    Two separate operations each give ``weight`` a dense gradient, and ``index_select``'s is
    zero-filled (``n_features x outputs``) every step before autograd adds the two. Here the
    gather-sum's gradient is built (it covers every row) and the selected rows' gradient is
    added into it in place.
    """

    @staticmethod
    def forward(ctx, weight, crow, cols, vals, cache, index):
        ctx.save_for_backward(crow, cols, vals, index)
        ctx.n_features = weight.shape[0]
        ctx.cache = cache
        product = F.embedding_bag(
            cols, weight, offsets=crow[:-1], mode="sum", per_sample_weights=vals.to(weight.dtype)
        )
        return product, weight.index_select(0, index)

    @staticmethod
    def backward(ctx, grad, grad_rows):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        crow, cols, vals, index = ctx.saved_tensors
        grad_weight = _weight_grad(ctx, grad, crow, cols, vals)
        if grad_rows is not None:
            grad_weight.index_add_(0, index, grad_rows)
        return grad_weight, None, None, None, None, None


def csr_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight`` for a sparse (CSR or COO) ``x``; differentiable in ``weight`` only.

    The cost is proportional to the non-zeros of ``x`` in both passes; nothing is densified.
    """
    crow, cols, vals = csr_parts(x)
    return _CSRMatmul.apply(weight, crow, cols, vals, _pattern_cache(x))


def csr_matmul_and_rows(
    x: torch.Tensor, weight: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x @ weight, weight[index])`` for a sparse ``x``, sharing one gradient of ``weight``."""
    crow, cols, vals = csr_parts(x)
    return _CSRMatmulAndRows.apply(weight, crow, cols, vals, _pattern_cache(x), index)


__all__ = ["csr_matmul", "csr_matmul_and_rows", "csr_parts"]
