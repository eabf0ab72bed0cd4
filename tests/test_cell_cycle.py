from __future__ import annotations

import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import scgenvae
from scgenvae.datasets._cell_cycle import synthetic_cell_cycle
from scgenvae.tl import (
    G2M_GENES,
    S_GENES,
    align_cell_cycle,
    best_shift,
    cell_cycle_angle_baseline,
    cell_cycle_direction,
    cell_cycle_genes,
    circular_correlation,
    circular_distance,
    circular_error,
    latent_traversal,
    marker_peaks,
    score_cell_cycle,
)

TWO_PI = 2 * np.pi


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_thread():
    """Train small models on one thread: on a busy 2-core machine torch's default threads
    slow a 448-cell model down about tenfold."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def _cycling():
    adata = synthetic_cell_cycle(n_obs=400, rng=0)
    lg = adata.copy()
    sc.pp.normalize_total(lg, target_sum=1e4)
    sc.pp.log1p(lg)
    sc.pp.pca(lg, n_comps=10, random_state=0)
    adata.obsm["X_pca"] = lg.obsm["X_pca"]
    return adata


@pytest.fixture
def cycling(_cycling):
    return _cycling.copy()


def _ring(n=500, d=6, *, seed=0, s_peak=np.pi / 3, g2m_peak=np.pi):
    """Cells on a circle of radius 3 in a random plane of R^d, with sinusoidal scores."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0, TWO_PI, n)
    core = np.zeros((n, d))
    core[:, 0] = 3 * np.cos(theta) + rng.normal(0, 0.05, n)
    core[:, 1] = 3 * np.sin(theta) + rng.normal(0, 0.05, n)
    core[:, 2:] = rng.normal(0, 0.3, (n, d - 2))
    rot = np.linalg.qr(rng.normal(size=(d, d)))[0]
    adata = ad.AnnData(
        obs=pd.DataFrame(
            {
                "S_score": np.cos(theta - s_peak) + rng.normal(0, 0.05, n),
                "G2M_score": np.cos(theta - g2m_peak) + rng.normal(0, 0.05, n),
            },
            index=[f"c{i}" for i in range(n)],
        )
    )
    adata.obsm["X_rep"] = core @ rot.T + 5.0
    return adata, theta, rot


# --------------------------------------------------------------------------------------------
# markers
# --------------------------------------------------------------------------------------------
def test_marker_lists():
    assert len(S_GENES) == len(set(S_GENES)) == 43
    assert len(G2M_GENES) == len(set(G2M_GENES)) == 54
    assert not set(S_GENES) & set(G2M_GENES)
    assert (S_GENES[0], S_GENES[-1], G2M_GENES[0], G2M_GENES[-1]) == (
        "MCM5",
        "E2F8",
        "HMGB2",
        "CENPA",
    )
    mouse = cell_cycle_genes("mouse")
    assert mouse["S"][:2] == ("Mcm5", "Pcna")
    assert "Rad51ap1" in mouse["S"]
    with pytest.raises(ValueError, match="organism"):
        cell_cycle_genes("fly")


# --------------------------------------------------------------------------------------------
# circular statistics: exact values
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["js", "fl"])
def test_circular_correlation_identities(method):
    a = np.array([0.1, 0.5, 1.3, 2.0, 2.9, 4.0, 5.5])
    assert circular_correlation(a, a, method=method) == pytest.approx(1.0)
    assert circular_correlation(a, a + 2.0, method=method) == pytest.approx(1.0)
    assert circular_correlation(a, -a, method=method) == pytest.approx(-1.0)
    b = np.array([0.3, 0.2, 1.9, 1.0, 3.5, 5.0, 4.9])
    assert circular_correlation(a, -b, method=method) == pytest.approx(
        -circular_correlation(a, b, method=method)
    )
    assert circular_correlation(a + 1.0, b - 2.0, method=method) == pytest.approx(
        circular_correlation(a, b, method=method)
    )


def test_circular_correlation_closed_form():
    # both means are 0 by symmetry, so rho_JS has a closed form
    a = np.array([-0.3, 0.3, -0.6, 0.6])
    b = np.array([0.3, -0.3, -0.6, 0.6])
    s3, s6 = np.sin(0.3) ** 2, np.sin(0.6) ** 2
    assert circular_correlation(a, b) == pytest.approx((s6 - s3) / (s6 + s3), abs=1e-12)
    # Fisher-Lee against its pairwise definition
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0, TWO_PI, 25), rng.uniform(0, TWO_PI, 25)
    i, j = np.triu_indices(25, 1)
    num = (np.sin(a[i] - a[j]) * np.sin(b[i] - b[j])).sum()
    den = np.sqrt((np.sin(a[i] - a[j]) ** 2).sum() * (np.sin(b[i] - b[j]) ** 2).sum())
    assert circular_correlation(a, b, method="fl") == pytest.approx(num / den, abs=1e-12)


