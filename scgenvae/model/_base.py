"""What PoissonVAE and MultiVAE share: setup store, internal AnnData, training, save/load, getters.

The user's AnnData/MuData is never modified. ``setup_anndata``/``setup_mudata`` validate it and
remember the setup arguments; the model then builds a light internal AnnData (sharing the
user's matrices, no copy) on which scvi-tools' data registry is registered. scvi's fields write
helper columns (``_scvi_batch``...) into the object they register, which is why they never see
the user's object.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import warnings
import weakref
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import Callback
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    NumericalJointObsField,
)
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.train import TrainingPlan

from scgenvae._constants import (
    DEFAULT_CLUSTER_KEY,
    DEFAULT_CLUSTER_PROBS_KEY,
    DEFAULT_LATENT_KEY,
    MODULE_KEYS,
    REGISTRY_KEYS,
)
from scgenvae._settings import settings

from ._callbacks import WarmupEarlyStopping
from ._data import (
    DEFAULT_BLOCK_SIZE,
    STREAMS,
    BlockMinibatchIterable,
    InMemoryDataSplitter,
    MinibatchIterable,
    RowSource,
    registry_arrays,
)
from ._health import health_report, stop_message, warn_problems
from ._validate import check_known_categories, check_trainable

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from anndata import AnnData


logger = logging.getLogger(__name__)

_FORMAT_VERSION = 1
_MODEL_FILE = "model.pt"
#: file of the training checkpoint in ``train(checkpoint_dir=...)``
_CHECKPOINT_FILE = "last.ckpt"
#: our entry in a Lightning checkpoint
_CKPT_KEY = "scgenvae"
#: Lightning's DDP strategy names that have a ``*_find_unused_parameters_true`` variant
_DDP_ALIASES = frozenset({"ddp", "ddp_fork", "ddp_notebook"})
#: ``train(early_stopping=None)`` holds out validation cells and stops early from this many cells
EARLY_STOPPING_MIN_CELLS = 1000
#: epochs without improvement of the validation ELBO (after the KL warm-up) before stopping
EARLY_STOPPING_PATIENCE = 30


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of torch's global generator for one epoch of one process."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1)[0])


def _plain_history(history: dict | None) -> dict:
    """Logged history as plain lists (a checkpoint loads without unpickling pandas)."""
    out = {}
    for key, frame in (history or {}).items():
        out[key] = {
            "index": [int(i) for i in frame.index],
            "index_name": frame.index.name,
            "values": [float(v) for v in frame.iloc[:, 0]],
        }
    return out


def _history_frames(history: dict) -> dict[str, pd.DataFrame]:
    out = {}
    for key, rec in history.items():
        frame = pd.DataFrame({key: rec["values"]}, index=rec["index"], dtype=object)
        frame.index.name = rec["index_name"]
        out[key] = frame
    return out


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


class _EpochCheckpoint(Callback):
    """Save ``dir_path/last.ckpt`` every ``every`` epochs and after the last, atomically.

    Written at the end of an epoch, where Lightning's own ``ModelCheckpoint`` writes (a state
    Lightning resumes from exactly). The logged history goes with it, including the values of
    the epoch just finished, which Lightning hands to the logger only after this hook.
    """

    def __init__(self, dir_path: Path, *, every: int) -> None:
        super().__init__()
        self.dir_path = Path(dir_path)
        self.every = int(every)
        self._pending: dict[str, float] = {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        done = trainer.current_epoch + 1
        if done % self.every and done < (trainer.max_epochs or 0):
            return
        target = self.dir_path / _CHECKPOINT_FILE
        tmp = self.dir_path / f".{_CHECKPOINT_FILE}.tmp"
        self._pending = _pending_epoch_log(trainer)
        try:
            trainer.save_checkpoint(tmp)  # every process calls it; rank 0 writes
        finally:
            self._pending = {}
        if trainer.is_global_zero:
            tmp.replace(target)
        trainer.strategy.barrier("scgenvae_checkpoint")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        logged = getattr(trainer.logger, "history", None)  # not a dict on ranks other than 0
        history = {k: v.copy() for k, v in logged.items()} if isinstance(logged, dict) else {}
        for key, value in self._pending.items():
            if key not in history:
                history[key] = pd.DataFrame(columns=[key])
                history[key].index.name = "epoch"
            history[key].loc[trainer.current_epoch, key] = value
        checkpoint.setdefault(_CKPT_KEY, {})["history"] = _plain_history(history)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        history = checkpoint.get(_CKPT_KEY, {}).get("history")
        experiment = getattr(trainer.logger, "experiment", None)
        if history and isinstance(getattr(experiment, "data", None), dict):
            experiment.data.update(_history_frames(history))


def _pending_epoch_log(trainer) -> dict[str, float]:
    """Epoch-level metrics that Lightning hands to the logger after the epoch-end hooks.

    Read from Lightning's logger connector (not public API); empty if that ever moves, which
    only leaves the checkpointed epoch out of a resumed run's history.
    """
    connector = getattr(trainer, "_logger_connector", None)
    try:
        logged = connector.metrics["log"]
    except (AttributeError, AssertionError, KeyError, TypeError):  # Lightning internals moved
        return {}
    return {k: float(v) for k, v in logged.items() if k not in ("epoch", "step")}


def _check_checkpoint(path: Path, dir_path: Path, module: torch.nn.Module, model_name: str):
    """Raise a clear error when ``path`` was written by another kind of model."""
    fix = f"Pass another `checkpoint_dir` or delete {dir_path} to start afresh."
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        msg = f"`checkpoint_dir={str(dir_path)!r}` holds an unreadable checkpoint ({err}). {fix}"
        raise ValueError(msg) from err
    meta = ckpt.get(_CKPT_KEY) if isinstance(ckpt, dict) else None
    if meta is None or meta.get("model_class") != model_name:
        got = None if meta is None else meta.get("model_class")
        msg = (
            f"`checkpoint_dir={str(dir_path)!r}` holds a checkpoint of "
            f"{got or 'something other than scgenvae'}, not of a {model_name}. {fix}"
        )
        raise ValueError(msg)
    expected = {f"module.{k}": tuple(v.shape) for k, v in module.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    if saved != expected:
        diff = sorted(k for k in expected.keys() | saved.keys() if expected.get(k) != saved.get(k))
        detail = ", ".join(
            f"{k.removeprefix('module.')}: saved {saved.get(k)}, model {expected.get(k)}"
            for k in diff[:3]
        )
        msg = (
            f"`checkpoint_dir={str(dir_path)!r}` holds a checkpoint of a {model_name} with other "
            f"dimensions (architecture or data differ: {detail}). {fix}"
        )
        raise ValueError(msg)
    return meta


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

    def on_fit_start(self) -> None:
        """Seed just before the first epoch (after Lightning's own set-up)."""
        if self.seed is not None:
            from lightning.pytorch import seed_everything

            seed_everything(self.seed, verbose=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the model class and seed, checked before resuming."""
        checkpoint.setdefault(_CKPT_KEY, {}).update(
            format_version=_FORMAT_VERSION, seed=self.seed, model_class=self.model_class
        )

    def _maybe_initialise_prior(self) -> None:
        prior = self.module.prior
        if (
            getattr(prior, "n_clusters", None)
            and not bool(prior.initialised)
            and self.current_epoch >= self.cluster_init_epoch
        ):
            was_training = self.module.training
            self.module.eval()
            datamodule = self.trainer.datamodule
            # every training cell, not this process's shard only (distributed training)
            loader = getattr(datamodule, "all_train_cells", datamodule.train_dataloader)()
            means = []
            with torch.no_grad():
                for batch in loader:
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    out = self.module.inference(**self.module._get_inference_input(batch))
                    means.append(out[MODULE_KEYS.QZ_KEY].loc)
            prior.initialise(torch.cat(means), seed=self.seed or 0)
            if self.trainer.world_size > 1:  # same prior on every process: rank 0's
                state = self.trainer.strategy.broadcast(
                    {k: v.cpu() for k, v in prior.state_dict().items()}, src=0
                )
                prior.load_state_dict(state)
            self.module.train(was_training)

    @property
    def tau(self) -> float:
        """Current Gumbel-Softmax temperature."""
        if not self.n_epochs_tau_anneal:
            return self.tau_min
        epoch = max(0, self.current_epoch - self.cluster_init_epoch)
        frac = min(1.0, epoch / self.n_epochs_tau_anneal)
        return float(self.tau_start * (self.tau_min / self.tau_start) ** frac)

    def on_train_epoch_start(self) -> None:
        """Seed this epoch, reset its metric sums; initialise the mixture prior after warm-up."""
        self._epoch_sums: dict[str, torch.Tensor] = {}
        self._epoch_logged = False
        if self.seed is not None:
            torch.manual_seed(_epoch_seed(self.seed, self.current_epoch, self.global_rank))
        self._maybe_initialise_prior()

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


class _SetupStore:
    """Setup arguments of user objects, keyed by identity, without writing into the objects."""

    def __init__(self) -> None:
        self._store: dict[int, tuple[weakref.ref, str, dict, dict | None]] = {}

    def put(self, data, cls_name: str, args: dict, source_registry: dict | None = None) -> None:
        self._store[id(data)] = (weakref.ref(data), cls_name, args, source_registry)

    def get(self, data, cls_name: str) -> tuple[dict, dict | None] | None:
        entry = self._store.get(id(data))
        if entry is None or entry[0]() is not data or entry[1] != cls_name:
            return None
        return entry[2], entry[3]


_SETUP = _SetupStore()


def _obs_frame(obs: pd.DataFrame, columns: Sequence[str], n_obs: int) -> pd.DataFrame:
    """Internal obs: the requested columns only, on a unique positional index."""
    frame = pd.DataFrame(index=pd.RangeIndex(n_obs).astype(str))
    for col in dict.fromkeys(columns):
        values = obs[col]
        frame[col] = (
            values.to_numpy()
            if not isinstance(values.dtype, pd.CategoricalDtype)
            else (pd.Categorical(values.astype(str)))
        )
    return frame


def covariate_fields(args: dict) -> list:
    """scvi-tools fields for batch, labels and covariates, from setup arguments."""
    return [
        CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, args.get("batch_key")),
        CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, args.get("labels_key")),
        CategoricalJointObsField(
            REGISTRY_KEYS.CAT_COVS_KEY, args.get("categorical_covariate_keys")
        ),
        NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, args.get("continuous_covariate_keys")),
    ]


class BaseScgenvaeModel(UnsupervisedTrainingMixin, BaseModelClass):
    """Shared user-facing machinery of scgenvae models (not used directly)."""

    _training_plan_cls = ScgenvaeTrainingPlan
    _data_splitter_cls = InMemoryDataSplitter
    #: registry keys handed to the module as sparse CSR minibatches when the data are sparse
    #: (the module's first layers and likelihoods work on the non-zeros); others are dense
    _sparse_keys: ClassVar[frozenset[str]] = frozenset({REGISTRY_KEYS.X_KEY})
    _setup_method: ClassVar[str] = "setup_anndata"
    #: longest default KL warm-up, in epochs (``train(n_epochs_kl_warmup=None)``)
    _kl_warmup_cap: ClassVar[int] = 100

    # subclasses implement ------------------------------------------------------------
    def _build_internal(self, data, args: dict) -> AnnData:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def _fields(cls, args: dict) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def _feature_names(cls, data, args: dict) -> dict[str, pd.Index]:  # pragma: no cover
        raise NotImplementedError

    # set-up --------------------------------------------------------------------------
    @classmethod
    def _remember_setup(cls, data, args: dict, source_registry: dict | None = None) -> None:
        _SETUP.put(data, cls.__name__, args, source_registry)

    def _init_data(self, data) -> None:
        found = _SETUP.get(data, type(self).__name__)
        if found is None:
            name = type(self).__name__
            msg = (
                f"this object was not set up for {name}: call "
                f"`scgenvae.model.{name}.{self._setup_method}(data, ...)` first."
            )
            raise ValueError(msg)
        args, source_registry = found
        internal = self._build_internal(data, args)
        training = source_registry is None
        if training:
            check_trainable(internal.n_obs)
        else:
            check_known_categories(internal.obs, source_registry, _category_keys(args))
        manager = AnnDataManager(
            fields=self._fields(args),
            setup_method_args={"setup_method_name": self._setup_method, "setup_args": dict(args)},
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            manager.register_fields(internal, source_registry=source_registry)
        _restate_small_categories(caught, manager, args, training=training)
        type(self).register_manager(manager)
        BaseModelClass.__init__(self, internal)
        self._setup_args = dict(args)
        self._features = self._feature_names(data, args)
        self._user_data = weakref.ref(data)
        #: figures and checks of the last ``train()`` (see ``scgenvae.model._health``)
        self.training_report: dict[str, Any] | None = None

    def _internal(self, data=None) -> AnnData:
        """Internal AnnData of ``data`` (the training data when ``None``), validated."""
        if data is None or data is self._user_data():
            return self.adata
        features = self._feature_names(data, self._setup_args)
        for mod, names in self._features.items():
            got = features.get(mod)
            if got is None or len(got) != len(names) or not (got == names).all():
                n_got = 0 if got is None else len(got)
                msg = (
                    f"{mod}: the model was trained on {len(names):,} features, the data has "
                    f"{n_got:,} (or other names/order). Subset it to the training features: "
                    f"`data[:, model.feature_names[{mod!r}]]`."
                )
                raise ValueError(msg)
        internal = self._build_internal(data, self._setup_args)
        check_known_categories(
            internal.obs, self.adata_manager._registry, _category_keys(self._setup_args)
        )
        scvi_logger = logging.getLogger("scvi")
        level = scvi_logger.level
        scvi_logger.setLevel(logging.WARNING)  # the transfer notice concerns our internal object
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self._validate_anndata(internal)
        finally:
            scvi_logger.setLevel(level)
        _restate_small_categories(caught, self.adata_manager, self._setup_args, training=False)
        return internal

    def _make_module(self, **module_kwargs):
        """Build the module with weights seeded by ``settings.seed`` (global RNG untouched)."""
        from scgenvae.module import MultiModalVAEModule

        self._module_kwargs = module_kwargs
        with torch.random.fork_rng(devices=[]):
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            module = MultiModalVAEModule(**module_kwargs)
        module.init_feature_biases(self._feature_means(module_kwargs["modalities"]))
        return module

    def _feature_means(self, modalities: dict) -> dict[str, np.ndarray]:
        """Per-feature means of each modality in the training data (decoder initialisation)."""
        out = {}
        streams = STREAMS.get(self.adata)
        for m, spec in modalities.items():
            if spec.registry_key in streams:  # from the set-up scan, not from the stand-in
                out[m] = streams[spec.registry_key].col_means()
                continue
            x = (
                self.adata.X
                if spec.registry_key == REGISTRY_KEYS.X_KEY
                else self.adata.obsm[spec.registry_key]
            )
            out[m] = spec.head.column_means(x)
        return out

    @staticmethod
    def _row_totals(internal: AnnData, key: str) -> np.ndarray:
        """Per-cell totals of a registered matrix (from the set-up scan when it is streamed)."""
        streams = STREAMS.get(internal)
        if key in streams:
            return streams[key].row_totals()
        x = internal.X if key == REGISTRY_KEYS.X_KEY else internal.obsm[key]
        return np.asarray(x.sum(axis=1), dtype=np.float64).ravel()

    @property
    def is_streamed(self) -> bool:
        """Whether the training matrices stay on disk (backed data) and are streamed."""
        return bool(STREAMS.get(self.adata))

    @property
    def feature_names(self) -> dict[str, pd.Index]:
        """Feature names of each modality, as trained."""
        return dict(self._features)

    @property
    def modalities(self) -> list[str]:
        """Names of the model's modalities."""
        return list(self.module.modalities)

    def _summary_dims(self) -> dict[str, Any]:
        stats = self.summary_stats
        n_cats = []
        if REGISTRY_KEYS.CAT_COVS_KEY in self.adata_manager.data_registry:
            n_cats = list(
                self.adata_manager.get_state_registry(REGISTRY_KEYS.CAT_COVS_KEY).n_cats_per_key
            )
        return {
            "n_batch": int(stats.n_batch),
            "n_cats_per_cov": tuple(int(c) for c in n_cats),
            "n_continuous_cov": int(stats.get("n_extra_continuous_covs", 0)),
        }

    # training -----------------------------------------------------------------------
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
        **trainer_kwargs,
    ) -> None:
        """Train the model with scvi-tools' Lightning machinery.

        Training can run on several devices or machines through Lightning's distributed data
        parallel strategies (``strategy="ddp"``, ``devices=N``, ``num_nodes=M``; see the user
        guide's page on distributed training): each process trains on its share of the cells
        and the model is trained in the launching process afterwards. In notebooks and
        interactive sessions use ``strategy="ddp_notebook"``; ``"ddp_spawn"`` is not supported.

        Parameters
        ----------
        max_epochs
            Number of passes over the data; by default scvi-tools' heuristic
            ``min(400, round(400 * 20000 / n_cells))``.
        batch_size
            Minibatch size.
        accelerator, devices
            Passed to the Lightning trainer (``"auto"`` uses a GPU when there is one).
        train_size, validation_size
            Fractions of cells for training and validation (scvi-tools' ``DataSplitter``).
        early_stopping
            Stop when the validation ELBO has not improved for ``early_stopping_patience``
            epochs (default 30; a keyword of ``trainer_kwargs``), counting only after the KL
            warm-up. ``None`` (default): on with 1,000 cells or more (10% of them are then held
            out for validation, unless ``train_size`` says otherwise), off below that, with
            ``train_size=1.0`` and under distributed training. A line at the end of training
            says when and why it stopped (``model.training_report["stop"]``).
        seed
            Seed for torch/Lightning; ``None`` uses ``scgenvae.settings.seed``.
        n_epochs_kl_warmup
            Epochs over which the KL weight rises from 0 to 1 (default: a quarter of the
            epochs, at most 100 for PoissonVAE and 50 for MultiVAE).
        lr
            Adam learning rate.
        plan_kwargs
            More arguments for the training plan (:class:`ScgenvaeTrainingPlan`).
        checkpoint_dir
            Folder for a training checkpoint (``last.ckpt``, replaced atomically every
            ``checkpoint_every`` epochs and after the last one). If it already holds a checkpoint
            of this kind of model, training resumes from it: with the same ``seed``, the result
            is the same as that of an uninterrupted run. A checkpoint of another model (other
            class or dimensions) raises a ``ValueError``. ``None``: no checkpoints.
        checkpoint_every
            Epochs between checkpoints.
        load_in_memory
            Hold the count matrices in memory during training. ``None`` (default): yes for
            in-memory data, no for backed data (``anndata.read_h5ad(path, backed="r")``,
            ``mudata.read_h5mu(path, backed=True)``), whose minibatches are then streamed from
            disk in blocks of ``block_size`` rows, so memory does not grow with the number of
            cells. ``True`` reads a backed matrix into memory once (faster epochs when it fits);
            ``False`` streams in-memory data the same way as backed data.
        block_size
            Rows read at a time when streaming: the blocks are visited in a random order and
            the cells of each block shuffled (seeded by ``seed`` and the epoch).
        **trainer_kwargs
            More arguments for :class:`scvi.train.Trainer` (for instance
            ``enable_progress_bar=False``, ``strategy="ddp"``, ``num_nodes=2``).
        """
        seed = settings.seed if seed is None else seed
        if max_epochs is None:
            max_epochs = int(min(400, round(400 * 20000 / max(self.adata.n_obs, 1))))
        plan_kwargs = dict(plan_kwargs or {})
        plan_kwargs.setdefault("lr", lr)
        own_optimizer = "optimizer" not in plan_kwargs
        if own_optimizer:
            # scvi-tools' Adam settings, but fused: one vectorised pass over each parameter
            # instead of a dozen elementwise kernels (17x faster on wide ATAC layers on CPU);
            # priors on weights (MultiVAE's loading prior) become its weight decay
            plan_kwargs["optimizer"] = "Custom"
            plan_kwargs["optimizer_creator"] = partial(
                _fused_adam,
                lr=plan_kwargs["lr"],
                extra_decay={id(p): c for p, c in self.module.loading_prior_decay()},
            )
        self.module.loading_prior_in_loss = not own_optimizer
        plan_kwargs.setdefault("seed", seed)
        plan_kwargs.setdefault("model_class", type(self).__name__)
        if n_epochs_kl_warmup is None:
            n_epochs_kl_warmup = min(self._kl_warmup_cap, max(1, max_epochs // 4))
        plan_kwargs.setdefault("n_epochs_kl_warmup", n_epochs_kl_warmup)
        plan_kwargs.setdefault("cluster_init_epoch", max(1, min(50, max_epochs // 5)))
        plan_kwargs.setdefault(
            "n_epochs_tau_anneal",
            max(1, int(0.6 * (max_epochs - plan_kwargs["cluster_init_epoch"]))),
        )
        trainer_kwargs.setdefault("enable_checkpointing", False)
        early_stopping, stopper = self._early_stopping(
            early_stopping=early_stopping,
            train_size=train_size,
            warmup_epochs=n_epochs_kl_warmup,
            trainer_kwargs=trainer_kwargs,
        )
        if stopper is not None:
            trainer_kwargs["callbacks"] = [*trainer_kwargs.get("callbacks", []), stopper]
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        if train_size is None and not early_stopping:
            train_size = 1.0
        self._train_seed = seed
        if checkpoint_dir is not None:
            if int(checkpoint_every) < 1:
                msg = f"`checkpoint_every` must be a positive number of epochs, got {checkpoint_every}."
                raise ValueError(msg)
            checkpoint_dir = Path(checkpoint_dir)
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            last = checkpoint_dir / _CHECKPOINT_FILE
            if last.exists():
                meta = _check_checkpoint(last, checkpoint_dir, self.module, type(self).__name__)
                if meta.get("seed") != seed:
                    logger.warning(
                        "resuming from %s, saved by a run with seed %s (this one: %s); the "
                        "result will differ from an uninterrupted run.",
                        last,
                        meta.get("seed"),
                        seed,
                    )
                logger.info("resuming training from %s", last)
                trainer_kwargs["ckpt_path"] = str(last)
            trainer_kwargs["callbacks"] = [
                *trainer_kwargs.get("callbacks", []),
                _EpochCheckpoint(checkpoint_dir, every=checkpoint_every),
            ]
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
        self.module.train()  # a trained model is left in eval mode; Lightning expects train mode
        with (
            _quiet_sparse_warnings(),
            _reuse_freed_memory(enabled=settings.reuse_freed_memory),
            _distributed_log_dir(trainer_kwargs),
            warnings.catch_warnings(),
        ):
            if not early_stopping:  # scvi-tools says so under DDP even when it was not asked for
                warnings.filterwarnings("ignore", message="early_stopping was automatically")
            super().train(
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                train_size=train_size,
                validation_size=validation_size,
                batch_size=batch_size,
                plan_kwargs=plan_kwargs,
                datasplitter_kwargs={
                    "seed": seed,
                    "sparse_keys": self._sparse_keys,
                    **self._stream_kwargs(load_in_memory=load_in_memory, block_size=block_size),
                },
                **trainer_kwargs,
            )
        if stopper is not None:
            stopper.restore_best(self.module)
        self.module.eval()
        self._check_fit(
            max_epochs=max_epochs,
            stopper=stopper,
            print_line=trainer_kwargs.get("enable_progress_bar", True),
        )

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
            observed &= self._row_totals(self.adata, spec.registry_key) > 0
        validation = getattr(self, "validation_indices", None)
        if validation is not None and len(validation):
            validation = np.asarray(validation)
            held_out = np.sort(validation[observed[validation]])
            if held_out.size >= 50:
                return held_out, "validation"
        return np.flatnonzero(observed), "training"

    def _check_fit(self, *, max_epochs: int, stopper, print_line: bool) -> None:
        """Fill :attr:`training_report`, say why training stopped, warn about failures."""
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
        streams = STREAMS.get(self.adata)
        if load_in_memory is False and not streams:  # stream in-memory data as if backed
            keys = {spec.registry_key for spec in self._module_kwargs["modalities"].values()}
            streams = {k: RowSource(self.adata_manager.get_from_registry(k)) for k in keys}
        return {
            "streams": streams,
            "load_in_memory": bool(load_in_memory),
            "block_size": int(block_size),
        }

    # inference ----------------------------------------------------------------------
    def _loader(self, internal: AnnData, indices=None, batch_size: int | None = None):
        manager = self.get_anndata_manager(internal, required=True)
        indices = np.arange(internal.n_obs) if indices is None else np.asarray(indices)
        streams = STREAMS.get(internal)
        arrays = registry_arrays(manager, self._sparse_keys, skip=set(streams))
        kwargs = {"batch_size": batch_size or 1024, "shuffle": False}
        if streams:  # backed data: one block of rows in memory at a time
            return BlockMinibatchIterable(
                arrays, streams, indices, sparse_keys=self._sparse_keys, **kwargs
            )
        return MinibatchIterable(arrays, indices, sparse_keys=self._sparse_keys, **kwargs)

    def _iter_inference(
        self,
        data=None,
        *,
        indices=None,
        batch_size: int | None = None,
        use_modalities: tuple[str, ...] | None = None,
    ) -> Iterator[tuple[dict, dict]]:
        self._check_if_trained(warn=False)
        internal = self._internal(data)
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.inference_mode(), _quiet_sparse_warnings():
                for tensors in self._loader(internal, indices, batch_size):
                    inf_in = self.module._get_inference_input(tensors)
                    out = self.module.inference(**inf_in, use_modalities=use_modalities)
                    yield tensors, out
        finally:
            self.module.train(was_training)

    def _modality_arg(self, modality: str) -> tuple[str, ...] | None:
        if modality == "joint":
            return None
        if modality not in self.module.modalities:
            msg = f"`modality={modality!r}` is not one of {['joint', *self.module.modalities]}."
            raise ValueError(msg)
        return (modality,)

    def get_latent_representation(
        self,
        adata=None,
        *,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
        modality: str = "joint",
    ) -> np.ndarray:
        """Latent representation of each cell (cells x ``n_latent``).

        Parameters
        ----------
        adata
            AnnData/MuData set up like the training data; ``None`` for the training data.
        indices
            Cells to use (default all).
        give_mean
            Posterior mean (deterministic) rather than one sample.
        batch_size
            Minibatch size for inference.
        modality
            ``"joint"`` uses every observed modality; a modality name uses that encoder alone.
        """
        out = []
        for _, inf in self._iter_inference(
            adata,
            indices=indices,
            batch_size=batch_size,
            use_modalities=self._modality_arg(modality),
        ):
            qz = inf[MODULE_KEYS.QZ_KEY]
            out.append((qz.loc if give_mean else qz.sample()).cpu().numpy())
        return np.concatenate(out)

    def get_cluster_probabilities(
        self, adata=None, *, indices: Sequence[int] | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """Posterior cluster probabilities ``q(c | x)`` (cells x ``n_clusters``)."""
        self._require_clusters()
        out = [
            inf[MODULE_KEYS.QC_KEY].probs.cpu().numpy()
            for _, inf in self._iter_inference(adata, indices=indices, batch_size=batch_size)
        ]
        return np.concatenate(out)

    def get_cluster_assignments(
        self, adata=None, *, indices: Sequence[int] | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """Most probable cluster of each cell (integer codes ``0..n_clusters-1``)."""
        return self.get_cluster_probabilities(
            adata, indices=indices, batch_size=batch_size
        ).argmax(1)

    def _require_clusters(self) -> None:
        if not getattr(self.module.prior, "n_clusters", None):
            msg = "this model has no discrete latent; create it with `n_clusters=K`."
            raise ValueError(msg)

    def _batch_code(self, transform_batch: str | None) -> torch.Tensor | None:
        if transform_batch is None:
            return None
        mapping = list(
            self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
        )
        if transform_batch not in mapping:
            msg = f"`transform_batch={transform_batch!r}` is not a training batch; choose one of {mapping}."
            raise ValueError(msg)
        return torch.tensor([[mapping.index(transform_batch)]])

    def _decode(
        self,
        data=None,
        *,
        indices=None,
        transform_batch: str | None = None,
        use_modalities: tuple[str, ...] | None = None,
        batch_size: int | None = None,
        observed_library: bool = False,
    ) -> dict[str, np.ndarray]:
        """Decoded means (normalised expression / accessibility) from the posterior mean."""
        code = self._batch_code(transform_batch)
        out: dict[str, list] = {m: [] for m in self.module.modalities}
        for tensors, inf in self._iter_inference(
            data, indices=indices, batch_size=batch_size, use_modalities=use_modalities
        ):
            gen_in = self.module._get_generative_input(tensors, inf)
            gen_in[MODULE_KEYS.Z_KEY] = inf[MODULE_KEYS.QZ_KEY].loc
            gen = self.module.generative(
                **gen_in, transform_batch=code, observed_library=observed_library
            )
            for m in out:
                seen = inf[MODULE_KEYS.OBSERVED_KEY][m]
                unseen = ~seen if observed_library else torch.ones_like(seen)
                out[m].append(_mean_of(gen[m], unobserved_depth=unseen).cpu().numpy())
        return {m: np.concatenate(v) for m, v in out.items()}

    @torch.inference_mode()
    def decode_latent(
        self,
        z: np.ndarray,
        *,
        transform_batch: str | None = None,
        batch_size: int = 1024,
    ) -> dict[str, np.ndarray]:
        """Decode latent points into each modality's mean (points x features).

        RNA (count likelihoods) is returned as normalised expression (rows sum to 1), ATAC with
        the Bernoulli likelihood as accessibility probabilities at the training depth. Used by
        :func:`scgenvae.tl.latent_traversal`.

        Parameters
        ----------
        z
            Latent points (points x ``n_latent``).
        transform_batch
            Batch category to decode under (default the first batch).
        batch_size
            Points per forward pass.
        """
        self._check_if_trained(warn=False)
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.module.n_latent:
            msg = f"`z` must have shape (points, {self.module.n_latent}), got {z.shape}."
            raise ValueError(msg)
        self.module.eval()
        code = self._batch_code(transform_batch)
        dims = self._summary_dims()
        device = next(self.module.parameters()).device
        out: dict[str, list] = {m: [] for m in self.module.modalities}
        for start in range(0, len(z), batch_size):
            zb = torch.from_numpy(z[start : start + batch_size]).to(device)
            n = zb.shape[0]
            cats = [torch.zeros(n, 1, dtype=torch.long, device=device)] + [
                torch.zeros(n, 1, dtype=torch.long, device=device) for _ in dims["n_cats_per_cov"]
            ]
            cont = (
                torch.zeros(n, dims["n_continuous_cov"], device=device)
                if dims["n_continuous_cov"]
                else None
            )
            gen = self.module.generative(
                zb, None, cats, cont, transform_batch=code, observed_library=False
            )
            for m in out:
                out[m].append(
                    _mean_of(gen[m], unobserved_depth=torch.ones(len(zb), dtype=torch.bool))
                    .cpu()
                    .numpy()
                )
        return {m: np.concatenate(v) for m, v in out.items()}

    # writing ------------------------------------------------------------------------
    def _latent_targets(self, data) -> list[tuple[Any, np.ndarray | None]]:
        """Objects to write the latent into, with the row of each of their cells (or None)."""
        return [(data, None)]

    def export_latent(
        self,
        data,
        *,
        key_added: str = DEFAULT_LATENT_KEY,
        give_mean: bool = True,
        cluster_key_added: str = DEFAULT_CLUSTER_KEY,
        cluster_probs_key_added: str = DEFAULT_CLUSTER_PROBS_KEY,
    ) -> None:
        """Write the latent representation into ``data`` (the only model method that writes).

        Sets ``obsm[key_added]`` (cells x ``n_latent``) and ``uns[key]["params"]`` (``key`` is
        ``key_added`` without a leading ``X_``). Models with a discrete latent also set
        ``obs[cluster_key_added]`` (categorical) and ``obsm[cluster_probs_key_added]``.
        For MuData the joint latent goes to ``mdata.obsm`` and to each modality's ``obsm``.

        Parameters
        ----------
        data
            The AnnData/MuData to annotate (set up like the training data).
        key_added
            obsm key of the latent.
        give_mean
            Posterior mean rather than a sample.
        cluster_key_added, cluster_probs_key_added
            obs/obsm keys of the cluster assignment and probabilities.
        """
        if getattr(data, "is_view", False):
            msg = "`data` is a view; pass `data.copy()` (a view cannot be annotated in place)."
            raise ValueError(msg)
        latent = self.get_latent_representation(data, give_mean=give_mean)
        probs = None
        if getattr(self.module.prior, "n_clusters", None):
            probs = self.get_cluster_probabilities(data)
        params = {
            "model": type(self).__name__,
            "n_latent": int(self.module.n_latent),
            "give_mean": bool(give_mean),
            "seed": -1 if getattr(self, "_train_seed", None) is None else int(self._train_seed),
        }
        for target, rows in self._latent_targets(data):
            target.obsm[key_added] = _rows(latent, rows)
            if probs is not None:
                p = _rows(probs, rows)
                target.obsm[cluster_probs_key_added] = p
                codes = np.where(np.isnan(p).any(1), -1, np.nan_to_num(p).argmax(1))
                target.obs[cluster_key_added] = pd.Categorical.from_codes(
                    codes, categories=[str(k) for k in range(p.shape[1])]
                )
        data.uns[key_added.removeprefix("X_")] = {"params": params}
        logger.info("added obsm[%r] and uns[%r]", key_added, key_added.removeprefix("X_"))

    # persistence --------------------------------------------------------------------
    def save(self, dir_path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Save the model to ``dir_path/model.pt`` atomically (a crash leaves the old file).

        Parameters
        ----------
        dir_path
            Folder to write; created if missing.
        overwrite
            Replace an existing model in ``dir_path``.
        """
        path = Path(dir_path)
        target = path / _MODEL_FILE
        if target.exists() and not overwrite:
            msg = f"{target} exists; pass `overwrite=True` to replace it."
            raise FileExistsError(msg)
        path.mkdir(parents=True, exist_ok=True)
        payload = {
            "format_version": _FORMAT_VERSION,
            "model_class": type(self).__name__,
            "scgenvae_version": _version(),
            "init_params": self._init_kwargs,
            "module_kwargs": self._module_kwargs,
            "setup_args": self._setup_args,
            "registry": self.adata_manager._registry,
            "features": {m: list(v) for m, v in self._features.items()},
            "state_dict": self.module.state_dict(),
            "is_trained": self.is_trained_,
            "history": {k: v.to_dict() for k, v in (self.history_ or {}).items()},
            "training_report": self.training_report,
        }
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".model.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(payload, tmp)
            Path(tmp).replace(target)
        finally:
            if Path(tmp).exists():
                Path(tmp).unlink()

    @classmethod
    def load(cls, dir_path: str | os.PathLike, data, *, accelerator: str = "cpu"):
        """Load a model saved with :meth:`save` and attach it to ``data``.

        ``data`` must have the training features; categories of batch and covariates are mapped
        as in training. The user's object is not modified.

        Parameters
        ----------
        dir_path
            Folder given to :meth:`save`.
        data
            AnnData/MuData to attach (set up with the saved arguments automatically).
        accelerator
            ``"cpu"`` or ``"gpu"``: where to put the module.
        """
        target = Path(dir_path) / _MODEL_FILE
        if not target.exists():
            msg = f"no saved model at {target}; pass the folder given to `model.save(...)`."
            raise FileNotFoundError(msg)
        try:
            payload = torch.load(target, map_location="cpu", weights_only=False)
        except Exception as err:
            msg = f"{target} is not a readable scgenvae model file ({type(err).__name__}: {err})."
            raise ValueError(msg) from err
        if not isinstance(payload, dict) or payload.get("format_version") != _FORMAT_VERSION:
            got = payload.get("format_version") if isinstance(payload, dict) else None
            msg = (
                f"{target} has model format version {got}, this scgenvae ({_version()}) reads "
                f"version {_FORMAT_VERSION}; load it with the scgenvae that saved it."
            )
            raise ValueError(msg)
        if payload["model_class"] != cls.__name__:
            msg = f"{target} holds a {payload['model_class']}; load it with that class."
            raise ValueError(msg)
        getattr(cls, cls._setup_method)(data, **payload["setup_args"])
        features = cls._feature_names(data, payload["setup_args"])
        for m, names in payload["features"].items():
            if list(features[m]) != names:
                msg = (
                    f"{m}: the saved model expects {len(names):,} features in the trained order, "
                    f"the data has {len(features[m]):,} (or other names/order); subset with "
                    "`data[:, names]`."
                )
                raise ValueError(msg)
        _SETUP.put(data, cls.__name__, payload["setup_args"], payload["registry"])
        model = cls(data, **payload["init_params"])
        model.module.load_state_dict(payload["state_dict"])
        model.module.to("cuda" if accelerator == "gpu" else "cpu")
        model.module.eval()
        model.is_trained_ = payload["is_trained"]
        model.history_ = {k: pd.DataFrame(v) for k, v in payload["history"].items()}
        model.training_report = payload.get("training_report")
        return model


def _category_keys(args: dict) -> dict[str, str | None]:
    """Registry key -> user obs column of the single-column categorical fields."""
    return {
        REGISTRY_KEYS.BATCH_KEY: args.get("batch_key"),
        REGISTRY_KEYS.LABELS_KEY: args.get("labels_key"),
    }


_SMALL_CATEGORY = re.compile(
    r"Category (\S+) in adata\.obs\['_scvi_(\w+)'\] has fewer than 3 cells"
)


def _restate_small_categories(
    caught: list[warnings.WarningMessage], manager, args: dict, *, training: bool
) -> None:
    """Re-emit warnings caught while registering, restating scvi's small-category notice.

    scvi-tools warns about categories with fewer than 3 cells naming its internal column
    (``_scvi_batch``); for training data the warning is restated with the user's column and
    category, for new data (nothing is trained on it) it is dropped.
    """
    for w in caught:
        match = _SMALL_CATEGORY.search(str(w.message))
        if match is None:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            continue
        col = _category_keys(args).get(match.group(2))
        if not training or col is None:
            continue
        mapping = manager.get_state_registry(match.group(2)).categorical_mapping
        code = int(match.group(1)) if match.group(1).isdigit() else -1
        name = mapping[code] if 0 <= code < len(mapping) else match.group(1)
        warnings.warn(
            f"category {name!r} of adata.obs[{col!r}] has fewer than 3 cells; the model "
            "learns little about it (merge it into another category or drop these cells).",
            UserWarning,
            stacklevel=4,
        )


def _fused_adam(params, *, lr: float, extra_decay: dict[int, float] | None = None):
    """Adam with scvi-tools' defaults (eps 0.01, weight decay 1e-6), fused where supported.

    ``extra_decay`` maps ``id(parameter)`` to an L2 coefficient added to that parameter's
    weight decay (a Gaussian prior on it, see ``MultiModalVAEModule.loading_prior_decay``).
    """
    params = [p for p in params if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params)
    extra_decay = extra_decay or {}
    groups: dict[float, list] = {}
    for p in params:
        groups.setdefault(1e-6 + extra_decay.get(id(p), 0.0), []).append(p)
    return torch.optim.Adam(
        [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()],
        lr=lr,
        eps=0.01,
        fused=fused,
    )


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
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}


def _glibc():
    """The C library through ctypes when it is glibc on Linux, else ``None``."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@contextmanager
def _reuse_freed_memory(*, enabled: bool = True) -> Iterator[None]:
    """Serve large allocations from freed heap memory while the block runs (glibc only).

    glibc hands out blocks above its mmap threshold (which grows to 32 MiB at most) as fresh
    mappings and unmaps them when freed, so every training step faults in and zeroes its large
    gradient buffers again. Inside the block mmap is not used and freed memory stays in the
    heap for the next step; afterwards glibc's defaults are set back and free memory is
    returned to the system. See ``scgenvae.settings.reuse_freed_memory``.
    """
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**30)
    try:
        yield
    finally:
        for param, value in _GLIBC_DEFAULTS.items():
            libc.mallopt(param, value)
        libc.malloc_trim(0)


@contextmanager
def _quiet_sparse_warnings() -> Iterator[None]:
    """Silence torch's 'sparse CSR is beta' notices, which say nothing actionable to users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly")
        yield


def _version() -> str:
    from scgenvae import __version__

    return __version__


def _rows(values: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """Rows of ``values`` for a target; ``-1`` rows (cell absent) become NaN."""
    if rows is None:
        return values
    out = np.full((len(rows), values.shape[1]), np.nan, dtype=np.float64)
    ok = rows >= 0
    out[ok] = values[rows[ok]]
    return out


def _mean_of(decoded: dict, *, unobserved_depth: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised mean of a decoded modality: its likelihood head's predictive mean.

    See :meth:`scgenvae.module.LikelihoodHead.predictive_mean` (``scale`` for counts,
    probabilities averaged over the unobserved depth for Bernoulli).
    """
    head = decoded[MODULE_KEYS.HEAD_KEY]
    return head.predictive_mean(decoded, unobserved_depth=unobserved_depth)
