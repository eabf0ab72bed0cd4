"""Training: ``train()`` and what it decides before and after Lightning runs.

The training plan (``_plan.py``), its callbacks (``_callbacks.py``) and checkpoints
(``_checkpoint.py``) live beside this file; here the user's arguments become the plan's and the
trainer's, and after the fit the model's health is checked (``_health.py``).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from scgenvae import _docs
from scgenvae._allocator import reuse_freed_memory
from scgenvae._docs import doc_params
from scgenvae._quiet import quiet
from scgenvae._settings import settings
from scgenvae._threads import restore_threads

from ._callbacks import ThreadTuning, WarmupEarlyStopping
from ._checkpoint import resume_from
from ._data import DEFAULT_BLOCK_SIZE, RowSource
from ._health import health_report, stop_message, warn_problems
from ._plan import ScgenvaeTrainingPlan

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator

logger = logging.getLogger(__name__)

#: Lightning's DDP strategy names that have a ``*_find_unused_parameters_true`` variant
_DDP_ALIASES = frozenset({"ddp", "ddp_fork", "ddp_notebook"})
#: ``train(early_stopping=None)`` holds out validation cells and stops early from this many cells
EARLY_STOPPING_MIN_CELLS = 1000
#: epochs without improvement of the validation ELBO (after the KL warm-up) before stopping
EARLY_STOPPING_PATIENCE = 30


#: scvi-tools' ``train`` arguments that do not apply to scgenvae's models, with the reason
_REFUSED_TRAIN_ARGS = {
    "load_sparse_tensor": (
        "`load_sparse_tensor` is not used: scgenvae hands sparse counts to the model as sparse "
        "tensors already; remove the argument."
    ),
    "datamodule": (
        "`datamodule` is not supported: scgenvae builds its own minibatches from the set-up "
        "data (use `load_in_memory`/`block_size` for data on disk); remove the argument."
    ),
}


def _splitter_options(datasplitter_kwargs: dict | None, *, shuffle_set_split: bool) -> bool:
    """``shuffle_set_split`` from ``datasplitter_kwargs``; other keys are refused by name."""
    options = dict(datasplitter_kwargs or {})
    shuffle_set_split = bool(options.pop("shuffle_set_split", shuffle_set_split))
    if options:
        msg = (
            f"`datasplitter_kwargs` keys {sorted(options)} do not apply to scgenvae's data "
            "splitter; it accepts `shuffle_set_split` only (sizes: `train_size`, "
            "`validation_size`; seeding: `seed`)."
        )
        raise ValueError(msg)
    return shuffle_set_split


def _check_plan_kwargs(plan_kwargs: dict) -> None:
    """Refuse ``plan_kwargs`` keys the training plan would pass on to the loss unused."""
    import inspect

    from scvi.train import TrainingPlan

    from scgenvae.module import MultiModalVAEModule

    known = set()
    for fn in (ScgenvaeTrainingPlan.__init__, TrainingPlan.__init__, MultiModalVAEModule.loss):
        known |= set(inspect.signature(fn).parameters)
    known -= {"self", "module", "kwargs", "loss_kwargs", "tensors"}
    known -= {"inference_outputs", "generative_outputs"}
    unknown = sorted(set(plan_kwargs) - known)
    if unknown:
        msg = (
            f"`plan_kwargs` keys {unknown} are not arguments of the training plan "
            f"(`ScgenvaeTrainingPlan`); its arguments are {sorted(known)}."
        )
        raise ValueError(msg)


@contextmanager
def _distributed_log_dir(trainer_kwargs: dict) -> Iterator[None]:
    """Give scvi-tools' logger a private folder for its history file under DDP.

    With a ``ddp`` strategy scvi-tools' logger writes the history to
    ``<log_save_dir or cwd>/lightning_logs/version_1/history.pkl`` for the launching process to
    read; a temporary folder keeps it out of the working directory and away from old runs.
    """
    strategy = trainer_kwargs.get("strategy")
    if "log_save_dir" in trainer_kwargs or not (isinstance(strategy, str) and "ddp" in strategy):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="scgenvae_logs_") as tmp:
        trainer_kwargs["log_save_dir"] = tmp
        yield


# glibc mallopt parameters (malloc.h) and their documented defaults


def _merged_kwargs(
    plan_kwargs: dict | None,
    plan_config: dict | None,
    trainer_kwargs: dict,
    trainer_config: dict | None,
) -> tuple[dict, dict]:
    """Plan and trainer arguments with scvi-tools' ``*_config`` merged in, checked."""
    for name in ("load_sparse_tensor", "datamodule"):
        if name in trainer_kwargs:
            msg = _REFUSED_TRAIN_ARGS[name]
            raise ValueError(msg)
    plan_kwargs = {**dict(plan_config or {}), **dict(plan_kwargs or {})}
    trainer_kwargs = {**dict(trainer_config or {}), **trainer_kwargs}
    _check_plan_kwargs(plan_kwargs)
    return plan_kwargs, trainer_kwargs