def test_circular_correlation_errors():
    with pytest.raises(ValueError, match="same length"):
        circular_correlation([0.0, 1.0], [0.0])
    with pytest.raises(ValueError, match="finite"):
        circular_correlation([0.0, np.nan], [0.0, 1.0])
    with pytest.raises(ValueError, match="method"):
        circular_correlation([0.0, 1.0], [0.0, 1.0], method="x")
    assert np.isnan(circular_correlation([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]))


def test_circular_distance_and_error_exact():
    assert circular_distance(0.1, TWO_PI - 0.1) == pytest.approx(0.2)
    assert circular_distance(0.0, np.pi) == pytest.approx(np.pi)
    a = np.linspace(0, 6, 50)
    # a pure rotation is free, in either direction of the shift
    assert circular_error(a, a + 1.3) == pytest.approx(0.0, abs=1e-12)
    assert circular_error(a, a - 2.0) == pytest.approx(0.0, abs=1e-12)
    assert best_shift(a, a + 1.3) == pytest.approx(1.3, abs=1e-9)
    # residuals -0.2..0.2: no shift puts three of five within less than 0.1
    e = np.array([-0.2, -0.1, 0.0, 0.1, 0.2])
    base = np.array([0.5, 1.5, 2.5, 3.5, 4.5])
    assert circular_error(base, base + 1.0 + e) == pytest.approx(0.1 / TWO_PI, abs=1e-9)
    assert circular_error(base, base + e, shift=False) == pytest.approx(0.1 / TWO_PI, abs=1e-12)
    # a reversed angle is not rescued by a shift
    u = np.linspace(0, TWO_PI, 200, endpoint=False)
    assert circular_error(u, -u) > 0.12


# --------------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------------
def test_score_cell_cycle(cycling, caplog):
    x_before = cycling.X.copy()
    state = np.random.get_state()  # noqa: NPY002 - checking that the global state is untouched
    with caplog.at_level(logging.INFO, logger="scgenvae"):
        assert score_cell_cycle(cycling) is None
    after = np.random.get_state()  # noqa: NPY002
    assert all(np.array_equal(x, y) for x, y in zip(state[1:3], after[1:3], strict=True))
    assert "43 of 43 S genes, 54 of 54 G2/M genes" in caplog.text
    assert (x_before != cycling.X).nnz == 0
    assert {"S_score", "G2M_score", "phase"} <= set(cycling.obs)
    assert list(cycling.obs["phase"].cat.categories) == ["G1", "S", "G2M"]
    info = cycling.uns["cell_cycle_scores"]
    assert (info["n_s_genes"], info["n_g2m_genes"]) == (43, 54)
    assert info["params"]["normalize"] is True
    # S cells score higher on S than G2M cells do
    s = cycling.obs["S_score"].to_numpy()
    truth = cycling.obs["true_phase"].to_numpy()
    assert s[truth == "S"].mean() > s[truth == "G2M"].mean()
    # same seed, same result; copy=True leaves the input alone
    out = score_cell_cycle(cycling, copy=True, rng=0)
    np.testing.assert_array_equal(out.obs["S_score"], cycling.obs["S_score"])
    bare = cycling.copy()
    del bare.obs["S_score"]
    assert score_cell_cycle(bare, copy=True) is not None
    assert "S_score" not in bare.obs


def test_score_cell_cycle_symbols_mouse_and_errors(cycling):
    ens = cycling.copy()
    ens.var["symbol"] = ens.var_names
    ens.var_names = [f"ENSG{i:011d}" for i in range(ens.n_vars)]
    with pytest.raises(ValueError, match="Ensembl ids: pass `gene_symbols="):
        score_cell_cycle(ens)
    score_cell_cycle(ens, gene_symbols="symbol")
    np.testing.assert_allclose(
        ens.obs["S_score"], score_cell_cycle(cycling, copy=True).obs["S_score"]
    )
    assert ens.uns["cell_cycle_scores"]["s_genes"][0].startswith("ENSG")

    mouse = cycling.copy()
    mouse.var_names = [g.capitalize() for g in mouse.var_names]
    score_cell_cycle(mouse, organism="mouse")
    assert mouse.uns["cell_cycle_scores"]["n_g2m_genes"] == 54
    with pytest.raises(ValueError, match="found 0 of 43 S genes"):
        score_cell_cycle(mouse, organism="human")
    few = cycling[:, list(S_GENES[:3]) + list(G2M_GENES) + ["cyclic_0"]].copy()
    with pytest.raises(ValueError, match="found 3 of 43 S genes"):
        score_cell_cycle(few)
    score_cell_cycle(few, min_genes=3)
    with pytest.raises(ValueError, match="view"):
        score_cell_cycle(cycling[:10])


