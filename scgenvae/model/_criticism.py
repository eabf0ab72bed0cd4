"""Model criticism: ELBO, reconstruction error, marginal log-likelihood, posterior predictive.

The getters follow scvi-tools' names and sign conventions (``VAEMixin.get_elbo``,
``get_reconstruction_error``, ``get_marginal_ll``, ``RNASeqMixin.posterior_predictive_sample``,
``MULTIVI.get_library_size_factors`` and ``get_region_factors``) on scgenvae's inference
machinery: the same minibatches, inference and ``loss`` as training, in eval mode and with the
KL weight at 1 (not the warm-up's). They score every likelihood the same way, so comparing
them between models fitted with ``"poisson"``, ``"nb"`` or ``"zinb"`` genes (or Bernoulli and
Poisson peaks) on the same held-out cells tells which likelihood describes the data better.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from scgenvae._constants import MODULE_KEYS
from scgenvae._docs import doc_params, getter

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ._de import RNGLike, SeedLike


_docs = {
    **getter,
    "modality": """\
modality
    Posterior used: ``"joint"`` (every observed modality) or one modality's encoder alone;
    the likelihood of every observed modality is scored either way.""",
    "rng": """\
rng
    Seed or :class:`numpy.random.Generator` of the posterior (and predictive) draws
    (``None``: fresh entropy). torch's global generator is left as it was.""",
    "return_mean": """\
return_mean
    Return the mean over cells (a float) rather than one value per cell (an array).""",
}


@contextmanager
def _seeded_torch(rng: SeedLike | RNGLike, device: torch.device) -> Iterator[None]:
    """Run torch's sampling from a seed drawn from ``rng``; restore its generator after."""
    seed = int(np.random.default_rng(rng).integers(2**63 - 1))
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        msg = f"`{name}` must be a positive integer, got {value!r}."
        raise ValueError(msg)
    return int(value)


def _mean_or_cells(values: list[torch.Tensor], *, return_mean: bool) -> float | np.ndarray:
    out = torch.cat(values).double().cpu().numpy()
    return float(out.mean()) if return_mean else out


