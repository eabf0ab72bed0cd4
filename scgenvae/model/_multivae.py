"""MultiVAE: one latent space for paired RNA counts and chromatin accessibility."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse
from scvi.data.fields import LayerField, ObsmField

from scgenvae import _docs
from scgenvae._constants import REGISTRY_KEYS
from scgenvae._docs import doc_params
from scgenvae.module import ModalitySpec, get_head, log_library_mean

from ._base import BaseScgenvaeModel, _obs_frame, covariate_fields
from ._criticism import MultiVAECriticismMixin
from ._data import RowSource, stand_in
from ._mapping import MIN_SHARED_FEATURES, prepare_query_mudata
from ._setup import Scans
from ._validate import (
    check_continuous,
    check_shape,
    check_values,
    get_matrix,
    streamable,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._de import RNGLike, SeedLike

logger = logging.getLogger(__name__)

_GEX = "Gene Expression"
_PEAKS = "Peaks"


def _split_feature_types(adata: AnnData) -> tuple[AnnData, AnnData]:
    """RNA and ATAC views of a Cell Ranger ARC AnnData with ``var['feature_types']``."""
    if "feature_types" not in adata.var.columns:
        msg = (
            "an AnnData given to MultiVAE.setup_mudata needs var['feature_types'] with "
            f"{_GEX!r} and {_PEAKS!r} rows (as Cell Ranger ARC writes it); or pass a MuData."
        )
        raise KeyError(msg)
    ft = adata.var["feature_types"].astype(str)
    rna, atac = adata[:, (ft == _GEX).to_numpy()], adata[:, (ft == _PEAKS).to_numpy()]
    if rna.n_vars == 0 or atac.n_vars == 0:
        msg = f"var['feature_types'] must contain both {_GEX!r} and {_PEAKS!r}; found {sorted(set(ft))}."
        raise ValueError(msg)
    return rna, atac


def _modalities(data, args: dict) -> tuple[AnnData, AnnData, pd.Index, pd.DataFrame]:
    """RNA and ATAC objects, the union of cells, and the obs frame covariates come from."""
    if isinstance(data, MuData):
        for key, name in (("rna_mod", args["rna_mod"]), ("atac_mod", args["atac_mod"])):
            if name not in data.mod:
                msg = f"`{key}={name!r}` not found in mdata.mod; available: {list(data.mod)}."
                raise KeyError(msg)
        rna, atac = data.mod[args["rna_mod"]], data.mod[args["atac_mod"]]
        cells = pd.Index(data.obs_names)
        obs = data.obs
    elif isinstance(data, AnnData):
        rna, atac = _split_feature_types(data)
        cells = pd.Index(data.obs_names)
        obs = data.obs
    else:
        msg = f"MultiVAE needs a MuData (or an AnnData with var['feature_types']), got {type(data).__name__}."
        raise TypeError(msg)
    return rna, atac, cells, obs


def _rows(mod: AnnData, cells: pd.Index, name: str = "m") -> np.ndarray:
    """Row of each union cell in ``mod`` (-1 where the cell lacks the modality)."""
    if not mod.obs_names.is_unique:
        dup = list(mod.obs_names[mod.obs_names.duplicated()].unique()[:3])
        msg = (
            f"mod[{name!r}].obs_names are not unique (for instance {dup}); call "
            f"`mdata.mod[{name!r}].obs_names_make_unique()` or drop the duplicated cells."
        )
        raise ValueError(msg)
    return mod.obs_names.get_indexer(cells)


def _aligned(mat, rows: np.ndarray):
    """``mat`` with rows in union order; cells without the modality get all-zero rows."""
    if len(rows) == mat.shape[0] and (rows == np.arange(len(rows))).all():
        return mat
    mat = sparse.csr_matrix(mat)
    out = mat[np.clip(rows, 0, None)]
    return sparse.csr_matrix(sparse.diags((rows >= 0).astype(out.dtype)) @ out)


def _column(
    key: str, obs: pd.DataFrame, mods: list[tuple[str, AnnData]], cells: pd.Index
) -> pd.Series:
    """Covariate ``key`` from the joint obs, else from a modality's obs (aligned to cells)."""
    if key in obs.columns:
        return obs[key].reindex(cells)
    found = None
    for name, mod in mods:
        for col in (key, f"{name}:{key}"):
            if col in mod.obs.columns:
                values = mod.obs[col]
                break
        else:
            if f"{name}:{key}" not in obs.columns:
                continue
            values = obs[f"{name}:{key}"]
        values = values.reindex(cells)
        if isinstance(values.dtype, pd.CategoricalDtype):
            values = values.astype(object)
        # unpaired cells: the value comes from whichever modality has the cell
        found = values if found is None else found.combine_first(values)
    if found is not None:
        return found
    available = sorted(set(obs.columns).union(*[set(m.obs.columns) for _, m in mods]))
    msg = f"{key!r} not found in mdata.obs or the modalities' obs; available: {available}."
    raise KeyError(msg)