def test_renamed_markers_are_found(cycling):
    renamed = cycling.copy()
    renamed.var_names = [{"MLF1IP": "CENPU", "HN1": "JPT1"}.get(g, g) for g in renamed.var_names]
    score_cell_cycle(renamed)
    assert renamed.uns["cell_cycle_scores"]["n_s_genes"] == 43
    assert "CENPU" in set(renamed.uns["cell_cycle_scores"]["s_genes"])


# --------------------------------------------------------------------------------------------
# direction rule
# --------------------------------------------------------------------------------------------
def test_direction_rule():
    rng = np.random.default_rng(1)
    theta = rng.uniform(0, TWO_PI, 4000)
    s, g = np.cos(theta - 1.0), np.cos(theta - 3.0)
    s_peak, g_peak = marker_peaks(theta, s, g)
    assert circular_distance(s_peak, 1.0) < 0.05
    assert circular_distance(g_peak, 3.0) < 0.05
    assert cell_cycle_direction(theta, s, g)[0] == 1
    assert cell_cycle_direction(-theta, s, g)[0] == -1
    # S and G2/M half a cycle apart: the library-size trough (G1) decides; cells grow
    # linearly from division (2 rad before the S peak) to the next division
    s, g = np.cos(theta - 1.0), np.cos(theta - 1.0 - np.pi)
    library = 1000 * 2 ** (np.mod(theta - (1.0 - 2.0), TWO_PI) / TWO_PI)
    assert cell_cycle_direction(theta, s, g, library=library)[0] == 1
    assert cell_cycle_direction(-theta, s, g, library=library)[0] == -1


# --------------------------------------------------------------------------------------------
# align_cell_cycle
# --------------------------------------------------------------------------------------------
def test_align_exact_geometry():
    adata, theta, rot = _ring()
    align_cell_cycle(adata, use_rep="X_rep")
    angle = adata.obs["cell_cycle_angle"].to_numpy()
    assert ((angle >= 0) & (angle < TWO_PI)).all()
    # S peaks at pi/3 and G2M at pi: scanpy's rule on the smoothed scores labels S from
    # -pi/6 (where G1 = both negative ends) to 2pi/3, so the angle is theta + pi/6
    expected = np.mod(theta + np.pi / 6, TWO_PI)
    dist = circular_distance(angle, expected)
    assert np.median(dist) < 0.03
    assert dist.max() < 0.1
    u = adata.uns["cell_cycle"]
    assert circular_distance(u["s_peak"], np.pi / 2) < 0.1
    assert circular_distance(u["g2m_peak"], 7 * np.pi / 6) < 0.1
    # the rotation is orthogonal and its first two columns span the true plane
    r = u["rotation"]
    np.testing.assert_allclose(r.T @ r, np.eye(6), atol=1e-10)
    cosines = np.linalg.svd(r[:, :2].T @ rot[:, :2], compute_uv=False)
    assert cosines.min() > 0.999
    assert np.abs(u["direction"] @ rot[:, 2:]).max() < 0.05  # in the plane
    # rotated copy: centred, first two axes are the plane, polar angle follows the angle
    y = adata.obsm["X_rep_cycle"]
    np.testing.assert_allclose(y, (adata.obsm["X_rep"] - u["center"]) @ r, atol=1e-10)
    polar = np.mod(np.arctan2(y[:, 1], y[:, 0]), TWO_PI)
    assert np.median(circular_distance(polar, angle)) < 0.08
    np.testing.assert_allclose(np.linalg.norm(u["ellipse_cos"]), 3.0, rtol=0.02)
    np.testing.assert_allclose(np.linalg.norm(u["ellipse_sin"]), 3.0, rtol=0.02)
    assert u["variance_ratio"] > 0.9
    assert u["cycle_r2"] > 0.9
    loading = np.linalg.norm(rot[:, :2], axis=1)
    assert u["best_dim"] == int(np.argmax(loading))
    assert u["best_dim_corr"] == pytest.approx(u["dim_corr"].max())
    assert u["converged"]
    phase = adata.obs["cell_cycle_phase"].astype(str).to_numpy()
    g1 = (expected > 5 * np.pi / 3 + 0.15) | (expected < 0)  # -> theta in (3pi/2, 11pi/6)
    assert (phase[g1] == "G1").mean() > 0.9
    s_arc = (expected > 0.15) & (expected < 5 * np.pi / 6 - 0.15)
    assert (phase[s_arc] == "S").mean() > 0.9


