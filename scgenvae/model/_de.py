"""Differential expression and accessibility from the model's posterior.

What is compared is the *group mean* of the decoder's normalised mean (expression shares, or
accessibility probabilities at the training data's mean depth) in two groups of cells. Its
posterior is sampled ``n_samples`` times; each draw

1. samples one latent point ``z ~ q(z | x)`` for every cell of the two groups (each cell is
   decoded at ``_LATENT_DRAWS`` latent samples, and draw ``s`` uses sample
   ``s % _LATENT_DRAWS``: each draw is distributed as with fresh samples, at a tenth of the
   decoding time),
2. decodes it (under every training batch in turn and averages, with ``batch_correction``),
3. averages the cells of each group with Bayesian-bootstrap weights (``Dirichlet(1, ..., 1)``
   over the cells of the group), so that the draws carry the uncertainty of having observed
   these cells out of a population as well as the uncertainty of each cell's latent state.

``mode="change"`` then takes the change of each draw (log2 fold change of expression, or the
difference of accessibility probabilities) and calls a feature differential when the posterior
probability that the change exceeds ``delta`` in absolute value is high; the set called is the
largest one whose posterior expected false discovery rate (the mean of ``proba_not_de`` over
the set) is at most ``fdr_target``. See ``docs/user_guide/differential.md``.

The writer (``key_added``) puts the results in ``uns[key_added]`` in scanpy's
``rank_genes_groups`` layout, records itself in ``uns[key_added]["params"]["writer"]`` and
replaces only an entry that says it wrote it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from scipy import sparse, stats

from scgenvae import _docs
from scgenvae._constants import MODULE_KEYS
from scgenvae._docs import doc_params

from ._export import check_key

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.random import Generator, SeedSequence

    SeedLike = int | np.integer | SeedSequence | None
    RNGLike = Generator

logger = logging.getLogger(__name__)

#: what ``uns[key]["params"]["writer"]`` says in entries written by the DE methods
WRITERS = {
    "expression": "scgenvae.differential_expression",
    "accessibility": "scgenvae.differential_accessibility",
}
_EPS = 1e-8
#: floats held at once by one decoded chunk (samples x cells x features)
_CHUNK_FLOATS = 2**24
#: latent samples decoded per cell; posterior draw ``s`` uses sample ``s % _LATENT_DRAWS``
_LATENT_DRAWS = 10


@dataclass(frozen=True)
class Comparison:
    """One test: the cells of labels ``labels1`` against those of ``labels2``."""

    name1: str
    name2: str
    labels1: tuple[int, ...]
    labels2: tuple[int, ...]


@dataclass(frozen=True)
class Groups:
    """The cells used (positions in the data), their label and the comparisons to make."""

    cells: np.ndarray
    labels: np.ndarray
    n_labels: int
    comparisons: list[Comparison]
    groupby: str | None
    reference: str | None


# groups ---------------------------------------------------------------------------------
def _positions(model, idx, data, arg: str) -> np.ndarray:
    """``idx`` (mask, positions or obs names) as positions; errors name ``arg``."""
    try:
        pos = model._cell_indices(idx, data)
    except (ValueError, IndexError, KeyError, TypeError) as err:
        msg = str(err.args[0]).replace("`indices`", f"`{arg}`")
        raise type(err)(msg) from None
    if len(pos) == 0:
        msg = f"`{arg}` selects no cells; pass a non-empty mask, positions or obs names."
        raise ValueError(msg)
    return np.unique(pos)


def _groups_from_idx(model, data, n_obs: int, idx1, idx2) -> Groups:
    cells1 = _positions(model, idx1, data, "idx1")
    if idx2 is None:
        cells2 = np.setdiff1d(np.arange(n_obs), cells1)
        if len(cells2) == 0:
            msg = "`idx1` selects every cell and `idx2` is None (the rest): nothing to compare."
            raise ValueError(msg)
    else:
        cells2 = _positions(model, idx2, data, "idx2")
    shared = np.intersect1d(cells1, cells2)
    if len(shared):
        msg = (
            f"`idx1` and `idx2` share {len(shared):,} cells; the two groups must be disjoint "
            "(drop the shared cells from one of them)."
        )
        raise ValueError(msg)
    cells = np.concatenate([cells1, cells2])
    labels = np.repeat([0, 1], [len(cells1), len(cells2)])
    order = np.argsort(cells, kind="stable")  # the data's order: each block read once
    cells, labels = cells[order], labels[order]
    name2 = "rest" if idx2 is None else "idx2"
    return Groups(cells, labels, 2, [Comparison("idx1", name2, (0,), (1,))], None, None)


def _check_group(value, arg: str, categories: list[str], groupby: str) -> str:
    if not isinstance(value, str) or value not in categories:
        msg = (
            f"`{arg}={value!r}` is not a group of obs[{groupby!r}] with cells; choose among "
            f"{categories}."
        )
        raise ValueError(msg)
    return value


def _groups_from_obs(obs: pd.DataFrame, groupby: str, group1, group2) -> Groups:
    if groupby not in obs.columns:
        msg = f"`groupby={groupby!r}` not found in obs; available: {list(obs.columns)}."
        raise KeyError(msg)
    values = obs[groupby]
    codes = pd.Categorical(values.astype("string").to_numpy(dtype=object, na_value=None))
    counts = pd.Series(codes).value_counts(sort=False)
    categories = [str(c) for c in codes.categories if counts.get(c, 0) > 0]
    if group2 is not None:
        group2 = _check_group(group2, "group2", categories, groupby)
    if group1 is None:
        group1 = [c for c in categories if c != group2]
    elif isinstance(group1, str):
        group1 = [group1]
    group1 = [_check_group(g, "group1", categories, groupby) for g in group1]
    if not group1 or (group2 is None and len(categories) < 2):
        msg = (
            f"obs[{groupby!r}] has a single group with cells ({categories}); differential "
            "tests need two."
        )
        raise ValueError(msg)
    if group2 is not None and group2 in group1:
        msg = f"`group2={group2!r}` is also in `group1`; a group cannot be compared with itself."
        raise ValueError(msg)
    used = categories if group2 is None else [*group1, group2]
    label_of = {c: i for i, c in enumerate(used)}
    names = np.asarray(codes.astype(object))
    cells = np.flatnonzero(pd.Series(names).isin(used).to_numpy())
    labels = np.array([label_of[n] for n in names[cells]], dtype=np.int64)
    comparisons = []
    for g in group1:
        rest = tuple(i for c, i in label_of.items() if c != g) if group2 is None else None
        comparisons.append(
            Comparison(g, group2 or "rest", (label_of[g],), rest or (label_of[group2],))
        )
    return Groups(cells, labels, len(used), comparisons, groupby, group2 or "rest")


def resolve_groups(model, data, obs, *, groupby, group1, group2, idx1, idx2) -> Groups:
    """The comparisons asked for, from ``groupby``/``group1``/``group2`` or ``idx1``/``idx2``."""
    if idx1 is not None:
        if groupby is not None or group1 is not None or group2 is not None:
            msg = (
                "pass either `groupby` (with `group1`/`group2`) or `idx1` (with `idx2`), not both."
            )
            raise ValueError(msg)
        return _groups_from_idx(model, data, len(obs), idx1, idx2)
    if idx2 is not None:
        msg = "`idx2` needs `idx1` (the cells of the first group)."
        raise ValueError(msg)
    if groupby is None:
        msg = "pass `groupby` (an obs column of groups) or `idx1` (cells of the first group)."
        raise ValueError(msg)
    return _groups_from_obs(obs, groupby, group1, group2)


# statistics -----------------------------------------------------------------------------
def posterior_fdr(proba_not: np.ndarray) -> np.ndarray:
    """Posterior expected FDR of calling each feature and every feature more likely DE.

    Sorted by ``proba_not`` (ascending), the mean of the first ``k`` values is the expected
    false discovery rate of calling those ``k`` features; it never decreases with ``k``, so the
    features whose value is at most a target form the largest set meeting it.
    """
    order = np.argsort(proba_not, kind="stable")
    cummean = np.cumsum(proba_not[order]) / np.arange(1, len(order) + 1)
    out = np.empty_like(cummean)
    out[order] = cummean
    return out


def shrink_proba(
    estimate: np.ndarray, se: np.ndarray, delta: float, *, n_iter: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``P(change > delta)`` and ``P(change < -delta)`` under a prior learnt across features.

    Empirical Bayes on the normal means ``estimate ~ N(change, se^2)``: the prior of the
    changes is a mixture of centred normals on a fixed grid of widths (width 0: no change),
    its weights fitted by EM (maximum marginal likelihood, with a mild extra weight on the
    null component), so that a feature is called only as far as the distribution of all
    features' changes supports it. Returns the two probabilities and the posterior mean.
    """
    se = np.maximum(se, 1e-6)
    spread = np.sqrt(max(float(np.max(estimate**2 - se**2)), float(np.min(se)) ** 2))
    grid = np.concatenate([[0.0], np.geomspace(float(np.min(se)) / 10, 2 * spread, 20)])
    var = grid[None, :] ** 2 + se[:, None] ** 2  # features x components
    like = np.exp(-0.5 * estimate[:, None] ** 2 / var) / np.sqrt(var)
    pi = np.full(len(grid), 1.0 / len(grid))
    prior_count = np.zeros(len(grid))
    prior_count[0] = 9.0  # ashr's default null weight of 10 (a Dirichlet(10, 1, ..., 1))
    for _ in range(n_iter):
        post = like * pi
        post /= post.sum(1, keepdims=True) + 1e-300
        new = (post.sum(0) + prior_count) / (len(estimate) + prior_count.sum())
        if np.abs(new - pi).max() < 1e-8:
            break
        pi = new
    post = like * pi
    post /= post.sum(1, keepdims=True) + 1e-300
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(
            grid[None, :] > 0, 1.0 / (1.0 / grid[None, :] ** 2 + 1.0 / se[:, None] ** 2), 0.0
        )
    m = v * (estimate / se**2)[:, None]
    sd = np.sqrt(v)
    up = np.where(sd > 0, stats.norm.sf((delta - m) / np.where(sd > 0, sd, 1.0)), m > delta)
    down = np.where(sd > 0, stats.norm.cdf((-delta - m) / np.where(sd > 0, sd, 1.0)), m < -delta)
    return (post * up).sum(1), (post * down).sum(1), (post * m).sum(1)


