"""Likelihood heads: one class per likelihood of a modality's decoder.

A head owns all that differs between likelihoods: how the data matrix is prepared (Bernoulli
binarises it) and read by the encoder, the decoder parameters the likelihood adds and their
initial values, the distribution built from the decoder's hidden layer and its per-cell
log-likelihood, the Gaussian prior (weight decay) on its loadings, and the predictive mean.
Adding a likelihood is one subclass of :class:`LikelihoodHead` registered with
:func:`register_head`; :class:`~scgenvae.module.ModalitySpec` then accepts its name.

A head is a stateless strategy, not an ``nn.Module``: :meth:`LikelihoodHead.build` registers
its parameters on the decoder itself, so their names in the state dict stay those of the
decoder (``decoders.<m>.head.weight``, ``decoders.<m>.log_theta``, ``decoders.<m>.region_bias``,
...) and models saved before the heads existed still load.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from scipy import sparse
from scvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial
from torch import nn

from scgenvae._constants import MODULE_KEYS
from scgenvae.distributions import FactorisedBernoulli, SoftmaxPoisson, sparse_map_values, to_dense

if TYPE_CHECKING:
    from torch.distributions import Distribution

#: registered heads by likelihood name (see :func:`register_head`)
HEADS: dict[str, type[LikelihoodHead]] = {}

_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(9)


def register_head(cls: type[LikelihoodHead]) -> type[LikelihoodHead]:
    """Class decorator: make ``cls`` the head of the likelihood named ``cls.name``."""
    if not cls.name:
        msg = f"{cls.__name__} needs a `name` to be registered."
        raise ValueError(msg)
    HEADS[cls.name] = cls
    return cls


def get_head(likelihood: str | LikelihoodHead) -> LikelihoodHead:
    """The head of a likelihood given by name (a new instance) or as a head (itself)."""
    if isinstance(likelihood, LikelihoodHead):
        return likelihood
    cls = HEADS.get(likelihood)
    if cls is None:
        msg = f"unknown likelihood {likelihood!r}; registered: {sorted(HEADS)}."
        raise ValueError(msg)
    return cls()


class LikelihoodHead:
    """The likelihood of one modality ``p(x | decoder output)``: the base of all heads.

    Subclasses set :attr:`name` and implement :meth:`distribution` and :meth:`log_likelihood`;
    the defaults of the other methods are those of count data.

    The methods taking ``decoder`` read the parameters that :meth:`build` put on it. Every
    decoder has the output layer ``decoder.head`` (``nn.Linear(n_hidden, n_input)``), the
    trunk's hidden layer ``h`` as input and a library-size model ``p(log library | z)``.
    """

    #: likelihood name (``ModalitySpec(likelihood=name)``)
    name: ClassVar[str] = ""
    #: the likelihood scores ``x > 0``: the data are binarised (:meth:`prepare`)
    binarize: ClassVar[bool] = False
    #: :meth:`distribution` accepts ``columns`` (a subset of features, computed alone): true
    #: where each feature's output does not depend on the others (not for softmax shares)
    column_subset: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # data ---------------------------------------------------------------------------
    def prepare(self, matrix):
        """The matrix (dense or scipy sparse) in the form the likelihood scores."""
        return matrix

    def column_means(self, matrix) -> np.ndarray:
        """Per-feature means of the prepared ``matrix`` (for :meth:`init_bias`)."""
        from scgenvae.model._data import column_means

        return column_means(matrix, binarize=self.binarize)

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the modality's encoder reads of a (dense or sparse) minibatch: ``log1p(x)``."""
        return sparse_map_values(x.float(), torch.log1p)

    # parameters ---------------------------------------------------------------------
    def build(self, decoder: nn.Module, n_hidden: int, n_input: int) -> None:
        """Add the likelihood's parameters to ``decoder``: here the output layer ``head``."""
        decoder.head = nn.Linear(n_hidden, n_input)

    @torch.no_grad()
    def init_bias(self, decoder: nn.Module, mean: torch.Tensor) -> None:
        """Start at the data's average profile (``mean``: per-feature means, float64).

        The output bias is the log of each feature's mean share of the library, so the
        softmax starts at the average composition.
        """
        share = mean / mean.sum().clamp(min=1e-12)
        decoder.head.bias.copy_(torch.log(share.clamp(min=1e-8)).to(decoder.head.bias.dtype))

    def weight_decay(self, decoder: nn.Module, coef: float) -> list[tuple[nn.Parameter, float]]:
        """``(parameter, coef)`` pairs under the loading prior of L2 coefficient ``coef``."""
        return []

    # distribution -------------------------------------------------------------------
    def library_for_decoding(self, library: torch.Tensor) -> torch.Tensor:
        """The observed library sizes as the decoder reads them (NaN: use the predicted one)."""
        return library

    def distribution(
        self,
        decoder: nn.Module,
        h: torch.Tensor,
        log_library: torch.Tensor,
        log_library_centre: float,
        *,
        columns: torch.Tensor | None = None,
    ) -> Distribution:
        """``p(x | h, library)`` of a minibatch (``h``: cells x n_hidden).

        ``columns`` (feature positions; heads with :attr:`column_subset` only) builds the
        distribution of those features alone.
        """
        raise NotImplementedError

    def log_likelihood(
        self,
        decoded: dict,
        x: torch.Tensor,
        *,
        library: torch.Tensor,
        n_sampled: int | None = None,
    ) -> torch.Tensor:
        """Per-cell ``log p(x)`` of a (dense or sparse) minibatch.

        ``decoded`` is the decoder's output (``px`` and the library model), ``library`` the
        observed library sizes, ``n_sampled`` a number of features a head may score by
        sampling during training (``None``: score all).
        """
        raise NotImplementedError

    def predictive_mean(
        self, decoded: dict, *, unobserved_depth: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normalised mean of the decoded modality: each feature's share of the library."""
        return decoded[MODULE_KEYS.PX_KEY].scale

    def predictive_mean_at_least(
        self, decoded: dict, threshold: float, *, unobserved_depth: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The entries of :meth:`predictive_mean` that are ``>= threshold``: rows, columns, values.

        Heads may skip entries they can bound below ``threshold`` without computing them; the
        result is the same as thresholding the dense predictive mean.
        """
        values = self.predictive_mean(decoded, unobserved_depth=unobserved_depth)
        rows, cols = (values >= threshold).nonzero(as_tuple=True)
        return rows, cols, values[rows, cols]


def _quadrature(base: torch.Tensor, sd: torch.Tensor, region_depth: torch.Tensor) -> torch.Tensor:
    """``E[sigmoid(base + e * sd * region_depth)]``, ``e ~ N(0, 1)``, by Gauss-Hermite quadrature.

    ``sd`` and ``region_depth`` broadcast against ``base`` (cells x peaks, or matching vectors
    of entries).
    """
    probs = torch.zeros_like(base)
    for node, weight in zip(_GH_NODES, _GH_WEIGHTS, strict=True):
        shift = (float(node) * sd) * region_depth
        probs += float(weight) * torch.sigmoid(base + shift)
    return probs / float(_GH_WEIGHTS.sum())


def _scale_and_mean(decoder: nn.Module, h: torch.Tensor, log_library: torch.Tensor):
    """Softmax shares of the library and the mean counts (shares times the library)."""
    scale = torch.softmax(decoder.head(h), dim=-1)
    return scale, log_library.exp().unsqueeze(-1) * scale


@register_head
class PoissonHead(LikelihoodHead):
    """Poisson counts with a library-size offset: ``x_g ~ Poisson(l softmax(head(h))_g)``.

    Used for gene counts and for ATAC fragment counts alike (the offset is the observed
    library size, or the predicted one where the modality is not observed).
    """

    name = "poisson"

    def distribution(self, decoder, h, log_library, log_library_centre):
        return SoftmaxPoisson(decoder.head(h), log_library)

    def log_likelihood(self, decoded, x, *, library, n_sampled=None):
        return decoded[MODULE_KEYS.PX_KEY].log_prob_sum(x)


@register_head
class NBHead(LikelihoodHead):
    """Negative binomial with mean ``l softmax(head(h))`` and gene-wise inverse dispersion."""

    name = "nb"

    def build(self, decoder, n_hidden, n_input):
        super().build(decoder, n_hidden, n_input)
        # gene-wise inverse dispersion, as scvi-tools' dispersion="gene"
        decoder.log_theta = nn.Parameter(torch.zeros(n_input))

    def distribution(self, decoder, h, log_library, log_library_centre):
        scale, mu = _scale_and_mean(decoder, h, log_library)
        return NegativeBinomial(mu=mu, theta=decoder.log_theta.exp(), scale=scale)

    def log_likelihood(self, decoded, x, *, library, n_sampled=None):
        return decoded[MODULE_KEYS.PX_KEY].log_prob(to_dense(x).float()).sum(-1)


@register_head
class ZINBHead(NBHead):
    """Zero-inflated negative binomial: :class:`NBHead` plus a cell- and gene-wise dropout."""

    name = "zinb"

    def build(self, decoder, n_hidden, n_input):
        super().build(decoder, n_hidden, n_input)
        decoder.dropout_head = nn.Linear(n_hidden, n_input)

    def distribution(self, decoder, h, log_library, log_library_centre):
        scale, mu = _scale_and_mean(decoder, h, log_library)
        return ZeroInflatedNegativeBinomial(
            mu=mu, theta=decoder.log_theta.exp(), zi_logits=decoder.dropout_head(h), scale=scale
        )


@register_head
class BernoulliHead(LikelihoodHead):
    """Binarised accessibility: ``logit p = h W^T + b + region_bias + region_depth * depth``.

    ``depth`` is the cell's centred log library size, a covariate of the decoder (observed,
    or predicted by ``p(log library | z)`` where the modality is not observed) that the
    likelihood scores too. The loadings ``W`` may carry a Gaussian prior (weight decay).
    """

    name = "bernoulli"
    binarize = True
    column_subset = True

    # data ---------------------------------------------------------------------------
    def prepare(self, matrix):
        """``matrix > 0`` as float32 (sparse stays sparse); a binary matrix is returned as is."""
        values = matrix.data if sparse.issparse(matrix) else np.asarray(matrix)
        if not values.size or np.isin(values, (0, 1)).all():
            return matrix
        return (matrix > 0).astype(np.float32)

    def encoder_input(self, x):
        return x.float()

    # parameters ---------------------------------------------------------------------
    def build(self, decoder, n_hidden, n_input):
        super().build(decoder, n_hidden, n_input)
        # the peak loadings start near zero (N(0, 1e-3^2)) instead of torch's default
        # (sd 1/sqrt(3 n_hidden) = 0.036 at 256): with the region bias at each peak's
        # log-odds, the decoder starts as the peak-frequency model, and the loadings grow
        # only where the data support it. From torch's default the random cell-specific
        # logits (sd ~0.4) took most of a 60-epoch run to unlearn on A549's 52,761 peaks,
        # each open in few cells: held-out AUROC from RNA 0.7545 / 0.7541 (below peak
        # frequency, 0.7549) and FOSCTTM 0.313 / 0.280 at seeds 1 / 2; near zero, 0.7568 /
        # 0.7560 and 0.279 / 0.264.
        nn.init.normal_(decoder.head.weight, std=1e-3)
        # region factor in logit space: offset and response to the cell's depth
        decoder.region_bias = nn.Parameter(torch.zeros(n_input))
        decoder.region_depth = nn.Parameter(torch.ones(n_input))

    @torch.no_grad()
    def init_bias(self, decoder, mean):
        """The region bias is the log-odds of each peak's frequency (not p = 0.5 everywhere)."""
        p = mean.clamp(1e-5, 1 - 1e-5)
        decoder.region_bias.copy_(torch.log(p / (1 - p)).to(decoder.region_bias.dtype))

    def weight_decay(self, decoder, coef):
        return [(decoder.head.weight, coef)]

    # distribution -------------------------------------------------------------------
    def library_for_decoding(self, library):
        # an unobserved modality has no depth: use p(log library | z) instead
        return torch.where(library > 0, library, torch.nan)

    def distribution(self, decoder, h, log_library, log_library_centre, *, columns=None):
        weight, bias = decoder.head.weight, decoder.head.bias + decoder.region_bias
        region_depth = decoder.region_depth
        if columns is not None:  # each peak's logit is its own: compute the asked ones only
            weight, bias = weight.index_select(0, columns), bias.index_select(0, columns)
            region_depth = region_depth.index_select(0, columns)
        return FactorisedBernoulli(
            h, weight, bias, (log_library - log_library_centre).unsqueeze(-1), region_depth
        )

    def log_likelihood(self, decoded, x, *, library, n_sampled=None):
        """Log-likelihood of the peaks and of the log depth under ``p(log library | z)``.

        The inaccessible part is estimated from ``n_sampled`` peaks where there are more
        than twice as many (unbiased, see :class:`~scgenvae.distributions.FactorisedBernoulli`).
        """
        use_k = n_sampled is not None and x.shape[-1] > 2 * n_sampled
        ll = decoded[MODULE_KEYS.PX_KEY].log_prob_sum(x, n_sampled=n_sampled if use_k else None)
        pl = decoded[MODULE_KEYS.LIBRARY_KEY]
        return ll + pl.log_prob(torch.log(library.clamp(min=1.0)))

    def predictive_mean(self, decoded, *, unobserved_depth=None):
        """Accessibility probabilities.

        For cells flagged in ``unobserved_depth`` (no observed depth in this modality), they
        are averaged over ``p(log depth | z)`` by Gauss-Hermite quadrature: the posterior
        predictive, rather than the probability at the predicted depth alone.
        """
        px = decoded[MODULE_KEYS.PX_KEY]
        if unobserved_depth is None or not isinstance(px, FactorisedBernoulli):
            return px.probs
        sd = decoded[MODULE_KEYS.LIBRARY_KEY].scale.reshape(-1, 1)
        sd = sd * unobserved_depth.reshape(-1, 1)
        return _quadrature(px.logits, sd, px.region_depth)

    def predictive_mean_at_least(self, decoded, threshold, *, unobserved_depth=None):
        """As the base class, computing only the entries that can reach ``threshold``.

        The average over the unobserved depth reaches ``threshold`` only from a logit that
        depends on its spread (:class:`_NeededLogit`). Peaks that no cell of the rows can lift
        to it (bounding ``h . W_j`` by ``|h| |W_j|``) are not decoded, and the quadrature runs
        only for the entries whose logit reaches it.
        """
        px = decoded[MODULE_KEYS.PX_KEY]
        if unobserved_depth is None or not isinstance(px, FactorisedBernoulli):
            return super().predictive_mean_at_least(
                decoded, threshold, unobserved_depth=unobserved_depth
            )
        sd = decoded[MODULE_KEYS.LIBRARY_KEY].scale.reshape(-1, 1)
        sd = sd * unobserved_depth.reshape(-1, 1)
        rd = px.region_depth
        # the logit an entry needs, as a function of its spread s = sd * |region_depth|
        needed = _NeededLogit(threshold, float((sd.max() * rd.abs().max()).detach()), px.h.dtype)
        # peaks that no row can bring to what they need are not computed at all: h . W_j is
        # at most |h| |W_j| (Cauchy-Schwarz; 1e-4 covers the float32 rounding of the dot
        # products), the depth term at most its value at the deepest or shallowest cell
        depth = px.depth.reshape(-1)
        reach = (
            px.h.norm(dim=-1).max() * self._row_norms(px.weight) * (1 + 1e-4)
            + px.bias
            + torch.maximum(rd * depth.max(), rd * depth.min())
        )
        peaks = (reach >= needed(sd.max() * rd.abs())).nonzero(as_tuple=True)[0]
        base = px._columns(peaks)
        rd = rd.index_select(0, peaks)
        rows, cols = (base >= needed(sd * rd.abs())).nonzero(as_tuple=True)
        probs = _quadrature(base[rows, cols], sd[rows, 0], rd[cols])
        keep = probs >= threshold
        return rows[keep], peaks[cols[keep]], probs[keep]

    def _row_norms(self, weight: torch.Tensor) -> torch.Tensor:
        """``|W_j|`` per peak, kept while the loadings are the same tensor, unchanged.

        A getter decodes a few rows at a time with the same weights (A549, 52,761 x 256:
        2 ms per chunk otherwise).
        """
        if weight.is_inference():  # no version counter to tell a change: not kept
            return weight.norm(dim=-1)
        cached = getattr(self, "_norms", None)
        if cached is None or cached[0]() is not weight or cached[1] != weight._version:
            cached = (weakref.ref(weight), weight._version, weight.detach().norm(dim=-1))
            self._norms = cached
        return cached[2]


class _NeededLogit:
    """Lower bound of the logit ``l`` that ``E[sigmoid(l + s Z)] >= threshold`` needs, by spread s.

    ``E`` is the Gauss-Hermite average of :func:`_quadrature`. Each pair of nodes +-a (equal
    weights) averages ``sigmoid(l + a)`` and ``sigmoid(l - a)``, which lies between
    ``sigmoid(l)`` and 1/2 (closer to 1/2 as a grows). So from threshold 1/2 up an entry needs
    ``l >= logit(threshold)`` whatever its spread; below 1/2 the spread lifts negative logits
    and the logit needed, ``l*(s)``, falls as ``s`` grows: it is found by bisection on a grid of
    spreads, and a spread between two grid points is given the value at the upper one (a lower
    bound, as ``l*`` falls). A margin of 1e-3 in logit space covers rounding; within 16 ulps of
    1 the average rounds to 1 (float32: from logit 13 on), so threshold 1 keeps those entries.
    """

    def __init__(self, threshold: float, max_spread: float, dtype: torch.dtype, n_grid: int = 64):
        top = min(threshold, 1.0 - 16 * torch.finfo(dtype).eps)
        self.cut = float(np.log(top / (1.0 - top))) - 1e-3
        self.table = None
        if threshold < 0.5 and max_spread > 0:
            self.step = max_spread / n_grid
            spreads = self.step * np.arange(n_grid + 1)
            lo = self.cut - float(np.abs(_GH_NODES).max()) * spreads - 1.0  # mean below t there
            hi = np.full_like(spreads, self.cut + 1e-3)  # mean at least t there (l < 0)
            weights = _GH_WEIGHTS / _GH_WEIGHTS.sum()
            for _ in range(50):
                mid = 0.5 * (lo + hi)
                mean = (weights * _expit(mid[:, None] + _GH_NODES * spreads[:, None])).sum(1)
                reached = mean >= threshold
                hi, lo = np.where(reached, mid, hi), np.where(reached, lo, mid)
            self.table = torch.as_tensor(lo - 1e-3, dtype=dtype)

    def __call__(self, spread: torch.Tensor) -> torch.Tensor | float:
        if self.table is None:
            return self.cut
        table = self.table.to(spread.device)
        index = torch.ceil(spread / self.step).long().clamp_(0, len(table) - 1)
        return table[index]


def _expit(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


__all__ = [
    "HEADS",
    "BernoulliHead",
    "LikelihoodHead",
    "NBHead",
    "PoissonHead",
    "ZINBHead",
    "get_head",
    "register_head",
]