class TrainingMixin:
    """``train()`` for scgenvae models (on top of scvi-tools' ``UnsupervisedTrainingMixin``)."""

    #: longest default KL warm-up, in epochs (``train(n_epochs_kl_warmup=None)``)
    _kl_warmup_cap = 100

    @doc_params(intro=_docs.train_intro, params=_docs.train)
    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int = 128,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        early_stopping: bool | None = None,
        seed: int | None = None,
        n_epochs_kl_warmup: int | None = None,
        lr: float = 1e-3,
        plan_kwargs: dict | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 10,
        load_in_memory: bool | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        shuffle_set_split: bool = True,
        n_steps_kl_warmup: int | None = None,
        datasplitter_kwargs: dict | None = None,
        plan_config: dict | None = None,
        trainer_config: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train the model with scvi-tools' Lightning machinery.

        {intro}

        Parameters
        ----------
        {params}
        """
        seed = settings.seed if seed is None else seed
        self._training_data()  # refuses training data changed since the model was built
        max_epochs = self._max_epochs(max_epochs)
        shuffle_set_split = _splitter_options(
            datasplitter_kwargs, shuffle_set_split=shuffle_set_split
        )
        plan_kwargs, trainer_kwargs = _merged_kwargs(
            plan_kwargs, plan_config, trainer_kwargs, trainer_config
        )
        warmup = self._plan_defaults(
            plan_kwargs,
            lr=lr,
            seed=seed,
            max_epochs=max_epochs,
            batch_size=batch_size,
            n_epochs_kl_warmup=n_epochs_kl_warmup,
            n_steps_kl_warmup=n_steps_kl_warmup,
        )
        early_stopping, stopper = self._early_stopping(
            early_stopping=early_stopping,
            train_size=train_size,
            warmup_epochs=warmup,
            trainer_kwargs=trainer_kwargs,
        )
        if train_size is None and not early_stopping:
            train_size = 1.0
        self._train_seed = seed
        self._trainer_defaults(trainer_kwargs, stopper, checkpoint_dir, checkpoint_every, seed)
        splitter = self._stream_kwargs(load_in_memory=load_in_memory, block_size=block_size)
        splitter.update(seed=seed, sparse_keys=self._sparse_keys)
        self._fit(
            early_stopping=early_stopping,
            trainer_kwargs=trainer_kwargs,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            train_size=train_size,
            validation_size=validation_size,
            batch_size=batch_size,
            plan_kwargs=plan_kwargs,
            shuffle_set_split=shuffle_set_split,
            datasplitter_kwargs=splitter,
        )
        bar = trainer_kwargs.get("enable_progress_bar", True)
        self._check_fit(max_epochs=max_epochs, stopper=stopper, print_line=bar)

    def _fit(self, *, early_stopping: bool, trainer_kwargs: dict, **train_kwargs) -> None:
        """Run scvi-tools' ``train`` quietly, with the allocator and logging settings."""
        self.module.train()  # a trained model is left in eval mode; Lightning expects train mode
        with (
            quiet(),
            reuse_freed_memory(enabled=settings.reuse_freed_memory),
            _distributed_log_dir(trainer_kwargs),
            restore_threads(),
            warnings.catch_warnings(),
        ):
            if not early_stopping:  # scvi-tools says so under DDP even when it was not asked for
                warnings.filterwarnings("ignore", message="early_stopping was automatically")
            super().train(**train_kwargs, **trainer_kwargs)

    def _max_epochs(self, max_epochs) -> int:
        """``max_epochs``, or scvi-tools' heuristic; anything but a positive integer is refused."""
        if max_epochs is None:
            return int(min(400, round(400 * 20000 / max(self.adata.n_obs, 1))))
        if (
            isinstance(max_epochs, bool)
            or not isinstance(max_epochs, int | np.integer)
            or max_epochs < 1
        ):
            msg = f"`max_epochs` must be a positive number of epochs, got {max_epochs!r}."
            raise ValueError(msg)
        return int(max_epochs)

    def _plan_defaults(
        self,
        plan_kwargs: dict,
        *,
        lr: float,
        seed: int | None,
        max_epochs: int,
        batch_size: int,
        n_epochs_kl_warmup: int | None,
        n_steps_kl_warmup: int | None,
    ) -> int:
        """Fill the plan's defaults in ``plan_kwargs``; return the KL warm-up in epochs."""
        plan_kwargs.setdefault("lr", lr)
        plan_kwargs.setdefault("seed", seed)
        plan_kwargs.setdefault("model_class", type(self).__name__)
        n_steps_kl_warmup = plan_kwargs.pop("n_steps_kl_warmup", n_steps_kl_warmup)
        if n_steps_kl_warmup is not None:
            if n_epochs_kl_warmup is not None:
                msg = "pass `n_epochs_kl_warmup` or `n_steps_kl_warmup`, not both."
                raise ValueError(msg)
            # scvi-tools' plan uses the steps when there are no epochs
            plan_kwargs["n_steps_kl_warmup"] = int(n_steps_kl_warmup)
            plan_kwargs["n_epochs_kl_warmup"] = None
            steps_per_epoch = max(1, -(-self.adata.n_obs // int(batch_size)))
            n_epochs_kl_warmup = -(-int(n_steps_kl_warmup) // steps_per_epoch)
        if n_epochs_kl_warmup is None:
            n_epochs_kl_warmup = min(self._kl_warmup_cap, max(1, max_epochs // 4))
        plan_kwargs.setdefault("n_epochs_kl_warmup", n_epochs_kl_warmup)
        plan_kwargs.setdefault("cluster_init_epoch", max(1, min(50, max_epochs // 5)))
        plan_kwargs.setdefault(
            "n_epochs_tau_anneal",
            max(1, int(0.6 * (max_epochs - plan_kwargs["cluster_init_epoch"]))),
        )
        return n_epochs_kl_warmup

    def _trainer_defaults(
        self, trainer_kwargs: dict, stopper, checkpoint_dir, checkpoint_every: int, seed
    ) -> None:
        """Add the early-stopping and checkpoint callbacks; check and adapt the strategy."""
        trainer_kwargs.setdefault("enable_checkpointing", False)
        trainer_kwargs["callbacks"] = [*trainer_kwargs.get("callbacks", []), ThreadTuning()]
        if stopper is not None:
            trainer_kwargs["callbacks"] = [*trainer_kwargs.get("callbacks", []), stopper]
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        if checkpoint_dir is not None:
            ckpt_path, writer = resume_from(
                checkpoint_dir,
                every=checkpoint_every,
                module=self.module,
                model_name=type(self).__name__,
                seed=seed,
            )
            if ckpt_path is not None:
                trainer_kwargs["ckpt_path"] = ckpt_path
            trainer_kwargs["callbacks"] = [*trainer_kwargs.get("callbacks", []), writer]
        strategy = trainer_kwargs.get("strategy")
        if isinstance(strategy, str) and strategy.startswith("ddp_spawn"):
            msg = (
                f"`strategy={strategy!r}` is not supported: it pickles the model, with its data, "
                "to every process. Use `strategy='ddp'` in scripts (and under torchrun/srun) or "
                "`strategy='ddp_notebook'` in notebooks and interactive sessions."
            )
            raise ValueError(msg)
        if strategy in _DDP_ALIASES:
            # count decoders carry p(log library | z) parameters that only an unobserved modality
            # uses, so a step may leave some parameters without gradient: DDP must expect that
            trainer_kwargs["strategy"] = f"{strategy}_find_unused_parameters_true"

    def _early_stopping(
        self,
        *,
        early_stopping: bool | None,
        train_size: float | None,
        warmup_epochs: int,
        trainer_kwargs: dict,
    ) -> tuple[bool, WarmupEarlyStopping | None]:
        """Resolve ``early_stopping=None`` and build the callback (scvi-tools' keywords)."""
        options = {
            key: trainer_kwargs.pop(f"early_stopping_{key}")
            for key in ("monitor", "patience", "min_delta", "mode", "warmup_epochs")
            if f"early_stopping_{key}" in trainer_kwargs
        }
        strategy = trainer_kwargs.get("strategy")
        distributed = isinstance(strategy, str) and strategy.startswith("ddp")
        if early_stopping is None:
            early_stopping = (
                self.adata.n_obs >= EARLY_STOPPING_MIN_CELLS
                and not distributed
                and (train_size is None or train_size < 1.0)
            )
        if not early_stopping:
            return False, None
        if distributed:
            msg = (
                "`early_stopping=True` is not supported under distributed training; pass "
                "`early_stopping=False` and choose `max_epochs`."
            )
            raise ValueError(msg)
        if train_size is not None and train_size >= 1.0:
            msg = "`early_stopping=True` needs validation cells: pass `train_size` below 1."
            raise ValueError(msg)
        stopper = WarmupEarlyStopping(
            monitor=options.get("monitor", "elbo_validation"),
            patience=int(options.get("patience", EARLY_STOPPING_PATIENCE)),
            min_delta=float(options.get("min_delta", 0.0)),
            mode=options.get("mode", "min"),
            warmup_epochs=int(options.get("warmup_epochs", warmup_epochs)),
        )
        return True, stopper

    def _paired_check_cells(self) -> tuple[np.ndarray | None, str]:
        """Cells observed in every modality for the cross-modal check, and which they are.

        The validation cells when there are enough (a model can memorise the pairing of
        the cells it trained on), else the training cells; ``None`` for one modality.
        """
        if len(self.modalities) < 2:
            return None, "none"
        observed = np.ones(self.adata.n_obs, dtype=bool)
        for spec in self._module_kwargs["modalities"].values():
            observed &= self._row_totals((self.adata, self._sources), spec.registry_key) > 0
        validation = getattr(self, "validation_indices", None)
        if validation is not None and len(validation):
            validation = np.asarray(validation)
            held_out = np.sort(validation[observed[validation]])
            if held_out.size >= 50:
                return held_out, "validation"
        return np.flatnonzero(observed), "training"

    def _check_fit(self, *, max_epochs: int, stopper, print_line: bool) -> None:
        """Fill :attr:`training_report`, say why training stopped, warn about failures."""
        if stopper is not None:  # the parameters of the best epoch
            stopper.restore_best(self.module)
        self.module.eval()
        epochs_run = int(getattr(self.trainer, "current_epoch", max_epochs) or 0)
        summary = stopper.summary() if stopper is not None else None
        paired, which = self._paired_check_cells()
        line = stop_message(epochs_run=epochs_run, max_epochs=max_epochs, early_stopping=summary)
        report = health_report(
            history=self.history_,
            get_latent=self.get_latent_representation,
            modalities=list(self.modalities),
            paired_indices=paired,
            paired_cells=which,
            n_obs=self.adata.n_obs,
            parameters_finite=all(bool(torch.isfinite(p).all()) for p in self.module.parameters()),
            seed=self._train_seed or 0,
        )
        report["stop"] = {
            "message": line,
            "epochs": epochs_run,
            "max_epochs": int(max_epochs),
            "early_stopping": summary,
        }
        self.training_report = report
        logger.info(line)
        if print_line:
            print(line)  # the one line that closes the progress bar
        warn_problems(report, stacklevel=4)

    def _stream_kwargs(self, *, load_in_memory: bool | None, block_size: int) -> dict:
        """Data-splitter arguments choosing between in-memory and streamed minibatches."""
        if int(block_size) < 1:
            msg = f"`block_size` must be a positive number of rows, got {block_size}."
            raise ValueError(msg)
        streams = dict(self._sources)
        if load_in_memory is False and not streams:  # stream in-memory data as if backed
            keys = {spec.registry_key for spec in self._module_kwargs["modalities"].values()}
            streams = {k: RowSource(self.adata_manager.get_from_registry(k)) for k in keys}
        return {
            "streams": streams,
            "load_in_memory": bool(load_in_memory),
            "block_size": int(block_size),
        }
