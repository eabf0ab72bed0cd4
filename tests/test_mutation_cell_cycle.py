"""Fast, exact tests of ``scgenvae.tl._cell_cycle`` for mutation testing (issue 15).

The mutation run of ``cell_cycle`` reruns, for every mutant, each selected test that calls the
mutated function, so the tests that train models or read the real data sets are deselected
there (pyproject.toml, ``[tool.scgenvae.mutation.cell_cycle]``). These tests take their place:
tiny synthetic rings and ellipses, no training, closed-form geometry (nearest points of an
ellipse, first-harmonic correlation vectors, signed areas), the marker rules by hand and the
argument checks. The mutants they kill are listed in docs/dev/mutation.md.
"""

from __future__ import annotations

import re
import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import scipy.sparse as sp

from scgenvae.datasets._cell_cycle import synthetic_cell_cycle
from scgenvae.tl import (
    align_cell_cycle,
    cell_cycle_direction,
    circular_correlation,
    circular_distance,
    marker_peaks,
    score_cell_cycle,
)
from scgenvae.tl._cell_cycle import (
    _cycle_vectors,
    _direction_details,
    _fit_ellipse,
    _get_library,
    _get_rep,
    _get_scores,
    _initial_angle,
    _longest_arc_start,
    _origin,
    _plane_basis,
    _project_on_ellipse,
    _robust_z,
    _signed_area,
)
from scgenvae.tl._circular import circular_mean, wrap_angle

TWO_PI = 2 * np.pi


def _ellipse(n=120, d=4, *, a=3.0, b=1.0, seed=0, s_peak=np.pi / 3, g2m_peak=np.pi, noise=0.0):
    """Cells evenly spaced on an ellipse (semi-axes ``a``, ``b``) in a random plane of R^d."""
    rng = np.random.default_rng(seed)
    theta = np.linspace(0, TWO_PI, n, endpoint=False)
    core = np.zeros((n, d))
    core[:, 0] = a * np.cos(theta)
    core[:, 1] = b * np.sin(theta)
    core[:, 2:] = rng.normal(0, noise, (n, d - 2)) if noise else 0.0
    rot = np.linalg.qr(rng.normal(size=(d, d)))[0]
    obs = pd.DataFrame(
        {"S_score": np.cos(theta - s_peak), "G2M_score": np.cos(theta - g2m_peak)},
        index=[f"c{i}" for i in range(n)],
    )
    adata = ad.AnnData(obs=obs)
    adata.obsm["X_rep"] = core @ rot.T + 5.0
    return adata, theta, rot


class _Model:
    """Stands in for a trained model: only ``get_latent_representation`` is used."""

    def __init__(self, latent):
        self.latent = latent
        self.calls = []

    def get_latent_representation(self, data):
        self.calls.append(data)
        return self.latent


# ---------------------------------------------------------------------------- representation
def test_get_rep_from_obsm_dataframe_model_and_errors():
    adata, _, _ = _ellipse(n=12, d=3)
    rep = adata.obsm["X_rep"]
    adata.obsm["frame"] = pd.DataFrame(rep, index=adata.obs_names)
    out = _get_rep(adata, "frame", None)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, rep)
    model = _Model(rep.astype(np.float32))
    out = _get_rep(adata, "X_missing", model)
    assert model.calls == [adata]
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, rep, rtol=1e-6)
    assert "X_missing" not in adata.obsm
    with pytest.raises(KeyError, match=r"`use_rep='X_missing'` not found in \.obsm") as err:
        _get_rep(adata, "X_missing", None)
    assert "X_rep" in str(err.value)
    assert "pass `model=`" in str(err.value)
    with pytest.raises(ValueError, match=r"must be cells x dimensions, got shape \(11, 3\)"):
        _get_rep(adata, "X_missing", _Model(rep[:11]))
    with pytest.raises(ValueError, match=r"must be cells x dimensions, got shape \(12,\)"):
        _get_rep(adata, "X_missing", _Model(rep[:, 0]))
    adata.obsm["one"] = rep[:, :1]
    with pytest.raises(ValueError, match="has 1 dimension; a cycle needs at least 2"):
        _get_rep(adata, "one", None)
    adata.obsm["two"] = rep[:, :2]
    assert _get_rep(adata, "two", None).shape == (12, 2)