def test_align_direction_is_decided_by_markers():
    # mirror the representation: the angle must not change
    adata, theta, _ = _ring(seed=2)
    mirrored = adata.copy()
    mirrored.obsm["X_rep"] = adata.obsm["X_rep"] * np.array([-1, 1, 1, 1, 1, 1])
    align_cell_cycle(adata, use_rep="X_rep")
    align_cell_cycle(mirrored, use_rep="X_rep")
    d = circular_distance(adata.obs["cell_cycle_angle"], mirrored.obs["cell_cycle_angle"])
    assert np.median(d) < 1e-3
    # swap which programme peaks first: the angle must run the other way round
    swapped = adata.copy()
    swapped.obs["S_score"], swapped.obs["G2M_score"] = (
        adata.obs["G2M_score"].to_numpy(),
        adata.obs["S_score"].to_numpy(),
    )
    align_cell_cycle(swapped, use_rep="X_rep")
    assert circular_correlation(swapped.obs["cell_cycle_angle"], theta, method="fl") < -0.95
    assert circular_correlation(adata.obs["cell_cycle_angle"], theta, method="fl") > 0.95


def test_align_synthetic_counts(cycling, caplog):
    """align_cell_cycle on the PCA of synthetic cycling counts (data rng 0).

    Deterministic on this data set: Fisher-Lee correlation 0.899, median error 3.8% of a
    cycle, origin 0.150 cycles from the truth's, phase accuracy 0.9125. The margins are the
    spread over data rng 0, 1, 2 (correlation 0.851-0.899, error 3.8-5.3%, origin
    0.119-0.150, accuracy 0.9125-0.920): bars correlation > 0.899 - 0.048 -> 0.85, error <
    0.038 + 0.015 -> 0.054, origin < 0.150 + 0.031 -> 0.18, accuracy > 0.9125 - 0.0075 -> 0.9.
    """
    x_before = cycling.X.copy()
    with caplog.at_level(logging.INFO, logger="scgenvae"):
        assert align_cell_cycle(cycling, use_rep="X_pca") is None
    assert "obs['cell_cycle_angle']" in caplog.text
    assert "obsm['X_pca_cycle']" in caplog.text
    assert (x_before != cycling.X).nnz == 0
    angle = cycling.obs["cell_cycle_angle"].to_numpy()
    truth = cycling.obs["true_angle"].to_numpy()
    assert circular_correlation(angle, truth, method="fl") > 0.85
    assert circular_error(angle, truth) < 0.054
    # the origin is the G1/S transition: within a sixth of a cycle
    shift = np.mod(best_shift(angle, truth) + np.pi, TWO_PI) - np.pi
    assert abs(shift) < 0.18 * TWO_PI
    acc = cycling.obs["cell_cycle_phase"].astype(str) == cycling.obs["true_phase"].astype(str)
    assert acc.mean() > 0.9
    u = cycling.uns["cell_cycle"]
    assert u["library_used"]
    assert u["params"]["scores_computed"]
    assert {"S_score", "G2M_score"} <= set(cycling.obs)
    # a reversed truth is detected as reversed
    assert circular_correlation(angle, -truth, method="fl") < -0.85


def test_align_copy_key_added_and_h5ad(cycling, tmp_path):
    out = align_cell_cycle(cycling, use_rep="X_pca", copy=True, key_added="cc")
    assert "cc_angle" not in cycling.obs
    assert "cell_cycle" not in cycling.uns
    assert {"cc_angle", "cc_phase"} <= set(out.obs)
    assert "X_pca_cc" in out.obsm
    assert out.uns["cc"]["params"]["obsm_key"] == "X_pca_cc"
    path = tmp_path / "aligned.h5ad"
    out.write_h5ad(path)
    back = ad.read_h5ad(path)
    for key in ("rotation", "ellipse_cos", "dim_corr"):
        np.testing.assert_allclose(back.uns["cc"][key], out.uns["cc"][key])
    np.testing.assert_allclose(
        back.uns["cc"]["profile"]["S_score"], out.uns["cc"]["profile"]["S_score"]
    )
    assert back.uns["cc"]["params"]["use_rep"] == "X_pca"
    np.testing.assert_allclose(back.obs["cc_angle"], out.obs["cc_angle"])


def test_align_errors(cycling):
    with pytest.raises(KeyError, match="not found in .obsm"):
        align_cell_cycle(cycling, use_rep="X_missing")
    with pytest.raises(ValueError, match="view"):
        align_cell_cycle(cycling[:50], use_rep="X_pca")
    with pytest.raises(ValueError, match="init"):
        align_cell_cycle(cycling, use_rep="X_pca", init="random")
    no_markers = cycling[:, cycling.var["kind"].isin(["cyclic", "group"]).to_numpy()].copy()
    with pytest.raises(ValueError, match="too few cell-cycle markers"):
        align_cell_cycle(no_markers, use_rep="X_pca")


