"""Lightning callbacks of the training plan."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping

from scgenvae._constants import MODULE_KEYS
from scgenvae._threads import tuner


class WarmupEarlyStopping(EarlyStopping):
    """Stop when the validation ELBO stops improving, counting only after the KL warm-up.

    During the warm-up the objective is not the ELBO (the KL term is scaled down), so the
    validation ELBO may rise while the fit improves; epochs before ``warmup_epochs`` are
    neither checked nor counted towards ``patience``. Records the best epoch, for the line that
    says why training stopped, and a copy of the module's parameters at that epoch, which
    :meth:`restore_best` puts back: the model returned is the one the held-out cells chose,
    not the one ``patience`` epochs of overfitting later.
    """

    def __init__(self, *, warmup_epochs: int = 0, **kwargs) -> None:
        kwargs.setdefault("verbose", False)
        super().__init__(**kwargs)
        self.warmup_epochs = int(warmup_epochs)
        self.best_epoch: int | None = None
        self._best_state: dict[str, torch.Tensor] | None = None

    def _run_early_stopping_check(self, trainer) -> None:
        if trainer.current_epoch < self.warmup_epochs:
            return
        before = float(self.best_score)
        super()._run_early_stopping_check(trainer)
        if float(self.best_score) != before:
            self.best_epoch = trainer.current_epoch
            module = trainer.lightning_module.module
            self._best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()
            }

    def restore_best(self, module: torch.nn.Module) -> bool:
        """Load the parameters of the best epoch into ``module``; whether there were any."""
        if self._best_state is None:
            return False
        module.load_state_dict(self._best_state)
        return True

    def summary(self) -> dict[str, Any]:
        """What the report needs: whether it stopped, the patience and the best epoch's ELBO."""
        return {
            "stopped": bool(self.stopped_epoch),
            "patience": int(self.patience),
            "monitor": self.monitor,
            "best": float(self.best_score),
            "best_epoch": None if self.best_epoch is None else self.best_epoch + 1,
            "warmup_epochs": self.warmup_epochs,
            "restored_best": self._best_state is not None,
        }


class ClusterInitialisation(Callback):
    """Place a mixture prior's components on k-means clusters of the posterior means.

    Runs once, before the first step of epoch ``start_epoch`` (after the plain-VAE warm-up),
    on every training cell, not only this process's shard; under distributed training every
    process then takes rank 0's components. The posterior means come from the module in eval
    mode; it is put back in training mode afterwards.

    Parameters
    ----------
    start_epoch
        Epoch at whose start the components are placed.
    seed
        Seed of k-means.
    """

    def __init__(self, start_epoch: int, *, seed: int = 0) -> None:
        super().__init__()
        self.start_epoch = int(start_epoch)
        self.seed = int(seed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        prior = pl_module.module.prior
        if batch_idx or bool(prior.initialised) or trainer.current_epoch < self.start_epoch:
            return
        module = pl_module.module
        was_training = module.training
        module.eval()
        datamodule = trainer.datamodule
        loader = getattr(datamodule, "all_train_cells", datamodule.train_dataloader)()
        means = []
        with torch.no_grad():
            for cells in loader:
                cells = {k: v.to(pl_module.device) for k, v in cells.items()}
                out = module.inference(**module._get_inference_input(cells))
                means.append(out[MODULE_KEYS.QZ_KEY].loc)
        prior.initialise(torch.cat(means), seed=self.seed)
        if trainer.world_size > 1:  # same prior on every process: rank 0's
            state = trainer.strategy.broadcast(
                {k: v.cpu() for k, v in prior.state_dict().items()}, src=0
            )
            prior.load_state_dict(state)
        module.train(was_training)


class ThreadTuning(Callback):
    """Choose torch's thread count from the measured time of the training steps.

    See :mod:`scgenvae._threads`. Off under distributed training and on an accelerator, where
    each process keeps the count it was started with.
    """

    def __init__(self) -> None:
        self.tuner = None

    def on_train_start(self, trainer, pl_module) -> None:
        on_cpu = next(pl_module.parameters()).device.type == "cpu"
        self.tuner = tuner() if on_cpu and trainer.world_size == 1 else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.tuner is not None:
            self.tuner.before_step()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.tuner is not None:
            self.tuner.after_step()