def _describe(samples: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_mean": samples.mean(0),
        f"{prefix}_median": np.median(samples, 0),
        f"{prefix}_std": samples.std(0),
        f"{prefix}_min": samples.min(0),
        f"{prefix}_max": samples.max(0),
    }


def change_stats(
    m1: np.ndarray,
    m2: np.ndarray,
    *,
    kind: Literal["expression", "accessibility"],
    mode: Literal["change", "vanilla"],
    delta: float,
    pseudocounts: float,
    shrink: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-feature statistics from group-mean draws ``m1``, ``m2`` (draws x features).

    Returns the columns and a signed ranking score (``P(up) - P(down)``).
    """
    tiny = 1e-12  # a gamma draw of a mean near 0 can be 0
    lfc = np.log2(np.maximum(m1 + pseudocounts, tiny)) - np.log2(
        np.maximum(m2 + pseudocounts, tiny)
    )
    change = lfc if kind == "expression" else m1 - m2
    if mode == "vanilla":
        p1 = (m1 > m2).mean(0)
        cols = {"proba_m1": p1, "proba_m2": 1.0 - p1}
        score, proba = 2 * p1 - 1, p1
    else:
        if shrink:
            up, down, _ = shrink_proba(change.mean(0), change.std(0), delta)
        else:
            up, down = (change > delta).mean(0), (change < -delta).mean(0)
        proba = np.clip(up + down, 0.0, 1.0)
        tag = "de" if kind == "expression" else "da"
        cols = {f"proba_{tag}": proba, f"proba_not_{tag}": 1.0 - proba}
        score = up - down
    cols["bayes_factor"] = np.log(proba + _EPS) - np.log(1.0 - proba + _EPS)
    if kind == "expression":
        cols |= {"scale1": m1.mean(0), "scale2": m2.mean(0)}
        cols |= _describe(lfc, "lfc")
    else:
        cols |= {"est_prob1": m1.mean(0), "est_prob2": m2.mean(0)}
        cols |= _describe(change, "effect")
        cols["lfc_mean"] = lfc.mean(0)
    return cols, score


def group_mean_draws(draws: dict, labels: Sequence[int], rng: np.random.Generator):
    """Draws of a group's mean (draws x features), with the cells' observation noise.

    The weighted mean of the decoded means gets, per draw, the noise that averaging the
    observed values of these cells would carry: a gamma with the mean of the draw and the
    variance of the weighted observation noise (Poisson for counts, Bernoulli for peaks).
    """
    labels = list(labels)
    total = draws["weights"][labels].sum(0)[:, None]
    mean = draws["sums"][labels].sum(0) / total
    var = draws["noise"][labels].sum(0) / total**2
    ok = (mean > 0) & (var > 0)
    shape = np.where(ok, mean**2 / np.where(ok, var, 1.0), 1.0)
    scale = np.where(ok, var / np.where(ok, mean, 1.0), 0.0)
    return np.where(ok, rng.gamma(shape, scale), mean)


def raw_sums(x, cells: np.ndarray, labels: np.ndarray, n_labels: int) -> dict[str, np.ndarray]:
    """Per-label sums of counts, non-zeros and library-normalised counts (labels x features)."""
    x = x[cells] if sparse.issparse(x) else np.asarray(x[cells])
    x = sparse.csr_matrix(x, dtype=np.float64)
    lib = np.asarray(x.sum(1)).ravel()
    observed = lib > 0  # cells without this modality (MultiVAE) are left out of raw figures
    member = sparse.csr_matrix(
        (observed.astype(np.float64), (labels, np.arange(len(cells)))),
        shape=(n_labels, len(cells)),
    )
    norm = sparse.diags(np.where(observed, 1e4 / np.maximum(lib, 1), 0.0)) @ x
    return {
        "n": np.asarray(member.sum(1)).ravel(),
        "sum": np.asarray((member @ x).todense()),
        "nonzero": np.asarray((member @ (x > 0).astype(np.float64)).todense()),
        "norm": np.asarray((member @ norm).todense()),
        "library": lib[observed],
    }


def raw_columns(sums: dict, comp: Comparison, kind: str) -> dict[str, np.ndarray]:
    """Raw (observed) statistics of a comparison's two groups."""
    out = {}
    for i, labels in ((1, comp.labels1), (2, comp.labels2)):
        n = max(float(sums["n"][list(labels)].sum()), 1.0)
        mean = sums["sum"][list(labels)].sum(0) / n
        nonzero = sums["nonzero"][list(labels)].sum(0) / n
        if kind == "expression":
            out[f"raw_mean{i}"] = mean
            out[f"non_zeros_proportion{i}"] = nonzero
            out[f"raw_normalized_mean{i}"] = sums["norm"][list(labels)].sum(0) / n
        else:
            out[f"emp_prob{i}"] = nonzero
    if kind == "accessibility":
        out["emp_effect"] = out["emp_prob1"] - out["emp_prob2"]
    return out


# writing --------------------------------------------------------------------------------
def check_uns_target(target, key_added: str, kind: str) -> None:
    """Refuse ``key_added`` when ``uns[key_added]`` exists and was not written by us."""
    check_key(key_added, "key_added")
    if getattr(target, "is_view", False):
        msg = "the data is a view; pass `adata.copy()` (a view cannot be annotated in place)."
        raise ValueError(msg)
    entry = target.uns.get(key_added)
    if entry is None:
        return
    params = entry.get("params") if isinstance(entry, dict) else None
    writer = params.get("writer") if isinstance(params, dict) else None
    if writer != WRITERS[kind]:
        msg = (
            f"uns[{key_added!r}] exists and was not written by {WRITERS[kind]} (e.g. by "
            "sc.tl.rank_genes_groups); it is not replaced. Pass another `key_added`."
        )
        raise ValueError(msg)


def write_rank_genes_groups(
    target, key_added: str, tables: dict[str, pd.DataFrame], params: dict
) -> None:
    """Write per-group tables into ``target.uns[key_added]`` in scanpy's layout.

    Each table is indexed by feature and has ``score``, ``lfc``, ``proba_not`` and ``qvalue``.
    Within a group, features are ranked by ``score`` (then ``lfc``), highest first.
    """
    cols = {"names": [], "scores": [], "logfoldchanges": [], "pvals": [], "pvals_adj": []}
    for table in tables.values():
        order = np.lexsort((-table["lfc"].to_numpy(), -table["score"].to_numpy()))
        t = table.iloc[order]
        cols["names"].append(t.index.to_numpy(dtype=object))
        cols["scores"].append(t["score"].to_numpy(np.float32))
        cols["logfoldchanges"].append(t["lfc"].to_numpy(np.float32))
        cols["pvals"].append(t["proba_not"].to_numpy(np.float64))
        cols["pvals_adj"].append(t["qvalue"].to_numpy(np.float64))
    groups = list(tables)
    dtypes = {"names": "O", "scores": "float32", "logfoldchanges": "float32"}
    entry = {"params": params}
    for name, arrays in cols.items():
        frame = pd.DataFrame(dict(zip(groups, arrays, strict=True)))
        entry[name] = frame.to_records(
            index=False, column_dtypes=dict.fromkeys(groups, dtypes.get(name, "float64"))
        )
    target.uns[key_added] = entry


# model side -----------------------------------------------------------------------------
class DEMixin:
    """Differential expression (and, for MultiVAE, accessibility) on scgenvae models."""

    def _reference_libraries(self, n: int, device) -> dict[str, torch.Tensor]:
        """Each modality's library at the training mean log library (the decoding depth)."""
        return {
            m: torch.full((n,), float(np.exp(self.module.library_log_means[m])), device=device)
            for m in self.module.modalities
        }

    def _decode_draws(self, tensors, inf, eps, codes, target: str) -> torch.Tensor:
        """Normalised means of ``target`` for latent draws ``loc + scale * eps``.

        Returns draws x cells x features, averaged over the batch ``codes`` decoded under.
        """
        qz = inf[MODULE_KEYS.QZ_KEY]
        z = qz.loc + qz.scale * eps.to(qz.loc.device)
        gen_in = self.module._get_generative_input(tensors, inf)
        gen_in[MODULE_KEYS.Z_KEY] = z
        gen_in[MODULE_KEYS.LIBRARY_KEY] = self._reference_libraries(z.shape[1], z.device)
        head = self.module.modalities[target].head
        total = None
        for code in codes:
            gen = self.module.generative(
                **gen_in, transform_batch=code, observed_library=True, modalities=(target,)
            )
            rho = head.predictive_mean(gen[target]).reshape(z.shape[0], z.shape[1], -1)
            total = rho if total is None else total + rho
        return (total / len(codes)).float()

    def _observation_variance(self, target: str, rho: torch.Tensor, library: torch.Tensor):
        """Variance of a cell's observed value (count / library, or 0/1) around ``rho``."""
        if self.module.modalities[target].head.binarize:
            return rho * (1.0 - rho)
        var = rho / library.reshape(1, -1, 1)
        log_theta = getattr(self.module.decoders[target], "log_theta", None)
        if log_theta is not None:  # negative binomial: the gamma part of the noise too
            var = var + rho**2 / log_theta.detach().exp().cpu()
        return var

    def _group_draws(
        self,
        data,
        groups: Groups,
        *,
        target: str,
        use_modalities: tuple[str, ...] | None,
        batch_correction: bool,
        n_samples: int,
        rng: np.random.Generator,
        batch_size: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Per label and draw: weighted sums of decoded means and of observation variances.

        Returns ``sums`` and ``noise`` (labels x draws x features, the latter with squared
        weights) and ``weights`` (labels x draws).
        """
        n_batch = int(self.summary_stats.n_batch)
        codes = [None]
        if batch_correction and n_batch > 1:
            codes = [torch.tensor([[b]]) for b in range(n_batch)]
        n_features = len(self._features[target])
        gamma = torch.from_numpy(rng.standard_exponential((n_samples, len(groups.cells))))
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        n_latent_draws = min(n_samples, _LATENT_DRAWS)
        chunk = max(1, min(batch_size or 1024, _CHUNK_FLOATS // (n_latent_draws * n_features)))
        shape = (groups.n_labels, n_samples, n_features)
        sums, noise = (
            torch.zeros(shape, dtype=torch.float64),
            torch.zeros(shape, dtype=torch.float64),
        )
        weights = torch.zeros(groups.n_labels, n_samples, dtype=torch.float64)
        labels = torch.from_numpy(groups.labels)
        start = 0
        ref = float(np.exp(self.module.library_log_means[target]))
        for tensors, inf in self._iter_inference(
            data, indices=groups.cells, batch_size=chunk, use_modalities=use_modalities
        ):
            n = inf[MODULE_KEYS.QZ_KEY].loc.shape[0]
            eps = torch.randn(n_latent_draws, n, self.module.n_latent, generator=gen)
            rho = self._decode_draws(tensors, inf, eps, codes, target).cpu()
            library = inf[MODULE_KEYS.LIBRARY_KEY][target].cpu().float()
            var = self._observation_variance(target, rho, torch.where(library > 0, library, ref))
            w, lab = gamma[:, start : start + n].float(), labels[start : start + n]
            for label in lab.unique().tolist():
                cols = torch.nonzero(lab == label).ravel()
                w_l, rho_l, var_l = w[:, cols], rho[:, cols], var[:, cols]
                weights[label] += w_l.sum(1)
                for k in range(n_latent_draws):  # draw s uses latent sample s % n_latent_draws
                    w_k = w_l[k::n_latent_draws]
                    sums[label, k::n_latent_draws] += w_k @ rho_l[k]
                    noise[label, k::n_latent_draws] += (w_k * w_k) @ var_l[k]
            start += n
        return {"sums": sums.numpy(), "noise": noise.numpy(), "weights": weights.numpy()}

    def _de_target(self, user, target: str):
        """The object whose ``uns`` receives results on ``target``'s features."""
        mod_key = f"{target}_mod"
        if hasattr(user, "mod") and mod_key in self._setup_args:
            return user.mod[self._setup_args[mod_key]]
        return user

    def _differential(
        self,
        data,
        *,
        kind: Literal["expression", "accessibility"],
        target: str,
        modality: str,
        groupby: str | None,
        group1,
        group2: str | None,
        idx1,
        idx2,
        mode: str,
        delta: float | None,
        batch_correction: bool,
        fdr_target: float,
        n_samples: int,
        pseudocounts: float | None,
        all_stats: bool,
        key_added: str | None,
        batch_size: int | None,
        rng,
    ) -> pd.DataFrame:
        """Shared driver of :meth:`differential_expression` and ``differential_accessibility``."""
        self._check_if_trained(warn=False)
        delta = _check_de_args(kind, mode, delta, fdr_target, n_samples, pseudocounts)
        use = self._modality_arg(modality)
        user = self._user_data() if data is None else data
        target_obj = self._check_de_write(user, target, kind, key_added, groupby)
        obs = pd.DataFrame(index=self._obs_names) if user is None else user.obs
        groups = resolve_groups(
            self, data, obs, groupby=groupby, group1=group1, group2=group2, idx1=idx1, idx2=idx2
        )
        rng = np.random.default_rng(rng)
        draws = self._group_draws(
            data,
            groups,
            target=target,
            use_modalities=use,
            batch_correction=batch_correction,
            n_samples=n_samples,
            rng=rng,
            batch_size=batch_size,
        )
        key = self.module.modalities[target].registry_key
        raw = raw_sums(
            self.get_from_registry(data, key), groups.cells, groups.labels, groups.n_labels
        )
        if pseudocounts is None:
            pseudocounts = 0.0
            if kind == "expression":  # a tenth of a count at the median library size
                pseudocounts = 0.1 / max(float(np.median(raw["library"])), 1.0)
        names = self._features[target]
        frames, tables = [], {}
        for comp in groups.comparisons:
            m1 = group_mean_draws(draws, comp.labels1, rng)
            m2 = group_mean_draws(draws, comp.labels2, rng)
            cols, score = change_stats(
                m1, m2, kind=kind, mode=mode, delta=delta, pseudocounts=pseudocounts
            )
            res, table = _result_frame(cols, score, names, kind, mode, fdr_target)
            if all_stats:
                res = res.join(pd.DataFrame(raw_columns(raw, comp, kind), index=names))
            res["delta"], res["pseudocounts"] = delta, pseudocounts
            if groupby is not None:
                res["comparison"] = f"{comp.name1} vs {comp.name2}"
                res["group1"], res["group2"] = comp.name1, comp.name2
            frames.append(res)
            tables[comp.name1] = table
        if key_added is not None:
            params = self._de_params(groups, kind, mode, delta, fdr_target, n_samples)
            params |= {"modality": modality, "batch_correction": bool(batch_correction)}
            params["pseudocounts"] = float(pseudocounts)
            write_rank_genes_groups(target_obj, key_added, tables, params)
            logger.info("added uns[%r] (rank_genes_groups layout)", key_added)
        return pd.concat(frames) if len(frames) > 1 else frames[0]

    def _check_de_write(self, user, target: str, kind: str, key_added, groupby):
        """The object ``key_added`` is written to, checked before anything is computed."""
        if key_added is None:
            return None
        if groupby is None:
            msg = (
                "`key_added` needs `groupby`: scanpy's rank_genes_groups layout names groups "
                "of an obs column (with `idx1`/`idx2`, use the returned DataFrame)."
            )
            raise ValueError(msg)
        if user is None:
            msg = "the training data is no longer available; pass it as `adata` to write into it."
            raise ValueError(msg)
        target_obj = self._de_target(user, target)
        check_uns_target(target_obj, key_added, kind)
        return target_obj

    def _de_params(self, groups: Groups, kind, mode, delta, fdr_target, n_samples) -> dict:
        return {
            "groupby": groups.groupby,
            "reference": groups.reference,
            "method": f"scgenvae_{mode}",
            "use_raw": False,
            "layer": "None",
            "corr_method": "posterior expected FDR",
            "writer": WRITERS[kind],
            "model": type(self).__name__,
            "mode": mode,
            "delta": float(delta),
            "fdr_target": float(fdr_target),
            "n_samples": int(n_samples),
        }

    @doc_params(**_docs.de)
    def differential_expression(
        self,
        adata=None,
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
        pseudocounts: float | None = None,
        all_stats: bool = True,
        key_added: str | None = None,
        modality: str = "joint",
        batch_size: int | None = None,
        rng: SeedLike | RNGLike = None,
    ) -> pd.DataFrame:
        """Differential expression between two groups of cells, from the model's posterior.

        Compares the mean normalised expression (the decoder's expression shares) of the two
        groups, with its posterior sampled as described in :doc:`/user_guide/differential`:
        a latent sample per cell, decoded under every training batch (``batch_correction``),
        and a Bayesian-bootstrap average over the cells of each group.

        Parameters
        ----------
        {adata}
        {groupby}
        {group1}
        {group2}
        {idx1}
        {idx2}
        {mode}
        delta
            Smallest absolute log2 fold change that counts as differential (``"change"``
            mode); ``None``: 0.25, as scvi-tools.
        {batch_correction}
        {fdr_target}
        {n_samples}
        pseudocounts
            Added to both group means (expression shares) before the log2 fold change;
            ``None``: a tenth of a count at the compared cells' median library size, so that
            genes with next to no counts in both groups are not called.
        {all_stats}
        {key_added}
        {modality}
        {batch_size}
        {rng}

        Returns
        -------
        A DataFrame indexed by gene (one block of rows per comparison, sorted by ``proba_de``)
        with ``proba_de``, ``proba_not_de``, ``bayes_factor`` (log odds of ``proba_de``),
        ``scale1``/``scale2`` (posterior mean expression shares), ``lfc_mean``,
        ``lfc_median``, ``lfc_std``, ``lfc_min``, ``lfc_max`` (log2 fold change of group 1
        over group 2), ``is_de_fdr_<fdr_target>``, ``delta`` and ``pseudocounts``; with
        ``all_stats`` also ``raw_mean1/2``, ``non_zeros_proportion1/2`` and
        ``raw_normalized_mean1/2`` (counts per 10,000); with ``groupby``, ``comparison``,
        ``group1`` and ``group2``. In ``"vanilla"`` mode ``proba_m1``/``proba_m2`` replace the
        ``proba_de`` columns and there is no FDR column.

        With ``key_added``, sets ``uns[key_added]`` with ``params``, ``names``, ``scores``
        (``P(lfc > delta) - P(lfc < -delta)``: positive when higher in the group),
        ``logfoldchanges`` (``lfc_mean``), ``pvals`` (``proba_not_de``) and ``pvals_adj`` (the
        posterior expected FDR of calling the gene and every gene more likely DE).

        Examples
        --------
        >>> de = model.differential_expression(groupby="cell_type", group1="B", group2="T")
        >>> de[de["is_de_fdr_0.05"]].sort_values("lfc_mean")
        >>> model.differential_expression(groupby="cell_type", key_added="de_scgenvae")
        >>> sc.pl.rank_genes_groups_dotplot(adata, key="de_scgenvae", n_genes=5)
        """
        args = dict(locals())
        del args["self"], args["adata"]
        return self._differential(adata, kind="expression", target="rna", **args)


def _result_frame(cols, score, names, kind, mode, fdr_target):
    """The comparison's DataFrame (sorted) and the table its scanpy layout is written from."""
    tag = "de" if kind == "expression" else "da"
    res = pd.DataFrame(cols, index=names)
    if mode == "change":
        proba_not = res[f"proba_not_{tag}"].to_numpy()
        qvalue = posterior_fdr(proba_not)
        res[f"is_{tag}_fdr_{fdr_target}"] = qvalue <= fdr_target
        sort_key = f"proba_{tag}"
    else:
        proba_not = res["proba_m2"].to_numpy()
        qvalue = posterior_fdr(proba_not)
        sort_key = "bayes_factor"
    table = pd.DataFrame(
        {"score": score, "lfc": res["lfc_mean"], "proba_not": proba_not, "qvalue": qvalue},
        index=names,
    )
    res = res.iloc[np.lexsort((-np.abs(res["lfc_mean"].to_numpy()), -res[sort_key].to_numpy()))]
    return res, table


def _check_de_args(kind, mode, delta, fdr_target, n_samples, pseudocounts) -> float:
    """Refuse arguments out of range, naming them; return ``delta`` with its default."""
    if mode not in ("change", "vanilla"):
        msg = f"`mode` must be 'change' or 'vanilla', got {mode!r}."
        raise ValueError(msg)
    if delta is None:
        delta = 0.25 if kind == "expression" else 0.05
    if not np.isfinite(delta) or delta < 0:
        msg = f"`delta` must be a non-negative number, got {delta!r}."
        raise ValueError(msg)
    if kind == "accessibility" and delta >= 1:
        msg = f"`delta` is a difference of probabilities and must be below 1, got {delta!r}."
        raise ValueError(msg)
    if not 0 < fdr_target < 1:
        msg = f"`fdr_target` must be in (0, 1), got {fdr_target!r}."
        raise ValueError(msg)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 2:
        msg = f"`n_samples` must be an integer of at least 2, got {n_samples!r}."
        raise ValueError(msg)
    if pseudocounts is not None and not (np.isfinite(pseudocounts) and pseudocounts >= 0):
        msg = f"`pseudocounts` must be a non-negative number or None, got {pseudocounts!r}."
        raise ValueError(msg)
    return float(delta)