class CriticismMixin:
    """ELBO, reconstruction error, marginal log-likelihood and posterior predictive samples."""

    # ------------------------------------------------------------------ shared passes
    def _device(self) -> torch.device:
        return next(self.module.parameters()).device

    def _libraries_for_decoding(self, inf: dict) -> dict[str, torch.Tensor]:
        """The observed library sizes; NaN (predicted from ``z``) where a modality is missing."""
        observed = inf[MODULE_KEYS.OBSERVED_KEY]
        return {
            m: torch.where(observed[m], lib, torch.full_like(lib, torch.nan))
            for m, lib in inf[MODULE_KEYS.LIBRARY_KEY].items()
        }

    def _losses_at(self, tensors: dict, inf: dict, z: torch.Tensor):
        """The module's loss terms at ``z`` (KL weight 1, observed libraries), in eval mode."""
        inf = {**inf, MODULE_KEYS.Z_KEY: z}
        gen_in = self.module._get_generative_input(tensors, inf)
        gen = self.module.generative(**gen_in)
        return self.module.loss(tensors, inf, gen, kl_weight=1.0, loading_prior_in_loss=False)

    def _terms(self, adata, *, indices, batch_size, modality, rng) -> Iterator:
        """Per minibatch: the module's loss terms at one posterior sample (KL weight 1)."""
        use = self._modality_arg(modality)
        self._check_if_trained(warn=False)
        with _seeded_torch(rng, self._device()):
            for tensors, inf in self._iter_inference(
                adata, indices=indices, batch_size=batch_size, use_modalities=use
            ):
                yield self._losses_at(tensors, inf, inf[MODULE_KEYS.Z_KEY])

    # ------------------------------------------------------------------ getters
    def get_elbo(
        self,
        adata=None,
        *,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        modality: str = "joint",
        return_mean: bool = True,
        rng: SeedLike | RNGLike = None,
    ) -> float | np.ndarray:
        """Evidence lower bound (ELBO) of each cell, from one posterior sample.

        ``ELBO = E_q[log p(x | z, l)] - KL(q(z | x) || p(z))`` (plus ``- KL(q(c | x) || p(c))``
        with a discrete latent), summed over the observed modalities, with the KL weight at 1:
        not the KL warm-up's weight, and without the training-only terms (MultiVAE's alignment
        term and loading prior). Count likelihoods are conditional on the observed library
        size ``l``; a Bernoulli ATAC likelihood also scores the cell's log ATAC depth under
        ``p(log l | z)``. As in scvi-tools, this is the ELBO, not its negative: higher is
        better, and on the training cells it is minus the training history's ``elbo_train``
        (which is also computed at KL weight 1) up to the parameter updates within an epoch,
        dropout and MultiVAE's modality dropout.

        Parameters
        ----------
        {adata}
        {indices}
        {batch_size}
        {modality}
        {return_mean}
        {rng}

        Returns
        -------
        The mean ELBO over cells (nats per cell) or, with ``return_mean=False``, an array of
        one ELBO per cell.
        """
        out = []
        for losses in self._terms(
            adata, indices=indices, batch_size=batch_size, modality=modality, rng=rng
        ):
            nelbo = sum(losses.reconstruction_loss.values()) + sum(losses.kl_local.values())
            out.append(-nelbo)
        return _mean_or_cells(out, return_mean=return_mean)

    def get_reconstruction_error(
        self,
        adata=None,
        *,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        modality: str = "joint",
        return_mean: bool = True,
        rng: SeedLike | RNGLike = None,
    ) -> dict[str, float | np.ndarray]:
        """Reconstruction error ``-log p(x | z, l)`` of each modality, from one posterior sample.

        As scvi-tools' values (whose docstring says otherwise): a negative log-likelihood, so
        lower is better. A cell that lacks a modality contributes 0 to that modality. With
        ``modality="rna"`` the ATAC error measures how well accessibility is predicted from
        expression alone (and vice versa). On the training cells, the sum over modalities is
        the training history's ``reconstruction_loss_train`` (see :meth:`get_elbo`).

        Parameters
        ----------
        {adata}
        {indices}
        {batch_size}
        {modality}
        {return_mean}
        {rng}

        Returns
        -------
        A dict keyed by modality (``"rna"``, ``"atac"``) of the mean over cells (nats per cell)
        or, with ``return_mean=False``, of an array with one value per cell.
        """
        out: dict[str, list] = {m: [] for m in self.module.modalities}
        for losses in self._terms(
            adata, indices=indices, batch_size=batch_size, modality=modality, rng=rng
        ):
            for m, value in losses.reconstruction_loss.items():
                out[m].append(value)
        return {m: _mean_or_cells(v, return_mean=return_mean) for m, v in out.items()}

    def get_marginal_ll(
        self,
        adata=None,
        *,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 1000,
        batch_size: int | None = None,
        modality: str = "joint",
        return_mean: bool = True,
        rng: SeedLike | RNGLike = None,
    ) -> float | np.ndarray:
        """Marginal log-likelihood ``log p(x | l)`` of each cell, by importance sampling.

        ``log (1/K) sum_k p(x | z_k, l) p(z_k) / q(z_k | x)`` with ``K = n_mc_samples`` draws
        ``z_k ~ q(z | x)``, as scvi-tools' ``get_marginal_ll``. With a discrete latent, ``p(z)``
        is the mixture's marginal ``(1/K') sum_c p(z | c)``. The estimate is a lower bound in
        expectation (a biased estimator) that rises towards ``log p(x)`` as ``n_mc_samples``
        grows, and is at least the ELBO on average. Conditioning is that of :meth:`get_elbo`
        (observed library sizes; a Bernoulli ATAC likelihood includes the depth's density).
        Higher is better. Compare models on the same held-out cells: the numbers are in nats
        per cell, comparable between likelihoods of the same data (counts for count
        likelihoods; Bernoulli peaks are binarised, so compare Bernoulli with Bernoulli).

        The time grows linearly with ``n_mc_samples`` (one decoder pass per draw and
        minibatch); 100 draws often suffice to rank models.

        Parameters
        ----------
        {adata}
        {indices}
        n_mc_samples
            Importance samples per cell.
        {batch_size}
        {modality}
        {return_mean}
        {rng}

        Returns
        -------
        The mean over cells (nats per cell) or, with ``return_mean=False``, an array of one
        value per cell.
        """
        n_mc_samples = _positive_int(n_mc_samples, "n_mc_samples")
        use = self._modality_arg(modality)
        self._check_if_trained(warn=False)
        prior = self.module.prior
        out = []
        with _seeded_torch(rng, self._device()):
            for tensors, inf in self._iter_inference(
                adata, indices=indices, batch_size=batch_size, use_modalities=use
            ):
                qz = inf[MODULE_KEYS.QZ_KEY]
                log_w = []
                for k in range(n_mc_samples):
                    # the first draw is inference's (that of get_elbo with the same rng)
                    z = inf[MODULE_KEYS.Z_KEY] if k == 0 else qz.sample()
                    losses = self._losses_at(tensors, inf, z)
                    log_px = -sum(losses.reconstruction_loss.values())
                    log_w.append(log_px + prior.log_prob(z) - qz.log_prob(z).sum(-1))
                log_w = torch.stack(log_w).double()
                out.append(torch.logsumexp(log_w, 0) - math.log(n_mc_samples))
        return _mean_or_cells(out, return_mean=return_mean)

    def posterior_predictive_sample(
        self,
        adata=None,
        *,
        indices: Sequence[int] | None = None,
        n_samples: int = 1,
        gene_list: Sequence[str] | None = None,
        target: str | None = None,
        modality: str = "joint",
        transform_batch: str | None = None,
        batch_size: int | None = None,
        rng: SeedLike | RNGLike = None,
    ) -> sparse.csr_matrix:
        """Draws from the posterior predictive ``p(x_hat | x)``, as a sparse matrix.

        Each draw samples ``z ~ q(z | x)`` and then ``x_hat ~ p(x | z, l)`` from the
        modality's likelihood at the cell's observed library size (the conditioning of
        :meth:`get_elbo`; predicted from ``z`` for a cell that lacks the modality). Compare
        statistics of the draws with those of the data (posterior predictive checks: zeros
        per gene, variance-to-mean ratios, library sizes).

        Parameters
        ----------
        {adata}
        {indices}
        n_samples
            Draws per cell.
        gene_list
            Names of the features of ``target`` to keep (genes, or peaks); ``None``: all.
            Columns keep the model's feature order.
        target
            Modality to sample (``"rna"`` or ``"atac"``); ``None``: the first, ``"rna"``.
        {modality}
        {transform_batch}
        {batch_size}
        {rng}

        Returns
        -------
        A :class:`scipy.sparse.csr_matrix` (float32) of shape ``(n_samples * n_cells,
        n_features)``: draw ``s`` of the cells is the row block ``s * n_cells`` to
        ``(s + 1) * n_cells``, the cells in the order given. One draw is ``(n_cells,
        n_features)``. (scvi-tools returns a 3-d ``sparse.GCXS`` of cells x genes x samples
        when ``n_samples > 1``; a 2-d CSR can be the ``X`` of an AnnData of the replicates.)
        """
        n_samples = _positive_int(n_samples, "n_samples")
        target = next(iter(self.module.modalities)) if target is None else target
        if target not in self.module.modalities:
            msg = f"`target={target!r}` is not one of {list(self.module.modalities)}."
            raise ValueError(msg)
        columns = self._feature_mask(target, gene_list)
        use = self._modality_arg(modality)
        code = self._batch_code(transform_batch)
        self._check_if_trained(warn=False)
        draws: list[list[sparse.csr_matrix]] = [[] for _ in range(n_samples)]
        with _seeded_torch(rng, self._device()):
            for tensors, inf in self._iter_inference(
                adata, indices=indices, batch_size=batch_size, use_modalities=use
            ):
                qz = inf[MODULE_KEYS.QZ_KEY]
                gen_in = self.module._get_generative_input(tensors, inf)
                gen_in[MODULE_KEYS.LIBRARY_KEY] = self._libraries_for_decoding(inf)
                for s in range(n_samples):
                    gen_in[MODULE_KEYS.Z_KEY] = qz.sample()
                    gen = self.module.generative(**gen_in, transform_batch=code)
                    x = gen[target][MODULE_KEYS.PX_KEY].sample()
                    if columns is not None:
                        x = x[:, columns]
                    draws[s].append(sparse.csr_matrix(x.to(torch.float32).cpu().numpy()))
        return sparse.vstack([block for d in draws for block in d], format="csr")

    def _feature_mask(self, target: str, names: Sequence[str] | None) -> torch.Tensor | None:
        if names is None:
            return None
        if isinstance(names, str):
            msg = f"`gene_list` must be a list of feature names, got the string {names!r}."
            raise TypeError(msg)
        features = self.feature_names[target]
        missing = pd.Index(names).difference(features)
        if len(missing):
            msg = (
                f"`gene_list`: {len(missing)} name(s) are not {target} features of the model, "
                f"e.g. {list(missing[:5])}; see `model.feature_names[{target!r}]`."
            )
            raise ValueError(msg)
        return torch.from_numpy(np.flatnonzero(features.isin(names)))

    def get_library_size_factors(
        self,
        adata=None,
        *,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Library size of each cell and modality, as the decoders condition on it.

        The observed total counts (or accessible peaks) where the cell has the modality: the
        library size the likelihoods of :meth:`get_elbo` are conditioned on. Where it lacks
        the modality, the size predicted by ``p(log l | z)`` at the posterior mean, as used
        for decoding. This takes the role of MULTIVI's learned library size factors
        (``"expression"`` / ``"accessibility"`` there, ``"rna"`` / ``"atac"`` here).

        Parameters
        ----------
        {adata}
        {indices}
        {batch_size}

        Returns
        -------
        A DataFrame indexed by cell name with one column per modality.
        """
        out: dict[str, list] = {m: [] for m in self.module.modalities}
        for tensors, inf in self._iter_inference(adata, indices=indices, batch_size=batch_size):
            gen_in = self.module._get_generative_input(tensors, inf)
            gen_in[MODULE_KEYS.Z_KEY] = inf[MODULE_KEYS.QZ_KEY].loc
            gen = self.module.generative(**gen_in)
            for m in out:
                seen = inf[MODULE_KEYS.OBSERVED_KEY][m]
                predicted = gen[m][MODULE_KEYS.LIBRARY_KEY].loc.exp()
                lib = inf[MODULE_KEYS.LIBRARY_KEY][m]
                out[m].append(torch.where(seen, lib, predicted).double().cpu().numpy())
        names = self._obs_names if adata is None else pd.Index(adata.obs_names)
        positions = self._cell_indices(indices, adata)
        if positions is not None:
            names = names[positions]
        return pd.DataFrame({m: np.concatenate(v) for m, v in out.items()}, index=names)


class MultiVAECriticismMixin(CriticismMixin):
    """:class:`CriticismMixin` plus the region factors of MultiVAE's Bernoulli peaks."""

    def get_region_factors(self) -> pd.DataFrame:
        """Per-peak parameters of the Bernoulli accessibility likelihood.

        The logit of peak ``j`` in a cell is ``h W_j + region_logit_j + depth_response_j *
        d``, with ``d`` the cell's log ATAC depth centred on the training mean:
        ``region_logit`` is the peak's offset (the decoder's output bias plus its region
        bias), ``region_factor = sigmoid(region_logit)`` its accessibility probability at the
        mean depth with the cell-specific term at zero (the role of MULTIVI's region factors,
        which are probabilities too), and ``depth_response`` how the peak's logit moves with
        the cell's depth.

        Returns
        -------
        A DataFrame indexed by peak name with columns ``region_factor``, ``region_logit`` and
        ``depth_response``.
        """
        with torch.inference_mode():
            self._check_if_trained(warn=False)
            decoder = self.module.decoders["atac"]
            if not hasattr(decoder, "region_bias"):
                msg = (
                    "region factors are parameters of the Bernoulli ATAC likelihood; this model "
                    f"has `atac_likelihood={self._atac_likelihood!r}`."
                )
                raise ValueError(msg)
            logit = (decoder.head.bias + decoder.region_bias).double().cpu().numpy()
            return pd.DataFrame(
                {
                    "region_factor": 1.0 / (1.0 + np.exp(-logit)),
                    "region_logit": logit,
                    "depth_response": decoder.region_depth.double().cpu().numpy(),
                },
                index=self.feature_names["atac"],
            )


__all__ = ["CriticismMixin", "MultiVAECriticismMixin"]


# docstrings filled after the class bodies, not by decorators: mutmut leaves decorated
# functions unmutated (docs/dev/mutation.md)
doc_params(**_docs)(CriticismMixin.get_elbo)
doc_params(**_docs)(CriticismMixin.get_reconstruction_error)
doc_params(**_docs)(CriticismMixin.get_marginal_ll)
doc_params(**_docs)(CriticismMixin.posterior_predictive_sample)
doc_params(**_docs)(CriticismMixin.get_library_size_factors)
