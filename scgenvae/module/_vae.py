"""The torch module shared by PoissonVAE and MultiVAE: one encoder and one decoder per modality.

A single-modality model (PoissonVAE) is the special case with one entry in ``modalities``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn
from torch.distributions import Normal, kl_divergence

from scgenvae._constants import MODULE_KEYS, REGISTRY_KEYS
from scgenvae.distributions import sparse_row_sums
from scgenvae.nn import FCLayers, GaussianEncoder

from ._heads import LikelihoodHead, get_head
from ._priors import GaussianMixturePrior, StandardNormalPrior

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(frozen=True)
class ModalitySpec:
    """What the module needs to know about one modality.

    Parameters
    ----------
    registry_key
        Key of the modality's matrix in the minibatch dict.
    n_input
        Number of features.
    likelihood
        Name of a registered likelihood (``"poisson"`` with a library-size offset, ``"nb"``,
        ``"zinb"`` or ``"bernoulli"``; see :mod:`scgenvae.module._heads`) or a
        :class:`~scgenvae.module.LikelihoodHead`.
    """

    registry_key: str
    n_input: int
    likelihood: str | LikelihoodHead = "poisson"

    def __post_init__(self) -> None:
        _ = self.head  # an unknown likelihood fails here, not at the first minibatch

    @cached_property
    def head(self) -> LikelihoodHead:
        """The likelihood head of the modality (one instance per spec)."""
        return get_head(self.likelihood)


class _Decoder(nn.Module):
    """Conditional decoder p(x_m | z, s) of one modality: a trunk plus a likelihood head."""

    def __init__(
        self,
        spec: ModalitySpec,
        n_latent: int,
        *,
        n_hidden: int,
        n_layers: int,
        n_cats_per_cov: tuple[int, ...],
        n_continuous_cov: int,
        dropout_rate: float,
    ):
        super().__init__()
        #: the likelihood head (a strategy, not a submodule: its parameters are the decoder's)
        self.likelihood = spec.head
        self.trunk = FCLayers(
            n_latent,
            n_hidden,
            n_layers=n_layers,
            n_cats_per_cov=n_cats_per_cov,
            n_continuous_cov=n_continuous_cov,
            dropout_rate=dropout_rate,
        )
        self.likelihood.build(self, n_hidden, spec.n_input)
        # p(log library | z): lets us predict depth when the modality is not observed
        self.library_head = nn.Linear(n_latent, 1)
        self.library_log_sd = nn.Parameter(torch.zeros(1))

    def forward(
        self,
        z: torch.Tensor,
        library: torch.Tensor | None,
        log_library_centre: float,
        cat_list: list[torch.Tensor],
        cont: torch.Tensor | None,
        columns: torch.Tensor | None = None,
    ) -> dict[str, torch.distributions.Distribution | torch.Tensor]:
        """Return the distribution of the modality and of its log library size.

        ``library`` is the observed library size (``None`` when unobserved: the prediction
        of ``p(log library | z)`` is used in its place). ``columns`` (feature positions) builds
        the distribution of those features only; only heads with
        :attr:`~scgenvae.module.LikelihoodHead.column_subset` accept it.
        """
        h = self.trunk(z, cat_list, cont)
        pl = Normal(
            self.library_head(z).squeeze(-1) + log_library_centre,
            self.library_log_sd.exp(),
            validate_args=False,
        )
        if library is None:
            log_lib = pl.loc
        else:
            log_lib = torch.where(
                torch.isnan(library), pl.loc, torch.log(library.nan_to_num(1.0).clamp(min=1.0))
            )
        if columns is None:
            px = self.likelihood.distribution(self, h, log_lib, log_library_centre)
        else:
            px = self.likelihood.distribution(
                self, h, log_lib, log_library_centre, columns=columns
            )
        return {
            MODULE_KEYS.PX_KEY: px,
            MODULE_KEYS.LIBRARY_KEY: pl,
            MODULE_KEYS.HEAD_KEY: self.likelihood,
        }


def _product_of_experts(
    means: list[torch.Tensor], variances: list[torch.Tensor], masks: list[torch.Tensor]
) -> Normal:
    """Gaussian product of a standard-normal prior expert and the masked modality experts."""
    precision = torch.ones_like(means[0])
    weighted = torch.zeros_like(means[0])
    for mu, var, mask in zip(means, variances, masks, strict=True):
        m = mask.unsqueeze(-1).to(mu.dtype)
        precision = precision + m / var
        weighted = weighted + m * mu / var
    var = 1.0 / precision
    return Normal(weighted * var, var.sqrt(), validate_args=False)


class MultiModalVAEModule(BaseModuleClass):
    """Torch module of a (multi-modal) conditional VAE with a joint latent ``z``.

    Generative process, for each observed modality ``m`` of a cell with batch/covariates ``s``:
    ``z ~ p(z)`` (standard normal, or a Gaussian mixture with a categorical ``c`` when
    ``n_clusters`` is set), ``x_m ~ p(x_m | z, s, l_m)``.

    Inference: each modality has a Gaussian expert ``q_m(z | x_m, s)``. With one modality the
    expert is the posterior. With several, the joint posterior is the product of the experts
    of the observed modalities and the prior (product of experts), so cells that lack a
    modality are embedded in the same space from what they have.

    Parameters
    ----------
    modalities
        Modality name -> :class:`ModalitySpec`.
    n_batch
        Number of batches (0 or 1 for none).
    n_cats_per_cov
        Categories of each extra categorical covariate.
    n_continuous_cov
        Number of continuous covariates.
    n_hidden, n_latent, n_layers, dropout_rate
        Network sizes, as in scvi-tools.
    encode_covariates
        Condition the encoders on batch and covariates too (``q(z | x, s)``).
    library_log_means
        Mean log library size of each modality in the training data (centres the depth terms).
    modality_dropout
        For cells with several modalities, the probability that training uses the posterior of
        one modality alone (each modality equally often). Any ``q`` gives a valid ELBO, and this
        one trains cross-modal prediction at no extra cost.
    alignment_weight
        Weight of the symmetric KL divergence ``KL(q_a || q_b) + KL(q_b || q_a)`` between the
        single-modality posteriors (each expert times the prior) of paired cells, which pulls
        them onto each other. This term is not part of the ELBO and is not annealed with the
        KL warm-up. It replaces ``sum_m KL(q_joint || q_m)``, which diverged under a long
        warm-up: the product of experts is always narrower than each single-modality posterior,
        so matching it shrank the experts without bound while the ELBO's KL weight was small.
    n_sampled_peaks
        Bernoulli likelihoods with more features than twice this: during training, score the
        inaccessible part of the likelihood on this many peaks drawn per minibatch (unbiased,
        see :class:`~scgenvae.distributions.FactorisedBernoulli`); ``None`` scores all peaks.
        Evaluation always scores all peaks.
    n_clusters
        If set, the prior is a mixture of ``n_clusters`` Gaussians with a categorical ``c``
        inferred by a Gumbel-Softmax encoder (see :class:`GaussianMixturePrior`).
    loading_prior_sd
        Standard deviation of a Gaussian prior ``N(0, sd^2)`` on the output weights (loadings) of
        Bernoulli decoders, one per peak; ``None`` for none. The log prior enters the loss
        divided by ``n_obs`` (the loss is a mean over cells), so it weighs like one data set's
        worth of evidence: strong for peaks seen open in few cells, negligible for peaks with
        much data. It keeps the decoder from memorising the rare accessible events of single
        training cells, which otherwise degrades accessibility predicted for new cells.
    n_obs
        Number of training cells (scales ``loading_prior_sd``'s term).
    """

    def __init__(
        self,
        modalities: Mapping[str, ModalitySpec],
        *,
        n_batch: int = 0,
        n_cats_per_cov: tuple[int, ...] = (),
        n_continuous_cov: int = 0,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        encode_covariates: bool = True,
        library_log_means: Mapping[str, float] | None = None,
        modality_dropout: float = 0.25,
        alignment_weight: float = 1.0,
        n_clusters: int | None = None,
        straight_through: bool = False,
        n_sampled_peaks: int | None = 1024,
        loading_prior_sd: float | None = None,
        n_obs: int | None = None,
    ):
        super().__init__()
        if loading_prior_sd is not None and (loading_prior_sd <= 0 or not n_obs):
            msg = (
                "`loading_prior_sd` must be positive and needs `n_obs` (the number of training "
                f"cells); got loading_prior_sd={loading_prior_sd}, n_obs={n_obs}."
            )
            raise ValueError(msg)
        self.loading_prior_sd = loading_prior_sd
        self.n_obs = n_obs
        if not modalities:
            msg = "`modalities` must name at least one modality."
            raise ValueError(msg)
        self.modalities = dict(modalities)
        self.n_latent = n_latent
        self.n_batch = n_batch
        self.modality_dropout = modality_dropout
        self.alignment_weight = alignment_weight
        self.encode_covariates = encode_covariates
        self.n_sampled_peaks = n_sampled_peaks
        cats = (n_batch, *n_cats_per_cov)
        self.library_log_means = {
            m: float((library_log_means or {}).get(m, 0.0)) for m in self.modalities
        }
        enc_cats = cats if encode_covariates else ()
        enc_cont = n_continuous_cov if encode_covariates else 0
        self.encoders = nn.ModuleDict(
            {
                m: GaussianEncoder(
                    spec.n_input,
                    n_latent,
                    n_hidden=n_hidden,
                    n_layers=n_layers,
                    n_cats_per_cov=enc_cats,
                    n_continuous_cov=enc_cont,
                    dropout_rate=dropout_rate,
                    sparse_input=True,
                )
                for m, spec in self.modalities.items()
            }
        )
        self.decoders = nn.ModuleDict(
            {
                m: _Decoder(
                    spec,
                    n_latent,
                    n_hidden=n_hidden,
                    n_layers=n_layers,
                    n_cats_per_cov=cats,
                    n_continuous_cov=n_continuous_cov,
                    dropout_rate=dropout_rate,
                )
                for m, spec in self.modalities.items()
            }
        )
        if n_clusters is None:
            self.prior = StandardNormalPrior()
        else:
            self.prior = GaussianMixturePrior(
                n_clusters, n_latent, n_hidden=n_hidden, straight_through=straight_through
            )

    def loading_prior_decay(self) -> list[tuple[nn.Parameter, float]]:
        """The loading prior as L2 coefficients: ``(parameter, 1 / (sd^2 n_obs))`` pairs.

        The prior's term in the per-cell loss is ``0.5 * coef * ||W||^2``, whose gradient
        ``coef * W`` is exactly what an optimizer's (coupled, not decoupled) weight decay of
        ``coef`` adds. Applying it there spares a pass over the widest matrix of the model,
        and its gradient, at every step; pass ``loading_prior_in_loss=False`` to :meth:`loss`
        when the optimizer does so (the training plan's default optimizer does).
        """
        if self.loading_prior_sd is None:
            return []
        coef = 1.0 / (self.loading_prior_sd**2 * self.n_obs)
        return [
            pair
            for dec in self.decoders.values()
            for pair in dec.likelihood.weight_decay(dec, coef)
        ]

    @torch.no_grad()
    def init_feature_biases(self, feature_means: Mapping[str, np.ndarray]) -> None:
        """Start each decoder at the data's average profile instead of a flat one.

        ``feature_means`` are each modality's per-feature means of the prepared data (see
        :meth:`LikelihoodHead.column_means`); each head sets its bias from them (counts: the
        log of each gene's mean share of the library; Bernoulli: each peak's log-odds).
        """
        for m, mean in feature_means.items():
            dec = self.decoders[m]
            dec.likelihood.init_bias(dec, torch.as_tensor(np.asarray(mean, dtype=np.float64)))

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def _covariates(
        tensors: dict[str, torch.Tensor],
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        batch = tensors.get(REGISTRY_KEYS.BATCH_KEY)
        cat_list = [batch if batch is not None else None]
        cat_covs = tensors.get(REGISTRY_KEYS.CAT_COVS_KEY)
        if cat_covs is not None:
            cat_list += list(torch.split(cat_covs, 1, dim=1))
        return cat_list, tensors.get(REGISTRY_KEYS.CONT_COVS_KEY)

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        cat_list, cont = self._covariates(tensors)
        return {
            MODULE_KEYS.X_KEY: {m: tensors[s.registry_key] for m, s in self.modalities.items()},
            MODULE_KEYS.CAT_COVS_KEY: cat_list,
            MODULE_KEYS.CONT_COVS_KEY: cont,
        }

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict
    ) -> dict:
        cat_list, cont = self._covariates(tensors)
        return {
            MODULE_KEYS.Z_KEY: inference_outputs[MODULE_KEYS.Z_KEY],
            MODULE_KEYS.LIBRARY_KEY: inference_outputs[MODULE_KEYS.LIBRARY_KEY],
            MODULE_KEYS.CAT_COVS_KEY: cat_list,
            MODULE_KEYS.CONT_COVS_KEY: cont,
        }

    def _cat_list(self, cat_list: list[torch.Tensor | None], n: int, device) -> list[torch.Tensor]:
        batch = cat_list[0]
        if batch is None:
            batch = torch.zeros(n, 1, dtype=torch.long, device=device)
        return [batch, *cat_list[1:]]

    # ------------------------------------------------------------------ inference
    @auto_move_data
    def inference(
        self,
        x: dict[str, torch.Tensor],
        cat_covs: list[torch.Tensor | None],
        cont_covs: torch.Tensor | None = None,
        *,
        use_modalities: tuple[str, ...] | None = None,
        n_samples: int = 1,
    ) -> dict:
        """Encode each observed modality and combine the experts into ``qz``.

        ``use_modalities`` restricts the posterior to some modalities (cross-modal prediction).
        """
        first = next(iter(x.values()))
        n, device = first.shape[0], first.device
        cat_list = self._cat_list(cat_covs, n, device)
        enc_cats = cat_list if self.encode_covariates else []
        enc_cont = cont_covs if self.encode_covariates else None
        libraries, observed, means, variances = {}, {}, [], []
        masks = []
        for m, spec in self.modalities.items():
            xm = x[m]
            lib = sparse_row_sums(xm).to(torch.float32)
            libraries[m] = lib
            observed[m] = lib > 0
            use = use_modalities is None or m in use_modalities
            if not use:
                continue
            mu, var, _ = self.encoders[m](spec.head.encoder_input(xm), enc_cats, enc_cont)
            means.append(mu)
            variances.append(var)
            masks.append(observed[m])
        if use_modalities is not None and not means:
            msg = f"`use_modalities` must name at least one of {list(self.modalities)}."
            raise ValueError(msg)

        multi = len(self.modalities) > 1
        if not multi:
            qz = Normal(means[0], variances[0].sqrt(), validate_args=False)
            qz_modality = {}
        else:
            qz_modality = {
                m: _product_of_experts([mu], [var], [torch.ones_like(mask)])
                for m, mu, var, mask in zip(
                    [m for m in self.modalities if use_modalities is None or m in use_modalities],
                    means,
                    variances,
                    masks,
                    strict=True,
                )
            }
            train_masks = masks
            if self.training and self.modality_dropout > 0 and len(masks) > 1:
                train_masks = self._drop_modalities(masks)
            qz = _product_of_experts(means, variances, train_masks)
        z = qz.rsample() if n_samples == 1 else qz.rsample((n_samples,))
        out = {
            MODULE_KEYS.Z_KEY: z,
            MODULE_KEYS.QZ_KEY: qz,
            MODULE_KEYS.QZ_MODALITY_KEY: qz_modality,
            MODULE_KEYS.LIBRARY_KEY: libraries,
            MODULE_KEYS.OBSERVED_KEY: observed,
        }
        out.update(self.prior.infer_cluster(qz))
        return out

    def _drop_modalities(self, masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per cell, keep all observed modalities or, with prob. ``modality_dropout`` each, one."""
        stacked = torch.stack(masks, dim=1)  # cells x modalities
        n, k = stacked.shape
        paired = stacked.sum(1) > 1
        u = torch.rand(n, device=stacked.device)
        choice = torch.floor(u / self.modality_dropout).long()  # < k: keep only modality `choice`
        drop = paired & (choice < k)
        keep_one = F.one_hot(choice.clamp(max=k - 1), k).bool()
        new = torch.where(drop.unsqueeze(1), keep_one & stacked, stacked)
        return list(new.unbind(1))

    # ------------------------------------------------------------------ generative
    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        library: dict[str, torch.Tensor] | None,
        cat_covs: list[torch.Tensor | None],
        cont_covs: torch.Tensor | None = None,
        *,
        transform_batch: torch.Tensor | None = None,
        observed_library: bool = True,
        modalities: tuple[str, ...] | None = None,
        columns: Mapping[str, torch.Tensor] | None = None,
    ) -> dict:
        """Decode ``z`` into one distribution per modality.

        ``transform_batch`` decodes under another batch (a batch code per cell or one code);
        ``observed_library=False`` uses the predicted library sizes instead of the observed ones.
        ``modalities`` runs only those decoders (``None``: all, as training does), and
        ``columns`` (modality -> feature positions) restricts a decoder's output to those
        features where its head allows it (:attr:`LikelihoodHead.column_subset`).
        """
        zz = z.reshape(-1, z.shape[-1])
        cat_list = self._cat_list(cat_covs, z.shape[-2], z.device)
        if transform_batch is not None:
            cat_list = [transform_batch.expand_as(cat_list[0]).to(cat_list[0]), *cat_list[1:]]
        reps = z.shape[0] if z.dim() > 2 else 1  # samples x cells x latent
        if reps > 1:
            cat_list = [c.repeat(reps, 1) for c in cat_list]
            cont_covs = cont_covs.repeat(reps, 1) if cont_covs is not None else None
        if modalities is not None:
            unknown = [m for m in modalities if m not in self.decoders]
            if unknown or not modalities:
                msg = f"`modalities` must name some of {list(self.decoders)}, got {modalities}."
                raise ValueError(msg)
        columns = columns or {}
        out = {}
        for m, decoder in self.decoders.items():
            if modalities is not None and m not in modalities:
                continue
            lib = None
            if observed_library and library is not None:
                lib = decoder.likelihood.library_for_decoding(library[m].repeat(reps))
            cols = columns.get(m)
            if cols is not None and not decoder.likelihood.column_subset:
                msg = f"the {decoder.likelihood.name!r} likelihood cannot decode a subset of features."
                raise ValueError(msg)
            out[m] = decoder(zz, lib, self.library_log_means[m], cat_list, cont_covs, columns=cols)
        out[MODULE_KEYS.PZ_KEY] = self.prior
        return out

    # ------------------------------------------------------------------ loss
    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
        tau: float | None = None,
        loading_prior_in_loss: bool = True,  # noqa: FBT001, FBT002 - a loss keyword, as kl_weight
    ) -> LossOutput:
        """Negative ELBO: reconstruction of observed modalities plus KL terms, per cell.

        ``kl_weight`` scales the KL terms (warm-up), ``tau`` is the Gumbel-Softmax temperature
        (discrete latent), and ``loading_prior_in_loss=False`` leaves the loading prior's term
        out, for an optimizer that applies it as weight decay.
        """
        observed = inference_outputs[MODULE_KEYS.OBSERVED_KEY]
        libraries = inference_outputs[MODULE_KEYS.LIBRARY_KEY]
        reconstruction, extra = {}, {}
        n_sampled = self.n_sampled_peaks if self.training else None
        for m, spec in self.modalities.items():
            ll = spec.head.log_likelihood(
                generative_outputs[m],
                tensors[spec.registry_key],
                library=libraries[m],
                n_sampled=n_sampled,
            )
            reconstruction[m] = -ll * observed[m].to(torch.float32)
        qz = inference_outputs[MODULE_KEYS.QZ_KEY]
        z = inference_outputs[MODULE_KEYS.Z_KEY]
        kl = self.prior.kl(qz, z, inference_outputs, tau)
        kl_local = {"kl_z": kl["kl_z"]}
        if "kl_c" in kl:
            kl_local["kl_c"] = kl["kl_c"]
        weighted_kl = kl_weight * sum(kl_local.values())
        total = sum(reconstruction.values()) + weighted_kl
        qz_mod = inference_outputs[MODULE_KEYS.QZ_MODALITY_KEY]
        if len(qz_mod) > 1 and self.alignment_weight > 0:
            paired = torch.stack([observed[m] for m in qz_mod], 1).all(1).to(torch.float32)
            # symmetric KL between the single-modality posteriors (each with the prior): it
            # pulls them together without a pull on their widths. KL(q_joint || q_m), the
            # earlier form, diverged: the joint is the product of the experts, so it is always
            # narrower than each q_m, and matching it shrank every expert, which narrowed the
            # joint again; only the ELBO's KL held this back, and during the warm-up it did not
            # (A549, 100-epoch warm-up: loss 3,267 -> 408,803 by epoch 48, a dead latent at 400)
            posteriors = list(qz_mod.values())
            align = sum(
                (kl_divergence(q_a, q_b) + kl_divergence(q_b, q_a)).sum(-1)
                for i, q_a in enumerate(posteriors)
                for q_b in posteriors[i + 1 :]
            )
            align = align * paired
            # not annealed with kl_weight (an auxiliary term, not the ELBO's KL)
            total = total + self.alignment_weight * align
            extra["kl_align"] = align.mean()
        if "tau" in kl:
            extra["tau"] = torch.as_tensor(kl["tau"])
        decay = self.loading_prior_decay() if loading_prior_in_loss else []
        if decay:  # only heads with loadings under the prior (Bernoulli) have a term
            # -log N(W | 0, sd^2) of the peak loadings, up to a constant, per training cell
            penalty = sum(0.5 * coef * param.square().sum() for param, coef in decay)
            total = total + penalty
            extra["loading_prior"] = penalty.detach()
        return LossOutput(
            loss=total.mean(),
            reconstruction_loss=reconstruction,
            kl_local=kl_local,
            extra_metrics=extra,
        )

    @torch.inference_mode()
    def log_likelihood_terms(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-cell ELBO terms on a minibatch in eval mode (used for held-out scoring)."""
        _, _, losses = self.forward(tensors, compute_loss=True)
        out = dict(losses.reconstruction_loss.items())
        out.update(losses.kl_local)
        return out


def log_library_mean(row_sums: np.ndarray) -> float:
    """Mean log library size over cells with counts (centres the depth terms)."""
    s = np.asarray(row_sums, dtype=np.float64).ravel()
    s = s[s > 0]
    return float(np.log(s).mean()) if s.size else 0.0


__all__ = ["ModalitySpec", "MultiModalVAEModule", "log_library_mean"]
