"""Priors over the latent space: a standard normal, or a Gaussian mixture with a discrete ``c``.

Both implement the same two methods with the same signatures:

- ``infer_cluster(qz)`` returns the extra inference outputs (``qc`` for the mixture, none for
  the standard normal);
- ``kl(qz, z, inference_outputs, tau)`` returns per-cell KL terms ``kl_z`` (and ``kl_c``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, Normal

from scgenvae._constants import MODULE_KEYS


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I)."""

    n_clusters = None

    def infer_cluster(self, qz: Normal) -> dict[str, torch.distributions.Distribution]:
        """No discrete latent: nothing to infer."""
        del qz
        return {}

    def kl(
        self,
        qz: Normal,
        z: torch.Tensor,
        inference_outputs: dict,
        tau: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Analytic ``KL(q(z|x) || N(0, I))`` per cell."""
        del z, inference_outputs, tau
        # closed form of KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1) / 2 - log s
        m, s = qz.loc, qz.scale
        return {"kl_z": (0.5 * (m.square() + s.square() - 1.0) - torch.log(s)).sum(-1)}

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` of each point (``z``: ... x n_latent), summed over dimensions."""
        return -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1)


def gumbel_softmax_sample(
    logits: torch.Tensor,
    tau: float,
    *,
    hard: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw a Gumbel-Softmax (relaxed one-hot) sample.

    ``softmax((logits + g) / tau)`` with ``g ~ Gumbel(0, 1)``. With ``hard=True`` the forward
    value is the one-hot argmax and the gradient is that of the soft sample (straight-through).
    """
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
    soft = torch.softmax((logits + g) / tau, dim=-1)
    if not hard:
        return soft
    one_hot = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return one_hot - soft.detach() + soft


class GaussianMixturePrior(nn.Module):
    """p(c) uniform, p(z | c) = N(mu_c, diag sigma^2); q(c | x) relaxed with Gumbel-Softmax.

    ``q(c | x)`` has logits ``-KL(q(z|x) || p(z|c=k))``: for a given encoder output this is the
    ``q(c)`` that maximises the ELBO (with a uniform ``p(c)``), so cluster assignment follows the
    geometry of the latent space and needs no separate classifier that could drift from it.
    During training, ``c`` is drawn from the Gumbel-Softmax relaxation at temperature ``tau`` and

    - ``kl_z = sum_k c_k KL(q(z|x) || p(z|c=k))`` (analytic Gaussian KLs weighted by the sample);
    - ``kl_c = KL(Cat(q(c|x)) || Uniform)``, analytic on the underlying categorical logits.

    Outside training, ``kl_z`` uses the exact expectation over ``q(c | x)`` (marginalised, no
    sampling).

    Empty or collapsed components: until :meth:`initialise` is called the prior acts as
    ``N(0, I)`` (a plain VAE warm-up); the training plan then fits k-means to the posterior
    means and places one component on each k-means cluster (mean and spread), so every
    component starts with cells, and trains everything end to end from there.
    """

    def __init__(
        self,
        n_clusters: int,
        n_latent: int,
        *,
        n_hidden: int = 128,
        straight_through: bool = False,
    ):
        super().__init__()
        if n_clusters < 2:
            msg = f"`n_clusters` must be at least 2, got {n_clusters}."
            raise ValueError(msg)
        self.n_clusters = n_clusters
        self.straight_through = straight_through
        gen = torch.Generator().manual_seed(0)
        init = torch.randn(n_clusters, n_latent, generator=gen)
        init = 2.0 * init / init.norm(dim=1, keepdim=True)
        self.means = nn.Parameter(init)
        # one diagonal scale shared by all components ("tied" mixture): a component cannot
        # become broad and absorb its neighbours, nor narrow and lose all its cells
        self.log_scales = nn.Parameter(torch.zeros(1, n_latent))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        del n_hidden

    @torch.no_grad()
    def initialise(self, z_means: torch.Tensor, *, seed: int = 0) -> None:
        """Place the components on k-means clusters of posterior means (cells x n_latent)."""
        from sklearn.cluster import KMeans

        z = z_means.detach().cpu().double().numpy()
        km = KMeans(self.n_clusters, n_init=10, random_state=seed).fit(z)
        self.means.copy_(torch.as_tensor(km.cluster_centers_, dtype=self.means.dtype))
        within = z - km.cluster_centers_[km.labels_]
        spread = np.maximum(within.std(0), 0.05)
        self.log_scales.copy_(
            torch.log(torch.as_tensor(spread, dtype=self.means.dtype)).unsqueeze(0)
        )
        self.initialised.fill_(1)

    def component_kl(self, qz: Normal) -> torch.Tensor:
        """Cells x K matrix of ``KL(q(z|x) || p(z|c=k))``."""
        mu_q, var_q = qz.loc.unsqueeze(-2), qz.scale.pow(2).unsqueeze(-2)
        var_p = torch.exp(2 * self.log_scales)
        kl = 0.5 * (
            2 * self.log_scales - torch.log(var_q) + (var_q + (mu_q - self.means) ** 2) / var_p - 1
        )
        return kl.sum(-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Marginal ``log p(z) = log (1/K) sum_k N(z; mu_k, sigma^2)`` of each point.

        ``z``: ... x n_latent. Before :meth:`initialise`, ``N(0, I)`` (what the prior acts as).
        """
        if not bool(self.initialised):
            return StandardNormalPrior.log_prob(self, z)
        comp = Normal(self.means, self.log_scales.exp(), validate_args=False)
        log_pzc = comp.log_prob(z.unsqueeze(-2)).sum(-1)  # ... x K
        return torch.logsumexp(log_pzc, -1) - math.log(self.n_clusters)

    def cluster_logits(self, qz: Normal) -> torch.Tensor:
        """Logits of ``q(c | x)`` (cells x K)."""
        return -self.component_kl(qz)

    def infer_cluster(self, qz: Normal) -> dict[str, torch.distributions.Distribution]:
        """Return ``qc``, the categorical posterior of the cluster."""
        return {MODULE_KEYS.QC_KEY: Categorical(logits=self.cluster_logits(qz))}

    def kl(
        self,
        qz: Normal,
        z: torch.Tensor,
        inference_outputs: dict,
        tau: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-cell ``kl_z`` and ``kl_c`` (see the class docstring)."""
        del z
        if not bool(self.initialised):
            out = StandardNormalPrior.kl(self, qz, None, inference_outputs)
            out["kl_c"] = torch.zeros_like(out["kl_z"])
            return out
        qc: Categorical = inference_outputs[MODULE_KEYS.QC_KEY]
        comp = self.component_kl(qz)
        if self.training and tau is not None:
            weights = gumbel_softmax_sample(qc.logits, tau, hard=self.straight_through)
        else:
            weights = qc.probs
        kl_z = (weights * comp).sum(-1)
        log_k = math.log(self.n_clusters)
        kl_c = (qc.probs * (qc.logits + log_k)).sum(-1)  # KL(q(c|x) || Uniform(K))
        out = {"kl_z": kl_z, "kl_c": kl_c}
        if tau is not None:
            out["tau"] = torch.tensor(float(tau))
        return out
