"""Building blocks: fully connected stacks with covariate injection, encoders and decoder heads."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ._sparse import csr_matmul

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch.distributions import Normal


class CovariateInjection(nn.Module):
    """Adds the effect of categorical and continuous covariates to a layer's pre-activation.

    A one-hot vector times a weight matrix is a row lookup, so categorical covariates are
    injected with :class:`torch.nn.Embedding` (the same function as scvi-tools' one-hot
    concatenation, without building the one-hot matrix).

    Parameters
    ----------
    n_out
        Width of the layer the covariates are added to.
    n_cats_per_cov
        Number of categories of each categorical covariate (batch first).
    n_continuous_cov
        Number of continuous covariates.
    """

    def __init__(self, n_out: int, n_cats_per_cov: Sequence[int] = (), n_continuous_cov: int = 0):
        super().__init__()
        self.embeddings = nn.ModuleList(
            [nn.Embedding(n_cat, n_out) for n_cat in n_cats_per_cov if n_cat > 1]
        )
        self._active = [n_cat > 1 for n_cat in n_cats_per_cov]
        for emb in self.embeddings:
            nn.init.normal_(emb.weight, std=0.01)
        self.continuous = (
            nn.Linear(n_continuous_cov, n_out, bias=False) if n_continuous_cov else None
        )

    def forward(
        self, h: torch.Tensor, cat_list: Sequence[torch.Tensor], cont: torch.Tensor | None
    ) -> torch.Tensor:
        """Return ``h`` plus the covariate effects."""
        embeddings = iter(self.embeddings)
        for active, cat in zip(self._active, cat_list, strict=True):
            if active:
                h = h + next(embeddings)(cat.reshape(-1).long())
        if self.continuous is not None and cont is not None:
            h = h + self.continuous(cont)
        return h


class Dropout(nn.Module):
    """Inverted dropout whose mask comes from 16-bit lanes of 64-bit random integers.

    The same function as :class:`torch.nn.Dropout` (each unit is zeroed independently and the
    survivors are scaled by ``1 / (1 - p)``), with the drop probability rounded to a multiple
    of ``2**-16`` (``p = 0.1`` becomes 0.100006) and the survivors scaled by the rounded
    value, so the expected output equals the input exactly. Drawing a quarter as many random
    numbers as there are units makes the mask about six times cheaper than the Bernoulli draw
    of :func:`torch.nn.functional.dropout` on the CPU (measured on 128 x 256 hidden layers:
    34 vs 206 microseconds), where it was 9% of a PoissonVAE forward pass at batch size 128.
    All randomness comes from torch's global generator, as for :class:`torch.nn.Dropout`.

    Parameters
    ----------
    p
        Probability of zeroing a unit, in ``[0, 1)``.
    """

    def __init__(self, p: float = 0.1):
        super().__init__()
        if not 0 <= p < 1:
            msg = f"`dropout_rate` must be in [0, 1), got {p}."
            raise ValueError(msg)
        self.p = p
        self._drop_lanes = round(p * 65536)  # lanes below -32768 + this are dropped
        self._scale = 65536 / (65536 - self._drop_lanes)

    @property
    def effective_p(self) -> float:
        """The drop probability actually used (``p`` rounded to a multiple of ``2**-16``)."""
        return self._drop_lanes / 65536

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` with dropout applied in training mode (unchanged in eval mode)."""
        if not self.training or self._drop_lanes == 0:
            return x
        n = x.numel()
        words = torch.randint(
            -(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device
        )
        lanes = words.view(torch.int16)[:n].view(x.shape)
        keep = (lanes >= self._drop_lanes - 32768).to(x.dtype).mul_(self._scale)
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


#: density above which a sparse minibatch is densified for the first layer (measured crossover
#: of forward + backward time on CPU: ~0.2 at 2,000 features x 256 outputs)
_DENSE_ABOVE = 0.15


class SparseLinear(nn.Module):
    """``x W + b`` for dense or sparse (CSR/COO) ``x``, with ``W`` stored features x outputs.

    For sparse input the product is a gather-sum over each row's non-zero features (weighted by
    their values, :func:`~scgenvae.nn.csr_matmul`): the cost of both passes scales with the
    non-zeros and no minibatch is densified, unless it is dense enough that a dense product is
    faster.
    """

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        bound = 1.0 / n_in**0.5
        self.weight = nn.Parameter(torch.empty(n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x @ weight + bias``."""
        if x.layout == torch.strided:
            return torch.addmm(self.bias, x, self.weight)
        if x._nnz() > _DENSE_ABOVE * x.shape[0] * x.shape[1]:
            # dense enough that a dense matmul beats the gather
            return torch.addmm(self.bias, x.to_dense(), self.weight)
        return csr_matmul(x, self.weight) + self.bias


class FCLayers(nn.Module):
    """A stack of ``Linear -> covariates -> LayerNorm -> ReLU -> Dropout`` layers.

    Covariates are injected into every layer, which makes a decoder built on it a
    conditional decoder p(x | z, s).

    Parameters
    ----------
    n_in
        Input width.
    n_out
        Output width of every layer.
    n_layers
        Number of layers (at least 1).
    n_cats_per_cov
        Categories per categorical covariate.
    n_continuous_cov
        Number of continuous covariates.
    dropout_rate
        Dropout after each layer.
    sparse_input
        The first layer is a :class:`SparseLinear`, which takes sparse minibatches (wide ATAC
        matrices) without densifying them.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        n_layers: int = 1,
        n_cats_per_cov: Sequence[int] = (),
        n_continuous_cov: int = 0,
        dropout_rate: float = 0.1,
        sparse_input: bool = False,
    ):
        super().__init__()
        if n_layers < 1:
            msg = f"`n_layers` must be at least 1, got {n_layers}."
            raise ValueError(msg)
        self.sparse_input = sparse_input
        dims = [n_in] + [n_out] * n_layers
        first = SparseLinear(dims[0], dims[1]) if sparse_input else nn.Linear(dims[0], dims[1])
        self.linears = nn.ModuleList(
            [first]
            + [nn.Linear(d_in, d_out) for d_in, d_out in zip(dims[1:-1], dims[2:], strict=True)]
        )
        self.injections = nn.ModuleList(
            [CovariateInjection(n_out, n_cats_per_cov, n_continuous_cov) for _ in range(n_layers)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(n_out) for _ in range(n_layers)])
        self.dropout = Dropout(dropout_rate)

    def forward(
        self,
        x: torch.Tensor,
        cat_list: Sequence[torch.Tensor] = (),
        cont: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Map ``x`` (dense, or sparse when ``sparse_input``) through the stack."""
        h = x
        for i, (linear, inject, norm) in enumerate(
            zip(self.linears, self.injections, self.norms, strict=True)
        ):
            if i == 0 and h.layout != torch.strided and not self.sparse_input:
                h = h.to_dense()
            h = linear(h)
            h = inject(h, cat_list, cont)
            h = self.dropout(torch.relu(norm(h)))
        return h


class GaussianEncoder(nn.Module):
    """Encoder of a diagonal Gaussian posterior q(z | x, s).

    Returns the posterior as a :class:`torch.distributions.Normal` and a sample drawn with
    the reparameterisation ``z = mu + sigma * eps``.
    """

    def __init__(
        self,
        n_in: int,
        n_latent: int,
        *,
        n_hidden: int = 128,
        n_layers: int = 1,
        n_cats_per_cov: Sequence[int] = (),
        n_continuous_cov: int = 0,
        dropout_rate: float = 0.1,
        sparse_input: bool = False,
        var_eps: float = 1e-4,
    ):
        super().__init__()
        self.net = FCLayers(
            n_in,
            n_hidden,
            n_layers=n_layers,
            n_cats_per_cov=n_cats_per_cov,
            n_continuous_cov=n_continuous_cov,
            dropout_rate=dropout_rate,
            sparse_input=sparse_input,
        )
        self.mean = nn.Linear(n_hidden, n_latent)
        self.log_var = nn.Linear(n_hidden, n_latent)
        self.var_eps = var_eps

    def forward(
        self,
        x: torch.Tensor,
        cat_list: Sequence[torch.Tensor] = (),
        cont: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(mean, variance, hidden)`` of the posterior."""
        h = self.net(x, cat_list, cont)
        var = torch.exp(self.log_var(h).clamp(-15.0, 15.0)) + self.var_eps
        return self.mean(h), var, h


def reparameterize(q: Normal) -> torch.Tensor:
    """Draw ``z = mu + sigma * eps`` (differentiable in ``mu`` and ``sigma``)."""
    return q.rsample()