def test_align_nan_rows_and_mudata(cycling):
    import mudata as md

    md.set_options(pull_on_update=False)
    rna = cycling.copy()
    other = ad.AnnData(
        X=np.ones((cycling.n_obs, 3), dtype=np.float32), obs=pd.DataFrame(index=cycling.obs_names)
    )
    mdata = md.MuData({"rna": rna, "other": other})
    rep = cycling.obsm["X_pca"].copy()
    rep[:5] = np.nan  # cells without the joint latent
    mdata.obsm["X_joint"] = rep
    align_cell_cycle(mdata, use_rep="X_joint")
    angle = mdata.obs["cell_cycle_angle"].to_numpy()
    assert np.isnan(angle[:5]).all()
    assert np.isfinite(angle[5:]).all()
    assert mdata.obs["cell_cycle_phase"].isna()[:5].all()
    assert "S_score" in mdata.obs
    ref = align_cell_cycle(cycling, use_rep="X_pca", copy=True)
    assert circular_correlation(angle[5:], ref.obs["cell_cycle_angle"][5:], method="fl") > 0.99


def test_align_init_pca_agrees(cycling):
    a = align_cell_cycle(cycling, use_rep="X_pca", copy=True)
    b = align_cell_cycle(cycling, use_rep="X_pca", init="pca", copy=True)
    d = circular_distance(a.obs["cell_cycle_angle"], b.obs["cell_cycle_angle"])
    assert np.median(d) < 0.02


# --------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "bar"), [("pca", 0.89), ("scores", 0.84), ("tricycle", None)])
def test_baselines(cycling, method, bar):
    """Baselines follow the synthetic cycle (no direction of their own: absolute correlation).

    Deterministic on this data set (rng 0): |Fisher-Lee correlation| 0.951 (PCA angle), 0.897
    (S/G2M scores). Scores on data rng 1, 2: 0.839, 0.847 (range 0.058): bar 0.897 - 0.058 ->
    0.84. The PCA angle follows the cycle only where the cycle dominates the first two PCs
    (data rng 1, 2: 0.08, 0.44), so its bar holds for this data alone, with the scores'
    margin: 0.951 - 0.058 -> 0.89.
    """
    angle = cell_cycle_angle_baseline(cycling, method=method)
    assert angle.shape == (cycling.n_obs,)
    assert ((angle >= 0) & (angle < TWO_PI)).all()
    if bar is not None:  # the synthetic genes carry no tricycle biology
        truth = cycling.obs["true_angle"].to_numpy()
        assert abs(circular_correlation(angle, truth, method="fl")) > bar
    with pytest.raises(ValueError, match="method"):
        cell_cycle_angle_baseline(cycling, method="magic")


# --------------------------------------------------------------------------------------------
# latent traversal with a (briefly) trained model
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(one_thread):
    adata = synthetic_cell_cycle(n_obs=300, n_other=30, rng=1)
    scgenvae.model.PoissonVAE.setup_anndata(adata)
    model = scgenvae.model.PoissonVAE(adata, n_latent=4, n_hidden=32)
    model.train(max_epochs=100, enable_progress_bar=False, enable_model_summary=False, seed=0)
    model.export_latent(adata)
    align_cell_cycle(adata)
    return model, adata


