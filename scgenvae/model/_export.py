"""Writing a model's results into the user's object: only our keys, never another writer's.

``export_latent`` writes ``obsm[key_added]``, ``uns[key]["params"]`` (``key``: ``key_added``
without a leading ``X_``) and, with a discrete latent, ``obs[cluster_key]`` and
``obsm[cluster_probs_key]``. An entry already there is replaced only when ``uns[key]["params"]``
says scgenvae wrote it (``"writer": "scgenvae.export_latent"``), and other entries under
``uns[key]`` are kept. Anything else there is refused before anything is written, with the key
named. Keys that h5ad/h5mu files cannot hold are refused too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Sequence

#: what ``uns[key]["params"]["writer"]`` says in entries written by ``export_latent``
WRITER = "scgenvae.export_latent"
_OUR_MODELS = frozenset({"PoissonVAE", "MultiVAE"})


def check_key(key: str, arg: str) -> None:
    """Refuse a key that an h5ad/h5mu file cannot hold (empty, ``"."`` or containing ``"/"``)."""
    if not isinstance(key, str) or key in ("", ".") or "/" in key:
        msg = (
            f"`{arg}={key!r}` cannot be written to an h5ad/h5mu file (keys must be non-empty "
            "and contain no '/'); choose another key."
        )
        raise ValueError(msg)


def _ours(entry: Any) -> bool:
    """Whether an ``uns`` entry's ``params`` were written by ``export_latent``."""
    params = entry.get("params") if isinstance(entry, dict) else None
    if not isinstance(params, dict):
        return False
    # entries written before the writer was recorded carry the model class alone
    return params.get("writer") == WRITER or (
        "writer" not in params and params.get("model") in _OUR_MODELS and "n_latent" in params
    )


def check_targets(
    data,
    targets: Sequence[Any],
    *,
    uns_key: str,
    obsm_keys: Sequence[str],
    obs_keys: Sequence[str],
) -> None:
    """Refuse before writing when a key is held by an entry another writer created."""
    entry = data.uns.get(uns_key)
    ours = _ours(entry)
    if entry is not None and not isinstance(entry, dict):
        msg = (
            f"uns[{uns_key!r}] exists and is not a dictionary; export_latent would write "
            f"uns[{uns_key!r}]['params']. Pass another `key_added`."
        )
        raise ValueError(msg)
    if isinstance(entry, dict) and "params" in entry and not ours:
        msg = (
            f"uns[{uns_key!r}]['params'] was written by another tool (e.g. scanpy); "
            "export_latent does not replace it. Pass another `key_added`."
        )
        raise ValueError(msg)
    previous = entry.get("params", {}) if ours else {}
    # entries written before the keys were recorded: the latent's key only
    prev_obsm = previous.get("obsm_keys") or ([f"X_{uns_key}", uns_key] if ours else [])
    prev_obs = previous.get("obs_keys") or []
    for target in targets:
        for key in obsm_keys:
            if key in target.obsm and key not in prev_obsm:
                msg = (
                    f"obsm[{key!r}] exists and was not written by export_latent; it is not "
                    "replaced. Pass another key (`key_added` or `cluster_probs_key_added`)."
                )
                raise ValueError(msg)
        for key in obs_keys:
            if key in target.obs.columns and key not in prev_obs:
                msg = (
                    f"obs[{key!r}] exists and was not written by export_latent; it is not "
                    "replaced. Pass another `cluster_key_added`."
                )
                raise ValueError(msg)


def check_latent_write(
    data,
    targets: Sequence[tuple[Any, np.ndarray | None]],
    *,
    key_added: str,
    cluster_key_added: str,
    cluster_probs_key_added: str,
    clusters: bool,
) -> tuple[str, list[str], list[str]]:
    """Check every key ``export_latent`` would write; return the uns, obsm and obs keys."""
    uns_key = key_added.removeprefix("X_") if isinstance(key_added, str) else key_added
    check_key(key_added, "key_added")
    check_key(uns_key, "key_added (without its 'X_')")
    obsm_keys, obs_keys = [key_added], []
    if clusters:
        check_key(cluster_key_added, "cluster_key_added")
        check_key(cluster_probs_key_added, "cluster_probs_key_added")
        obsm_keys.append(cluster_probs_key_added)
        obs_keys.append(cluster_key_added)
    if len(set(obsm_keys)) != len(obsm_keys):
        msg = "`key_added` and `cluster_probs_key_added` must differ."
        raise ValueError(msg)
    check_targets(
        data, [t for t, _ in targets], uns_key=uns_key, obsm_keys=obsm_keys, obs_keys=obs_keys
    )
    return uns_key, obsm_keys, obs_keys


def write_latent(
    data,
    targets: Sequence[tuple[Any, np.ndarray | None]],
    *,
    latent: np.ndarray,
    probs: np.ndarray | None,
    key_added: str,
    cluster_key_added: str,
    cluster_probs_key_added: str,
    params: dict,
) -> str:
    """Write the latent (and clusters) into ``targets``; return the ``uns`` key written."""
    uns_key, obsm_keys, obs_keys = check_latent_write(
        data,
        targets,
        key_added=key_added,
        cluster_key_added=cluster_key_added,
        cluster_probs_key_added=cluster_probs_key_added,
        clusters=probs is not None,
    )
    for target, rows in targets:
        target.obsm[key_added] = _rows(latent, rows)
        if probs is not None:
            p = _rows(probs, rows)
            target.obsm[cluster_probs_key_added] = p
            codes = np.where(np.isnan(p).any(1), -1, np.nan_to_num(p).argmax(1))
            target.obs[cluster_key_added] = pd.Categorical.from_codes(
                codes, categories=[str(k) for k in range(p.shape[1])]
            )
    entry = data.uns.get(uns_key)
    entry = dict(entry) if isinstance(entry, dict) else {}
    entry["params"] = {
        **params,
        "writer": WRITER,
        "key_added": key_added,
        "obsm_keys": obsm_keys,
        "obs_keys": obs_keys,
    }
    data.uns[uns_key] = entry
    return uns_key


def _rows(values: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """Rows of ``values`` for a target; ``-1`` rows (cell absent) become NaN."""
    if rows is None:
        return values
    out = np.full((len(rows), values.shape[1]), np.nan, dtype=np.float64)
    ok = rows >= 0
    out[ok] = values[rows[ok]]
    return out
