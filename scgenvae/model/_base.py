"""What PoissonVAE and MultiVAE share: setup store, internal AnnData, training, save/load, getters.

The user's AnnData/MuData is never modified. ``setup_anndata``/``setup_mudata`` validate it and
remember the setup arguments; the model then builds a light internal AnnData (sharing the
user's matrices, no copy) on which scvi-tools' data registry is registered. scvi's fields write
helper columns (``_scvi_batch``...) into the object they register, which is why they never see
the user's object.
"""

from __future__ import annotations

import logging
import warnings
import weakref
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
from scvi.utils import track

from scgenvae import _docs
from scgenvae._constants import (
    DEFAULT_CLUSTER_KEY,
    DEFAULT_CLUSTER_PROBS_KEY,
    DEFAULT_LATENT_KEY,
    MODULE_KEYS,
    REGISTRY_KEYS,
)
from scgenvae._docs import doc_params
from scgenvae._quiet import quiet
from scgenvae._settings import settings
from scgenvae._threads import restore_threads, tuner

from ._compat import ScviCompatMixin
from ._data import (
    CellDataSplitter,
    MinibatchIterable,
    RowSource,
    registry_arrays,
)
from ._de import DEMixin
from ._export import check_latent_write, write_latent
from ._io import (
    SaveLoadMixin,
)
from ._mapping import MappingMixin
from ._outputs import OutputsMixin
from ._plan import ScgenvaeTrainingPlan
from ._setup import (
    Scans,
    SetupSpec,
    category_keys,
    recall,
    remember,
    restate_small_categories,
)
from ._training import TrainingMixin
from ._validate import (
    check_known_categories,
    check_trainable,
    fingerprint,
    resolve_indices,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from anndata import AnnData


logger = logging.getLogger(__name__)

#: minibatch size of the getters when ``batch_size=None``
DEFAULT_BATCH_SIZE = 1024
#: a getter's loop shows a progress bar past this many minibatches ...
PROGRESS_MIN_BATCHES = 20
#: ... or when it decodes more values than this in several minibatches
PROGRESS_MIN_VALUES = 50_000_000


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


class BaseScgenvaeModel(
    OutputsMixin,
    MappingMixin,
    ScviCompatMixin,
    DEMixin,
    SaveLoadMixin,
    TrainingMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
    """Shared user-facing machinery of scgenvae models (not used directly)."""

    _training_plan_cls = ScgenvaeTrainingPlan
    _data_splitter_cls = CellDataSplitter
    #: registry keys handed to the module as sparse CSR minibatches when the data are sparse
    #: (the module's first layers and likelihoods work on the non-zeros); others are dense
    _sparse_keys: ClassVar[frozenset[str]] = frozenset({REGISTRY_KEYS.X_KEY})
    _setup_method: ClassVar[str] = "setup_anndata"

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
        internal, sources = self._build_internal(data, args, Scans(spec.scans, validated=True))
        training = spec.source_registry is None
        if training:
            check_trainable(internal.n_obs)
            self._check_training_data(data, args)
        else:
            check_known_categories(internal.obs, spec.source_registry, category_keys(args))
        manager = AnnDataManager(
            fields=self._fields(args),
            setup_method_args={"setup_method_name": self._setup_method, "setup_args": dict(args)},
        )
        with quiet():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                manager.register_fields(internal, source_registry=spec.source_registry)
            restate_small_categories(caught, manager, args, training=training)
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
            internal.obs, self.adata_manager._registry, category_keys(self._setup_args)
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
        restate_small_categories(caught, self.adata_manager, self._setup_args, training=False)
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
        kwargs = {
            "batch_size": batch_size or DEFAULT_BATCH_SIZE,
            "shuffle": False,
            "keep_order": True,
        }
        if streams:  # backed data: one block of rows in memory at a time
            kwargs["sources"] = streams
        return MinibatchIterable(arrays, indices, sparse_keys=self._sparse_keys, **kwargs)

    def _iter_inference(
        self,
        data=None,
        *,
        indices=None,
        batch_size: int | None = None,
        use_modalities: tuple[str, ...] | None = None,
        n_outputs: int = 0,
        prepared: tuple[AnnData, dict[str, RowSource]] | None = None,
    ) -> Iterator[tuple[dict, dict]]:
        """Encode the cells minibatch by minibatch: ``(tensors, inference outputs)`` pairs.

        A progress bar is shown (``scgenvae.settings.progress_bar``) when the loop is long:
        more than :data:`PROGRESS_MIN_BATCHES` minibatches, or several minibatches of
        ``n_outputs`` values per cell (the width of what the caller decodes) that add up to
        more than :data:`PROGRESS_MIN_VALUES`.
        """
        self._check_if_trained(warn=False)
        prepared = self._internal(data) if prepared is None else prepared
        indices = self._cell_indices(indices, data)
        n_cells = prepared[0].n_obs if indices is None else len(indices)
        batch_size = batch_size or DEFAULT_BATCH_SIZE
        n_batches = -(-n_cells // batch_size)
        show = settings.progress_bar and (
            n_batches > PROGRESS_MIN_BATCHES
            or (n_batches > 1 and n_cells * n_outputs > PROGRESS_MIN_VALUES)
        )
        loader = self._loader(prepared, indices, batch_size)
        if show:
            loader = track(
                loader,
                description=f"{type(self).__name__}: cells",
                style=settings.progress_bar_style,
                total=n_batches,
            )
        was_training = self.module.training
        self.module.eval()
        try:
            threads = tuner() if next(self.module.parameters()).device.type == "cpu" else None
            with torch.inference_mode(), quiet(), restore_threads():
                for tensors in loader:
                    if threads is not None:
                        threads.before_step()
                    inf_in = self.module._get_inference_input(tensors)
                    out = self.module.inference(**inf_in, use_modalities=use_modalities)
                    yield tensors, out
                    if threads is not None:
                        threads.after_step()
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
        {adata}
        {indices}
        give_mean
            Posterior mean (deterministic) rather than one sample.
        {batch_size}
        modality
            ``"joint"`` uses every observed modality; a modality name uses that encoder alone.
            Cells without that modality (of a multi-modal model) get NaN rows, with a warning.
        """
        use = self._modality_arg(modality)
        out, n_lacking = [], 0
        for _, inf in self._iter_inference(
            adata, indices=indices, batch_size=batch_size, use_modalities=use
        ):
            qz = inf[MODULE_KEYS.QZ_KEY]
            z = qz.loc if give_mean else qz.sample()
            lacking = self._lacking_input(inf, use)
            if lacking.any():
                z = z.masked_fill(lacking.unsqueeze(-1), float("nan"))
                n_lacking += int(lacking.sum())
            out.append(z.cpu().numpy())
        out = np.concatenate(out)
        if use is not None:
            self._warn_lacking(n_lacking, len(out), use, "latent representations")
        return out

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
        keys = {
            "key_added": key_added,
            "cluster_key_added": cluster_key_added,
            "cluster_probs_key_added": cluster_probs_key_added,
        }
        targets = self._latent_targets(data)
        # before any computation: a refused key costs nothing
        check_latent_write(data, targets, clusters=clusters, **keys)
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
        uns_key = write_latent(data, targets, latent=latent, probs=probs, params=params, **keys)
        logger.info("added obsm[%r] and uns[%r]['params']", key_added, uns_key)


def _registered(internal: AnnData, key: str):
    """The matrix registered under ``key`` in an internal AnnData (``.X`` or an ``obsm``)."""
    return internal.X if key == REGISTRY_KEYS.X_KEY else internal.obsm[key]


# docstrings filled after the class bodies, not by decorators: mutmut leaves decorated
# functions unmutated (docs/dev/mutation.md)
doc_params(**_docs.getter)(BaseScgenvaeModel.get_latent_representation)
