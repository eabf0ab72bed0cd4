"""Tests of ``scgenvae.tl._circular`` for the cases mutation testing found unchecked.

Weighted circular means by hand, the smallest valid input, angles that ``np.mod`` rounds up to
2*pi, and :func:`best_shift` against a brute-force search, on inputs large enough for its
chunked and gridded paths. The mutants each test kills are listed in docs/dev/mutation.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from scgenvae.tl import best_shift, circular_correlation, circular_distance, circular_error
from scgenvae.tl._circular import TWO_PI, circular_mean, wrap_angle


def test_weighted_circular_mean_by_hand():
    a = np.array([0.0, np.pi / 2])
    assert circular_mean(a) == pytest.approx(np.pi / 4)
    assert circular_mean(a, weights=[1.0, 3.0]) == pytest.approx(np.arctan2(3.0, 1.0))
    assert circular_mean(a, weights=[0.0, 2.0]) == pytest.approx(np.pi / 2)
    # a mean direction just below 0 is reported in [0, 2*pi)
    assert circular_mean([-0.1, -0.3]) == pytest.approx(TWO_PI - 0.2)


def test_wrap_angle_of_tiny_negative_angles_is_zero():
    """np.mod(-1e-20, 2*pi) rounds to 2*pi exactly; the result must stay in [0, 2*pi)."""
    assert np.mod(-1e-20, TWO_PI) == TWO_PI  # the case the guard is for
    w = wrap_angle(np.array([-1e-20, -TWO_PI, 7.0]))
    np.testing.assert_allclose(w, [0.0, 0.0, 7.0 - TWO_PI], atol=1e-15)
    assert (w < TWO_PI).all()


def test_two_angles_are_enough_one_is_not():
    assert circular_error([0.0, 1.0], [0.5, 1.5]) == pytest.approx(0.0, abs=1e-9)
    assert circular_correlation([0.0, 1.0], [0.5, 1.5], method="fl") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        circular_error([0.0], [0.5])
    with pytest.raises(ValueError, match="finite"):
        circular_error([0.0, 1.0], [0.5, np.inf])


def _median_error(angle, reference, shift):
    return np.median(circular_distance(angle + shift, reference))


@pytest.mark.parametrize(("n", "tol"), [(700, 1e-4), (2100, 1e-3)])
def test_best_shift_is_as_good_as_a_fine_grid(n, tol):
    """Many candidates (chunked by 256) and, above 2,000 cells, a coarse grid of shifts."""
    rng = np.random.default_rng(n)
    reference = rng.uniform(0, TWO_PI, n)
    angle = reference - 2.2 + rng.vonmises(0.0, 2.0, n)
    s = best_shift(angle, reference)
    assert 0 <= s < TWO_PI
    grid = np.linspace(0, TWO_PI, 6000, endpoint=False)
    brute = min(
        np.median(
            circular_distance(angle[None, :] + grid[i : i + 500, None], reference), axis=1
        ).min()
        for i in range(0, grid.size, 500)
    )
    # at least as good as a 1e-3-spaced grid, up to the search's resolution (above 2,000
    # cells the coarse grid can miss the best basin of the noisy median by a little)
    assert _median_error(angle, reference, s) <= brute + tol
    assert circular_distance(s, 2.2) < 0.1
    assert circular_error(angle, reference) == pytest.approx(
        _median_error(angle, reference, s) / TWO_PI
    )


def test_best_shift_resolution_on_a_rotated_copy_of_many_cells():
    """Above 2,000 cells the candidates are a grid; the fine search recovers the exact shift."""
    a = np.random.default_rng(0).uniform(0, TWO_PI, 2500)
    shift = 1.234567
    s = best_shift(a, a + shift)
    assert circular_distance(s, shift) < 1e-4
    assert circular_error(a, a + shift) < 1e-5


# angles for which the correlation of a rotated (or reflected) copy rounds to 1 + 2e-16
_ROUNDS_OVER = [1.699656296712383, 0.25813320079802654, 0.10412410382973329, 5.123602506961716]
_ROUNDS_OVER += [5.750360136849647, 3.821805387333233, 4.59582833419919]
_ROUNDS_OVER_FL = [3.411205687569278, 1.8881849103855242, 2.6629294935452483]


def test_correlations_of_exact_copies_stay_within_one():
    """Rounding can push the ratio past +-1; the coefficient is clipped to [-1, 1]."""
    a = np.array(_ROUNDS_OVER)
    assert circular_correlation(a, a + 0.261749948792537) == 1.0
    assert circular_correlation(a, -a + 0.261749948792537) == -1.0
    b = np.array(_ROUNDS_OVER_FL)
    assert circular_correlation(b, b - 2.830081973127222, method="fl") == 1.0


def test_fisher_lee_on_angles_of_small_spread_equals_its_definition():
    """Close angles (n^2 - R_2a^2 < 1): the pairwise formula still holds."""
    a = np.array([0.0, 0.1, 0.25, 0.3])
    b = np.array([0.2, 0.1, 0.5, 0.9])
    i, j = np.triu_indices(4, 1)
    num = (np.sin(a[i] - a[j]) * np.sin(b[i] - b[j])).sum()
    den = np.sqrt((np.sin(a[i] - a[j]) ** 2).sum() * (np.sin(b[i] - b[j]) ** 2).sum())
    assert circular_correlation(a, b, method="fl") == pytest.approx(num / den, abs=1e-9)
    assert circular_correlation(b, a, method="fl") == pytest.approx(num / den, abs=1e-9)


def test_correlation_of_angles_spread_by_rounding_only_is_nan():
    """A spread of 1e-12 rad is no spread: the coefficient would be rounding noise."""
    for method in ("js", "fl"):
        rho = circular_correlation([1.0, 1.0 + 1e-12, 1.0 + 2e-12], [0.0, 1.0, 2.0], method=method)
        assert np.isnan(rho)


def test_circular_error_without_shift_keeps_the_offset():
    a = np.linspace(0, 6, 50)
    assert circular_error(a, a + 1.0, shift=False) == pytest.approx(1.0 / TWO_PI)
    assert circular_error(a, a + 1.0) == pytest.approx(0.0, abs=1e-9)


def test_best_shift_finds_small_shifts_among_many_cells():
    """Above 2,000 cells the coarse grid must start at 0: a shift of 0.5 is found."""
    a = np.random.default_rng(1).uniform(0, TWO_PI, 2100)
    for shift in (0.5, TWO_PI - 0.3):
        assert circular_distance(best_shift(a, a + shift), shift) < 1e-4


def test_best_shift_is_never_worse_than_no_shift():
    """Found by hypothesis (test_properties.py) during mutation testing; fixed since."""
    a = np.array([0.0, 1.0, 1.0, 6.0, 1.0, 15.0, 15.0, 15.0, 15.0])
    b = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert circular_error(a, b) <= circular_error(a, b, shift=False)


def test_single_precision_angles_are_computed_in_double_precision():
    """float32 input gives the float64 result of the same values (the annotated dtype)."""
    rng = np.random.default_rng(5)
    a32 = rng.uniform(0, 40, 30).astype(np.float32)
    b32 = (a32 + rng.normal(scale=0.5, size=30)).astype(np.float32)
    a64, b64 = a32.astype(np.float64), b32.astype(np.float64)
    assert wrap_angle(a32).dtype == np.float64
    np.testing.assert_array_equal(wrap_angle(a32), wrap_angle(a64))
    for method in ("js", "fl"):
        assert circular_correlation(a32, b32, method=method) == circular_correlation(
            a64, b64, method=method
        )
    assert circular_error(a32, b32, shift=False) == circular_error(a64, b64, shift=False)


def test_non_finite_angles_error_message_is_exact():
    import re

    msg = "angles must be finite; drop the cells with NaN angles first."
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        circular_correlation(np.array([0.1, np.nan, 0.3]), np.array([0.1, 0.2, 0.3]))


def test_correlation_guard_is_1e12_times_n_squared():
    """The correlation is NaN when its denominator is rounding noise, <= 1e-12 n^2: angles
    spread by micro-radians around one direction."""
    rng = np.random.default_rng(0)
    n = 10
    u, v = rng.normal(size=n), rng.normal(size=n)

    def denom(eps):  # the JS denominator for angles 1 + eps u and 2 + eps v, by hand
        a, b = 1.0 + eps * u, 2.0 + eps * v
        sa, sb = np.sin(a - circular_mean(a)), np.sin(b - circular_mean(b))
        return np.sqrt((sa**2).sum() * (sb**2).sum()), a, b

    low, a, b = denom(2.8e-6)
    assert 2 * n * 1e-12 < low < n**2 * 1e-12
    assert np.isnan(circular_correlation(a, b))
    high, a, b = denom(8e-6)
    assert n**2 * 1e-12 < high < n**3 * 1e-12
    assert np.isfinite(circular_correlation(a, b))


def test_smooth_profile_by_hand():
    """Von Mises kernel regression: weights exp(kappa (cos(g - a) - 1)), kappa = 1 / bw^2."""
    from scgenvae._circular import smooth_profile

    angle = np.array([0.0, 0.5, 2.0, 4.0])
    values = np.array([1.0, 3.0, -2.0, 5.0])
    grid = np.array([0.0, 1.0, 3.0, 5.5])
    bw = 0.7
    w = np.exp((np.cos(grid[:, None] - angle[None, :]) - 1.0) / bw**2)
    np.testing.assert_allclose(smooth_profile(angle, values, grid, bw), w @ values / w.sum(1))
    # a narrow kernel at a cell: that cell's weight is exp(0) = 1, not an underflowed 0
    np.testing.assert_allclose(
        smooth_profile(np.array([0.0, 0.3]), np.array([2.0, 3.0]), np.array([0.0]), 0.01), [2.0]
    )
    # far from every cell (weights underflow to 0) the profile is 0, not NaN
    far = smooth_profile(np.zeros(3), np.ones(3), np.array([np.pi]), 0.01)
    np.testing.assert_array_equal(far, [0.0])
