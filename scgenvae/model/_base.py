"""What PoissonVAE and MultiVAE share: setup store, internal AnnData, training, save/load, getters.

The user's AnnData/MuData is never modified. ``setup_anndata``/``setup_mudata`` validate it and
remember the setup arguments; the model then builds a light internal AnnData (sharing the
user's matrices, no copy) on which scvi-tools' data registry is registered. scvi's fields write
helper columns (``_scvi_batch``...) into the object they register, which is why they never see
the user's object.
"""

from __future__ import annotations

import logging
import re
import tempfile
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    NumericalJointObsField,
)
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from scgenvae._allocator import reuse_freed_memory
from scgenvae._constants import (
    DEFAULT_CLUSTER_KEY,
    DEFAULT_CLUSTER_PROBS_KEY,
    DEFAULT_LATENT_KEY,
    MODULE_KEYS,
    REGISTRY_KEYS,
)
from scgenvae._quiet import quiet
from scgenvae._settings import settings

from ._callbacks import WarmupEarlyStopping
from ._checkpoint import resume_from
from ._compat import ScviCompatMixin
from ._data import (
    DEFAULT_BLOCK_SIZE,
    BlockMinibatchIterable,
    InMemoryDataSplitter,
    MinibatchIterable,
    RowSource,
    registry_arrays,
)
from ._export import check_latent_write, write_latent
from ._health import health_report, stop_message, warn_problems
from ._io import (
    META_FILE,
    MODEL_FILE,
    convert_legacy,
    history_from_json,
    history_to_json,
    read_meta,
    read_model,
    write_model,
)
from ._plan import ScgenvaeTrainingPlan
from ._setup import Scans, SetupSpec, recall, remember
from ._validate import (
    check_known_categories,
    check_trainable,
    fingerprint,
    resolve_indices,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator, Mapping, Sequence

    from anndata import AnnData


logger = logging.getLogger(__name__)

#: Lightning's DDP strategy names that have a ``*_find_unused_parameters_true`` variant
_DDP_ALIASES = frozenset({"ddp", "ddp_fork", "ddp_notebook"})
#: ``train(early_stopping=None)`` holds out validation cells and stops early from this many cells
EARLY_STOPPING_MIN_CELLS = 1000
#: epochs without improvement of the validation ELBO (after the KL warm-up) before stopping
EARLY_STOPPING_PATIENCE = 30


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


class BaseScgenvaeModel(ScviCompatMixin, UnsupervisedTrainingMixin, BaseModelClass):
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
    def _build_internal(
        self, data, args: Mapping[str, Any], scans: Scans
    ) -> tuple[AnnData, dict[str, RowSource]]:  # pragma: no cover - abstract
        """Validate ``data``; build the internal AnnData and the row sources of streamed matrices.

        The row sources (registry key -> :class:`RowSource`) are those of backed matrices read
        from disk block by block.
        """
        raise NotImplementedError

    @classmethod
    def _matrices(cls, data, args: Mapping[str, Any]) -> dict[str, Any]:  # pragma: no cover
        """The user's matrices the model reads, by description (for fingerprints)."""
        raise NotImplementedError

    def _check_training_data(self, data, args: Mapping[str, Any]) -> None:
        """Refuse data a model cannot be trained on (beyond the set-up's checks)."""

    @classmethod
    def _fields(cls, args: dict) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def _feature_names(cls, data, args: dict) -> dict[str, pd.Index]:  # pragma: no cover
        raise NotImplementedError

    # set-up --------------------------------------------------------------------------
    @classmethod
    def _remember_setup(
        cls,
        data,
        args: dict,
        *,
        scans: Scans | None = None,
        source_registry: dict | None = None,
    ) -> SetupSpec:
        return remember(
            data,
            cls.__name__,
            args,
            cls._matrices(data, args),
            scans=scans,
            source_registry=source_registry,
        )

    def _init_data(self, data) -> None:
        name = type(self).__name__
        spec = recall(data, name)
        if spec is None:
            msg = (
                f"this object was not set up for {name}: call "
                f"`scgenvae.model.{name}.{self._setup_method}(data, ...)` first."
            )
            raise ValueError(msg)
        changed = spec.changed(self._matrices(data, spec.args))
        if changed:
            msg = (
                f"{changed[0]} changed after `{name}.{self._setup_method}(...)` (normalised or "
                f"log-transformed, or replaced?). Call `{name}.{self._setup_method}` again on "
                "the raw counts."
            )
            raise ValueError(msg)
        args = dict(spec.args)
        internal, sources = self._build_internal(data, args, Scans(spec.scans))
        training = spec.source_registry is None
        if training:
            check_trainable(internal.n_obs)
            self._check_training_data(data, args)
        else:
            check_known_categories(internal.obs, spec.source_registry, _category_keys(args))
        manager = AnnDataManager(
            fields=self._fields(args),
            setup_method_args={"setup_method_name": self._setup_method, "setup_args": dict(args)},
        )
        with quiet():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                manager.register_fields(internal, source_registry=spec.source_registry)
            _restate_small_categories(caught, manager, args, training=training)
        type(self).register_manager(manager)
        BaseModelClass.__init__(self, internal)
        self._setup_args = args
        self._features = self._feature_names(data, args)
        self._user_data = weakref.ref(data)
        self._obs_names = pd.Index(data.obs_names)
        #: row sources of the training matrices that are streamed from disk, by registry key
        self._sources: dict[str, RowSource] = sources
        #: fingerprints of the user's matrices as validated, and of the internal matrices
        self._data_fingerprints = dict(spec.fingerprints)
        self._internal_fingerprints = self._fingerprint_internal(internal, sources)
        #: figures and checks of the last ``train()`` (see ``scgenvae.model._health``)
        self.training_report: dict[str, Any] | None = None

    def _fingerprint_internal(self, internal: AnnData, sources: dict) -> dict[str, tuple]:
        """Fingerprints of the matrices the model reads for ``internal`` (and their files)."""
        out = {}
        for key in self.adata_manager.data_registry if hasattr(self, "adata_manager") else ():
            if key in (REGISTRY_KEYS.X_KEY, REGISTRY_KEYS.ATAC_KEY):
                mat = sources[key].matrix if key in sources else _registered(internal, key)
                out[key] = fingerprint(mat)
        return out

    def _training_data(self) -> tuple[AnnData, dict[str, RowSource]]:
        """The training data, after checking that nothing changed it since the model was built."""
        now = self._fingerprint_internal(self.adata, self._sources)
        changed = [k for k, fp in now.items() if self._internal_fingerprints.get(k) != fp]
        if changed:
            what = "the backed file" if self._sources else "the counts"
            msg = (
                f"{what} of the training data changed after the model was built (normalised or "
                "log-transformed in place, or the file replaced?); the model reads the raw "
                "counts it was set up with. Restore them, or set up and build the model again."
            )
            raise ValueError(msg)
        return self.adata, self._sources

    def _internal(self, data=None) -> tuple[AnnData, dict[str, RowSource]]:
        """Internal AnnData of ``data`` (the training data when ``None``) and its row sources.

        The training object is used as built when its matrices are unchanged; changed, it is
        validated again like any other data.
        """
        if data is None:
            return self._training_data()
        if data is self._user_data():
            matrices = self._matrices(data, self._setup_args)
            if all(fingerprint(m) == self._data_fingerprints.get(w) for w, m in matrices.items()):
                return self._training_data()
            # changed since training: validated again below, like any other data
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
        internal, sources = self._build_internal(data, self._setup_args, Scans())
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
        return internal, sources

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
        for m, spec in modalities.items():
            if spec.registry_key in self._sources:  # from the set-up scan, not the stand-in
                out[m] = self._sources[spec.registry_key].col_means()
                continue
            x = _registered(self.adata, spec.registry_key)
            out[m] = spec.head.column_means(x)
        return out

    @staticmethod
    def _row_totals(prepared: tuple[AnnData, dict[str, RowSource]], key: str) -> np.ndarray:
        """Per-cell totals of a registered matrix (from the set-up scan when it is streamed)."""
        internal, sources = prepared
        if key in sources:
            return sources[key].row_totals()
        x = _registered(internal, key)
        return np.asarray(x.sum(axis=1), dtype=np.float64).ravel()

    @property
    def is_streamed(self) -> bool:
        """Whether the training matrices stay on disk (backed data) and are streamed."""
        return bool(self._sources)

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
        shuffle_set_split: bool = True,
        n_steps_kl_warmup: int | None = None,
        datasplitter_kwargs: dict | None = None,
        plan_config: dict | None = None,
        trainer_config: dict | None = None,
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
        shuffle_set_split
            Shuffle the cells before splitting them into training and validation sets
            (``False``: the last cells are the validation set).
        n_steps_kl_warmup
            KL warm-up in training steps (minibatches) instead of epochs; it replaces
            ``n_epochs_kl_warmup``.
        datasplitter_kwargs
            More arguments for the data splitter; only ``shuffle_set_split`` is accepted (the
            others of scvi-tools' splitter do not apply to scgenvae's minibatches).
        plan_config, trainer_config
            scvi-tools' names for ``plan_kwargs`` and ``trainer_kwargs`` (merged into them).
        **trainer_kwargs
            More arguments for :class:`scvi.train.Trainer` (for instance
            ``enable_progress_bar=False``, ``strategy="ddp"``, ``num_nodes=2``).
        """
        seed = settings.seed if seed is None else seed
        self._training_data()  # refuses training data changed since the model was built
        if max_epochs is None:
            max_epochs = int(min(400, round(400 * 20000 / max(self.adata.n_obs, 1))))
        if (
            isinstance(max_epochs, bool)
            or not isinstance(max_epochs, int | np.integer)
            or max_epochs < 1
        ):
            msg = f"`max_epochs` must be a positive number of epochs, got {max_epochs!r}."
            raise ValueError(msg)
        shuffle_set_split = _splitter_options(
            datasplitter_kwargs, shuffle_set_split=shuffle_set_split
        )
        for name in ("load_sparse_tensor", "datamodule"):
            if name in trainer_kwargs:
                msg = _REFUSED_TRAIN_ARGS[name]
                raise ValueError(msg)
        plan_kwargs = {**dict(plan_config or {}), **dict(plan_kwargs or {})}
        trainer_kwargs = {**dict(trainer_config or {}), **trainer_kwargs}
        _check_plan_kwargs(plan_kwargs)
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
        self.module.train()  # a trained model is left in eval mode; Lightning expects train mode
        with (
            quiet(),
            reuse_freed_memory(enabled=settings.reuse_freed_memory),
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
                shuffle_set_split=shuffle_set_split,
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

    # inference ----------------------------------------------------------------------
    def _loader(
        self,
        prepared: tuple[AnnData, dict[str, RowSource]],
        indices: np.ndarray | None = None,
        batch_size: int | None = None,
    ):
        internal, streams = prepared
        manager = self.get_anndata_manager(internal, required=True)
        indices = np.arange(internal.n_obs) if indices is None else np.asarray(indices)
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
        prepared = self._internal(data)
        indices = self._cell_indices(indices, data)
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.inference_mode(), quiet():
                for tensors in self._loader(prepared, indices, batch_size):
                    inf_in = self.module._get_inference_input(tensors)
                    out = self.module.inference(**inf_in, use_modalities=use_modalities)
                    yield tensors, out
        finally:
            self.module.train(was_training)

    def _cell_indices(self, indices, data=None) -> np.ndarray | None:
        """``indices`` as positions: a boolean mask, integer positions or obs names."""
        if indices is None:
            return None
        names = self._obs_names if data is None else pd.Index(data.obs_names)
        return resolve_indices(indices, names)

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
                out[m].append(
                    self.module.modalities[m]
                    .head.predictive_mean(gen[m], unobserved_depth=unseen)
                    .cpu()
                    .numpy()
                )
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
                    self.module.modalities[m]
                    .head.predictive_mean(
                        gen[m], unobserved_depth=torch.ones(len(zb), dtype=torch.bool)
                    )
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
        clusters = bool(getattr(self.module.prior, "n_clusters", None))
        check_latent_write(  # before any computation: a refused key costs nothing
            data,
            self._latent_targets(data),
            key_added=key_added,
            cluster_key_added=cluster_key_added,
            cluster_probs_key_added=cluster_probs_key_added,
            clusters=clusters,
        )
        latent = self.get_latent_representation(data, give_mean=give_mean)
        probs = None
        if clusters:
            probs = self.get_cluster_probabilities(data)
        params = {
            "model": type(self).__name__,
            "n_latent": int(self.module.n_latent),
            "give_mean": bool(give_mean),
            "seed": -1 if getattr(self, "_train_seed", None) is None else int(self._train_seed),
        }
        uns_key = write_latent(
            data,
            self._latent_targets(data),
            latent=latent,
            probs=probs,
            key_added=key_added,
            cluster_key_added=cluster_key_added,
            cluster_probs_key_added=cluster_probs_key_added,
            params=params,
        )
        logger.info("added obsm[%r] and uns[%r]['params']", key_added, uns_key)

    # persistence --------------------------------------------------------------------
    def save(self, dir_path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Save the model into the folder ``dir_path`` (``model.pt`` and ``model.json``).

        ``model.pt`` holds the module's tensors only and ``model.json`` everything else, so a
        model file never runs code when it is loaded (see the user guide's page on saving
        models). Both files are written atomically.

        Parameters
        ----------
        dir_path
            Folder to write; created if missing.
        overwrite
            Replace an existing model in ``dir_path``.
        """
        meta = {
            "model_class": type(self).__name__,
            "init_params": self._init_kwargs,
            "module_kwargs": self._module_kwargs,
            "setup_args": self._setup_args,
            "registry": self.adata_manager._registry,
            "features": {m: list(v) for m, v in self._features.items()},
            "is_trained": bool(self.is_trained_),
            "history": history_to_json(self.history_),
            "training_report": self.training_report,
            "train_seed": getattr(self, "_train_seed", None),
        }
        write_model(dir_path, meta=meta, state_dict=self.module.state_dict(), overwrite=overwrite)

    @classmethod
    def load(cls, dir_path: str | os.PathLike, data, *, accelerator: str = "cpu"):
        """Load a model saved with :meth:`save` and attach it to ``data``.

        ``data`` must have the training features; categories of batch and covariates are mapped
        as in training. The user's object is not modified. Reading the files runs no code from
        them; a folder saved by scgenvae 0.1 is refused with the way to convert it.

        Parameters
        ----------
        dir_path
            Folder given to :meth:`save`.
        data
            AnnData/MuData to attach (set up with the saved arguments automatically).
        accelerator
            ``"cpu"`` or ``"gpu"``: where to put the module.
        """
        meta, state = read_model(dir_path)
        target = Path(dir_path) / META_FILE
        if meta.get("model_class") != cls.__name__:
            msg = f"{target} holds a {meta.get('model_class')}; load it with that class."
            raise ValueError(msg)
        getattr(cls, cls._setup_method)(data, **meta["setup_args"])
        features = cls._feature_names(data, meta["setup_args"])
        for m, names in meta["features"].items():
            if list(features[m]) != list(names):
                msg = (
                    f"{m}: the saved model expects {len(names):,} features in the trained order, "
                    f"the data has {len(features[m]):,} (or other names/order); subset with "
                    "`data[:, names]`."
                )
                raise ValueError(msg)
        cls._remember_setup(data, meta["setup_args"], source_registry=meta["registry"])
        model = cls(data, **meta["init_params"])
        try:
            model.module.load_state_dict(state)
        except RuntimeError as err:
            msg = f"{Path(dir_path) / MODEL_FILE} does not fit the saved architecture ({err})."
            raise ValueError(msg) from err
        model.module.to("cuda" if accelerator == "gpu" else "cpu")
        model.module.eval()
        model.is_trained_ = bool(meta["is_trained"])
        model.history_ = history_from_json(meta.get("history") or {})
        model.training_report = meta.get("training_report")
        model._train_seed = meta.get("train_seed")
        return model

    @classmethod
    def load_registry(cls, dir_path: str | os.PathLike, prefix: str | None = None) -> dict:
        """The data registry of a saved model (as scvi-tools' ``load_registry``).

        Parameters
        ----------
        dir_path
            Folder given to :meth:`save`.
        prefix
            Not used by scgenvae's files; must be ``None``.
        """
        if prefix is not None:
            msg = "`prefix` is not used by scgenvae model files; pass the folder only."
            raise ValueError(msg)
        return read_meta(dir_path)["registry"]

    @classmethod
    def convert_legacy_save(
        cls,
        dir_path: str | os.PathLike,
        output_dir_path: str | os.PathLike,
        overwrite: bool = False,  # noqa: FBT001, FBT002 - scvi-tools' signature
        prefix: str | None = None,
        *,
        trust_file: bool = False,
    ) -> None:
        """Convert a model saved by scgenvae 0.1 (see :func:`scgenvae.model.convert_legacy_model`).

        Parameters
        ----------
        dir_path
            Folder of the old model.
        output_dir_path
            Folder to write the converted model to.
        overwrite
            Replace a model already in ``output_dir_path``.
        prefix
            Not used by scgenvae's files; must be ``None``.
        trust_file
            Must be ``True``: the old file is unpickled, which runs any code it holds.
        """
        if prefix is not None:
            msg = "`prefix` is not used by scgenvae model files; pass the folder only."
            raise ValueError(msg)
        convert_legacy(dir_path, output_dir_path, trust_file=trust_file, overwrite=overwrite)


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
def _registered(internal: AnnData, key: str):
    """The matrix registered under ``key`` in an internal AnnData (``.X`` or an ``obsm``)."""
    return internal.X if key == REGISTRY_KEYS.X_KEY else internal.obsm[key]
