"""Label transfer from a reference to a query in a shared embedding (k nearest neighbours)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scgenvae._constants import DEFAULT_LATENT_KEY

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger(__name__)

#: what ``uns[key_added]["params"]["writer"]`` says in entries written here
WRITER = "scgenvae.tl.transfer_labels"


def _check_keys(query, key_added: str, uncertainty_key: str) -> None:
    """Refuse keys held by entries that ``transfer_labels`` did not write."""
    if not isinstance(key_added, str) or key_added in ("", ".") or "/" in key_added:
        msg = (
            f"`key_added={key_added!r}` cannot be written to an h5ad/h5mu file (keys must be "
            "non-empty and contain no '/'); choose another key."
        )
        raise ValueError(msg)
    entry = query.uns.get(key_added)
    params = entry.get("params") if isinstance(entry, dict) else None
    ours = isinstance(params, dict) and params.get("writer") == WRITER
    if entry is not None and not ours:
        msg = (
            f"uns[{key_added!r}] exists and was not written by transfer_labels; it is not "
            "replaced. Pass another `key_added`."
        )
        raise ValueError(msg)
    for key in (key_added, uncertainty_key):
        if key in query.obs.columns and not ours:
            msg = (
                f"obs[{key!r}] exists and was not written by transfer_labels; it is not "
                "replaced. Pass another `key_added`."
            )
            raise ValueError(msg)


def _representation(data, use_rep: str, where: str) -> np.ndarray:
    if use_rep not in data.obsm:
        msg = (
            f"{where}.obsm[{use_rep!r}] not found; write the shared embedding first "
            f"(`model.export_latent({where}, key_added={use_rep!r})`). Available: "
            f"{list(data.obsm)}."
        )
        raise KeyError(msg)
    return np.asarray(data.obsm[use_rep], dtype=np.float64)


def _vote(
    ref_rep: np.ndarray, codes: np.ndarray, n_labels: int, query_rep: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Majority label of each query cell's ``k`` reference neighbours, and its uncertainty."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k + 1).fit(ref_rep)
    own, _ = index.kneighbors(ref_rep)
    scale = own[:, 1:].mean(1)  # each reference cell's distance to its neighbours (not itself)
    if len(query_rep) == 0:
        return np.zeros(0, dtype=int), np.zeros(0)
    dist, idx = index.kneighbors(query_rep, n_neighbors=k)
    votes = np.zeros((len(idx), n_labels))
    np.add.at(votes, (np.repeat(np.arange(len(idx)), k), codes[idx].ravel()), 1.0)
    share = votes.max(1) / k
    ratio = dist.mean(1) / np.maximum(scale[idx].mean(1), np.finfo(float).tiny)
    closeness = np.exp(-np.maximum(ratio - 1.0, 0.0))
    return votes.argmax(1), 1.0 - share * closeness


def transfer_labels(
    reference: AnnData | MuData,
    query: AnnData | MuData,
    label_key: str,
    *,
    use_rep: str = DEFAULT_LATENT_KEY,
    n_neighbors: int = 15,
    key_added: str = "transferred",
    copy: bool = False,
) -> AnnData | MuData | None:
    """Transfer cell labels from ``reference`` to ``query`` by their neighbours in an embedding.

    Each query cell takes the most frequent label among its ``n_neighbors`` nearest reference
    cells in ``obsm[use_rep]`` (Euclidean). Its uncertainty is
    ``1 - vote * closeness``: ``vote`` is the share of neighbours with the chosen label and
    ``closeness = exp(-max(0, d / s - 1))`` compares the cell's mean distance ``d`` to its
    neighbours with ``s``, the neighbours' own mean distance to their nearest reference cells.
    A cell among reference cells as densely as they lie among each other has closeness near 1,
    so its uncertainty is the disagreement of its neighbours; a cell of a type the reference
    lacks lies farther off and comes out uncertain even when its neighbours agree.

    Parameters
    ----------
    reference
        Labelled cells with the embedding in ``obsm[use_rep]``.
    query
        Cells to label, with the same embedding (e.g. from a model of
        :meth:`~scgenvae.model.PoissonVAE.load_query_data`, exported with ``export_latent``).
    label_key
        Column of ``reference.obs`` with the labels (cells without one are not used).
    use_rep
        obsm key of the embedding in both objects.
    n_neighbors
        Reference neighbours per query cell.
    key_added
        obs column of the transferred labels; the uncertainty goes to
        ``f"{key_added}_uncertainty"``.
    copy
        Return a copy of ``query`` instead of writing into it.

    Returns
    -------
    ``None`` if ``copy=False``, else the annotated copy of ``query``. Sets the following fields:

    ``query.obs[key_added]`` : categorical
        Transferred label (missing for cells without an embedding).
    ``query.obs[f"{key_added}_uncertainty"]`` : float
        Uncertainty in ``[0, 1]`` (1 for cells without an embedding).
    ``query.uns[key_added]["params"]``
        The arguments.

    Examples
    --------
    >>> model.export_latent(ref)
    >>> query_model.export_latent(query)
    >>> scgenvae.tl.transfer_labels(ref, query, "cell_type")
    >>> query.obs[["transferred", "transferred_uncertainty"]]

    See Also
    --------
    scgenvae.model.PoissonVAE.load_query_data : a model of the query in the reference's space.
    """
    uncertainty_key = f"{key_added}_uncertainty"
    if copy:
        query = query.copy()
    elif getattr(query, "is_view", False):
        msg = "`query` is a view; pass `query.copy()` (a view cannot be annotated in place)."
        raise ValueError(msg)
    _check_keys(query, key_added, uncertainty_key)
    if label_key not in reference.obs.columns:
        msg = f"`label_key={label_key!r}` not found in reference.obs; available: {list(reference.obs.columns)}."
        raise KeyError(msg)
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 1:
        msg = f"`n_neighbors` must be a positive integer, got {n_neighbors!r}."
        raise ValueError(msg)
    ref_rep = _representation(reference, use_rep, "reference")
    query_rep = _representation(query, use_rep, "query")
    if ref_rep.shape[1] != query_rep.shape[1]:
        msg = (
            f"obsm[{use_rep!r}] has {ref_rep.shape[1]} dimensions in the reference and "
            f"{query_rep.shape[1]} in the query; use the same embedding for both."
        )
        raise ValueError(msg)
    labels = pd.Categorical(reference.obs[label_key])
    usable = (labels.codes >= 0) & np.isfinite(ref_rep).all(1)
    if usable.sum() < 2:
        msg = f"the reference has {int(usable.sum())} cells with a label and an embedding; need 2."
        raise ValueError(msg)
    k = min(n_neighbors, int(usable.sum()) - 1)
    ok = np.isfinite(query_rep).all(1)
    result = np.full(query.n_obs, -1)
    uncertainty = np.ones(query.n_obs)
    result[ok], uncertainty[ok] = _vote(
        ref_rep[usable], labels.codes[usable], len(labels.categories), query_rep[ok], k
    )
    query.obs[key_added] = pd.Categorical.from_codes(result, categories=labels.categories)
    query.obs[uncertainty_key] = uncertainty
    query.uns[key_added] = {
        "params": {
            "writer": WRITER,
            "label_key": label_key,
            "use_rep": use_rep,
            "n_neighbors": int(k),
            "obs_keys": [key_added, uncertainty_key],
        }
    }
    logger.info(
        "added obs[%r], obs[%r] and uns[%r]['params']", key_added, uncertainty_key, key_added
    )
    return query if copy else None
