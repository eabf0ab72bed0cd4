"""Circular statistics used to measure cell-cycle angles against a reference."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

TWO_PI = 2.0 * np.pi


def wrap_angle(angle: ArrayLike) -> NDArray[np.float64]:
    """Angles mapped into ``[0, 2*pi)``."""
    out = np.mod(np.asarray(angle, dtype=np.float64), TWO_PI)
    # np.mod can return exactly 2*pi for tiny negative inputs
    return np.where(out >= TWO_PI, 0.0, out)


def circular_mean(angle: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Direction of the (weighted) mean resultant vector, in ``[0, 2*pi)``.

    Parameters
    ----------
    angle
        Angles in radians.
    weights
        Non-negative weight of each angle (default equal).
    """
    a = np.asarray(angle, dtype=np.float64)
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=np.float64)
    return float(wrap_angle(np.arctan2((w * np.sin(a)).sum(), (w * np.cos(a)).sum()))[()])


def _check_pair(angle: ArrayLike, reference: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(angle, dtype=np.float64).ravel()
    b = np.asarray(reference, dtype=np.float64).ravel()
    if a.shape != b.shape:
        msg = f"the two angle arrays must have the same length, got {a.size} and {b.size}."
        raise ValueError(msg)
    if a.size < 2:
        msg = f"need at least 2 angles, got {a.size}."
        raise ValueError(msg)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        msg = "angles must be finite; drop the cells with NaN angles first."
        raise ValueError(msg)
    return a, b


def circular_correlation(
    angle: ArrayLike, reference: ArrayLike, *, method: Literal["js", "fl"] = "js"
) -> float:
    r"""Circular correlation coefficient of two angle arrays.

    ``method="js"`` (default) is the Jammalamadaka-SenGupta coefficient
    :cite:p:`Jammalamadaka2001`

    .. math::

        \rho_{JS} = \frac{\sum_i \sin(a_i - \bar a)\sin(b_i - \bar b)}
                      {\sqrt{\sum_i \sin^2(a_i - \bar a)\sum_i \sin^2(b_i - \bar b)}}

    with :math:`\bar a`, :math:`\bar b` the circular means, the figure peco and CycleVI
    report. It needs well-defined circular means: for angles spread evenly round the circle
    (mean resultant near 0) it is unstable. ``method="fl"`` is the Fisher-Lee coefficient
    :cite:p:`Fisher1983`, which needs no means,

    .. math::

        \rho_{FL} = \frac{\sum_{i<j} \sin(a_i - a_j)\sin(b_i - b_j)}
                      {\sqrt{\sum_{i<j} \sin^2(a_i - a_j)\sum_{i<j} \sin^2(b_i - b_j)}}
                 = \frac{R_{a-b}^2 - R_{a+b}^2}{\sqrt{(n^2 - R_{2a}^2)(n^2 - R_{2b}^2)}}

    (:math:`R_u = |\sum_i e^{\mathrm{i} u_i}|`). Both lie in ``[-1, 1]``, are invariant to
    rotating either angle and change sign when one of them runs the other way round
    (``rho(a, -b) == -rho(a, b)``).

    Parameters
    ----------
    angle
        Angles in radians (e.g. ``adata.obs["cell_cycle_angle"]``).
    reference
        Reference angles in radians, same length.
    method
        ``"js"`` (Jammalamadaka-SenGupta) or ``"fl"`` (Fisher-Lee).

    Returns
    -------
    The coefficient; ``nan`` if either array has no spread.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.linspace(0, 6, 50)
    >>> round(scgenvae.tl.circular_correlation(a, a + 1.0), 6)
    1.0
    """
    a, b = _check_pair(angle, reference)
    if method == "js":
        sa = np.sin(a - circular_mean(a))
        sb = np.sin(b - circular_mean(b))
        num = (sa * sb).sum()
        denom = np.sqrt((sa**2).sum() * (sb**2).sum())
    elif method == "fl":
        n = a.size

        def r2(u: np.ndarray) -> float:
            return float(np.cos(u).sum() ** 2 + np.sin(u).sum() ** 2)

        num = r2(a - b) - r2(a + b)
        denom = np.sqrt(max(n**2 - r2(2 * a), 0.0) * max(n**2 - r2(2 * b), 0.0))
    else:
        msg = f"`method` must be 'js' or 'fl', got {method!r}."
        raise ValueError(msg)
    if denom <= 1e-12 * a.size**2:
        return float("nan")
    return float(np.clip(num / denom, -1.0, 1.0))


def circular_distance(angle: ArrayLike, reference: ArrayLike) -> NDArray[np.float64]:
    """Absolute circular difference ``min(|a - b|, 2*pi - |a - b|)`` in ``[0, pi]``, element-wise."""
    d = wrap_angle(np.asarray(angle, dtype=np.float64) - np.asarray(reference, dtype=np.float64))
    return np.minimum(d, TWO_PI - d)


def best_shift(angle: ArrayLike, reference: ArrayLike, *, n_grid: int = 3600) -> float:
    """Global shift ``s`` minimising the median of ``circular_distance(angle + s, reference)``.

    The direction is kept (no reflection). Candidates are ``n_grid`` equally spaced shifts and,
    for up to 2,000 cells, the per-cell differences ``reference - angle``; the best of them is
    refined by a fine local grid. The cost is a median of distances, which changes by at most
    the change of the shift, so the grid finds the global minimum to within ``pi / n_grid``
    before the refinement (the per-cell differences alone can miss it: the minimiser of a
    median need not lie near any of them).

    Parameters
    ----------
    angle, reference
        Angles in radians.
    n_grid
        Number of coarse candidate shifts for large inputs.
    """
    a, b = _check_pair(angle, reference)
    r = wrap_angle(b - a)
    cand = np.linspace(0, TWO_PI, n_grid, endpoint=False)
    if r.size <= 2000:
        cand = np.unique(np.concatenate([r, cand]))

    def cost(shifts: np.ndarray) -> np.ndarray:
        out = np.empty(len(shifts))
        for start in range(0, len(shifts), 256):
            s = shifts[start : start + 256, None]
            d = wrap_angle(r[None, :] - s)
            out[start : start + 256] = np.median(np.minimum(d, TWO_PI - d), axis=1)
        return out

    c = cost(cand)
    s0 = cand[int(np.argmin(c))]
    step = TWO_PI / max(int(n_grid), 1)
    fine = np.concatenate([[s0], s0 + np.linspace(-step, step, 201)])
    cf = cost(fine)
    # ties resolved towards the coarse candidate (exact for shifted copies)
    return float(wrap_angle(fine[int(np.argmin(cf))])[()])


def circular_error(angle: ArrayLike, reference: ArrayLike, *, shift: bool = True) -> float:
    """Median circular error of ``angle`` against ``reference``, as a fraction of the cycle.

    With ``shift=True`` (default) ``angle`` is first rotated by the global shift that minimises
    the median error (:func:`best_shift`); it is never reflected, so an angle running the wrong
    way round scores badly. ``0`` is perfect, ``0.25`` is what random angles give.

    Parameters
    ----------
    angle
        Angles in radians.
    reference
        Reference angles in radians, same length.
    shift
        Optimise a global rotation first (the origin of the two angles need not agree).

    Returns
    -------
    Median of ``circular_distance(angle + s, reference) / (2 * pi)``, in ``[0, 0.5]``.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.linspace(0, 6, 50)
    >>> scgenvae.tl.circular_error(a, a + 1.0)
    0.0
    """
    a, b = _check_pair(angle, reference)
    s = best_shift(a, b) if shift else 0.0
    return float(np.median(circular_distance(a + s, b)) / TWO_PI)


def smooth_profile(
    angle: np.ndarray, values: np.ndarray, grid: np.ndarray, bandwidth: float
) -> np.ndarray:
    """Von Mises kernel regression of ``values`` on ``angle``, evaluated on ``grid``."""
    kappa = 1.0 / bandwidth**2
    w = np.exp(kappa * (np.cos(grid[:, None] - angle[None, :]) - 1.0))
    return (w @ values) / np.maximum(w.sum(1), 1e-300)
