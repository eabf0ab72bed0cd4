"""Reference mapping: query data on a trained model (scArches-style architecture surgery).

Three steps, each returning something new and leaving the user's objects as they are:

1. ``prepare_query_anndata`` / ``prepare_query_mudata`` order the query's features as the
   reference has them, pad the missing ones with zeros and drop the others (a MultiVAE query
   without ATAC gets an ATAC modality whose cells have no fragments, which the model treats as
   unobserved);
2. ``load_query_data`` builds a model on the query: the reference's weights, with the
   embeddings of batch and categorical covariates extended by one row per category the
   reference did not see (initialised to the mean of the reference rows) and the registry's
   category mappings extended to match;
3. ``train()`` on it trains on the query. With ``freeze=True`` only the new rows are trained:
   every other parameter has ``requires_grad=False``, a gradient hook zeroes the gradient of
   the reference rows and a callback puts them back after every optimiser step (so weight
   decay or momentum cannot move them either). The reference cells' latent is unchanged, bit
   for bit.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from lightning.pytorch import Callback
from scipy import sparse

from scgenvae._constants import REGISTRY_KEYS
from scgenvae.nn import CovariateInjection

from ._io import read_meta, read_model

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

#: share of the reference's features the query must have (per modality)
MIN_SHARED_FEATURES = 0.5


# ----------------------------------------------------------------------------- the reference
def _reference_meta(reference) -> dict[str, Any]:
    """Setup arguments, features, registry, constructor and module arguments of a reference.

    ``reference`` is a trained model or the folder it was saved to (no tensor is read here).
    """
    if isinstance(reference, str | os.PathLike):
        meta = read_meta(reference)
        return {
            "model_class": meta["model_class"],
            "setup_args": dict(meta["setup_args"]),
            "features": {m: pd.Index(v) for m, v in meta["features"].items()},
            "registry": meta["registry"],
            "init_params": dict(meta["init_params"]),
            "module_kwargs": dict(meta["module_kwargs"]),
        }
    if not hasattr(reference, "adata_manager") or not hasattr(reference, "_features"):
        msg = (
            f"`reference` must be a trained scgenvae model or the folder it was saved to, got "
            f"{type(reference).__name__}."
        )
        raise TypeError(msg)
    return {
        "model_class": type(reference).__name__,
        "setup_args": dict(reference._setup_args),
        "features": dict(reference._features),
        "registry": reference.adata_manager._registry,
        "init_params": dict(reference._init_kwargs),
        "module_kwargs": dict(reference._module_kwargs),
    }


def _reference_state(reference) -> dict[str, torch.Tensor]:
    if isinstance(reference, str | os.PathLike):
        return read_model(reference)[1]
    return {k: v.detach().cpu().clone() for k, v in reference.module.state_dict().items()}


def _check_class(cls, meta: dict) -> None:
    if meta["model_class"] != cls.__name__:
        msg = f"the reference is a {meta['model_class']}; use `{meta['model_class']}` to map onto it."
        raise ValueError(msg)


# ----------------------------------------------------------------------------- features
def _reindex_columns(x, indexer: np.ndarray):
    """Columns of ``x`` in the order ``indexer`` gives; ``-1`` columns are all zero."""
    keep = indexer >= 0
    if sparse.issparse(x):
        x = sparse.csr_matrix(x)
        select = sparse.csr_matrix(
            (np.ones(int(keep.sum()), dtype=x.dtype), (indexer[keep], np.flatnonzero(keep))),
            shape=(x.shape[1], len(indexer)),
        )
        out = sparse.csr_matrix(x @ select)
        out.sort_indices()
        return out
    x = np.asarray(x)
    out = np.zeros((x.shape[0], len(indexer)), dtype=x.dtype)
    out[:, keep] = x[:, indexer[keep]]
    return out


def conform_features(
    adata: AnnData, names: pd.Index, *, what: str = "features", min_shared: float
) -> AnnData:
    """A new AnnData with ``names`` as its features: reordered, missing ones zero, extras dropped.

    ``.X`` and every layer are reindexed; obs, obsm, obsp and uns are copied; var columns are
    kept for the shared features (missing values for padded ones). Refuses a query that shares
    fewer than ``min_shared`` of ``names``.
    """
    if adata.isbacked:
        adata = adata.to_memory()
    if not adata.var_names.is_unique:
        msg = f"the query's {what} names are not unique; call `var_names_make_unique()` first."
        raise ValueError(msg)
    indexer = adata.var_names.get_indexer(names)
    n_shared = int((indexer >= 0).sum())
    if n_shared < min_shared * len(names):
        example = list(names[:3])
        msg = (
            f"the query has {n_shared:,} of the reference's {len(names):,} {what} "
            f"({n_shared / max(len(names), 1):.0%}); mapping needs at least {min_shared:.0%}. "
            f"Check that both name {what} the same way (reference: {example}; query: "
            f"{list(adata.var_names[:3])})."
        )
        raise ValueError(msg)
    n_padded = len(names) - n_shared
    n_dropped = adata.n_vars - n_shared
    if n_padded:
        logger.warning(
            "%d of the reference's %d %s (%.1f%%) are missing from the query; they are set to 0",
            n_padded,
            len(names),
            what,
            100 * n_padded / len(names),
        )
    if n_dropped:
        logger.info("%d query %s not in the reference are dropped", n_dropped, what)
    out = AnnData(
        X=None if adata.X is None else _reindex_columns(adata.X, indexer),
        obs=adata.obs.copy(),
        var=adata.var.reindex(names),
        obsm={k: copy.deepcopy(v) for k, v in adata.obsm.items()},
        obsp={k: copy.deepcopy(v) for k, v in adata.obsp.items()},
        uns=copy.deepcopy(dict(adata.uns)),
        layers={k: _reindex_columns(v, indexer) for k, v in adata.layers.items()},
    )
    out.var.index.name = adata.var.index.name
    return out


def _empty_modality(cells: pd.Index, names: pd.Index) -> AnnData:
    """A modality in which no cell was measured: all-zero rows (unobserved for the model)."""
    return AnnData(
        X=sparse.csr_matrix((len(cells), len(names)), dtype=np.float32),
        obs=pd.DataFrame(index=cells),
        var=pd.DataFrame(index=names),
    )


def _query_modalities(query, rna_mod: str, atac_mod: str) -> dict[str, AnnData | None]:
    """The query's RNA and ATAC objects (``None`` for a modality it lacks)."""
    from mudata import MuData

    if isinstance(query, MuData):
        found = {m: query.mod.get(m) for m in (rna_mod, atac_mod)}
        if all(v is None for v in found.values()):
            msg = (
                f"the query has neither mod[{rna_mod!r}] nor mod[{atac_mod!r}]; its modalities "
                f"are {list(query.mod)}."
            )
            raise KeyError(msg)
        return found
    if not isinstance(query, AnnData):
        msg = f"the query must be an AnnData or a MuData, got {type(query).__name__}."
        raise TypeError(msg)
    if "feature_types" in query.var.columns:
        ft = query.var["feature_types"].astype(str).to_numpy()
        rna = query[:, ft == "Gene Expression"]
        atac = query[:, ft == "Peaks"]
        return {
            rna_mod: rna if rna.n_vars else None,
            atac_mod: atac if atac.n_vars else None,
        }
    return {rna_mod: query, atac_mod: None}  # an AnnData of RNA alone


