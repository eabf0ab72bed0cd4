"""The training plan: scvi-tools' plan with our optimizer, temperature schedule and seeding."""

from __future__ import annotations

import numpy as np
import torch
from scvi.train import TrainingPlan

from ._callbacks import ClusterInitialisation
from ._checkpoint import CHECKPOINT_FORMAT_VERSION, CKPT_KEY


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of torch's global generator for one epoch of one process."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1)[0])


def _non_finite_terms(losses) -> list[str]:
    """Names of the non-finite terms of a :class:`scvi.module.base.LossOutput`."""
    if losses is None:
        return []
    out = []
    # not kl_global: scvi-tools fills it with ``0 * loss``, non-finite along with any term
    groups = {
        "reconstruction of": losses.reconstruction_loss,
        "KL term": losses.kl_local,
        "term": losses.extra_metrics,
    }
    for label, terms in groups.items():
        for name, value in (terms or {}).items():
            if isinstance(value, torch.Tensor) and not torch.isfinite(value).all():
                out.append(f"{label} {name!r}")
    return out


def fused_adam(
    params,
    *,
    lr: float,
    eps: float = 0.01,
    weight_decay: float = 1e-6,
    extra_decay: dict[int, float] | None = None,
) -> torch.optim.Adam:
    """Adam (scvi-tools' defaults: eps 0.01, weight decay 1e-6), fused where supported.

    Fused: one vectorised pass over each parameter instead of a dozen elementwise kernels (17x
    faster on wide ATAC layers on CPU). ``extra_decay`` maps ``id(parameter)`` to an L2
    coefficient added to that parameter's weight decay (a Gaussian prior on it, see
    ``MultiModalVAEModule.loading_prior_decay``).
    """
    params = [p for p in params if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params)
    extra_decay = extra_decay or {}
    groups: dict[float, list] = {}
    for p in params:
        groups.setdefault(weight_decay + extra_decay.get(id(p), 0.0), []).append(p)
    return torch.optim.Adam(
        [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()],
        lr=lr,
        eps=eps,
        fused=fused,
    )


