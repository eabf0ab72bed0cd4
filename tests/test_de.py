"""Differential expression and accessibility: calibration, layouts, arguments."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

import scgenvae
from scgenvae.model._de import posterior_fdr

FDR = 0.05


@pytest.fixture(scope="module")
def planted():
    """Two groups with 10% planted DE genes, and a PoissonVAE trained on them.

    The counts are negative binomial (``theta=10``), and so is the model's likelihood: a
    Poisson likelihood on these counts leaves the extra variance out of the posterior and
    called 3 false genes of 53 at the default training (benchmarks/results_de.md).
    """
    adata = scgenvae.datasets.synthetic_de(n_obs=600, n_vars=300, rng=0)
    scgenvae.model.PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = scgenvae.model.PoissonVAE(adata, n_latent=5, gene_likelihood="nb")
    model.train(max_epochs=100, seed=0, enable_progress_bar=False, enable_model_summary=False)
    return adata, model


def test_planted_de_fdr_and_power(planted):
    adata, model = planted
    de = model.differential_expression(groupby="group", group1="A", group2="B", rng=0)
    truth = adata.var.loc[de.index, "de"]
    calls = de[f"is_de_fdr_{FDR}"]
    false = int((calls & ~truth).sum())
    assert calls.sum() > 0
    assert false / calls.sum() <= FDR + 0.02
    assert (calls & truth).sum() / truth.sum() >= 0.8
    # the estimated fold changes follow the truth
    assert np.corrcoef(de["lfc_mean"], adata.var.loc[de.index, "true_lfc"])[0, 1] > 0.9


def test_null_random_halves_call_nothing(planted):
    adata, model = planted
    cells = np.flatnonzero(adata.obs["group"] == "A")
    calls = 0
    for seed in range(3):
        half = np.random.default_rng(seed).permutation(cells)
        a, b = half[: len(half) // 2], half[len(half) // 2 :]
        de = model.differential_expression(idx1=a, idx2=b, rng=seed, n_samples=100)
        calls += int(de[f"is_de_fdr_{FDR}"].sum())
    assert calls <= 0.001 * 3 * adata.n_vars


def test_columns_and_one_vs_rest(planted):
    adata, model = planted
    de = model.differential_expression(groupby="group", rng=0, n_samples=50)
    expected = {
        "proba_de",
        "proba_not_de",
        "bayes_factor",
        "lfc_mean",
        "lfc_median",
        "lfc_std",
        "scale1",
        "scale2",
        "raw_mean1",
        "raw_mean2",
        "non_zeros_proportion1",
        "non_zeros_proportion2",
        f"is_de_fdr_{FDR}",
        "comparison",
    }
    assert expected <= set(de.columns)
    assert sorted(de["comparison"].unique()) == ["A vs rest", "B vs rest"]
    assert len(de) == 2 * adata.n_vars
    np.testing.assert_allclose(de["proba_de"] + de["proba_not_de"], 1.0)
    vanilla = model.differential_expression(idx1=adata.obs["group"] == "A", mode="vanilla")
    assert {"proba_m1", "proba_m2", "bayes_factor"} <= set(vanilla.columns)


def test_idx_masks_positions_names_agree(planted):
    adata, model = planted
    mask = (adata.obs["group"] == "A").to_numpy()
    kw = {"rng": 3, "n_samples": 20}
    by_mask = model.differential_expression(idx1=mask, idx2=~mask, **kw)
    by_pos = model.differential_expression(
        idx1=np.flatnonzero(mask), idx2=np.flatnonzero(~mask), **kw
    )
    by_name = model.differential_expression(
        idx1=adata.obs_names[mask], idx2=list(adata.obs_names[~mask]), **kw
    )
    by_group = model.differential_expression(groupby="group", group1="A", group2="B", **kw)
    for other in (by_pos, by_name, by_group[by_mask.columns]):
        np.testing.assert_allclose(by_mask["proba_de"], other.loc[by_mask.index, "proba_de"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"groupby": "group", "group1": "C"}, "`group1='C'`"),
        ({"groupby": "group", "group2": "nope"}, "`group2='nope'`"),
        ({"groupby": "group", "group1": "A", "group2": "A"}, "`group2='A'`"),
        ({"groupby": "missing"}, "`groupby='missing'`"),
        ({}, "pass `groupby`"),
        ({"idx1": [0, 1], "idx2": [1, 2]}, "share 1 cells"),
        ({"idx1": np.zeros(600, dtype=bool)}, "`idx1` selects no cells"),
        ({"idx1": np.ones(5, dtype=bool)}, "`idx1` is a boolean mask"),
        ({"idx1": ["cell_0", "no_such_cell"]}, "`idx1` names cells"),
        ({"idx1": [0], "groupby": "group"}, "either `groupby`"),
        ({"idx2": [0]}, "`idx2` needs `idx1`"),
        ({"groupby": "group", "mode": "fast"}, "`mode`"),
        ({"groupby": "group", "fdr_target": 0}, "`fdr_target`"),
        ({"groupby": "group", "n_samples": 1}, "`n_samples`"),
        ({"groupby": "group", "delta": -1}, "`delta`"),
        ({"idx1": [0, 1], "key_added": "de"}, "`key_added` needs `groupby`"),
        ({"groupby": "group", "key_added": "a/b"}, "`key_added='a/b'`"),
    ],
)
def test_bad_arguments_are_refused_by_name(planted, kwargs, match):
    _, model = planted
    with pytest.raises((ValueError, KeyError, IndexError)) as err:
        model.differential_expression(**kwargs)
    assert match in str(err.value)


def test_scanpy_layout_dotplot_and_round_trip(planted, tmp_path):
    adata, model = planted
    adata = adata.copy()
    model.differential_expression(adata, groupby="group", key_added="de_vae", n_samples=50)
    entry = adata.uns["de_vae"]
    assert entry["params"]["groupby"] == "group"
    assert entry["params"]["writer"] == "scgenvae.differential_expression"
    assert set(entry["names"].dtype.names) == {"A", "B"}
    df = sc.get.rank_genes_groups_df(adata, "B", key="de_vae")
    assert list(df.columns[:5]) == ["names", "scores", "logfoldchanges", "pvals", "pvals_adj"]
    assert df["scores"].is_monotonic_decreasing
    # the posterior expected FDR is what is_de_fdr thresholds
    assert (df["pvals_adj"] <= FDR).sum() > 0
    # our entry is replaced; another tool's is refused before anything is computed
    model.differential_expression(adata, groupby="group", key_added="de_vae", n_samples=10)
    adata.uns["other"] = {"params": {"method": "wilcoxon"}}
    with pytest.raises(ValueError, match=r"uns\['other'\] exists and was not written"):
        model.differential_expression(adata, groupby="group", key_added="other")
    model.differential_expression(adata, groupby="group", key_added="de_vae", n_samples=50)
    df = sc.get.rank_genes_groups_df(adata, "B", key="de_vae")
    path = tmp_path / "de.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert sc.get.rank_genes_groups_df(back, "B", key="de_vae").equals(df)
    sc.pp.normalize_total(back)
    sc.pp.log1p(back)
    dp = sc.pl.rank_genes_groups_dotplot(
        back, key="de_vae", n_genes=3, values_to_plot="logfoldchanges", cmap="bwr", show=False
    )
    assert dp


def test_posterior_fdr_is_the_running_mean():
    proba_not = np.array([0.3, 0.0, 0.1, 0.02, 0.5])
    q = posterior_fdr(proba_not)
    np.testing.assert_allclose(q, [0.105, 0.0, 0.04, 0.01, 0.184])
    # the set called at 0.05 is the largest whose mean proba_not_de is at most 0.05
    assert list(np.flatnonzero(q <= 0.05)) == [1, 2, 3]


@pytest.fixture(scope="module")
def multivae():
    mdata = scgenvae.datasets.synthetic_multiome(n_obs=200, n_genes=40, n_peaks=80, rng=0)
    scgenvae.model.MultiVAE.setup_mudata(mdata, batch_key="batch")
    model = scgenvae.model.MultiVAE(mdata, n_latent=5, n_hidden=32)
    model.train(max_epochs=5, seed=0, enable_progress_bar=False, enable_model_summary=False)
    return mdata, model


def test_multivae_accessibility_and_expression(multivae):
    mdata, model = multivae
    mdata = mdata.copy()
    da = model.differential_accessibility(
        mdata, groupby="group", group1="group_0", key_added="da_vae", n_samples=30, rng=0
    )
    assert {"proba_da", "est_prob1", "emp_prob1", "emp_effect", f"is_da_fdr_{FDR}"} <= set(
        da.columns
    )
    assert list(da.index.unique()) == list(da.index)
    assert set(da.index) == set(mdata.mod["atac"].var_names)
    assert da["est_prob1"].between(0, 1).all()
    assert "da_vae" in mdata.mod["atac"].uns
    assert mdata.mod["atac"].uns["da_vae"]["params"]["writer"] == (
        "scgenvae.differential_accessibility"
    )
    de = model.differential_expression(
        mdata, groupby="group", group1="group_0", modality="atac", n_samples=30, rng=0
    )
    assert set(de.index) == set(mdata.mod["rna"].var_names)
    with pytest.raises(ValueError, match="`modality='protein'`"):
        model.differential_expression(groupby="group", modality="protein")


@pytest.mark.slow
def test_cellbench_random_halves_null():
    """The issue's bar: at most 0.1% of gene tests called on random halves of one cell line."""
    adata = scgenvae.datasets.cellbench()
    scgenvae.model.PoissonVAE.setup_anndata(adata, batch_key="protocol")
    model = scgenvae.model.PoissonVAE(adata)
    model.train(seed=0, enable_progress_bar=False, enable_model_summary=False)
    cells = np.flatnonzero(
        (adata.obs["cell_line"] == "H1975").to_numpy()
        & (adata.obs["protocol"] == "CEL-seq2").to_numpy()
    )
    calls = 0
    for seed in range(3):
        half = np.random.default_rng(seed).permutation(cells)
        de = model.differential_expression(
            idx1=half[: len(half) // 2], idx2=half[len(half) // 2 :], rng=seed, n_samples=100
        )
        calls += int(de[f"is_de_fdr_{FDR}"].sum())
    assert calls <= 0.001 * 3 * adata.n_vars


def test_group_draws_reuse_latent_samples(planted):
    """Draw ``s`` sums the cells decoded at latent sample ``s % _LATENT_DRAWS``, weighted."""
    import torch

    from scgenvae._constants import MODULE_KEYS
    from scgenvae.model import _de

    adata, model = planted
    groups = _de.resolve_groups(
        model, None, adata.obs, groupby="group", group1="A", group2="B", idx1=None, idx2=None
    )
    n_samples, k = 25, _de._LATENT_DRAWS
    draws = model._group_draws(
        None,
        groups,
        target="rna",
        use_modalities=None,
        batch_correction=True,
        n_samples=n_samples,
        rng=np.random.default_rng(3),
        batch_size=100_000,  # one chunk, so that the samples below are drawn in the same order
    )
    rng = np.random.default_rng(3)
    w = torch.from_numpy(rng.standard_exponential((n_samples, len(groups.cells)))).float()
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    codes = [torch.tensor([[b]]) for b in range(int(model.summary_stats.n_batch))]
    ((tensors, inf),) = list(model._iter_inference(indices=groups.cells, batch_size=100_000))
    eps = torch.randn(k, len(groups.cells), model.module.n_latent, generator=gen)
    with torch.inference_mode():
        rho = model._decode_draws(tensors, inf, eps, codes, "rna")
    library = inf[MODULE_KEYS.LIBRARY_KEY]["rna"].float()
    var = model._observation_variance("rna", rho, library)
    for label in (0, 1):
        cells = groups.labels == label
        for s in range(n_samples):
            ws = w[s, cells].double()
            expected = ws @ rho[s % k][cells].double()
            np.testing.assert_allclose(draws["sums"][label, s], expected.numpy(), rtol=1e-4)
            expected = (ws**2) @ var[s % k][cells].double()
            np.testing.assert_allclose(draws["noise"][label, s], expected.numpy(), rtol=1e-4)
            assert draws["weights"][label, s] == pytest.approx(float(ws.sum()), rel=1e-6)
