"""PoissonVAE: a conditional VAE for one count modality (RNA)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from scvi.data.fields import LayerField

from scgenvae import _docs
from scgenvae._constants import REGISTRY_KEYS
from scgenvae._docs import doc_params
from scgenvae.module import ModalitySpec, log_library_mean

from ._base import BaseScgenvaeModel, _obs_frame, covariate_fields
from ._criticism import CriticismMixin
from ._data import RowSource, stand_in
from ._setup import Scans
from ._validate import (
    check_continuous,
    check_obs_keys,
    check_shape,
    check_values,
    get_matrix,
    streamable,
    warn_empty_cells,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)


class PoissonVAE(CriticismMixin, BaseScgenvaeModel):
    """Conditional VAE for single-cell counts with a Poisson decoder.

    The encoder ``q(z | x, s)`` maps log counts and the batch/covariates ``s`` to a diagonal
    Gaussian, sampled with ``z = mu + sigma * eps``. The decoder ``p(x | z, s)`` is conditional on
    ``s`` at every layer, so the same ``z`` can be decoded under another batch
    (``transform_batch``). With ``gene_likelihood="poisson"`` the rate of gene ``g`` in cell ``n``
    is ``l_n * softmax(f(z_n, s_n))_g`` with the observed library size ``l_n`` as offset.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_hidden
        Width of hidden layers.
    n_latent
        Dimension of the latent space.
    n_layers
        Hidden layers in encoder and decoder.
    dropout_rate
        Dropout in hidden layers.
    gene_likelihood
        ``"poisson"``, ``"nb"`` (negative binomial, gene-wise dispersion) or ``"zinb"``.
    encode_covariates
        Condition the encoder on batch and covariates as well as the decoder.
    n_clusters
        Give the model a discrete latent with this many clusters (Gaussian-mixture prior
        trained with Gumbel-Softmax); ``None`` for a standard-normal prior.
    straight_through
        With ``n_clusters``: one-hot (hard) cluster samples forwards, soft gradients backwards.

    Examples
    --------
    >>> import scgenvae
    >>> adata = scgenvae.datasets.synthetic_rna(n_obs=200, n_vars=50)
    >>> scgenvae.model.PoissonVAE.setup_anndata(adata, batch_key="batch")
    >>> model = scgenvae.model.PoissonVAE(adata, n_latent=5)
    >>> model.train(max_epochs=2, enable_progress_bar=False)
    >>> model.export_latent(adata)  # adata.obsm["X_scgenvae"]

    See Also
    --------
    scgenvae.module.MultiModalVAEModule : the torch module.
    scgenvae.model.MultiVAE : paired RNA + ATAC.
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        gene_likelihood: Literal["poisson", "nb", "zinb"] = "poisson",
        encode_covariates: bool = True,
        n_clusters: int | None = None,
        straight_through: bool = False,
    ):
        if gene_likelihood not in ("poisson", "nb", "zinb"):
            msg = f"`gene_likelihood` must be 'poisson', 'nb' or 'zinb', got {gene_likelihood!r}."
            raise ValueError(msg)
        self._init_data(adata)
        self._init_kwargs = {
            "n_hidden": n_hidden,
            "n_latent": n_latent,
            "n_layers": n_layers,
            "dropout_rate": dropout_rate,
            "gene_likelihood": gene_likelihood,
            "encode_covariates": encode_covariates,
            "n_clusters": n_clusters,
            "straight_through": straight_through,
        }
        self.init_params_ = {"kwargs": {"kwargs": dict(self._init_kwargs)}}
        self.module = self._make_module(
            modalities={
                "rna": ModalitySpec(REGISTRY_KEYS.X_KEY, self.adata.n_vars, gene_likelihood)
            },
            **self._summary_dims(),
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            encode_covariates=encode_covariates,
            library_log_means={
                "rna": log_library_mean(
                    self._row_totals((self.adata, self._sources), REGISTRY_KEYS.X_KEY)
                )
            },
            n_clusters=n_clusters,
            straight_through=straight_through,
        )
        self._model_summary_string = (
            f"PoissonVAE: n_latent {n_latent}, n_hidden {n_hidden}, n_layers {n_layers}, "
            f"gene_likelihood {gene_likelihood}, n_batch {self._module_kwargs['n_batch']}"
            + (f", n_clusters {n_clusters}" if n_clusters else "")
        )

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> None:
        """Validate ``adata`` and remember which fields the model reads.

        Nothing is written into ``adata``. A backed AnnData (``read_h5ad(path, backed="r")``,
        with a CSR or dense ``.X``) is validated block by block without reading it whole; the
        model then streams it from disk (see :meth:`train`).

        Parameters
        ----------
        adata
            Cells x genes AnnData with raw counts (in memory or backed).
        layer
            Layer with the counts (``None`` for ``.X``).
        batch_key
            obs column of the batch (the condition of the conditional VAE).
        labels_key
            obs column of cell labels (kept in the registry, not used for training).
        categorical_covariate_keys
            More categorical obs columns the encoder and decoder are conditioned on.
        continuous_covariate_keys
            Numeric obs columns the encoder and decoder are conditioned on.
        """
        if not isinstance(adata, AnnData):
            msg = f"PoissonVAE.setup_anndata needs an AnnData, got {type(adata).__name__}."
            raise TypeError(msg)
        check_shape(adata)
        x = get_matrix(adata, layer, keep_backed=True)
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        totals = None
        scans = Scans()
        if streamable(x):
            totals = scans.get((None, layer, True), x, where=where).row_sums
        else:
            check_values(x, where=where)
        cat_keys = list(categorical_covariate_keys or [])
        cont_keys = list(continuous_covariate_keys or [])
        check_obs_keys(adata.obs, [batch_key, labels_key, *cat_keys, *cont_keys])
        check_continuous(adata.obs, cont_keys)
        warn_empty_cells(x, where=where, totals=totals)
        if not adata.var_names.is_unique:
            msg = "adata.var_names are not unique; call `adata.var_names_make_unique()` first."
            raise ValueError(msg)
        cls._remember_setup(
            adata,
            {
                "layer": layer,
                "batch_key": batch_key,
                "labels_key": labels_key,
                "categorical_covariate_keys": cat_keys or None,
                "continuous_covariate_keys": cont_keys or None,
            },
            scans=scans,
        )

    @classmethod
    def _fields(cls, args: dict) -> list:
        return [
            LayerField(REGISTRY_KEYS.X_KEY, None, is_count_data=False),
            *covariate_fields(args),
        ]

    @classmethod
    def _feature_names(cls, data, args: dict) -> dict[str, pd.Index]:
        del args
        return {"rna": pd.Index(data.var_names)}

    @classmethod
    def _matrices(cls, data, args) -> dict:
        layer = args["layer"]
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        return {where: get_matrix(data, layer, keep_backed=True)}

    def _build_internal(self, data: AnnData, args, scans: Scans) -> tuple[AnnData, dict]:
        if not isinstance(data, AnnData):
            msg = f"expected an AnnData, got {type(data).__name__}."
            raise TypeError(msg)
        check_shape(data)
        x = get_matrix(data, args["layer"], keep_backed=True)
        source = None
        if streamable(x):
            # The counts stay on disk: scvi's LayerField registers an all-zero stand-in of the
            # same shape (it only records the shape, but its helpers would read a backed
            # matrix, e.g. ``_check_nonnegative_integers`` reads rows when asked to), and our
            # loaders read the rows from the backed matrix, block by block.
            scan = scans.get((None, args["layer"], True), x, where="the counts")
            source = RowSource(x, scan=scan)
            x = stand_in(*source.shape)
        elif not scans.validated:  # validated by the set-up and unchanged since: not again
            check_values(x, where="the counts")
        if sparse.issparse(x) and x.format != "csr":
            x = sparse.csr_matrix(x)  # CSC or COO: row slicing needs CSR (the user's is kept)
        cols = [
            k
            for k in (
                args.get("batch_key"),
                args.get("labels_key"),
                *(args.get("categorical_covariate_keys") or []),
                *(args.get("continuous_covariate_keys") or []),
            )
            if k is not None
        ]
        check_obs_keys(data.obs, cols)
        internal = AnnData(
            X=x,
            obs=_obs_frame(data.obs, cols, data.n_obs),
            var=pd.DataFrame(index=pd.RangeIndex(data.n_vars).astype(str)),
        )
        return internal, ({} if source is None else {REGISTRY_KEYS.X_KEY: source})

    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        *,
        indices: Sequence[int] | None = None,
        transform_batch: str | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["latent"] = 1.0,
        batch_size: int | None = None,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Decoded expression of each cell from its posterior mean (cells x genes).

        Parameters
        ----------
        {adata}
        {indices}
        {transform_batch}
        {gene_list}
        library_size
            Scale of each row: a number (rows sum to it over all genes), or ``"latent"`` for
            the observed library size of each cell (expected counts).
        {batch_size}
        {return_numpy}

        Returns
        -------
        A DataFrame indexed by the cells' obs names (those of ``indices``), with a column per
        gene; with ``return_numpy=True`` the array alone.
        """
        columns = self._feature_positions("rna", gene_list, "gene_list")
        values = self._decode(
            adata,
            target="rna",
            indices=indices,
            transform_batch=transform_batch,
            batch_size=batch_size,
            columns=columns,
        )
        if library_size == "latent":
            totals = self._row_totals(self._internal(adata), REGISTRY_KEYS.X_KEY)
            if indices is not None:
                totals = totals[self._cell_indices(indices, adata)]
            values *= totals.reshape(-1, 1).astype(values.dtype)
        else:
            values *= np.float32(library_size)
        if return_numpy:
            return values
        return self._named(values, data=adata, indices=indices, modality="rna", columns=columns)


# docstrings filled after the class bodies, not by decorators: mutmut leaves decorated
# functions unmutated (docs/dev/mutation.md)
doc_params(**_docs.getter)(PoissonVAE.get_normalized_expression)