def prepare_query_mudata(cls, query, reference, *, min_shared: float = MIN_SHARED_FEATURES):
    """A new MuData with each modality conformed to the reference (see ``MultiVAE``)."""
    from mudata import MuData

    from scgenvae._quiet import quiet

    meta = _reference_meta(reference)
    _check_class(cls, meta)
    args = meta["setup_args"]
    names = {args["rna_mod"]: meta["features"]["rna"], args["atac_mod"]: meta["features"]["atac"]}
    found = _query_modalities(query, args["rna_mod"], args["atac_mod"])
    what = {args["rna_mod"]: "genes", args["atac_mod"]: "peaks"}
    mods = {
        m: conform_features(a, names[m], what=what[m], min_shared=min_shared)
        for m, a in found.items()
        if a is not None
    }
    cells = pd.Index(query.obs_names)
    for m in names:
        if m not in mods:
            logger.info("the query has no %s; its cells are mapped from the other modality", m)
            mods[m] = _empty_modality(cells, names[m])
    with quiet():
        out = MuData({m: mods[m] for m in names})
    if out.obs_names.equals(cells):
        out.obs = query.obs.copy()
        for k, v in query.obsm.items():
            out.obsm[k] = copy.deepcopy(v)
        out.uns.update(copy.deepcopy(dict(query.uns)))
    else:
        out.obs = query.obs.reindex(out.obs_names)
    return out