def _check_init_args(
    rna_likelihood: str, atac_likelihood: str, n_sampled_peaks, modality_dropout: float
) -> None:
    """Refuse MultiVAE arguments out of their range, naming the argument."""
    if rna_likelihood not in ("poisson", "nb"):
        msg = f"`rna_likelihood` must be 'poisson' or 'nb', got {rna_likelihood!r}."
        raise ValueError(msg)
    if atac_likelihood not in ("bernoulli", "poisson"):
        msg = f"`atac_likelihood` must be 'bernoulli' or 'poisson', got {atac_likelihood!r}."
        raise ValueError(msg)
    if n_sampled_peaks is not None and (
        isinstance(n_sampled_peaks, bool)
        or not isinstance(n_sampled_peaks, int | np.integer)
        or n_sampled_peaks < 1
    ):
        msg = (
            "`n_sampled_peaks` must be a positive number of peaks or None (score all peaks), "
            f"got {n_sampled_peaks!r}."
        )
        raise ValueError(msg)
    if not 0 <= modality_dropout < 0.5:
        msg = f"`modality_dropout` must be in [0, 0.5), got {modality_dropout}."
        raise ValueError(msg)


def _check_covariates(args: dict, obs: pd.DataFrame, mods: list, cells: pd.Index) -> None:
    """Every covariate is found for every cell; continuous ones are finite numbers."""
    keys = [k for k in [args["batch_key"], *(args["categorical_covariate_keys"] or [])] if k]
    cont = args["continuous_covariate_keys"] or []
    frame = pd.DataFrame({k: _column(k, obs, mods, cells) for k in [*keys, *cont]}, index=cells)
    for k in [*keys, *cont]:
        if frame[k].isna().any():
            msg = (
                f"covariate {k!r} is missing for {int(frame[k].isna().sum())} cells; fill it "
                "in mdata.obs."
            )
            raise ValueError(msg)
    check_continuous(frame, cont, where="mdata.obs")


