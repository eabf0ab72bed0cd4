"""Seeded synthetic cycling cells with a known phase angle (for tests and examples)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

if TYPE_CHECKING:
    from numpy.random import Generator, SeedSequence

    SeedLike = int | np.integer | SeedSequence | None
    RNGLike = Generator


def synthetic_cell_cycle(
    n_obs: int = 400,
    n_other: int = 103,
    *,
    n_groups: int = 2,
    s_fraction: float = 0.3,
    g2m_fraction: float = 0.3,
    amplitude: float = 1.5,
    depth: float = 20.0,
    rng: SeedLike | RNGLike = 0,
) -> AnnData:
    """Counts of cycling cells whose phase angle is known (Poisson, CSR).

    Each cell has a true angle ``obs["true_angle"]`` drawn uniformly in ``[0, 2*pi)``, increasing
    G1 -> S -> G2/M with the G1/S transition at 0: S occupies ``[0, 2*pi*s_fraction)``, G2/M
    the next ``2*pi*g2m_fraction`` and G1 the rest (``obs["true_phase"]``). The 43 S and 54
    G2/M markers of Tirosh et al. (human symbols, as var_names) peak in the middle of their
    phase (each gene jittered by up to a twentieth of the cycle); of the ``n_other`` further genes a
    third cycle with random peaks and the rest differ between ``n_groups`` cell groups
    (``obs["group"]``), so the data have non-cycling structure too. Library sizes double from
    division (end of G2/M) to the next division.

    Parameters
    ----------
    n_obs
        Cells.
    n_other
        Genes besides the 97 markers (``n_vars = 97 + n_other``).
    n_groups
        Non-cycling cell groups.
    s_fraction, g2m_fraction
        Fractions of the cycle spent in S and in G2/M.
    amplitude
        Log-fold amplitude of the cycling genes.
    depth
        Mean counts per gene and cell (before the cycle's doubling).
    rng
        Seed or :class:`numpy.random.Generator`.

    Returns
    -------
    AnnData with counts in ``.X`` and ``layers["counts"]``, ``obs["true_angle"]``,
    ``obs["true_phase"]``, ``obs["group"]`` and ``var["kind"]`` (``S``, ``G2M``, ``cyclic``,
    ``group``).
    """
    from scgenvae._markers import G2M_GENES, S_GENES

    from ._synthetic import check_sizes

    check_sizes(n_obs=n_obs, n_groups=n_groups)
    if isinstance(n_other, bool) or not isinstance(n_other, int | np.integer) or n_other < 0:
        msg = f"`n_other` must be a non-negative integer, got {n_other!r}."
        raise ValueError(msg)
    if not (depth > 0 and np.isfinite(depth) and np.isfinite(amplitude)):
        msg = f"`depth` must be positive and `amplitude` finite, got {depth!r} and {amplitude!r}."
        raise ValueError(msg)
    if not (s_fraction > 0 and g2m_fraction > 0 and s_fraction + g2m_fraction < 1):
        msg = "`s_fraction` and `g2m_fraction` must be positive and sum to less than 1."
        raise ValueError(msg)
    rng = np.random.default_rng(rng)
    two_pi = 2 * np.pi
    angle = rng.uniform(0, two_pi, n_obs)
    s_end, g_end = two_pi * s_fraction, two_pi * (s_fraction + g2m_fraction)
    phase = np.where(angle < s_end, "S", np.where(angle < g_end, "G2M", "G1"))
    group = rng.integers(n_groups, size=n_obs)

    n_cyc = n_other // 3
    n_grp = n_other - n_cyc
    peaks = np.concatenate(
        [
            s_end / 2 + rng.uniform(-0.3, 0.3, len(S_GENES)),
            (s_end + g_end) / 2 + rng.uniform(-0.3, 0.3, len(G2M_GENES)),
            rng.uniform(0, two_pi, n_cyc),
        ]
    )
    n_cycling = len(peaks)
    kappa = 2.0
    bump = np.exp(kappa * (np.cos(angle[:, None] - peaks[None, :]) - 1.0))  # cells x genes
    base = rng.normal(0.0, 0.5, n_cycling + n_grp)
    logits = np.tile(base, (n_obs, 1))
    logits[:, :n_cycling] += amplitude * 2 * (bump - bump.mean(0))
    group_effect = rng.normal(0.0, 1.0, (n_groups, n_grp))
    logits[:, n_cycling:] += group_effect[group]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    progress = np.mod(angle - g_end, two_pi) / two_pi  # 0 at division
    library = depth * probs.shape[1] * 2.0**progress * rng.lognormal(0.0, 0.2, n_obs)
    counts = rng.poisson(library[:, None] * probs).astype(np.float32)

    names = [*S_GENES, *G2M_GENES]
    names += [f"cyclic_{i}" for i in range(n_cyc)] + [f"group_gene_{i}" for i in range(n_grp)]
    kind = ["S"] * len(S_GENES) + ["G2M"] * len(G2M_GENES) + ["cyclic"] * n_cyc + ["group"] * n_grp
    x = sparse.csr_matrix(counts)
    adata = AnnData(
        X=x,
        obs=pd.DataFrame(
            {
                "true_angle": angle,
                "true_phase": pd.Categorical(phase, categories=["G1", "S", "G2M"]),
                "group": pd.Categorical([f"group_{k}" for k in group]),
            },
            index=[f"cell_{i}" for i in range(n_obs)],
        ),
        var=pd.DataFrame({"kind": pd.Categorical(kind)}, index=names),
    )
    adata.layers["counts"] = x.copy()
    return adata