def test_latent_traversal_cycle(trained):
    model, adata = trained
    trav = latent_traversal(model, adata, n_steps=24)
    assert trav.shape == (24, adata.n_vars)
    np.testing.assert_allclose(trav.X.sum(1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(
        trav.obs["cell_cycle_angle"], np.linspace(0, TWO_PI, 24, endpoint=False)
    )
    assert set(trav.obs["cell_cycle_phase"].dropna().astype(str)) <= {"G1", "S", "G2M"}
    assert (trav.var["modality"] == "rna").all()
    assert list(trav.var_names) == list(adata.var_names)
    assert "kind" in trav.var  # the data's var columns come along
    # the points lie on the fitted ellipse, other coordinates at the mean
    u = adata.uns["cell_cycle"]
    z = trav.obsm["X_latent"]
    y = (z - u["center"]) @ u["rotation"]
    np.testing.assert_allclose(y[:, 2:], 0.0, atol=1e-8)
    # markers go up and down along the cycle: S markers peak before G2M markers
    s_idx = trav.var["kind"] == "S"
    g_idx = trav.var["kind"] == "G2M"
    s_curve = trav.X[:, s_idx.to_numpy()].sum(1)
    g_curve = trav.X[:, g_idx.to_numpy()].sum(1)
    s_peak = trav.obs["cell_cycle_angle"].to_numpy()[s_curve.argmax()]
    g_peak = trav.obs["cell_cycle_angle"].to_numpy()[g_curve.argmax()]
    assert 0 < np.mod(g_peak - s_peak, TWO_PI) < np.pi
    assert trav.uns["latent_traversal"]["params"]["along"] == "cell_cycle"


def test_latent_traversal_axis_and_errors(trained, tmp_path):
    model, adata = trained
    trav = latent_traversal(model, adata, along=1, n_steps=10)
    assert trav.shape == (10, adata.n_vars)
    z = trav.obsm["X_latent"]
    assert np.all(np.diff(z[:, 1]) > 0)
    np.testing.assert_allclose(z[:, 0], z[0, 0])
    np.testing.assert_allclose(trav.obs["latent_value"], z[:, 1])
    trav.write_h5ad(tmp_path / "trav.h5ad")
    with pytest.raises(ValueError, match="not a latent dimension"):
        latent_traversal(model, adata, along=7)
    with pytest.raises(ValueError, match="along"):
        latent_traversal(model, adata, along="diagonal")
    bare = adata.copy()
    del bare.uns["cell_cycle"]
    with pytest.raises(KeyError, match="align_cell_cycle"):
        latent_traversal(model, bare)
    pca = adata.copy()
    lg = pca.copy()
    sc.pp.normalize_total(lg)
    sc.pp.log1p(lg)
    sc.pp.pca(lg, n_comps=6)
    pca.obsm["X_pca"] = lg.obsm["X_pca"]
    align_cell_cycle(pca, use_rep="X_pca")
    with pytest.raises(ValueError, match="6-dimensional"):
        latent_traversal(model, pca)


def test_align_with_model_argument(trained):
    model, adata = trained
    fresh = adata.copy()
    del fresh.obsm["X_scgenvae"]
    align_cell_cycle(fresh, model=model)
    assert "X_scgenvae" not in fresh.obsm
    np.testing.assert_allclose(
        fresh.obs["cell_cycle_angle"], adata.obs["cell_cycle_angle"], atol=1e-6
    )


# --------------------------------------------------------------------------------------------
# FUCCI: the acceptance figures (no labels enter the method)
# --------------------------------------------------------------------------------------------
_RFP, _GFP, _DAPI = (
    "rfp.median.log10sum.adjust",
    "gfp.median.log10sum.adjust",
    "dapi.median.log10sum.adjust",
)


def _first_harmonic_peak(angle: np.ndarray, values: np.ndarray) -> float:
    h = np.stack([np.ones_like(angle), np.cos(angle), np.sin(angle)], axis=1)
    coef = np.linalg.lstsq(h, values - values.mean(), rcond=None)[0]
    return float(np.arctan2(coef[2], coef[1]))


def _fucci_reference(obs: pd.DataFrame) -> np.ndarray:
    """The FUCCI angle oriented by the reporters alone, never by the method's own cues.

    mCherry-Cdt1 (rfp) peaks in G1 and EGFP-Geminin (gfp) in S/G2/M: going forward the Geminin
    peak follows the Cdt1 peak within half a cycle, and the DNA content (dapi) peak follows
    the Geminin peak.
    """
    theta = obs["theta"].to_numpy()
    rfp, gfp, dapi = (
        _first_harmonic_peak(theta, obs[k].to_numpy(dtype=float)) for k in (_RFP, _GFP, _DAPI)
    )
    forward = np.mod(gfp - rfp, TWO_PI) < np.pi
    assert forward == (np.mod(dapi - gfp, TWO_PI) < np.pi)
    return np.mod((1 if forward else -1) * theta, TWO_PI)


def test_fucci_reference_runs_forward_in_every_donor():
    adata = scgenvae.datasets.fucci_ipsc()
    for donor in adata.obs["chip_id"].cat.categories:
        obs = adata.obs[adata.obs["chip_id"] == donor]
        np.testing.assert_allclose(_fucci_reference(obs), obs["theta"].to_numpy())


def _fucci_figures(seed: int) -> dict[str, tuple[float, float]]:
    adata = scgenvae.datasets.fucci_ipsc()
    score_cell_cycle(adata, gene_symbols="hgnc")
    ref = _fucci_reference(adata.obs)

    scgenvae.model.PoissonVAE.setup_anndata(adata, batch_key="chip_id")
    model = scgenvae.model.PoissonVAE(adata, n_latent=10)
    model.train(max_epochs=200, enable_progress_bar=False, enable_model_summary=False, seed=seed)
    model.export_latent(adata)
    align_cell_cycle(adata)
    ours = adata.obs["cell_cycle_angle"].to_numpy()
    out = {"ours": (circular_correlation(ours, ref), circular_error(ours, ref))}
    for name, kwargs in {
        "PCA angle (expression)": {"method": "pca"},
        "PCA angle (our latent)": {"method": "pca", "use_rep": "X_scgenvae"},
        "scanpy S/G2M scores": {"method": "scores"},
        "tricycle projection": {"method": "tricycle"},
    }.items():
        a = cell_cycle_angle_baseline(adata, gene_symbols="hgnc", **kwargs)
        # baselines have no direction of their own: give them the better one
        best = max((a, -a), key=lambda v: circular_correlation(v, ref))
        out[name] = (circular_correlation(best, ref), circular_error(best, ref))
    return out


def _report(capsys, rows: dict[str, tuple[float, float]], title: str) -> None:
    with capsys.disabled():
        print(f"\n{title}\n{'method':<26} {'circ. corr':>10} {'median err':>10}")
        for name, (c, e) in rows.items():
            print(f"{name:<26} {c:>10.3f} {e:>10.1%}")


@pytest.mark.quality
@pytest.mark.usefixtures("one_thread")
def test_fucci_acceptance(capsys):
    # PoissonVAE(n_latent=10, batch_key="chip_id"), 200 epochs on one thread, seeds 0-4 (about
    # 35 s in all). Re-measured on the current code (issue 15): circular correlation 0.584,
    # 0.595, 0.607, 0.611, 0.565 (mean 0.593, range 0.046), median error 8.4, 8.1, 8.0, 8.7,
    # 8.4% (range 0.7 points); 1 epoch (seed 0): 0.540 and 14.4%, worse than the PCA angle's
    # 10.8%. Bars: the mean of the 5 seeds >= 0.593 - 2 x 0.046 / sqrt(5) -> 0.55; every seed's
    # error <= 8.7% + 2 x 0.7 points -> 10%; every seed's correlation >= 0.5 (the rule, 0.565 -
    # 2 x 0.046 = 0.47, would be looser); every seed must also beat every baseline on both
    # figures (best baseline: PCA of expression, 0.408 and 10.8%).
    seeds = (0, 1, 2, 3, 4)
    ours = []
    for seed in seeds:
        rows = _fucci_figures(seed=seed)
        _report(
            capsys, rows, f"FUCCI iPSC (448 cells), PoissonVAE n_latent=10, chip_id, seed {seed}"
        )
        corr, err = rows["ours"]
        ours.append((corr, err))
        for name, (c, e) in rows.items():
            if name != "ours":
                assert corr > c, (seed, name)
                assert err < e, (seed, name)
    res = np.array(ours)
    assert res[:, 0].mean() >= 0.55
    assert res[:, 0].min() >= 0.5
    assert (res[:, 1] <= 0.10).all()


def test_neurosphere_agrees_with_tricycle():
    """Other tissue and organism (mouse neurospheres), defaults unchanged: the angle from the
    PCA of log-normalised counts agrees with tricycle's projection, direction included.

    Deterministic: Fisher-Lee correlation 0.758, median error 5.55% of a cycle, direction
    evidence 1.25. Spread over three random 90% subsets of the cells: 0.757-0.780 (range
    0.023), 5.2-5.7% (range 0.5 points), 1.22-1.26. Bars: figure minus (plus) twice the range:
    correlation > 0.71, error < 0.066, evidence > 1.15.
    """
    adata = scgenvae.datasets.tricycle_neurosphere()
    lg = adata.copy()
    sc.pp.normalize_total(lg, target_sum=1e4)
    sc.pp.log1p(lg)
    sc.pp.pca(lg, n_comps=20, random_state=0)
    adata.obsm["X_pca"] = lg.obsm["X_pca"]
    align_cell_cycle(adata, use_rep="X_pca", organism="mouse", gene_symbols="Gene")
    ours = adata.obs["cell_cycle_angle"].to_numpy()
    tri = cell_cycle_angle_baseline(
        adata, method="tricycle", organism="mouse", gene_symbols="Gene"
    )
    assert circular_correlation(ours, tri, method="fl") > 0.71
    assert circular_error(ours, tri) < 0.066
    assert adata.uns["cell_cycle"]["direction_evidence"] > 1.15
    assert set(adata.obs["cell_cycle_phase"].astype(str)) == {"G1", "S", "G2M"}


# --------------------------------------------------------------------------------------------
# orientation on data nobody tuned on (issue 14): per donor, reporter-based truth
# --------------------------------------------------------------------------------------------
def test_weak_direction_warns_on_noise():
    """A representation without a cycle (random noise): the direction is a guess, and says so."""
    adata, _, _ = _ring(seed=3)
    align_cell_cycle(adata, use_rep="X_rep")  # a clean ring: no warning (warnings are errors)
    assert not adata.uns["cell_cycle"]["direction_weak"]
    assert adata.uns["cell_cycle"]["direction_confidence"] >= 0.95
    adata.obsm["noise"] = np.random.default_rng(0).normal(size=(adata.n_obs, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the ellipse fit may not converge
        with pytest.warns(UserWarning, match="weakly determined"):
            align_cell_cycle(adata, use_rep="noise", key_added="noise")
    u = adata.uns["noise"]
    assert u["direction_weak"]
    assert u["direction_confidence"] < 0.95


def _pca_of_lognorm(adata) -> tuple[np.ndarray, np.ndarray]:
    counts = np.asarray(adata.layers["counts"].toarray(), dtype=float)
    lognorm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    lg = ad.AnnData(lognorm)
    sc.pp.pca(lg, random_state=0)
    return lognorm, lg.obsm["X_pca"]


def test_fucci_pca_orientation_per_donor():
    """align_cell_cycle on the PCA of each donor's log-normalised expression runs the right way
    (Fisher-Lee correlation with the reporter-oriented FUCCI angle > 0), whether the counts are
    in .X or, with a log-normalised .X, in layers["counts"]; it is never confidently wrong (a
    wrong-looking error is flagged weak); without any counts the direction is flagged weak.

    Before the whitened library-trough rule the pooled PCA came out backwards (issue 14).
    """
    full = scgenvae.datasets.fucci_ipsc()
    for donor in [*full.obs["chip_id"].cat.categories, None]:
        base = full if donor is None else full[full.obs["chip_id"] == donor].copy()
        ref = _fucci_reference(base.obs)
        lognorm, pca = _pca_of_lognorm(base)
        for mode in ("counts in X", "counts layer", "no counts"):
            adata = base.copy()
            adata.obsm["X_pca"] = pca
            if mode != "counts in X":
                adata.X = lognorm
            if mode == "no counts":
                del adata.layers["counts"]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                align_cell_cycle(adata, use_rep="X_pca", gene_symbols="hgnc")
            warned = any("weakly determined" in str(w.message) for w in caught)
            u = adata.uns["cell_cycle"]
            assert warned == u["direction_weak"], (donor, mode)
            angle = adata.obs["cell_cycle_angle"].to_numpy()
            if mode == "no counts":
                assert not u["library_used"]
                assert u["direction_weak"], donor
                continue
            assert u["library_used"], (donor, mode)
            assert circular_correlation(angle, ref, method="fl") > 0, (donor, mode)
            right_err = circular_error(angle, ref) < circular_error(-angle, ref)
            assert right_err or u["direction_weak"], (donor, mode)


@pytest.mark.quality
@pytest.mark.usefixtures("one_thread")
def test_fucci_lodo_fold_na19098():
    """One leave-one-donor-out fold (benchmarks/cell_cycle_lodo.py): PoissonVAE(n_latent=10,
    batch_key="chip_id") at its default training + align_cell_cycle, measured on donor
    NA19098's 182 cells against the reporter-oriented FUCCI angle.

    Measured 2026-11-30 (seeds 0-4): median error 8.4, 7.2, 8.0, 7.5, 8.5% (sd 0.5 points),
    Fisher-Lee correlation 0.305, 0.319, 0.294, 0.329, 0.254 (sd 0.026); reversed, the error is
    13.3-15.0%. Thresholds: the worst seed plus (error) or minus (correlation) two seed sds.
    The Jammalamadaka-SenGupta figure is not tested per donor: with the donor's angles spread
    evenly round the cycle its circular means are ill-defined and it ranged -0.05 to 0.48.
    """
    adata = scgenvae.datasets.fucci_ipsc()
    scgenvae.model.PoissonVAE.setup_anndata(adata, batch_key="chip_id")
    model = scgenvae.model.PoissonVAE(adata, n_latent=10)
    model.train(enable_progress_bar=False, enable_model_summary=False, seed=0)
    model.export_latent(adata)
    align_cell_cycle(adata, gene_symbols="hgnc")
    assert adata.uns["cell_cycle"]["direction_confidence"] >= 0.95
    held_out = (adata.obs["chip_id"] == "NA19098").to_numpy()
    angle = adata.obs["cell_cycle_angle"].to_numpy()[held_out]
    ref = _fucci_reference(adata.obs[held_out])
    err, err_rev = circular_error(angle, ref), circular_error(-angle, ref)
    assert err <= 0.095
    assert err < err_rev
    assert circular_correlation(angle, ref, method="fl") >= 0.20
