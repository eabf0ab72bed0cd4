"""Products of a sparse CSR minibatch with a dense weight matrix, with a fast weight gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def csr_parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(crow_indices, col_indices, values)`` of a CSR tensor (COO is converted first)."""
    if x.layout != torch.sparse_csr:
        x = x.coalesce().to_sparse_csr() if x.layout == torch.sparse_coo else x.to_sparse_csr()
    return x.crow_indices(), x.col_indices(), x.values()


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
    def forward(ctx, weight, crow, cols, vals):
        ctx.save_for_backward(crow, cols, vals)
        ctx.n_features = weight.shape[0]
        return F.embedding_bag(
            cols, weight, offsets=crow[:-1], mode="sum", per_sample_weights=vals.to(weight.dtype)
        )

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        crow, cols, vals = ctx.saved_tensors
        # the transposed pattern: non-zeros ordered by feature, each with its row
        order = torch.argsort(cols, stable=True)
        rows = torch.repeat_interleave(
            torch.arange(crow.numel() - 1, device=cols.device), crow[1:] - crow[:-1]
        )
        counts = torch.bincount(cols, minlength=ctx.n_features)
        offsets = torch.cumsum(counts, 0) - counts
        grad_weight = F.embedding_bag(
            rows[order],
            grad.contiguous(),
            offsets=offsets,
            mode="sum",
            per_sample_weights=vals[order].to(grad.dtype),
        )
        return grad_weight, None, None, None


def csr_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight`` for a sparse (CSR or COO) ``x``; differentiable in ``weight`` only.

    The cost is proportional to the non-zeros of ``x`` in both passes; nothing is densified.
    """
    crow, cols, vals = csr_parts(x)
    return _CSRMatmul.apply(weight, crow, cols, vals)


__all__ = ["csr_matmul", "csr_parts"]