class MultiVAE(MultiVAECriticismMixin, BaseScgenvaeModel):
    """Multimodal VAE for paired single-cell RNA + ATAC with one joint latent.

    Gene counts have a Poisson decoder (library size as offset; or negative binomial), peaks a
    Bernoulli decoder in logit space with a per-region bias, a per-region response to the
    cell's depth and the cell's log depth (or a Poisson decoder for fragment counts). Each
    modality has its own encoder; the joint posterior is the product of the Gaussian experts of
    the observed modalities and the prior, so cells with RNA only or ATAC only are embedded in
    the same space. Training uses, for a random quarter of paired cells each, the RNA-only
    and the ATAC-only posterior (``modality_dropout``), which teaches cross-modal prediction
    at no extra cost, plus ``KL(q_joint || q_m)`` to keep single-modality posteriors on the
    joint one.

    Parameters
    ----------
    mdata
        MuData (or Cell Ranger ARC AnnData) registered with :meth:`setup_mudata`.
    n_hidden, n_latent, n_layers, dropout_rate
        Network sizes.
    rna_likelihood
        ``"poisson"`` or ``"nb"``.
    atac_likelihood
        ``"bernoulli"`` (binarised peaks) or ``"poisson"`` (fragment counts).
    encode_covariates
        Condition the encoders on batch and covariates too.
    modality_dropout
        Probability, per paired cell and per modality, of training on that modality alone.
    alignment_weight
        Weight of the single-modality alignment term.
    loading_prior_sd
        Standard deviation of the Gaussian prior on the Bernoulli decoder's per-peak loadings
        (``None``: no prior). With 1-5% of peaks open per cell, most peaks are open in few
        training cells, and unregularised loadings memorise them: accessibility predicted for
        new cells then ranks peaks worse than their mere frequency (A549 held-out AUROC from
        RNA 0.737 without the prior, 0.759 with the default, peak frequency 0.755; PBMC 0.85
        either way). The prior weighs like one data set's worth of evidence, so it fades as
        cells are added.
    n_sampled_peaks
        With a Bernoulli decoder and more than twice this many peaks, each training step scores
        the inaccessible part of the likelihood on this many peaks drawn for the minibatch
        (an unbiased estimate; the accessible peaks are always all scored, and evaluation
        scores every peak). ``None`` scores all peaks at every step.
    n_clusters, straight_through
        Discrete latent (see :class:`~scgenvae.model.PoissonVAE`).

    Examples
    --------
    >>> mdata = scgenvae.datasets.scicar_a549()
    >>> scgenvae.model.MultiVAE.setup_mudata(mdata)
    >>> model = scgenvae.model.MultiVAE(mdata)
    >>> model.train()
    >>> model.export_latent(mdata)  # mdata.obsm["X_scgenvae"]
    >>> acc = model.get_accessibility_estimates(modality="rna")  # ATAC from RNA alone
    """

    _setup_method = "setup_mudata"
    # MULTIVI's default too. With early stopping, which counts from the end of the warm-up, a
    # 100-epoch warm-up kept A549 training to epochs 132-136, past the point where expression
    # predicted from ATAC starts to overfit (held-out Spearman 0.063-0.068 against 0.070-0.072
    # with 50; FOSCTTM and AUROC alike; benchmarks/RESULTS_defaults.md)
    _kl_warmup_cap = 50
    _sparse_keys = frozenset({REGISTRY_KEYS.X_KEY, REGISTRY_KEYS.ATAC_KEY})

    def __init__(
        self,
        mdata: MuData | AnnData,
        *,
        n_hidden: int = 256,
        n_latent: int = 20,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        rna_likelihood: Literal["poisson", "nb"] = "poisson",
        atac_likelihood: Literal["bernoulli", "poisson"] = "bernoulli",
        encode_covariates: bool = True,
        modality_dropout: float = 0.25,
        alignment_weight: float = 1.0,
        loading_prior_sd: float | None = 0.03,
        n_sampled_peaks: int | None = 1024,
        n_clusters: int | None = None,
        straight_through: bool = False,
    ):
        _check_init_args(rna_likelihood, atac_likelihood, n_sampled_peaks, modality_dropout)
        self._atac_likelihood = atac_likelihood
        self._init_data(mdata)
        self._init_kwargs = {
            "n_hidden": n_hidden,
            "n_latent": n_latent,
            "n_layers": n_layers,
            "dropout_rate": dropout_rate,
            "rna_likelihood": rna_likelihood,
            "atac_likelihood": atac_likelihood,
            "encode_covariates": encode_covariates,
            "modality_dropout": modality_dropout,
            "alignment_weight": alignment_weight,
            "loading_prior_sd": loading_prior_sd,
            "n_sampled_peaks": n_sampled_peaks,
            "n_clusters": n_clusters,
            "straight_through": straight_through,
        }
        self.init_params_ = {"kwargs": {"kwargs": dict(self._init_kwargs)}}
        rna = self.adata.X
        atac = self.adata.obsm[REGISTRY_KEYS.ATAC_KEY]
        self.module = self._make_module(
            modalities={
                "rna": ModalitySpec(REGISTRY_KEYS.X_KEY, rna.shape[1], rna_likelihood),
                "atac": ModalitySpec(REGISTRY_KEYS.ATAC_KEY, atac.shape[1], atac_likelihood),
            },
            **self._summary_dims(),
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            encode_covariates=encode_covariates,
            library_log_means={
                m: log_library_mean(self._row_totals((self.adata, self._sources), key))
                for m, key in (("rna", REGISTRY_KEYS.X_KEY), ("atac", REGISTRY_KEYS.ATAC_KEY))
            },
            modality_dropout=modality_dropout,
            alignment_weight=alignment_weight,
            loading_prior_sd=loading_prior_sd,  # only Bernoulli heads put it on their loadings
            n_obs=self.adata.n_obs,
            n_sampled_peaks=n_sampled_peaks,
            n_clusters=n_clusters,
            straight_through=straight_through,
        )
        self._model_summary_string = (
            f"MultiVAE: {rna.shape[1]:,} genes ({rna_likelihood}) + {atac.shape[1]:,} peaks "
            f"({atac_likelihood}), n_latent {n_latent}, n_hidden {n_hidden}, "
            f"n_batch {self._module_kwargs['n_batch']}"
        )

    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData | AnnData,
        rna_mod: str = "rna",
        atac_mod: str = "atac",
        rna_layer: str | None = None,
        atac_layer: str | None = None,
        batch_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> None:
        """Validate paired RNA + ATAC data and remember which fields the model reads.

        Nothing is written into ``mdata`` and its modalities are not reordered. A backed MuData
        (``mudata.read_h5mu(path, backed=True)``) whose modalities hold the same cells in the
        same order is validated block by block and streamed from disk in training (see
        :meth:`train`); other backed data are read into memory.

        Parameters
        ----------
        mdata
            MuData with an RNA and an ATAC modality, or one AnnData with
            ``var['feature_types']`` (``"Gene Expression"`` / ``"Peaks"``).
        rna_mod, atac_mod
            Names of the modalities in ``mdata.mod``.
        rna_layer, atac_layer
            Layers with RNA counts and ATAC values (``None`` for ``.X``).
        batch_key
            Batch column (of ``mdata.obs``, or of a modality's obs).
        categorical_covariate_keys, continuous_covariate_keys
            More covariates the encoders and decoders are conditioned on.
        """
        args = {
            "rna_mod": rna_mod,
            "atac_mod": atac_mod,
            "rna_layer": rna_layer,
            "atac_layer": atac_layer,
            "batch_key": batch_key,
            "categorical_covariate_keys": list(categorical_covariate_keys or []) or None,
            "continuous_covariate_keys": list(continuous_covariate_keys or []) or None,
        }
        rna, atac, cells, obs = _modalities(mdata, args)
        check_shape(rna, where=f"mod[{rna_mod!r}]")
        check_shape(atac, where=f"mod[{atac_mod!r}]")
        rows_rna, rows_atac = _rows(rna, cells, rna_mod), _rows(atac, cells, atac_mod)
        if not ((rows_rna >= 0) | (rows_atac >= 0)).any() or len(cells) == 0:
            msg = f"mod[{rna_mod!r}] and mod[{atac_mod!r}] share no cells with mdata.obs_names."
            raise ValueError(msg)

        for name, mod in ((rna_mod, rna), (atac_mod, atac)):
            if not mod.var_names.is_unique:
                msg = (
                    f"mod[{name!r}].var_names are not unique; call "
                    f"`mdata.mod[{name!r}].var_names_make_unique()` first."
                )
                raise ValueError(msg)
        scans = Scans()
        for mod, layer, name, arg, label, counts in (
            (rna, rna_layer, rna_mod, "rna_layer", "RNA", True),
            (atac, atac_layer, atac_mod, "atac_layer", "ATAC", False),
        ):
            x = get_matrix(mod, layer, where=f"mod[{name!r}]", arg=arg, keep_backed=True)
            where = f"{label} ({name!r}, layer {layer})"
            if streamable(x):  # block by block, without reading it whole
                scans.get((name, layer, counts), x, where=where, counts=counts)
            else:
                check_values(x, where=where, counts=counts)
        _check_covariates(args, obs, [(rna_mod, rna), (atac_mod, atac)], cells)
        n_only = int(((rows_rna >= 0) ^ (rows_atac >= 0)).sum())
        if n_only:
            logger.info("%d cells have only one modality; they are embedded from it", n_only)
        cls._remember_setup(mdata, args, scans=scans)

    @classmethod
    def setup_anndata(cls, adata: AnnData, **kwargs) -> None:
        """Set up one Cell Ranger ARC AnnData (``var['feature_types']``); see :meth:`setup_mudata`."""
        cls.setup_mudata(adata, **kwargs)

    @classmethod
    def prepare_query_mudata(
        cls, query: MuData | AnnData, reference, *, min_shared: float = MIN_SHARED_FEATURES
    ) -> MuData:
        """A new MuData with the reference's genes and peaks, in the reference's order.

        Each modality of the query is conformed as in
        :meth:`~scgenvae.model.PoissonVAE.prepare_query_anndata` (missing features zero,
        extra ones dropped, fewer than ``min_shared`` shared refused). A modality the query
        lacks (an AnnData of RNA alone, or a MuData with only ``mod["rna"]``) is added with
        all-zero rows: its cells count as unmeasured in it, and are embedded from the other
        modality. ``query`` is not modified.

        Parameters
        ----------
        query
            MuData, an AnnData with ``var['feature_types']``, or an AnnData of RNA alone.
        reference
            The trained reference MultiVAE, or the folder it was saved to.
        min_shared
            Smallest share of the reference's genes (and peaks) the query must have.

        Returns
        -------
        A new MuData with the reference's modality names, ready for :meth:`load_query_data`.
        """
        return prepare_query_mudata(cls, query, reference, min_shared=min_shared)

    @classmethod
    def prepare_query_anndata(
        cls, query: AnnData, reference, *, min_shared: float = MIN_SHARED_FEATURES
    ) -> MuData:
        """Same as :meth:`prepare_query_mudata` (a MultiVAE query becomes a MuData)."""
        return prepare_query_mudata(cls, query, reference, min_shared=min_shared)

    @classmethod
    def _fields(cls, args: dict) -> list:
        return [
            LayerField(REGISTRY_KEYS.X_KEY, None, is_count_data=False),
            ObsmField(REGISTRY_KEYS.ATAC_KEY, "atac"),
            *covariate_fields(args),
        ]

    @classmethod
    def _feature_names(cls, data, args: dict) -> dict[str, pd.Index]:
        rna, atac, _, _ = _modalities(data, args)
        return {"rna": pd.Index(rna.var_names), "atac": pd.Index(atac.var_names)}

    def _check_training_data(self, data, args) -> None:
        """Training needs paired cells: one latent for both modalities is learnt from them."""
        rna, atac, cells, _ = _modalities(data, args)
        both = (_rows(rna, cells, args["rna_mod"]) >= 0) & (
            _rows(atac, cells, args["atac_mod"]) >= 0
        )
        if not both.any():
            msg = (
                f"no cell of mod[{args['rna_mod']!r}] is also in mod[{args['atac_mod']!r}]: "
                "MultiVAE learns one latent for both modalities from paired cells, and there are "
                "none. Check that the modalities' obs_names name the same cells (e.g. the same "
                "barcode format)."
            )
            raise ValueError(msg)

    @classmethod
    def _matrices(cls, data, args) -> dict:
        rna, atac, _, _ = _modalities(data, args)
        out = {}
        for mod, key, name in ((rna, "rna_layer", "rna_mod"), (atac, "atac_layer", "atac_mod")):
            layer = args[key]
            where = f"mod[{args[name]!r}]" + (".X" if layer is None else f".layers[{layer!r}]")
            out[where] = get_matrix(mod, layer, where=where, arg=key, keep_backed=True)
        return out

    def _streamed(self, data, args, scans: Scans) -> dict[str, RowSource] | None:
        """Row sources of backed RNA and ATAC matrices (``None``: in memory, as usual).

        Streaming needs both modalities backed, on the same cells in the same order as the
        MuData's cells; other backed data are read into memory (with a warning).
        """
        rna, atac, cells, _ = _modalities(data, args)
        x_rna = get_matrix(rna, args["rna_layer"], where="RNA", arg="rna_layer", keep_backed=True)
        x_atac = get_matrix(
            atac, args["atac_layer"], where="ATAC", arg="atac_layer", keep_backed=True
        )
        if not (streamable(x_rna) or streamable(x_atac)):
            return None
        identity = np.arange(len(cells))
        same_cells = all(
            np.array_equal(_rows(mod, cells), identity) for mod in (rna, atac)
        ) and isinstance(data, MuData)
        if not (streamable(x_rna) and streamable(x_atac) and same_cells):
            warnings.warn(
                "this backed data is read into memory: streaming from disk needs a backed MuData "
                "whose RNA and ATAC matrices (CSR or dense) hold the same cells in the same "
                "order as mdata.obs_names.",
                UserWarning,
                stacklevel=5,
            )
            return None
        binarize = self._atac_head().binarize
        rna_key, atac_key = (
            (args["rna_mod"], args["rna_layer"]),
            (args["atac_mod"], args["atac_layer"]),
        )
        scan_rna = scans.get((*rna_key, True), x_rna, where="RNA counts")
        scan_atac = scans.get((*atac_key, False), x_atac, where="ATAC", counts=False)
        if not binarize:
            scan_atac = scans.get((*atac_key, True), x_atac, where="ATAC counts")
        elif not scan_atac.binary:
            self._warn_binarising()
        return {
            REGISTRY_KEYS.X_KEY: RowSource(x_rna, scan=scan_rna),
            REGISTRY_KEYS.ATAC_KEY: RowSource(
                x_atac, scan=scan_atac, binarize=binarize and not scan_atac.binary
            ),
        }

    def _atac_head(self):
        """The ATAC likelihood's head (it says whether and how the peaks are binarised)."""
        return get_head(getattr(self, "_atac_likelihood", "bernoulli"))

    @staticmethod
    def _warn_binarising() -> None:
        warnings.warn(
            "ATAC values are not binary; binarising them (value > 0 -> 1) for the "
            "Bernoulli likelihood. Use `atac_likelihood='poisson'` for fragment counts.",
            UserWarning,
            stacklevel=6,
        )

    def _build_internal(self, data, args, scans: Scans) -> tuple[AnnData, dict]:
        rna, atac, cells, obs = _modalities(data, args)
        rows_rna = _rows(rna, cells, args["rna_mod"])
        rows_atac = _rows(atac, cells, args["atac_mod"])
        streams = self._streamed(data, args, scans)
        if streams is not None:
            # The matrices stay on disk: scvi's fields register all-zero stand-ins of the same
            # shapes (they only record shapes and names, but their helpers would read a backed
            # matrix), and our loaders read the rows from the backed matrices block by block.
            x_rna = stand_in(*streams[REGISTRY_KEYS.X_KEY].shape)
            x_atac = stand_in(*streams[REGISTRY_KEYS.ATAC_KEY].shape)
            self._report_empty_features(
                streams[REGISTRY_KEYS.X_KEY].col_means(),
                streams[REGISTRY_KEYS.ATAC_KEY].col_means(),
            )
        else:
            x_rna, x_atac = self._in_memory_matrices(rna, atac, args, scans.validated)
            self._report_empty_features(
                np.asarray(x_rna.sum(axis=0)).ravel(), np.asarray(x_atac.sum(axis=0)).ravel()
            )
        mods = [(args["rna_mod"], rna), (args["atac_mod"], atac)]
        keys = [
            k
            for k in [
                args.get("batch_key"),
                *(args.get("categorical_covariate_keys") or []),
                *(args.get("continuous_covariate_keys") or []),
            ]
            if k
        ]
        frame = pd.DataFrame({k: _column(k, obs, mods, cells) for k in keys}, index=cells)
        internal = AnnData(
            X=_aligned(x_rna, rows_rna),
            obs=_obs_frame(frame, keys, len(cells)),
            var=pd.DataFrame(index=pd.RangeIndex(rna.n_vars).astype(str)),
        )
        internal.obsm["atac"] = sparse.csr_matrix(_aligned(x_atac, rows_atac), dtype=np.float32)
        return internal, streams or {}

    def _in_memory_matrices(
        self,
        rna: AnnData,
        atac: AnnData,
        args: dict,
        validated: bool,  # noqa: FBT001
    ) -> tuple:
        x_rna = get_matrix(rna, args["rna_layer"], where="RNA", arg="rna_layer")
        if not validated:  # validated by the set-up and unchanged since: not again
            check_values(x_rna, where="RNA counts")
        if sparse.issparse(x_rna) and x_rna.format != "csr":
            x_rna = sparse.csr_matrix(x_rna)  # row slicing needs CSR (the user's is kept)
        x_atac = get_matrix(atac, args["atac_layer"], where="ATAC", arg="atac_layer")
        x_atac = sparse.csr_matrix(x_atac) if not sparse.issparse(x_atac) else x_atac
        head = self._atac_head()
        if head.binarize:
            prepared = head.prepare(x_atac)
            if prepared is not x_atac:
                self._warn_binarising()
                x_atac = prepared
        else:  # the set-up checked ATAC values without knowing the likelihood needs counts
            check_values(x_atac, where="ATAC counts")
        return x_rna, x_atac

    def _report_empty_features(self, col_rna: np.ndarray, col_atac: np.ndarray) -> None:
        if getattr(self, "_reported_empty", False):
            return
        self._reported_empty = True
        n_g = int((col_rna == 0).sum())
        n_p = int((col_atac == 0).sum())
        if n_g or n_p:
            logger.warning(
                "%d genes and %d peaks have no counts; their decoded rates are learned towards 0 "
                "(filter them with sc.pp.filter_genes to save time)",
                n_g,
                n_p,
            )

    def _latent_targets(self, data) -> list:
        if not isinstance(data, MuData):
            return [(data, None)]
        rna, atac, cells, _ = _modalities(data, self._setup_args)
        out = [(data, None)]
        for mod in (rna, atac):
            out.append((mod, cells.get_indexer(mod.obs_names)))
        return out

    def _use(
        self, modality: str, allowed: tuple[str, ...], use_modality: str | None = None
    ) -> tuple[str, ...] | None:
        if use_modality is not None:  # the name of scgenvae 0.1
            warnings.warn(
                "`use_modality` is now `modality` (as in `get_latent_representation`); the old "
                "name will be removed.",
                FutureWarning,
                stacklevel=3,
            )
            modality = use_modality
        if modality not in allowed:
            msg = f"`modality={modality!r}` must be one of {list(allowed)}."
            raise ValueError(msg)
        return None if modality == "joint" else (modality,)

    def get_normalized_expression(
        self,
        mdata: MuData | None = None,
        *,
        modality: Literal["joint", "atac"] = "joint",
        indices: Sequence[int] | None = None,
        transform_batch: str | None = None,
        gene_list: Sequence[str] | None = None,
        batch_size: int | None = None,
        return_numpy: bool = False,
        use_modality: str | None = None,
    ) -> pd.DataFrame | np.ndarray:
        """Normalised expression (cells x genes, rows sum to 1 over all genes).

        ``modality="atac"`` encodes each cell from its ATAC alone: expression imputed from
        chromatin accessibility. Cells without ATAC then get NaN rows (and a warning): there
        is nothing to impute from. Only the RNA decoder runs.

        Parameters
        ----------
        {mdata}
        modality
            Encoder(s) used: ``"joint"`` or ``"atac"`` (the name of every getter's argument).
        {indices}
        {transform_batch}
        {gene_list}
        {batch_size}
        {return_numpy}
        use_modality
            Former name of ``modality`` (deprecated).

        Returns
        -------
        A DataFrame indexed by the cells' obs names (those of ``indices``), with a column per
        gene; with ``return_numpy=True`` the array alone.
        """
        use = self._use(modality, ("joint", "atac"), use_modality)
        columns = self._feature_positions("rna", gene_list, "gene_list")
        values = self._decode(
            mdata,
            target="rna",
            indices=indices,
            transform_batch=transform_batch,
            use_modalities=use,
            batch_size=batch_size,
            columns=columns,
            what="expression values",
        )
        if return_numpy:
            return values
        return self._named(values, data=mdata, indices=indices, modality="rna", columns=columns)

    def get_accessibility_estimates(
        self,
        mdata: MuData | None = None,
        *,
        modality: Literal["joint", "rna"] = "joint",
        indices: Sequence[int] | None = None,
        transform_batch: str | None = None,
        region_list: Sequence[str] | None = None,
        threshold: float | None = None,
        batch_size: int | None = None,
        return_numpy: bool = False,
        use_modality: str | None = None,
    ) -> pd.DataFrame | np.ndarray | sparse.csr_matrix:
        """Probability that each peak is accessible (cells x peaks).

        With ``modality="rna"`` each cell is encoded from its RNA alone and its ATAC depth
        is predicted from the latent: accessibility imputed from expression (nothing of the
        cell's ATAC is used). Cells without RNA then get NaN rows (empty rows with
        ``threshold``) and a warning. With ``"joint"`` the observed depth is used where there
        is one. Only the ATAC decoder runs, and with ``region_list`` and the Bernoulli
        likelihood only the regions asked are computed.

        With ``atac_likelihood="poisson"`` the values are each peak's share of the cell's
        fragments (rows sum to 1 over all peaks), not probabilities.

        Parameters
        ----------
        {mdata}
        modality
            Encoder(s) used: ``"joint"`` or ``"rna"`` (the name of every getter's argument).
        {indices}
        {transform_batch}
        region_list
            Names of the peaks to return, in this order (``None``: all).
        threshold
            Keep only values ``>= threshold`` (in ``(0, 1]``) and return them sparse: a
            DataFrame with sparse columns (``pd.DataFrame.sparse``, as scvi-tools' MULTIVI
            returns), or a :class:`scipy.sparse.csr_matrix` with ``return_numpy=True``. The
            dense matrix is never built (one minibatch at a time), which is what makes
            imputation on many cells x many peaks fit in memory.
        {batch_size}
        {return_numpy}
        use_modality
            Former name of ``modality`` (deprecated).

        Returns
        -------
        A DataFrame indexed by the cells' obs names (those of ``indices``), with a column per
        peak (sparse columns with ``threshold``); with ``return_numpy=True`` the array (CSR
        matrix with ``threshold``).
        """
        use = self._use(modality, ("joint", "rna"), use_modality)
        if threshold is not None and (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float | np.number)
            or not 0 < threshold <= 1
        ):
            msg = (
                "`threshold` must be a number in (0, 1] (values below it are dropped) or None "
                f"(dense output), got {threshold!r}."
            )
            raise ValueError(msg)
        columns = self._feature_positions("atac", region_list, "region_list")
        values = self._decode(
            mdata,
            target="atac",
            indices=indices,
            transform_batch=transform_batch,
            use_modalities=use,
            batch_size=batch_size,
            observed_library=use is None,
            columns=columns,
            threshold=threshold,
            what="accessibility estimates",
        )
        if return_numpy:
            return values
        return self._named(values, data=mdata, indices=indices, modality="atac", columns=columns)

    def differential_accessibility(
        self,
        mdata: MuData | None = None,
        *,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        idx1=None,
        idx2=None,
        mode: Literal["change", "vanilla"] = "change",
        delta: float | None = None,
        batch_correction: bool = True,
        fdr_target: float = 0.05,
        n_samples: int = 200,
        all_stats: bool = True,
        key_added: str | None = None,
        modality: Literal["joint", "rna", "atac"] = "joint",
        batch_size: int | None = None,
        rng: SeedLike | RNGLike = None,
    ) -> pd.DataFrame:
        """Differential accessibility between two groups of cells, from the model's posterior.

        As :meth:`differential_expression`, on the probability that each peak is accessible,
        decoded at the training data's mean log depth (so that differences of sequencing
        depth between the groups are not tested), and with the change measured as the
        difference of the two groups' mean probabilities.

        Parameters
        ----------
        {mdata}
        {groupby}
        {group1}
        {group2}
        {idx1}
        {idx2}
        {mode}
        delta
            Smallest absolute difference of accessibility probabilities that counts as
            differential (``"change"`` mode); ``None``: 0.05, as scvi-tools' MULTIVI.
        {batch_correction}
        {fdr_target}
        {n_samples}
        {all_stats}
        {key_added}
        {modality}
        {batch_size}
        {rng}

        Returns
        -------
        A DataFrame indexed by peak with ``proba_da``, ``proba_not_da``, ``bayes_factor``,
        ``est_prob1``/``est_prob2`` (posterior mean accessibility of the groups),
        ``effect_mean``, ``effect_median``, ``effect_std``, ``effect_min``, ``effect_max``
        (``est_prob1 - est_prob2``), ``lfc_mean`` (log2 ratio of the probabilities),
        ``is_da_fdr_<fdr_target>``, ``delta`` and ``pseudocounts`` (0); with ``all_stats``
        also ``emp_prob1/2`` (fraction of cells with the peak open, among cells with ATAC)
        and ``emp_effect``; with ``groupby``, ``comparison``, ``group1`` and ``group2``.
        With ``key_added``, sets ``mdata.mod[atac_mod].uns[key_added]`` as
        :meth:`differential_expression` does (``pvals``: ``proba_not_da``).
        """
        if self._atac_likelihood != "bernoulli":
            msg = (
                "differential_accessibility compares accessibility probabilities, which a "
                "model with `atac_likelihood='poisson'` does not estimate."
            )
            raise ValueError(msg)
        args = dict(locals())
        del args["self"], args["mdata"]
        return self._differential(
            mdata, kind="accessibility", target="atac", pseudocounts=None, **args
        )


# docstrings filled after the class bodies, not by decorators: mutmut leaves decorated
# functions unmutated (docs/dev/mutation.md)
doc_params(**_docs.getter)(MultiVAE.get_normalized_expression)
doc_params(**_docs.getter)(MultiVAE.get_accessibility_estimates)
doc_params(**_docs.de)(MultiVAE.differential_accessibility)