# ---------------------------------------------------------------------------- scores and library
def test_get_scores_reads_existing_columns_without_scoring():
    adata, _, _ = _ellipse(n=12, d=3)
    adata.obs["S_score"] = adata.obs["S_score"].astype(object)
    adata.obs.loc["c1", "S_score"] = "n/a"
    s, g, scored = _get_scores(
        adata, s_score_key="S_score", g2m_score_key="G2M_score", modality="rna",
        score_kwargs={}, rng=0,
    )  # fmt: skip
    assert scored is False
    assert s.dtype == g.dtype == np.float64
    assert np.isnan(s[1])
    np.testing.assert_array_equal(np.delete(s, 1), np.delete(adata.obs["S_score"], 1))
    np.testing.assert_array_equal(g, adata.obs["G2M_score"])
    # only one of the two columns present: the scores are computed (here: no markers)
    del adata.obs["G2M_score"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scanpy's mean of no genes
        with pytest.raises(ValueError, match="markers"):
            _get_scores(
                adata, s_score_key="S_score", g2m_score_key="G2M_score", modality="rna",
                score_kwargs={}, rng=0,
            )  # fmt: skip


def _small_counts(n_obs=60):
    return synthetic_cell_cycle(n_obs=n_obs, n_other=6, rng=0)


def test_get_scores_of_anndata_and_mudata_modality():
    md.set_options(pull_on_update=False)
    rna = _small_counts()
    kwargs = {"organism": "human", "gene_symbols": None, "layer": None}
    s, g, scored = _get_scores(
        rna, s_score_key="S_score", g2m_score_key="G2M_score", modality="rna",
        score_kwargs=kwargs, rng=0,
    )  # fmt: skip
    assert scored is True
    assert "S_score" not in rna.obs  # nothing written here
    ref = score_cell_cycle(rna, copy=True, rng=0).obs
    np.testing.assert_array_equal(s, ref["S_score"])
    np.testing.assert_array_equal(g, ref["G2M_score"])
    assert np.ptp(s) > 0
    assert np.ptp(g) > 0
    # MuData: scores of mod[modality], aligned with the MuData's cells
    other = ad.AnnData(
        np.ones((rna.n_obs, 2), dtype=np.float32), obs=pd.DataFrame(index=rna.obs_names)
    )
    # the other modality first: the MuData lists the cells in its order, not rna's
    mdata = md.MuData({"other": other, "rna": rna[::-1].copy()})
    assert not mdata.obs_names.equals(mdata.mod["rna"].obs_names)
    s2, g2, scored2 = _get_scores(
        mdata, s_score_key="S_score", g2m_score_key="G2M_score", modality="rna",
        score_kwargs=kwargs, rng=0,
    )  # fmt: skip
    assert scored2 is True
    order = pd.Index(rna.obs_names).get_indexer(mdata.obs_names)
    np.testing.assert_allclose(s2, s[order])
    np.testing.assert_allclose(g2, g[order])
    with pytest.raises(KeyError, match=r"`modality='atac'` is not in mdata.mod") as err:
        _get_scores(
            mdata, s_score_key="S_score", g2m_score_key="G2M_score", modality="atac",
            score_kwargs=kwargs, rng=0,
        )  # fmt: skip
    assert "'S_score'/'G2M_score'" in str(err.value)


def test_get_library_sources():
    md.set_options(pull_on_update=False)
    rna = _small_counts(20)
    totals = np.asarray(rna.X.sum(1)).ravel().astype(np.float64)
    np.testing.assert_array_equal(_get_library(rna, None, "rna", None), totals)
    # an obs column, coerced to numbers
    rna.obs["lib"] = [str(v) for v in totals]
    rna.obs.loc[rna.obs_names[0], "lib"] = "?"
    lib = _get_library(rna, "lib", "rna", None)
    assert np.isnan(lib[0])
    np.testing.assert_array_equal(lib[1:], totals[1:])
    with pytest.raises(KeyError, match=r"`library_key='nope'` not found in obs; available: \["):
        _get_library(rna, "nope", "rna", None)
    # log-normalised .X: the counts come from layers["counts"], or from the layer named
    counted = rna.copy()
    counted.layers["counts"] = rna.X.copy()
    counted.layers["raw"] = rna.X.copy() * 2
    counted.X = sp.csr_matrix(np.log1p(rna.X.toarray()) + 0.5)
    np.testing.assert_array_equal(_get_library(counted, None, "rna", None), totals)
    np.testing.assert_array_equal(_get_library(counted, None, "rna", "raw"), 2 * totals)
    # a layer that is not counts is not replaced by layers["counts"]
    counted.layers["lognorm"] = counted.X.copy()
    assert _get_library(counted, None, "rna", "lognorm") is None
    del counted.layers["counts"]
    assert _get_library(counted, None, "rna", None) is None
    assert _get_library(counted, None, "rna", "missing") is None
    # MuData: the modality's row sums, aligned with the MuData's cells
    other = ad.AnnData(
        np.ones((rna.n_obs, 2), dtype=np.float32), obs=pd.DataFrame(index=rna.obs_names)
    )
    # the other modality first: the MuData lists the cells in its order, not rna's
    mdata = md.MuData({"other": other, "rna": rna[::-1].copy()})
    assert not mdata.obs_names.equals(mdata.mod["rna"].obs_names)
    order = pd.Index(rna.obs_names).get_indexer(mdata.obs_names)
    np.testing.assert_array_equal(_get_library(mdata, None, "rna", None), totals[order])
    assert _get_library(mdata, None, "atac", None) is None
    empty = ad.AnnData(np.zeros((rna.n_obs, 0), dtype=np.float32), obs=rna.obs[[]])
    assert _get_library(empty, None, "rna", None) is None


def test_get_scores_coerces_non_numbers_in_either_column():
    adata, _, _ = _ellipse(n=12, d=3)
    adata.obs["G2M_score"] = adata.obs["G2M_score"].astype(object)
    adata.obs.loc["c2", "G2M_score"] = "n/a"
    s, g, scored = _get_scores(
        adata, s_score_key="S_score", g2m_score_key="G2M_score", modality="rna",
        score_kwargs={}, rng=0,
    )  # fmt: skip
    assert scored is False
    assert np.isnan(g[2])
    assert np.isfinite(np.delete(g, 2)).all()
    np.testing.assert_array_equal(s, adata.obs["S_score"])


def _spy_scoring(monkeypatch):
    """Replace score_cell_cycle by a spy that records its arguments and returns known
    scores (S = the cell's number, G2/M = its negative)."""
    from scgenvae.tl import _cell_cycle

    calls = []

    def spy(data, **kwargs):
        calls.append((data, kwargs))
        out = data.copy()
        number = np.array([float(name[1:]) for name in out.obs_names])
        out.obs["S_score"] = number
        out.obs["G2M_score"] = -number
        return out

    monkeypatch.setattr(_cell_cycle, "score_cell_cycle", spy)
    return calls


@pytest.mark.parametrize("kind", ["anndata", "mudata"])
def test_get_scores_passes_the_seed_and_the_scoring_options(monkeypatch, kind):
    md.set_options(pull_on_update=False)
    calls = _spy_scoring(monkeypatch)
    adata, _, _ = _ellipse(n=12, d=3)
    del adata.obs["S_score"], adata.obs["G2M_score"]
    data = adata
    if kind == "mudata":
        other = ad.AnnData(np.ones((12, 1), dtype=np.float32), obs=adata.obs[[]])
        data = md.MuData({"other": other, "rna": adata[::-1].copy()})
    kwargs = {"organism": "mouse", "gene_symbols": "symbol", "layer": "counts"}
    gen = np.random.default_rng(5)
    s, g, scored = _get_scores(
        data, s_score_key="S_score", g2m_score_key="G2M_score", modality="rna",
        score_kwargs=kwargs, rng=gen,
    )  # fmt: skip
    assert scored is True
    ((called, got),) = calls
    assert got == {"copy": True, "rng": gen, **kwargs}
    assert called is (data.mod["rna"] if kind == "mudata" else data)
    number = np.array([float(name[1:]) for name in data.obs_names])
    np.testing.assert_array_equal(s, number)  # aligned with the cells of `data`
    np.testing.assert_array_equal(g, -number)


def test_align_passes_its_seed_and_options_to_the_scoring(monkeypatch):
    calls = _spy_scoring(monkeypatch)
    adata, theta, _ = _ellipse(n=40, d=3)
    del adata.obs["S_score"], adata.obs["G2M_score"]
    adata.obs_names = [f"c{i}" for i in range(40)]
    # the spy's S score (the cell's number) is a monotone function of theta: a valid marker
    gen = np.random.default_rng(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the direction may be weak
        align_cell_cycle(
            adata, use_rep="X_rep", rng=gen, organism="mouse", gene_symbols="sym", layer="lay"
        )
    ((_, got),) = calls
    assert got == {
        "copy": True, "rng": gen, "organism": "mouse", "gene_symbols": "sym", "layer": "lay"
    }  # fmt: skip


def test_get_library_of_a_single_feature_modality():
    one = ad.AnnData(
        sp.csr_matrix(np.array([[3.0], [0.0], [7.0]], dtype=np.float32)),
        obs=pd.DataFrame(index=["a", "b", "c"]),
    )
    np.testing.assert_array_equal(_get_library(one, None, "rna", None), [3.0, 0.0, 7.0])


def test_direction_details_single_bootstrap_resample():
    adata, theta, _ = _ellipse(n=30, d=3)
    s, g = adata.obs["S_score"].to_numpy(), adata.obs["G2M_score"].to_numpy()
    out = _direction_details(theta, s, g, None, n_boot=1, rng=0)
    assert out["confidence"] in (0.0, 1.0)
    assert np.isnan(_direction_details(theta, s, g, None, n_boot=0, rng=0)["confidence"])


# ---------------------------------------------------------------------------- ellipse geometry
def test_project_on_ellipse_points_on_it_and_off_it():
    ax_cos, ax_sin = np.array([3.0, 0.5]), np.array([-0.4, 1.0])
    t = np.random.default_rng(0).uniform(0, TWO_PI, 9000)  # more than one block of 8192
    on = np.outer(np.cos(t), ax_cos) + np.outer(np.sin(t), ax_sin)
    got = _project_on_ellipse(on, ax_cos, ax_sin)
    assert ((got >= 0) & (got < TWO_PI)).all()
    assert circular_distance(got, t).max() < 2e-3
    # off the ellipse: the nearest point, against a fine brute-force search
    off = on[:100] * np.random.default_rng(1).uniform(0.5, 1.5, (100, 1))
    got = _project_on_ellipse(off, ax_cos, ax_sin)
    fine = np.linspace(0, TWO_PI, 20_000, endpoint=False)

    def dist(a):
        return np.sqrt(
            ((off - np.outer(np.cos(a), ax_cos) - np.outer(np.sin(a), ax_sin)) ** 2).sum(1)
        )

    pts = np.outer(np.cos(fine), ax_cos) + np.outer(np.sin(fine), ax_sin)
    best = np.sqrt(((off[:, None, :] - pts[None]) ** 2).sum(-1).min(1))
    np.testing.assert_allclose(dist(got), best, atol=2e-4)
    # the parabolic refinement beats the 1-degree grid alone (error up to half a degree)
    assert circular_distance(_project_on_ellipse(on[:300], ax_cos, ax_sin), t[:300]).max() < (
        0.1 * np.radians(0.5)
    )


def test_project_on_ellipse_of_no_size_takes_the_grid_minimum():
    """An ellipse shrunk to its centre: every grid point is as far as the next (a flat
    minimum, no parabola), so the angle is the grid point found (0), not shifted."""
    got = _project_on_ellipse(np.ones((3, 2)), np.zeros(2), np.zeros(2))
    np.testing.assert_array_equal(got, np.zeros(3))


def test_plane_basis_and_its_collapse():
    q = _plane_basis(np.array([2.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(q.T @ q, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(np.abs(q[:, 0]), [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(np.abs(q[:, 1]), [0.0, 1.0, 0.0], atol=1e-12)
    for ax_sin in (np.array([4.0, 0.0, 0.0]), np.zeros(3), np.array([2.0, 1e-11, 0.0])):
        with pytest.raises(ValueError, match="collapsed to a line"):
            _plane_basis(np.array([2.0, 0.0, 0.0]), ax_sin)
    # a small but real second axis is a plane
    _plane_basis(np.array([2.0, 0.0, 0.0]), np.array([0.0, 1e-9, 0.0]))


def test_fit_ellipse_recovers_the_parameter_and_counts_iterations():
    adata, theta, rot = _ellipse(n=90, d=3)
    x = adata.obsm["X_rep"] - adata.obsm["X_rep"].mean(0)
    start = theta + 0.3 * np.sin(3 * theta)
    angle, coef, n_iter, converged = _fit_ellipse(x, start, max_iter=200, tol=1e-6)
    assert converged
    assert 1 < n_iter < 200
    assert circular_distance(angle, theta).max() < 1e-3
    np.testing.assert_allclose(coef[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(coef[1], 3.0 * rot[:, 0], atol=1e-3)
    np.testing.assert_allclose(coef[2], 1.0 * rot[:, 1], atol=1e-3)
    angle1, _, n1, conv1 = _fit_ellipse(x, start, max_iter=1, tol=1e-6)
    assert (n1, conv1) == (1, False)
    assert circular_distance(angle1, theta).max() > 1e-3
    # starting at the solution: converged in the first iteration
    _, _, n0, conv0 = _fit_ellipse(x, theta, max_iter=5, tol=1e-2)
    assert (n0, conv0) == (1, True)


@pytest.mark.parametrize("init", ["markers", "pca"])
def test_initial_angle_follows_the_ring(init):
    adata, theta, _ = _ellipse(n=60, d=4, a=3.0, b=2.0, noise=0.2)
    x = adata.obsm["X_rep"] - adata.obsm["X_rep"].mean(0)
    s, g = adata.obs["S_score"].to_numpy(), adata.obs["G2M_score"].to_numpy()
    phi = _initial_angle(x, s, g, init)
    assert ((phi >= 0) & (phi < TWO_PI)).all()
    # theta up to a rotation (the markers plane is not the ellipse's axes: not exact)
    err = circular_distance(phi, wrap_angle(theta + circular_mean(phi - theta))).max()
    assert err < (0.2 if init == "markers" else 0.01)


def test_initial_angle_markers_half_a_cycle_apart_are_completed_by_a_pc():
    """S and G2/M peaks opposite: both marker directions coincide, the leading PC completes."""
    adata, theta, rot = _ellipse(n=60, d=4, a=3.0, b=2.0, s_peak=0.0, g2m_peak=np.pi, noise=0.2)
    x = adata.obsm["X_rep"] - adata.obsm["X_rep"].mean(0)
    s, g = adata.obs["S_score"].to_numpy(), adata.obs["G2M_score"].to_numpy()
    phi = _initial_angle(x, s, g, "markers")
    diffs = np.diff(np.unwrap(phi))
    assert (diffs > 0).all() or (diffs < 0).all()
    assert np.abs(np.unwrap(phi)[-1] - np.unwrap(phi)[0]) > 5.5  # once round


def _initial_angle_by_hand(x, s, g, init):
    """The documented start: the ridge regression (lambda = 1e-3 trace(x'x) / d) of the
    standardised scores on x, its two unit directions, completed by the leading direction of
    the cells orthogonal to the first when the second's orthogonal part is under 0.3; or the
    top two PCs. Angle of the projection after scaling each axis to unit sd."""
    d = x.shape[1]
    if init == "pca":
        vecs = np.linalg.eigh(x.T @ x)[1]
        q = vecs[:, [-1, -2]]
    else:
        y = np.stack([(v - np.median(v)) / np.std(v) for v in (s, g)], axis=1)
        lam = 1e-3 * np.trace(x.T @ x) / d
        w = np.linalg.solve(x.T @ x + lam * np.eye(d), x.T @ y)
        w = w / np.linalg.norm(w, axis=0)
        first = w[:, 0]
        ortho = w[:, 1] - (first @ w[:, 1]) * first
        if np.linalg.norm(ortho) < 0.3:
            rest = x - np.outer(x @ first, first)
            ortho = np.linalg.eigh(rest.T @ rest)[1][:, -1]
        q = np.stack([first, ortho / np.linalg.norm(ortho)], axis=1)
    p = x @ q
    p = p / p.std(0)
    return p  # the angle is arctan2(p[:, 1], p[:, 0]) up to the signs of the axes


@pytest.mark.parametrize(
    "case",
    ["ridge_matters", "large_scale", "markers_at_right_angles", "small_unequal_axes", "weak_g2m"],
)
@pytest.mark.parametrize("init", ["markers", "pca"])
def test_initial_angle_by_hand(case, init):
    """Each step of the start against the formula (axes compared up to sign: QR and SVD may
    flip them). The cases make each step matter: a low-variance dimension that predicts the
    scores (the ridge), a representation of scale 100 (unit marker directions before the
    0.3 test), markers 90 degrees apart (no completion), axes of sd below 1 (the scaling), a
    G2/M score x barely predicts (each direction scaled by its own norm)."""
    weak = case == "weak_g2m"  # 400 cells: a regression on noise has a short direction
    rng = np.random.default_rng(4 if weak else 11)
    n = 400 if weak else 80
    theta = np.sort(rng.uniform(0, TWO_PI, n))
    s_sc, g_sc = np.cos(theta - 0.4), np.cos(theta - 0.4 - np.pi / 2)
    ring = np.stack([3.0 * np.cos(theta), 1.5 * np.sin(theta)], axis=1)
    noise = rng.normal(0, 0.3, (n, 2))
    if case == "ridge_matters":  # dimension 3: small, and it predicts the S score
        x = np.column_stack([ring, noise, 0.02 * s_sc + 0.002 * rng.normal(size=n)])
    elif case == "large_scale":
        x = 100.0 * np.column_stack([ring, noise])
        g_sc = np.cos(theta - 0.4 - 2.4)  # markers 137 degrees apart
    elif case == "markers_at_right_angles":
        x = np.column_stack([ring, 2.0 * noise])
    elif case == "small_unequal_axes":
        x = np.column_stack([0.2 * ring, 0.05 * noise])
    else:  # G2/M barely predicted by x: its direction is much shorter than the S one's
        x = np.column_stack([ring, noise[:, :1]])
        g_sc = 0.1 * g_sc + rng.normal(size=n)
    x = x - x.mean(0)
    phi = _initial_angle(x, s_sc, g_sc, init)
    p = _initial_angle_by_hand(x, s_sc, g_sc, init)
    np.testing.assert_allclose(np.abs(np.cos(phi)), np.abs(p[:, 0]) / np.hypot(*p.T), atol=1e-7)
    np.testing.assert_allclose(np.abs(np.sin(phi)), np.abs(p[:, 1]) / np.hypot(*p.T), atol=1e-7)


# ---------------------------------------------------------------------------- marker rules
def test_robust_z_by_hand():
    np.testing.assert_allclose(
        _robust_z([1.0, 2.0, 3.0, 10.0]), (np.array([1, 2, 3, 10]) - 2.5) / np.std([1, 2, 3, 10])
    )
    z = _robust_z(np.array([1.0, np.nan, 3.0]))
    np.testing.assert_allclose(z, [-1.0, np.nan, 1.0])
    np.testing.assert_array_equal(_robust_z(np.array([4.0, 4.0, 4.0])), [0.0, 0.0, 0.0])
    # a spread below 1 is still divided out
    np.testing.assert_allclose(
        _robust_z([0.1, 0.2, 0.4]), (np.array([0.1, 0.2, 0.4]) - 0.2) / np.std([0.1, 0.2, 0.4])
    )
    assert _robust_z(np.array([1, 2, 4])).dtype == np.float64


def test_marker_peaks_by_hand():
    angle = np.array([0.1, 0.2, 0.3, 0.4, 2.0, 3.0, 4.0, 5.0])
    s = np.array([8.0, 7.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    g = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 8.0, 0.0])
    s_peak, g_peak = marker_peaks(angle, s, g)  # the top quarter: two cells each
    assert s_peak == pytest.approx(0.15)
    assert g_peak == pytest.approx(3.5)
    s_peak, _ = marker_peaks(angle, s, g, quantile=0.5)  # 8, 7, 6, 5: angles .1 .2 5 4
    assert s_peak == pytest.approx(
        float(
            np.mod(
                np.arctan2(np.sin([0.1, 0.2, 5, 4]).sum(), np.cos([0.1, 0.2, 5, 4]).sum()), TWO_PI
            )
        )
    )
    assert marker_peaks(angle, list(s), list(g))[0] == pytest.approx(0.15)


def test_cycle_vectors_closed_form():
    theta = np.linspace(0, TWO_PI, 16, endpoint=False)
    vec = _cycle_vectors(theta, [np.cos(theta - 1.0), 3 * np.cos(theta - 2.5) + 7, np.ones(16)])
    np.testing.assert_allclose(vec[0], [np.cos(1.0), np.sin(1.0)], atol=1e-12)
    np.testing.assert_allclose(vec[1], [np.cos(2.5), np.sin(2.5)], atol=1e-12)
    np.testing.assert_array_equal(vec[2], [0.0, 0.0])  # a constant signal has no peak
    # cells bunched unevenly: the length is the multiple correlation with (cos, sin) and the
    # vector is C^(1/2) beta / sd (C the covariance of (cos, sin), beta the regression slopes)
    rng = np.random.default_rng(0)
    angle = rng.vonmises(0.5, 1.0, 200)
    v = np.cos(angle - 2.0) + rng.normal(0, 0.5, 200)
    got = _cycle_vectors(angle, [v])[0]
    h = np.stack([np.ones(200), np.cos(angle), np.sin(angle)], axis=1)
    beta, res, *_ = np.linalg.lstsq(h, v, rcond=None)
    r2 = 1 - res[0] / ((v - v.mean()) ** 2).sum()
    assert np.linalg.norm(got) == pytest.approx(np.sqrt(r2), rel=1e-10)
    hc = h[:, 1:] - h[:, 1:].mean(0)
    c_half = np.real(scipy.linalg.sqrtm(hc.T @ hc / 200))
    np.testing.assert_allclose(got, c_half @ beta[1:] / v.std(), rtol=1e-10)
    # no spread of the angle: no direction
    np.testing.assert_array_equal(_cycle_vectors(np.full(10, 0.7), [np.arange(10.0)]), 0.0)


def test_signed_area_by_hand():
    v = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    assert _signed_area(v, with_library=False) == 1.0
    assert _signed_area(v, with_library=True) == 3.0  # (2, 1) x (1, 2)
    assert _signed_area(v[[1, 0, 2]], with_library=True) == -3.0
    assert _signed_area(v[:2], with_library=False) == 1.0


def test_direction_details_closed_form():
    theta = np.linspace(0, TWO_PI, 24, endpoint=False)
    s, g = np.cos(theta - 1.0), np.cos(theta - 3.0)
    d = _direction_details(theta, s, g, None, n_boot=20)
    assert d["direction"] == 1
    assert d["evidence"] == pytest.approx(np.sin(2.0))
    assert d["confidence"] == 1.0
    assert d["weak"] is False
    assert d["library_used"] is False
    assert d["peak_gap"] == pytest.approx(2.0)
    np.testing.assert_allclose(d["vectors"][0], [np.cos(1.0), np.sin(1.0)], atol=1e-12)
    back = _direction_details(-theta, s, g, None, n_boot=20)
    assert back["direction"] == -1
    assert back["evidence"] == pytest.approx(np.sin(2.0))
    assert back["confidence"] == 1.0
    assert back["peak_gap"] == pytest.approx(2.0)
    assert back["weak"] is False
    # no bootstrap: no confidence, and not flagged for it
    d0 = _direction_details(theta, s, g, None, n_boot=0)
    assert np.isnan(d0["confidence"])
    assert d0["weak"] is False
    # the same peak for both: no area, counted as forward
    same = _direction_details(theta, s, s, None, n_boot=0)
    assert (same["direction"], same["evidence"]) == (1, 0.0)
    assert cell_cycle_direction(theta, s, g) == (1, pytest.approx(np.sin(2.0)))
    assert cell_cycle_direction(-theta, s, g)[0] == -1


def test_direction_details_near_opposite_peaks_and_the_library():
    theta = np.linspace(0, TWO_PI, 24, endpoint=False)
    s = np.cos(theta - 1.0)
    # G2/M 40 degrees short of opposite: weak without a library
    g = np.cos(theta - 1.0 - np.pi + np.radians(40))
    d = _direction_details(theta, s, g, None, n_boot=10)
    assert d["peak_gap"] == pytest.approx(np.pi - np.radians(40))
    assert d["confidence"] == 1.0
    assert d["weak"] is True
    # 50 degrees short: not near opposite
    g50 = np.cos(theta - 1.0 - np.pi + np.radians(50))
    assert _direction_details(theta, s, g50, None, n_boot=10)["weak"] is False
    # the library trough (G1) at 2 rad before the S peak: the triangle turns forward
    theta = np.linspace(0, TWO_PI, 120, endpoint=False)
    s = np.cos(theta - 1.0)
    library = 1000 * 2 ** (np.mod(theta + 1.0, TWO_PI) / TWO_PI)
    opposite = np.cos(theta - 1.0 - np.pi)
    d = _direction_details(theta, s, opposite, library, n_boot=20)
    assert d["library_used"] is True
    assert d["direction"] == 1
    assert d["confidence"] == 1.0
    assert d["weak"] is False
    vec = _cycle_vectors(theta, [s, opposite, -np.log(library)])
    assert d["evidence"] == pytest.approx(abs(_signed_area(vec, with_library=True)))
    assert _direction_details(-theta, s, opposite, library, n_boot=20)["direction"] == -1
    # the public rule uses the library too: its evidence is the triangle's area
    assert cell_cycle_direction(theta, s, opposite, library=library) == (
        1,
        pytest.approx(d["evidence"]),
    )
    # a constant library carries nothing; a library with zeros is floored, not NaN
    flat = _direction_details(theta, s, opposite, np.full(120, 500.0), n_boot=10)
    assert flat["library_used"] is False
    assert flat["weak"] is True
    # (equal library sizes once gave a library vector of rounding noise: np.std of 120 equal
    # log(500) is 9e-16, not 0)
    assert cell_cycle_direction(theta, s, opposite, library=np.full(120, 500.0)) == (
        cell_cycle_direction(theta, s, opposite)
    )
    zeros = library.copy()
    zeros[:3] = 0.0
    dz = _direction_details(theta, s, opposite, zeros, n_boot=0)
    assert dz["library_used"] is True
    vz = _cycle_vectors(theta, [s, opposite, -np.log(np.maximum(zeros, 1e-12))])
    assert dz["evidence"] == pytest.approx(abs(_signed_area(vz, with_library=True)))


def test_direction_details_bootstrap_confidence_on_noise():
    rng = np.random.default_rng(5)
    theta = rng.uniform(0, TWO_PI, 40)
    s, g = rng.normal(size=40), rng.normal(size=40)
    d = _direction_details(theta, s, g, None, n_boot=200, rng=3)
    assert 0.5 <= d["confidence"] < 0.95
    assert d["weak"] is True
    again = _direction_details(theta, s, g, None, n_boot=200, rng=3)
    assert again["confidence"] == d["confidence"]
    default = _direction_details(theta, s, g, None, n_boot=200)  # rng=0 by default
    assert (
        default["confidence"]
        == _direction_details(theta, s, g, None, n_boot=200, rng=0)["confidence"]
    )
    # the bootstrap counts resamples agreeing with the full-data direction: recount it
    gen = np.random.default_rng(3)
    sign = d["direction"]
    agree = 0
    for _ in range(200):
        idx = gen.integers(0, 40, 40)
        area = _signed_area(_cycle_vectors(theta[idx], [s[idx], g[idx]]), with_library=False)
        agree += (area >= 0) == (sign > 0)
    assert d["confidence"] == agree / 200


def test_longest_arc_start_by_hand():
    assert _longest_arc_start(np.zeros(5, bool)) is None
    assert _longest_arc_start(np.ones(5, bool)) == 0
    assert _longest_arc_start(np.array([1, 1, 0, 1, 1, 1, 0], bool)) == 3
    assert _longest_arc_start(np.array([0, 1, 1, 1, 0, 1, 0], bool)) == 1
    assert _longest_arc_start(np.array([1, 0, 0, 1, 1], bool)) == 3  # wraps round: 3, 4, 0
    assert _longest_arc_start(np.array([0, 0, 0, 1], bool)) == 3
    assert _longest_arc_start(np.array([1, 0, 0, 0], bool)) == 0
    assert _longest_arc_start(np.array([1, 1, 1, 0], bool)) == 0


def test_origin_rules():
    grid = np.linspace(0, TWO_PI, 8, endpoint=False)
    # S where s >= g and not both negative: indices 2, 3, 4
    s = np.array([-1.0, -0.5, 1.0, 2.0, 1.0, -0.5, -1.0, -1.0])
    g = np.array([-0.5, -1.0, 0.0, 1.0, 0.5, 1.0, 2.0, -0.5])
    assert _origin(grid, s, g, 0.0) == pytest.approx(grid[2])
    # every point S: where the standardised S overtakes G2/M (here at index 2)
    s_all = np.array([2.0, 3.0, 4.0, 5.0, 6.0, 5.0, 4.0, 3.0])
    assert _origin(grid, s_all, np.ones(8), 5.0) == pytest.approx(grid[2])
    # several such points: the one nearest the S peak
    s_alt = np.array([2.0, 4.0, 2.0, 4.0, 2.0, 4.0, 2.0, 4.0])
    for k in (1, 3, 5, 7):
        assert _origin(grid, s_alt, np.ones(8), grid[k] - 0.05) == pytest.approx(grid[k])
    # no S arc at all (every point G1): the same rule
    s_g1 = -np.array([1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 1.0, 3.0])
    for k in (0, 2, 4, 6):
        assert _origin(grid, s_g1, np.full(8, -5.0), grid[k] + 0.05) == pytest.approx(grid[k])
    # no crossing either (both profiles G1 and S never overtakes): the S peak itself
    assert _origin(grid, -np.ones(8), -np.ones(8) + 0.5, 1.234) == 1.234


# ---------------------------------------------------------------------------- align_cell_cycle
def test_align_argument_checks():
    adata, _, _ = _ellipse(n=30, d=3)
    with pytest.raises(ValueError, match=r"`adata` is a view; pass `adata.copy\(\)`"):
        align_cell_cycle(adata[:20], use_rep="X_rep")
    with pytest.raises(ValueError, match="`init` must be 'markers' or 'pca', got 'x'"):
        align_cell_cycle(adata, use_rep="X_rep", init="x")
    for bad in (0.0, np.pi, -0.1, 4.0):
        with pytest.raises(ValueError, match=r"`bandwidth` must be in \(0, pi\) radians"):
            align_cell_cycle(adata, use_rep="X_rep", bandwidth=bad)
    align_cell_cycle(adata, use_rep="X_rep", bandwidth=np.pi - 0.01, copy=True)
    few = adata.copy()
    few.obs.loc[few.obs_names[np.arange(30) % 3 != 0], "S_score"] = np.nan  # 10 cells left
    align_cell_cycle(few, use_rep="X_rep", copy=True)  # 10 cells are enough
    few.obs.loc[few.obs_names[0], "S_score"] = np.nan
    with pytest.raises(ValueError, match="only 9 cells have both a representation and scores"):
        align_cell_cycle(few, use_rep="X_rep")
    flat = adata.copy()
    flat.obsm["X_rep"] = np.ones((30, 3))
    with pytest.raises(ValueError, match=r"obsm\['X_rep'\] is the same for every cell"):
        align_cell_cycle(flat, use_rep="X_rep")
    assert "cell_cycle" not in flat.uns
    assert list(flat.obs) == ["S_score", "G2M_score"]


def test_align_outputs_params_and_copy():
    adata, theta, rot = _ellipse(n=120, d=4, a=3.0, b=1.0)
    before = adata.obsm["X_rep"].copy()
    out = align_cell_cycle(adata, use_rep="X_rep", copy=True, key_added="cc", bandwidth=0.4)
    assert "cc" not in adata.uns
    assert list(adata.obs) == ["S_score", "G2M_score"]
    np.testing.assert_array_equal(adata.obsm["X_rep"], before)
    assert set(out.obsm) == {"X_rep", "X_rep_cc"}
    assert {"cc_angle", "cc_phase"} <= set(out.obs)
    u = out.uns["cc"]
    assert u["params"] == {
        "use_rep": "X_rep", "obsm_key": "X_rep_cc", "s_score_key": "S_score",
        "g2m_score_key": "G2M_score", "scores_computed": False, "library_key": "",
        "init": "markers", "bandwidth": 0.4, "max_iter": 200, "tol": 1e-5,
    }  # fmt: skip
    assert u["n_cells_fit"] == 120
    assert u["converged"] is True
    assert 1 <= u["n_iter"] < 200
    assert u["library_used"] is False
    assert u["direction_confidence"] == 1.0
    assert u["direction_weak"] is False
    assert u["direction_evidence"] > 0.5
    assert align_cell_cycle(adata, use_rep="X_rep") is None
    assert set(adata.obsm) == {"X_rep", "X_rep_cycle"}
    assert adata.uns["cell_cycle"]["params"]["obsm_key"] == "X_rep_cycle"
    assert adata.uns["cell_cycle"]["params"]["bandwidth"] == pytest.approx(np.pi / 8)
    assert list(adata.obs["cell_cycle_phase"].cat.categories) == ["G1", "S", "G2M"]


def test_align_geometry_of_an_ellipse():
    """Semi-axes 3 and 1 in a random plane of R^4, cells evenly spaced: every output by hand."""
    adata, theta, rot = _ellipse(n=120, d=4, a=3.0, b=1.0, seed=4)
    align_cell_cycle(adata, use_rep="X_rep")
    u = adata.uns["cell_cycle"]
    angle = adata.obs["cell_cycle_angle"].to_numpy()
    rep = adata.obsm["X_rep"]
    np.testing.assert_allclose(u["center"], rep.mean(0), atol=1e-12)
    np.testing.assert_allclose(u["ellipse_center"], np.full(4, 5.0), atol=1e-6)
    # the fitted ellipse passes through every cell at its angle
    ring = (
        u["ellipse_center"]
        + np.outer(np.cos(angle), u["ellipse_cos"])
        + np.outer(np.sin(angle), u["ellipse_sin"])
    )
    np.testing.assert_allclose(ring, rep, atol=1e-3)
    # the major axis: unit, +/- the true one, largest entry positive
    major = rot[:, 0] * np.sign(rot[np.argmax(np.abs(rot[:, 0])), 0])
    np.testing.assert_allclose(u["direction"], major, atol=1e-6)
    # the angle increases with theta (S peaks at pi/3, G2/M at pi: forward)
    step = np.mod(np.diff(angle), TWO_PI)
    assert (step < 0.2).all()
    # rotation: orthogonal; axis 1 points to the ellipse at angle 0, polar angle follows angle
    r = u["rotation"]
    np.testing.assert_allclose(r.T @ r, np.eye(4), atol=1e-10)
    np.testing.assert_allclose(
        r[:, 0] * np.linalg.norm(u["ellipse_cos"]), u["ellipse_cos"], atol=1e-8
    )
    assert r[:, 1] @ u["ellipse_sin"] > 0
    y = adata.obsm["X_rep_cycle"]
    np.testing.assert_allclose(y, (rep - u["center"]) @ r, atol=1e-10)
    np.testing.assert_allclose(y[:, 2:], 0.0, atol=1e-6)
    polar = np.mod(np.arctan2(y[:, 1], y[:, 0]), TWO_PI)
    # tan(polar) = (b / a) tan(angle) for the ellipse with the major axis first (here a = |cos|)
    a, b = np.linalg.norm(u["ellipse_cos"]), np.linalg.norm(u["ellipse_sin"])
    expect = np.mod(np.arctan2(b * np.sin(angle), a * np.cos(angle)), TWO_PI)
    if abs(u["ellipse_cos"] @ u["ellipse_sin"]) < 1e-6 * a * b:
        np.testing.assert_allclose(circular_distance(polar, expect), 0.0, atol=1e-4)
    # variance: all of it in the plane and explained by cos/sin of the angle
    assert u["variance_ratio"] == pytest.approx(1.0, abs=1e-10)
    assert u["cycle_r2"] == pytest.approx(1.0, abs=1e-6)
    x = rep - rep.mean(0)
    h = np.stack([np.ones(120), np.cos(angle), np.sin(angle)], axis=1)
    resid = x - h @ np.linalg.lstsq(h, x, rcond=None)[0]
    dim_corr = np.sqrt(np.clip(1 - (resid**2).sum(0) / (x**2).sum(0), 0, 1))
    np.testing.assert_allclose(u["dim_corr"], dim_corr, atol=1e-10)
    assert u["best_dim"] == int(np.argmax(dim_corr))
    assert u["best_dim_corr"] == dim_corr.max()
    # profiles on 72 points; peaks and gap
    np.testing.assert_allclose(u["profile"]["angle"], np.linspace(0, TWO_PI, 72, endpoint=False))
    assert u["profile"]["S_score"].shape == u["profile"]["G2M_score"].shape == (72,)
    assert u["peak_gap"] == pytest.approx(np.mod(u["g2m_peak"] - u["s_peak"], TWO_PI))
    assert 0 <= u["s_peak"] < TWO_PI
    assert 0 <= u["g2m_peak"] < TWO_PI


def test_align_angle_origin_and_phases_of_a_circle():
    """A circle with S peaking at pi/3 and G2/M at pi: angle = theta + pi/6 (test_cell_cycle)."""
    adata, theta, _ = _ellipse(n=144, d=3, a=2.0, b=2.0, seed=1)
    align_cell_cycle(adata, use_rep="X_rep", bandwidth=0.3)
    angle = adata.obs["cell_cycle_angle"].to_numpy()
    expected = np.mod(theta + np.pi / 6, TWO_PI)
    assert circular_distance(angle, expected).max() < 0.03
    u = adata.uns["cell_cycle"]
    assert circular_distance(u["s_peak"], np.pi / 2) < 0.03
    assert circular_distance(u["g2m_peak"], 7 * np.pi / 6) < 0.03
    assert u["peak_gap"] == pytest.approx(2 * np.pi / 3, abs=0.05)
    # the phases: S on (0, 5pi/6), G2/M on (5pi/6, 5pi/3), G1 after (scanpy's rule)
    phase = adata.obs["cell_cycle_phase"].astype(str).to_numpy()
    margin = 0.1
    inner = lambda lo, hi: (angle > lo + margin) & (angle < hi - margin)
    assert (phase[inner(0, 5 * np.pi / 6)] == "S").all()
    assert (phase[inner(5 * np.pi / 6, 5 * np.pi / 3)] == "G2M").all()
    assert (phase[inner(5 * np.pi / 3, TWO_PI)] == "G1").all()
    # the S, G2/M and G1 phases follow each other in that order
    order = phase[np.argsort(angle)]
    changes = [order[0]] + [b for a, b in zip(order[:-1], order[1:], strict=True) if a != b]
    assert changes == ["S", "G2M", "G1"]


def test_align_cells_without_scores_or_representation():
    adata, theta, _ = _ellipse(n=60, d=3, a=2.0, b=2.0, seed=2)
    adata.obs.loc[adata.obs_names[:6], "S_score"] = np.nan  # representation, no scores
    rep = adata.obsm["X_rep"].copy()
    rep[6:9] = np.nan  # scores, no representation
    adata.obsm["X_rep"] = rep
    align_cell_cycle(adata, use_rep="X_rep", bandwidth=0.3)
    angle = adata.obs["cell_cycle_angle"].to_numpy()
    assert np.isnan(angle[6:9]).all()
    assert adata.obs["cell_cycle_phase"].isna().to_numpy()[6:9].all()
    assert np.isnan(adata.obsm["X_rep_cycle"][6:9]).all()
    assert np.isfinite(adata.obsm["X_rep_cycle"][:6]).all()
    assert adata.uns["cell_cycle"]["n_cells_fit"] == 51
    # every cell with a representation, scored or not, lies on the fitted ellipse at its angle
    u = adata.uns["cell_cycle"]
    ok = np.isfinite(angle)
    ring = (
        u["ellipse_center"]
        + np.outer(np.cos(angle[ok]), u["ellipse_cos"])
        + np.outer(np.sin(angle[ok]), u["ellipse_sin"])
    )
    np.testing.assert_allclose(ring, rep[ok], atol=1e-3)
    assert adata.obs["cell_cycle_phase"].notna().to_numpy()[:6].all()


def test_align_warns_when_the_fit_does_not_converge():
    adata, _, _ = _ellipse(n=60, d=3, noise=0.3)
    with pytest.warns(RuntimeWarning, match=r"did not converge in 1 iterations.*`max_iter`"):
        align_cell_cycle(adata, use_rep="X_rep", max_iter=1)
    u = adata.uns["cell_cycle"]
    assert (u["n_iter"], u["converged"]) == (1, False)
    assert u["params"]["max_iter"] == 1


def test_align_weak_direction_warning_names_the_reason():
    # S and G2/M opposite, no counts: the marker order cannot tell the direction
    adata, _, _ = _ellipse(n=60, d=3, a=2.0, b=2.0, s_peak=0.0, g2m_peak=np.pi)
    with pytest.warns(UserWarning, match="weakly determined") as record:
        align_cell_cycle(adata, use_rep="X_rep", key_added="cc")
    text = str(record[0].message)
    assert "100% of 200 bootstrap resamples of the cells agree with it" in text
    assert "no library sizes (counts)" in text
    assert "markers peak 180 degrees apart" in text
    assert "uns['cc']['direction_confidence']" in text
    assert adata.uns["cc"]["direction_weak"] is True


def test_align_library_key_decides_the_direction_of_opposite_peaks():
    adata, theta, _ = _ellipse(n=60, d=3, a=2.0, b=2.0, s_peak=1.0, g2m_peak=1.0 + np.pi)
    adata.obs["lib"] = 1000 * 2 ** (np.mod(theta + 1.0, TWO_PI) / TWO_PI)
    mirrored = adata.copy()
    mirrored.obsm["X_rep"] = adata.obsm["X_rep"] * np.array([-1.0, 1.0, 1.0])
    for data in (adata, mirrored):
        align_cell_cycle(data, use_rep="X_rep", library_key="lib")  # no warning: not weak
        u = data.uns["cell_cycle"]
        assert u["library_used"] is True
        assert u["params"]["library_key"] == "lib"
        assert u["direction_weak"] is False
    d = circular_distance(adata.obs["cell_cycle_angle"], mirrored.obs["cell_cycle_angle"])
    assert d.max() < 1e-3
    step = np.mod(np.diff(adata.obs["cell_cycle_angle"].to_numpy()), TWO_PI)
    assert (step < 0.5).all()  # increases with theta
    # a library with a zero or a NaN is not used
    for bad in (0.0, np.nan):
        broken = adata.copy()
        broken.obs.loc[broken.obs_names[0], "lib"] = bad
        with pytest.warns(UserWarning, match="weakly determined"):
            align_cell_cycle(broken, use_rep="X_rep", library_key="lib")
        assert broken.uns["cell_cycle"]["library_used"] is False


def test_align_computes_and_writes_missing_scores_and_reads_a_model():
    counts = _small_counts(60)
    counts.obsm["X_rep"] = np.random.default_rng(0).normal(size=(60, 3))
    counts.obsm["X_rep"][:, :2] += 3 * np.stack(
        [np.cos(counts.obs["true_angle"]), np.sin(counts.obs["true_angle"])], axis=1
    )
    model = _Model(counts.obsm["X_rep"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = align_cell_cycle(counts, use_rep="X_none", model=model, copy=True)
    assert len(model.calls) == 1
    assert "S_score" not in counts.obs
    assert out.uns["cell_cycle"]["params"]["scores_computed"] is True
    assert out.uns["cell_cycle"]["library_used"] is True  # counts in .X
    ref = score_cell_cycle(counts, copy=True, rng=0).obs
    np.testing.assert_array_equal(out.obs["S_score"], ref["S_score"])
    np.testing.assert_array_equal(out.obs["G2M_score"], ref["G2M_score"])
    assert "X_none" not in out.obsm
    assert "X_none_cycle" in out.obsm


# ---------------------------------------------------------------------------- survivors of the
# first cell_cycle mutation run (docs/dev/mutation.md)
def test_longest_arc_start_a_later_longer_run_wins():
    assert _longest_arc_start(np.array([0, 1, 0, 1, 1, 1, 0], bool)) == 3
    assert _longest_arc_start(np.array([0, 1, 0, 0, 1, 1, 0, 1, 1, 1], bool)) == 7


def test_origin_compares_the_standardised_scores():
    """With S above G2/M everywhere by a constant the standardised difference is 0: no
    crossing, so the S peak is the origin."""
    grid = np.linspace(0, TWO_PI, 8, endpoint=False)
    s_all = np.array([2.0, 3.0, 4.0, 5.0, 6.0, 5.0, 4.0, 3.0])
    assert _origin(grid, s_all, s_all - 1.0, 5.0) == 5.0


def test_align_defaults_use_rep_init_and_layer():
    adata, _, _ = _ellipse(n=60, d=3, a=2.0, b=2.0, seed=3)
    adata.obsm["X_scgenvae"] = adata.obsm.pop("X_rep")
    align_cell_cycle(adata)  # use_rep="X_scgenvae" by default
    assert "X_scgenvae_cycle" in adata.obsm
    pca = align_cell_cycle(adata, init="pca", copy=True, key_added="pca")
    assert pca.uns["pca"]["params"]["init"] == "pca"
    d = circular_distance(pca.obs["pca_angle"], adata.obs["cell_cycle_angle"])
    assert d.max() < 0.02
    # the library from the layer named (no counts in .X, no layers["counts"]) decides the
    # direction of opposite peaks
    adata, theta, _ = _ellipse(n=60, d=3, a=2.0, b=2.0, seed=3, s_peak=1.0, g2m_peak=1.0 + np.pi)
    adata.obsm["X_scgenvae"] = adata.obsm.pop("X_rep")
    lib = (1000 * 2 ** (np.mod(theta + 1.0, TWO_PI) / TWO_PI)).round()
    counts = ad.AnnData(
        np.full((60, 2), 0.5, dtype=np.float32), obs=adata.obs[["S_score", "G2M_score"]]
    )
    counts.obsm["X_scgenvae"] = adata.obsm["X_scgenvae"]
    counts.layers["raw"] = np.stack([lib - 10, np.full(60, 10.0)], axis=1).astype(np.float32)
    align_cell_cycle(counts, layer="raw", key_added="raw")
    assert counts.uns["raw"]["library_used"] is True
    with pytest.warns(UserWarning, match="weakly determined"):  # opposite peaks, no library
        align_cell_cycle(counts, key_added="nolayer")
    assert counts.uns["nolayer"]["library_used"] is False


def test_align_mudata_scores_and_library_from_the_rna_modality():
    rna = _small_counts(60)
    rep = np.random.default_rng(0).normal(size=(60, 3))
    rep[:, :2] += 3 * np.stack([np.cos(rna.obs["true_angle"]), np.sin(rna.obs["true_angle"])], 1)
    other = ad.AnnData(
        np.ones((rna.n_obs, 2), dtype=np.float32), obs=pd.DataFrame(index=rna.obs_names)
    )
    md.set_options(pull_on_update=False)
    mdata = md.MuData({"rna": rna, "other": other})
    mdata.obsm["X_joint"] = rep
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        align_cell_cycle(mdata, use_rep="X_joint")  # modality="rna" by default
    u = mdata.uns["cell_cycle"]
    assert u["params"]["scores_computed"] is True
    assert u["library_used"] is True
    ref = score_cell_cycle(rna, copy=True, rng=0).obs
    np.testing.assert_allclose(mdata.obs["S_score"], ref["S_score"].reindex(mdata.obs_names))


def test_align_bootstrap_uses_rng_0_by_default():
    adata, _, _ = _ellipse(n=40, d=3)
    adata.obsm["noise"] = np.random.default_rng(1).normal(size=(40, 3))
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rng in (None, 0, 1):
            kwargs = {} if rng is None else {"rng": rng}
            res = align_cell_cycle(adata, use_rep="noise", copy=True, **kwargs)
            out[rng] = res.uns["cell_cycle"]["direction_confidence"]
    assert out[0] != out[1]  # the bootstrap depends on the seed
    assert out[None] == out[0]


def test_initial_angle_opposite_peaks_off_the_major_axis():
    """S and G2/M half a cycle apart off the major axis: the plane is completed with the
    leading direction of the cells orthogonal to the marker direction, not a noise PC."""
    adata, theta, _ = _ellipse(
        n=200, d=6, a=3.0, b=2.0, s_peak=0.3, g2m_peak=0.3 + np.pi, noise=0.2
    )
    x = adata.obsm["X_rep"] - adata.obsm["X_rep"].mean(0)
    s, g = adata.obs["S_score"].to_numpy(), adata.obs["G2M_score"].to_numpy()
    phi = _initial_angle(x, s, g, "markers")
    diffs = np.diff(np.unwrap(phi))
    assert (diffs > 0).all() or (diffs < 0).all()


def test_align_summaries_by_hand_on_a_small_noisy_ring_with_a_constant_dimension():
    """variance_ratio, cycle_r2 and dim_corr against their formulas, on data of total variance
    below 1."""
    adata, _, _ = _ellipse(n=80, d=4, a=0.08, b=0.05, noise=0.004, seed=5)
    align_cell_cycle(adata, use_rep="X_rep")
    u = adata.uns["cell_cycle"]
    x = adata.obsm["X_rep"] - adata.obsm["X_rep"].mean(0)
    assert (x**2).sum() < 1
    angle = adata.obs["cell_cycle_angle"].to_numpy()
    plane = u["rotation"][:, :2]
    assert u["variance_ratio"] == pytest.approx(((x @ plane) ** 2).sum() / (x**2).sum())
    h = np.stack([np.ones(80), np.cos(angle), np.sin(angle)], axis=1)
    resid = x - h @ np.linalg.lstsq(h, x, rcond=None)[0]
    assert u["cycle_r2"] == pytest.approx(1 - (resid**2).sum() / (x**2).sum(), rel=1e-6)
    assert 0.9 < u["cycle_r2"] < 0.999
    ss = (x**2).sum(0)
    expected = np.sqrt(np.clip(1 - (resid**2).sum(0) / ss, 0, 1))
    np.testing.assert_allclose(u["dim_corr"], expected, rtol=1e-6)
    assert u["best_dim"] == int(np.argmax(expected))


def test_align_constant_dimension_has_no_cycle_correlation():
    """A dimension without variance carries none of the cycle: dim_corr 0, not 1 - 0/1."""
    adata, _, _ = _ellipse(n=40, d=3, seed=7)
    adata.obsm["X_rep"] = np.concatenate([np.full((40, 1), 2.0), adata.obsm["X_rep"]], axis=1)
    align_cell_cycle(adata, use_rep="X_rep")
    assert adata.uns["cell_cycle"]["dim_corr"][0] == 0.0
    assert adata.uns["cell_cycle"]["best_dim"] != 0


@pytest.mark.parametrize("seed", range(6))
def test_align_direction_is_a_unit_vector_with_its_largest_entry_positive(seed):
    adata, _, rot = _ellipse(n=40, d=4, a=3.0, b=1.0, seed=seed)
    align_cell_cycle(adata, use_rep="X_rep")
    direction = adata.uns["cell_cycle"]["direction"]
    assert np.linalg.norm(direction) == pytest.approx(1.0)
    assert direction[np.argmax(np.abs(direction))] > 0
    assert abs(direction @ rot[:, 0]) == pytest.approx(1.0, abs=1e-6)


def test_align_small_ellipse_axes_and_a_library_of_one_count():
    """Axis 2 of the rotation turns with the angle for an ellipse of semi-axes below 1; a
    library of 1 count is a library."""
    adata, theta, _ = _ellipse(n=60, d=3, a=0.8, b=0.5, seed=6, s_peak=1.0, g2m_peak=1.0 + np.pi)
    lib = 1000 * 2 ** (np.mod(theta + 1.0, TWO_PI) / TWO_PI)
    lib[5] = 1.0
    adata.obs["lib"] = lib
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fit's convergence is not tested
        align_cell_cycle(adata, use_rep="X_rep", library_key="lib")
    u = adata.uns["cell_cycle"]
    assert u["library_used"] is True
    assert u["rotation"][:, 1] @ u["ellipse_sin"] > 0


def test_align_weak_direction_warning_reports_the_bootstrap_share(monkeypatch):
    from scgenvae.tl import _cell_cycle

    real = _cell_cycle._direction_details

    def weak(*args, **kwargs):
        return {**real(*args, **kwargs), "confidence": 0.625, "weak": True}

    monkeypatch.setattr(_cell_cycle, "_direction_details", weak)
    adata, _, _ = _ellipse(n=40, d=3)
    with pytest.warns(UserWarning, match=r"\(62% of 200 bootstrap resamples of the cells agree"):
        align_cell_cycle(adata, use_rep="X_rep")
    assert adata.uns["cell_cycle"]["direction_confidence"] == 0.625


def test_align_origin_gets_the_s_peak_of_the_oriented_angle(monkeypatch):
    """The S peak handed to ``_origin`` (its fall-back) is the peak before the origin shift."""
    from scgenvae.tl import _cell_cycle

    seen = []
    real = _cell_cycle._origin

    def spy(grid, prof_s, prof_g, s_peak):
        seen.append((s_peak, real(grid, prof_s, prof_g, s_peak)))
        return seen[-1][1]

    monkeypatch.setattr(_cell_cycle, "_origin", spy)
    adata, _, _ = _ellipse(n=60, d=3, seed=3)
    align_cell_cycle(adata, use_rep="X_rep")
    ((s_peak, zero),) = seen
    assert isinstance(s_peak, float)
    assert float(wrap_angle(s_peak - zero)) == pytest.approx(adata.uns["cell_cycle"]["s_peak"])


def test_align_rotation_does_not_depend_on_the_sign_of_the_plane_basis(monkeypatch):
    """QR's basis of the ellipse plane has an arbitrary sign; axis 2 of the rotation is
    flipped to turn with the angle whichever sign LAPACK returns."""
    from scgenvae.tl import _cell_cycle

    adata, _, _ = _ellipse(n=60, d=4, seed=4)
    ref = align_cell_cycle(adata, use_rep="X_rep", copy=True)
    real = _cell_cycle._plane_basis
    monkeypatch.setattr(_cell_cycle, "_plane_basis", lambda a, b: real(a, b) * [1.0, -1.0])
    flipped = align_cell_cycle(adata, use_rep="X_rep", copy=True)
    np.testing.assert_allclose(
        flipped.obs["cell_cycle_angle"], ref.obs["cell_cycle_angle"], atol=1e-9
    )
    np.testing.assert_allclose(
        flipped.uns["cell_cycle"]["rotation"][:, :2],
        ref.uns["cell_cycle"]["rotation"][:, :2],
        atol=1e-9,
    )


def test_align_with_fewer_cells_than_dimensions():
    """12 cells in 20 dimensions (a small subset of a wide latent): the rotation is still a
    full orthonormal basis and the ring is found."""
    adata, theta, _ = _ellipse(n=12, d=20, a=3.0, b=1.0, noise=0.05, seed=1)
    align_cell_cycle(adata, use_rep="X_rep")
    rot = adata.uns["cell_cycle"]["rotation"]
    assert rot.shape == (20, 20)
    np.testing.assert_allclose(rot.T @ rot, np.eye(20), atol=1e-10)
    rotated = adata.obsm["X_rep_cycle"]
    x = adata.obsm["X_rep"] - adata.obsm["X_rep"].mean(0)
    np.testing.assert_allclose(rotated, x @ rot, atol=1e-10)
    # the rest of the rotation: the complement's principal axes, by decreasing variance
    var = (rotated[:, 2:] ** 2).sum(0)
    assert (np.diff(var) <= 1e-12).all()
    angle = adata.obs["cell_cycle_angle"].to_numpy()
    assert abs(circular_correlation(angle, theta)) > 0.95


# ---------------------------------------------------------------------------- exact messages
def _exact(msg: str) -> str:
    return "^" + re.escape(msg) + "$"


def test_align_error_messages_are_exact():
    """The errors' full text (a mutant that rewords, recases or pads a message is caught)."""
    adata, _, _ = _ellipse(n=30, d=3)
    with pytest.raises(ValueError, match=_exact("`adata` is a view; pass `adata.copy()`.")):
        align_cell_cycle(adata[:20], use_rep="X_rep")
    flat = adata.copy()
    flat.obsm["X_rep"] = np.ones((30, 3))
    with pytest.raises(
        ValueError,
        match=_exact(
            "obsm['X_rep'] is the same for every cell: there is no cycle to fit. Check that the "
            "model was trained (`model.export_latent(adata)` after `model.train()`)."
        ),
    ):
        align_cell_cycle(flat, use_rep="X_rep")
    with pytest.raises(KeyError) as err:
        _get_rep(adata, "X_missing", None)
    assert err.value.args[0] == (
        "`use_rep='X_missing'` not found in .obsm (available: ['X_rep']); compute it first "
        "(e.g. `model.export_latent(adata)` or `sc.pp.pca(adata)`) or pass `model=` to compute "
        "the latent representation."
    )
    with pytest.raises(
        ValueError,
        match=_exact(
            "the representation shows no cycle: the fitted ellipse collapsed to a line. Check "
            "that the cells cycle and that `use_rep` carries the cell cycle."
        ),
    ):
        _plane_basis(np.array([1.0, 0.0, 0.0]), np.array([2.0, 0.0, 0.0]))


def test_align_warning_messages_are_exact():
    adata, _, _ = _ellipse(n=60, d=3, noise=0.3)
    with pytest.warns(RuntimeWarning) as rec:
        align_cell_cycle(adata, use_rep="X_rep", max_iter=1)
    assert [str(w.message) for w in rec if w.category is RuntimeWarning] == [
        "align_cell_cycle: the ellipse fit did not converge in 1 iterations; the angle may be "
        "unreliable (increase `max_iter`)."
    ]
    # S and G2/M half a cycle apart, no counts: the order of the markers cannot orient
    opposite, _, _ = _ellipse(n=60, d=3, s_peak=0.0, g2m_peak=np.pi)
    with pytest.warns(UserWarning, match="weakly determined") as rec:
        align_cell_cycle(opposite, use_rep="X_rep")
    u = opposite.uns["cell_cycle"]
    text = [str(w.message) for w in rec if w.category is UserWarning]
    assert len(text) == 1
    assert text[0] == (
        "align_cell_cycle: the direction of the cell-cycle angle is weakly determined "
        f"({100 * u['direction_confidence']:.0f}% of 200 bootstrap resamples of the cells agree "
        f"with it; no library sizes (counts), and the S and G2/M markers peak "
        f"{np.degrees(u['peak_gap']):.0f} degrees apart, so their order alone cannot tell the "
        "direction of a cycle with a short G1). Pass the raw counts (`layer=`, `library_key=` "
        "or layers['counts']) or check that `use_rep` carries the cycle; see "
        "uns['cell_cycle']['direction_confidence']."
    )


def test_align_log_messages_are_exact(monkeypatch, caplog):
    import logging

    _spy_scoring(monkeypatch)
    adata, _, _ = _ellipse(n=40, d=3)
    del adata.obs["S_score"], adata.obs["G2M_score"]
    with (
        caplog.at_level(logging.INFO, logger="scgenvae.tl._cell_cycle"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", UserWarning)  # the direction may be weak
        align_cell_cycle(adata, use_rep="X_rep")
    u = adata.uns["cell_cycle"]
    messages = [r.getMessage() for r in caplog.records if r.name == "scgenvae.tl._cell_cycle"]
    assert messages == [
        "added obs['S_score'] and obs['G2M_score'] (marker scores)",
        "added obs['cell_cycle_angle'], obs['cell_cycle_phase'], obsm['X_rep_cycle'] and "
        f"uns['cell_cycle']; the cycle plane carries {100 * u['variance_ratio']:.0f}% of the "
        f"variance, best single dimension {u['best_dim']} (r = {u['best_dim_corr']:.2f})",
    ]


# ---------------------------------------------------------------------------- guard tolerances
def test_cycle_vectors_tiny_arc_is_not_degenerate():
    """Three distinct angles within 2 milliradians span the plane (whitening recovers them);
    only angles on a line (eigenvalue ratio <= 1e-12) are degenerate."""
    angle = np.array([0.0, 1e-3, 2e-3] * 5)
    h = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    evals = np.linalg.eigvalsh(np.cov((h - h.mean(0)).T, bias=True))
    assert 1e-12 * evals[1] < evals[0] < 1e-12  # within both tolerances' reach
    out = _cycle_vectors(angle, [np.sin(angle * 1000.0)])
    assert np.abs(out).max() > 0.5
    assert not _cycle_vectors(np.array([0.0, np.pi] * 5), [np.arange(10.0)]).any()


def test_plane_basis_collapse_is_relative_to_the_ellipse_size():
    """The ellipse has collapsed when its minor extent is below 1e-10 of its major one,
    whatever its size."""
    with pytest.raises(ValueError, match="collapsed to a line"):
        _plane_basis(np.array([1e3, 0.0, 0.0]), np.array([0.0, 1e-9, 0.0]))  # 1e-12 relative
    q = _plane_basis(np.array([1e-3, 0.0, 0.0]), np.array([0.0, 1e-12, 0.0]))  # 1e-9 relative
    np.testing.assert_allclose(np.abs(q[:2, :2]), np.eye(2), atol=1e-12)