# ----------------------------------------------------------------------------- categories
def _category_values(cls, data, args: dict, key: str) -> pd.Series:
    """Values of the obs column ``key`` as the model reads them (for new categories)."""
    if cls._setup_method == "setup_mudata":
        from ._multivae import _column, _modalities

        rna, atac, cells, obs = _modalities(data, args)
        return _column(key, obs, [(args["rna_mod"], rna), (args["atac_mod"], atac)], cells)
    if key not in data.obs.columns:
        msg = f"{key!r} (a set-up column of the reference) not found in the query's obs."
        raise KeyError(msg)
    return data.obs[key]


def _new_categories(values: pd.Series, known: Sequence) -> list:
    seen = {str(c) for c in known}
    new = {str(v): v for v in pd.unique(values.dropna()) if str(v) not in seen}
    return [new[k] for k in sorted(new)]


def extend_registry(cls, data, args: dict, registry: dict) -> tuple[dict, dict[str, list]]:
    """The registry with the query's new batch, label and covariate categories appended.

    Categories keep their codes; new ones get the next codes. Returns the new registry and the
    new categories by obs column.
    """
    registry = copy.deepcopy(registry)
    fields = registry["field_registries"]
    added: dict[str, list] = {}
    for reg_key, stat in (
        (REGISTRY_KEYS.BATCH_KEY, "n_batch"),
        (REGISTRY_KEYS.LABELS_KEY, "n_labels"),
    ):
        col = args.get(f"{reg_key}_key")
        if col is None or reg_key not in fields:
            continue
        state = fields[reg_key]["state_registry"]
        mapping = np.asarray(state["categorical_mapping"], dtype=object)
        new = _new_categories(_category_values(cls, data, args, col), mapping)
        if new:
            state["categorical_mapping"] = np.concatenate([mapping, np.asarray(new, dtype=object)])
            fields[reg_key]["summary_stats"][stat] = len(state["categorical_mapping"])
            added[col] = new
    cat = fields.get(REGISTRY_KEYS.CAT_COVS_KEY, {}).get("state_registry", {})
    for i, col in enumerate(cat.get("field_keys") or []):
        mapping = np.asarray(cat["mappings"][col], dtype=object)
        new = _new_categories(_category_values(cls, data, args, col), mapping)
        if new:
            cat["mappings"][col] = np.concatenate([mapping, np.asarray(new, dtype=object)])
            cat["n_cats_per_key"][i] = len(cat["mappings"][col])
            added[col] = new
    return registry, added


# ----------------------------------------------------------------------------- surgery
def _injections(module: torch.nn.Module) -> dict[str, CovariateInjection]:
    return {n: m for n, m in module.named_modules() if isinstance(m, CovariateInjection)}