class ScgenvaeTrainingPlan(TrainingPlan):
    """scvi-tools' training plan plus a Gumbel-Softmax temperature schedule.

    The temperature reaches the module through the ``tau`` keyword of ``loss``, the same way
    scvi-tools passes ``kl_weight``; the module's state is never changed from outside.

    Parameters
    ----------
    module
        The module to train.
    tau_start, tau_min
        Temperature at the first epoch and its floor.
    n_epochs_tau_anneal
        Epochs over which ``tau`` decays geometrically from ``tau_start`` to ``tau_min``.
    cluster_init_epoch
        With a discrete latent: epochs of plain-VAE warm-up before the mixture components are
        placed on k-means clusters of the posterior means (the tau schedule starts then).
    model_class
        Name of the model class, recorded in checkpoints.
    optimizer
        ``"Adam"`` (default): Adam with ``lr``, ``eps`` and ``weight_decay``, fused where
        supported, with the module's loading prior (MultiVAE's peak loadings) applied as that
        parameter's weight decay; ``"AdamW"`` or ``"Custom"`` (with ``optimizer_creator``) as in
        scvi-tools, the loading prior then staying in the loss.
    seed
        Seed torch (and Lightning) right before the first epoch, and torch's global generator
        (reparameterisation, dropout) again at the start of every epoch from
        ``(seed, epoch, rank)``: an epoch's randomness does not depend on the epochs before it,
        so a run resumed from a checkpoint repeats an uninterrupted one exactly.
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan`.
    """

    def __init__(
        self,
        module,
        *,
        tau_start: float = 1.0,
        tau_min: float = 0.3,
        n_epochs_tau_anneal: int | None = 100,
        cluster_init_epoch: int = 10,
        seed: int | None = None,
        model_class: str | None = None,
        **kwargs,
    ):
        super().__init__(module, **kwargs)
        self.seed = seed
        self.model_class = model_class
        self.cluster_init_epoch = cluster_init_epoch
        self.tau_start = tau_start
        self.tau_min = tau_min
        self.n_epochs_tau_anneal = n_epochs_tau_anneal
        if getattr(module.prior, "n_clusters", None):
            self.loss_kwargs["tau"] = tau_start
        if getattr(module, "loading_prior_sd", None) is not None:
            # the loading prior's term: in the loss unless our Adam applies it as weight decay
            self.loss_kwargs["loading_prior_in_loss"] = self.optimizer_name != "Adam"

    def get_optimizer_creator(self):
        """Our fused Adam for ``optimizer="Adam"``; scvi-tools' creators otherwise."""
        if self.optimizer_name != "Adam":
            return super().get_optimizer_creator()
        decay = getattr(self.module, "loading_prior_decay", list)()
        extra = {id(p): c for p, c in decay}
        return lambda params: fused_adam(
            params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, extra_decay=extra
        )

    def configure_callbacks(self) -> list:
        """The k-means placement of the mixture prior's components (discrete latent only)."""
        if getattr(self.module.prior, "n_clusters", None):
            return [ClusterInitialisation(self.cluster_init_epoch, seed=self.seed or 0)]
        return []

    def on_fit_start(self) -> None:
        """Seed just before the first epoch (after Lightning's own set-up)."""
        if self.seed is not None:
            from lightning.pytorch import seed_everything

            seed_everything(self.seed, verbose=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the model class and seed, checked before resuming."""
        checkpoint.setdefault(CKPT_KEY, {}).update(
            format_version=CHECKPOINT_FORMAT_VERSION, seed=self.seed, model_class=self.model_class
        )

    @property
    def tau(self) -> float:
        """Current Gumbel-Softmax temperature."""
        if not self.n_epochs_tau_anneal:
            return self.tau_min
        epoch = max(0, self.current_epoch - self.cluster_init_epoch)
        frac = min(1.0, epoch / self.n_epochs_tau_anneal)
        return float(self.tau_start * (self.tau_min / self.tau_start) ** frac)

    def on_train_epoch_start(self) -> None:
        """Seed this epoch and reset its metric sums."""
        self._epoch_sums: dict[str, torch.Tensor] = {}
        self._epoch_logged = False
        if self.seed is not None:
            torch.manual_seed(_epoch_seed(self.seed, self.current_epoch, self.global_rank))

    def training_step(self, batch, batch_idx):
        """One step as scvi-tools' training plan, with the metrics logged once per epoch.

        scvi-tools logs every metric at every step and Lightning reduces them at the end of the
        epoch; those calls took ~9% of a batch-128 MultiVAE step (py-spy), so here the same sums are
        accumulated as tensors and logged once, at the epoch's last step, under the same names
        and with the same values (``elbo_train``, ``train_loss``, extra metrics such as
        ``kl_align_train`` and ``tau_train``, and ``kl_weight``).
        """
        if "tau" in self.loss_kwargs:
            self.loss_kwargs["tau"] = self.tau
        if "kl_weight" in self.loss_kwargs:
            self.loss_kwargs["kl_weight"] = self.kl_weight
        _, _, losses = self.forward(batch, loss_kwargs=self.loss_kwargs)
        loss = losses.loss
        if not torch.isfinite(loss):
            terms = _non_finite_terms(losses)
            which = ", ".join(terms) if terms else "the total loss"
            msg = (
                f"training loss became {float(loss.detach())} at epoch {self.current_epoch}, step "
                f"{batch_idx}: non-finite {which}. Check the input for extreme values, lower the "
                "learning rate (`lr=1e-4`) or the batch size; for a KL term, a longer KL warm-up "
                "(`n_epochs_kl_warmup`) can help."
            )
            raise FloatingPointError(msg)
        self._accumulate(losses)
        if batch_idx + 1 >= self.trainer.num_training_batches:
            self._log_epoch()
        return loss

    @torch.inference_mode()
    def _accumulate(self, losses) -> None:
        """Add a step's loss terms to the epoch's sums.

        scvi-tools' ELBO metric objects are updated once per epoch from these sums
        (:meth:`_log_epoch`): a torchmetrics update at every step cost more than the sums.
        """
        n = losses.n_obs_minibatch
        sums = self._epoch_sums
        for key, value in (
            ("_reconstruction_loss", losses.reconstruction_loss_sum),
            ("_kl_local", losses.kl_local_sum),
            ("_kl_global", losses.kl_global_sum),
        ):
            value = torch.as_tensor(value).detach()
            sums[key] = sums[key] + value if key in sums else value
        sums["_n_steps"] = sums.get("_n_steps", 0) + 1
        terms = {"train_loss": losses.loss.detach()}
        for key, value in (losses.extra_metrics or {}).items():
            if isinstance(value, torch.Tensor) and value.shape == torch.Size([]):
                terms[f"{key}_train"] = value.detach()
            elif isinstance(value, int | float):
                terms[f"{key}_train"] = torch.as_tensor(float(value))
        for key, value in terms.items():
            sums[key] = sums[key] + value * n if key in sums else value * n
        sums["_n_obs"] = sums.get("_n_obs", 0) + n

    def _log_epoch(self) -> None:
        """Log the epoch's metrics once (cell-weighted means, as Lightning's epoch reduction)."""
        if self._epoch_logged or not self._epoch_sums:
            return
        self._epoch_logged = True
        sums = dict(self._epoch_sums)
        n_obs = sums.pop("_n_obs")
        n_steps = sums.pop("_n_steps")
        # one update with the epoch's sums gives the per-step updates' values: reconstruction
        # and local KL are averaged over cells, the global KL over minibatches
        self.elbo_train.update(
            reconstruction_loss=sums.pop("_reconstruction_loss"),
            kl_local=sums.pop("_kl_local"),
            kl_global=sums.pop("_kl_global") / n_steps,
            n_obs_minibatch=n_obs,
        )
        sync = self.use_sync_dist
        if "kl_weight" in self.loss_kwargs:
            self.log("kl_weight", self.loss_kwargs["kl_weight"], on_step=True, on_epoch=False)
        for key, total in sums.items():
            self.log(
                key,
                total / n_obs,
                on_step=False,
                on_epoch=True,
                sync_dist=sync,
                prog_bar=key == "train_loss",
            )
        self.log_dict(
            self.train_metrics, on_step=False, on_epoch=True, batch_size=n_obs, sync_dist=sync
        )

    def on_train_epoch_end(self) -> None:
        """Log the epoch's metrics if the last step did not (a loader of unknown length)."""
        self._log_epoch()