def extend_state(
    ref_state: Mapping[str, torch.Tensor],
    new_module: torch.nn.Module,
    old_cats: Sequence[int],
    new_cats: Sequence[int],
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The reference's state dict for ``new_module``, whose embeddings have more categories.

    Rows of known categories are the reference's; rows of new categories start at the mean of
    the reference rows (zero where the reference had no embedding, i.e. one category, whose
    effect was zero). Returns the state and, per extended embedding, its number of reference rows.
    """
    state = dict(ref_state)
    new_state = new_module.state_dict()
    ref_rows: dict[str, int] = {}
    for prefix, inj in _injections(new_module).items():
        if not inj._active:
            continue
        old_active = [n > 1 for n in old_cats]
        old_keys = [f"{prefix}.embeddings.{j}.weight" for j in range(sum(old_active))]
        old_iter, new_j = iter(old_keys), 0
        for i, active in enumerate(inj._active):
            old_w = state.pop(next(old_iter)) if old_active[i] else None
            if not active:
                continue
            key = f"{prefix}.embeddings.{new_j}.weight"
            new_j += 1
            n_old, n_new = int(old_cats[i]), int(new_cats[i])
            width = new_state[key].shape[1]
            if old_w is None:  # one category before: no embedding, a zero effect
                old_w = torch.zeros(max(n_old, 1), width, dtype=new_state[key].dtype)
            fill = old_w.mean(0, keepdim=True).expand(n_new - old_w.shape[0], width)
            new_state[key] = torch.cat([old_w, fill]).contiguous()
            if n_new > old_w.shape[0]:
                ref_rows[key] = int(old_w.shape[0])
    for key, value in state.items():
        if key not in new_state or new_state[key].shape != value.shape:
            msg = f"the reference's parameter {key!r} does not fit the query model."
            raise ValueError(msg)
        new_state[key] = value
    return new_state, ref_rows


class KeepReferenceRows(Callback):
    """Put the reference rows of extended embeddings back after every optimiser step.

    The gradient hooks already keep them out of the update; this makes them exact whatever the
    optimiser does with zero gradients (weight decay, AdamW's decoupled decay).
    """

    def __init__(self, rows: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.rows = dict(rows)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, *args, **kwargs) -> None:
        params = dict(pl_module.module.named_parameters())
        for key, saved in self.rows.items():
            p = params[key]
            p[: saved.shape[0]].copy_(saved.to(p.device))


def _row_mask_hook(n_ref: int):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:n_ref] = 0
        return grad

    return hook


# ----------------------------------------------------------------------------- the mixin
class MappingMixin:
    """Reference mapping for scgenvae models (see the user guide's page on mapping)."""

    #: state dict name -> reference rows of embeddings trained on the query (frozen mapping)
    _query_frozen_rows: dict[str, torch.Tensor] | None = None

    @classmethod
    def prepare_query_anndata(
        cls, query: AnnData, reference, *, min_shared: float = MIN_SHARED_FEATURES
    ) -> AnnData:
        """A copy of ``query`` with the reference's features, in the reference's order.

        Features the query lacks are added as zeros (a warning is logged with their number),
        features the reference lacks are dropped. ``query`` is not modified.

        Parameters
        ----------
        query
            AnnData of the query cells.
        reference
            The trained reference model, or the folder it was saved to.
        min_shared
            Smallest share of the reference's features the query must have.

        Returns
        -------
        A new AnnData, ready for :meth:`load_query_data`.
        """
        meta = _reference_meta(reference)
        _check_class(cls, meta)
        return conform_features(
            query, meta["features"]["rna"], what="genes", min_shared=min_shared
        )

    @classmethod
    def load_query_data(cls, query, reference, *, freeze: bool = True, accelerator: str = "cpu"):
        """A model of the reference extended to the query's new batches and covariates.

        The reference's weights are kept; each embedding of batch (and of categorical
        covariates) gets one row per category the reference did not see, started at the mean of
        the reference's rows, and the data registry maps these categories to them. Train the
        returned model (``model.train()``) on the query. The query is set up with the
        reference's set-up arguments (nothing is written into it); the reference is not changed.

        Parameters
        ----------
        query
            The query, with the reference's features in its order (see
            :meth:`prepare_query_anndata`); batch and covariate columns as in the reference.
        reference
            The trained reference model, or the folder it was saved to.
        freeze
            Train only the new embedding rows: the reference cells' latent and everything
            decoded for them stay exactly as they were. ``False`` fine-tunes every weight on
            the query (the reference's latent moves).
        accelerator
            ``"cpu"`` or ``"gpu"``.

        Returns
        -------
        The query model (trained on the reference only, until ``train()``).
        """
        meta = _reference_meta(reference)
        _check_class(cls, meta)
        args = meta["setup_args"]
        getattr(cls, cls._setup_method)(query, **args)
        features = cls._feature_names(query, args)
        for m, names in meta["features"].items():
            if not pd.Index(features[m]).equals(pd.Index(names)):
                msg = (
                    f"{m}: the query's features differ from the reference's ({len(names):,}, in "
                    f"its order); call `{cls.__name__}.prepare_query_"
                    f"{'mudata' if cls._setup_method == 'setup_mudata' else 'anndata'}"
                    "(query, reference)` first."
                )
                raise ValueError(msg)
        registry, added = extend_registry(cls, query, args, meta["registry"])
        for col, new in added.items():
            logger.info("new categories of %r: %s", col, [str(c) for c in new])
        cls._remember_setup(query, args, source_registry=registry)
        model = cls(query, **meta["init_params"])
        old = meta["module_kwargs"]
        kwargs = {**old, **{k: model._module_kwargs[k] for k in ("n_batch", "n_cats_per_cov")}}
        model.module = model._make_module(**kwargs)
        old_cats = (int(old["n_batch"]), *old["n_cats_per_cov"])
        new_cats = (int(kwargs["n_batch"]), *kwargs["n_cats_per_cov"])
        state, ref_rows = extend_state(
            _reference_state(reference), model.module, old_cats, new_cats
        )
        model.module.load_state_dict(state)
        model.module.to("cuda" if accelerator == "gpu" else "cpu")
        model.module.eval()
        model.is_trained_ = True  # usable as it is: the reference's weights
        model._query_untrained = True  # its first train() starts a history of its own
        model._train_seed = None
        if freeze:
            model._freeze_reference(ref_rows)
        return model

    def _freeze_reference(self, ref_rows: Mapping[str, int]) -> None:
        """Leave only the new rows of extended embeddings trainable."""
        params = dict(self.module.named_parameters())
        for p in params.values():
            p.requires_grad_(requires_grad=False)
        saved = {}
        for key, n_ref in ref_rows.items():
            p = params[key]
            p.requires_grad_(requires_grad=True)
            p.register_hook(_row_mask_hook(n_ref))
            saved[key] = p.detach()[:n_ref].clone()
        self._query_frozen_rows = saved

    def _trainer_defaults(self, trainer_kwargs: dict, *args, **kwargs) -> None:
        """Add the frozen reference rows' callback; say what training a trained model does."""
        frozen = self._query_frozen_rows
        if frozen is not None and not frozen:
            msg = (
                "this query model has nothing to train: the query has no batch or covariate "
                "category the reference lacks, so with `freeze=True` every weight stays the "
                "reference's (its latent for the query is final already). Use "
                "`load_query_data(..., freeze=False)` to fine-tune all weights."
            )
            raise ValueError(msg)
        super()._trainer_defaults(trainer_kwargs, *args, **kwargs)
        if getattr(self, "_query_untrained", False):
            # scvi-tools appends the history of a trained model's new training to the old
            # one; a query model's first training is a first training (other cells, losses)
            self.is_trained_, self.history_ = False, None
            self._query_untrained = False
        if frozen:
            callbacks = [*trainer_kwargs.get("callbacks", []), KeepReferenceRows(frozen)]
            trainer_kwargs["callbacks"] = callbacks
            logger.info("training the query's new embedding rows only (reference frozen)")
        elif self.is_trained_:
            logger.info(
                "training a trained model fine-tunes all of its weights on this data; to map a "
                "query onto it without changing it, use `load_query_data(query, model)`"
            )
