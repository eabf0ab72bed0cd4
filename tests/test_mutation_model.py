"""Exact checks of the model getters on tiny models, for mutation testing (``model`` module).

The models are not trained: their weights are the initial ones plus a seeded perturbation
(``is_trained_`` set by hand), so that every output is generic (no zero region depths, no
symmetric decoder) and a fixture costs milliseconds. Each getter is compared with the module
run by hand on all cells in one minibatch: the same encoder, decoder and head, without the
getter's minibatches, row chunks, column subsets, thresholds and masks. The mutants each test
kills are listed in docs/dev/mutation.md.
"""

from __future__ import annotations

import re
from contextlib import nullcontext

import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import scgenvae
from scgenvae._constants import MODULE_KEYS
from scgenvae.model import MultiVAE, PoissonVAE
from scgenvae.model import _base as base
from scgenvae.model import _outputs as outputs

N_CELLS, N_GENES, N_PEAKS = 40, 10, 20
N_RNA_ONLY, N_ATAC_ONLY = 8, 6
BIG = 10_000  # one minibatch of every cell


def _perturbed(model, seed: int, scale: float = 0.3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    model.module.eval()  # no dropout in the hand-made references either
    model.is_trained_ = True
    return model


def _rna_model(scale: float = 0.3, **kwargs):
    adata = scgenvae.datasets.synthetic_rna(n_obs=N_CELLS, n_vars=N_GENES, rng=0)
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    return _perturbed(PoissonVAE(adata, n_latent=3, n_hidden=8, **kwargs), 1, scale), adata


@pytest.fixture(scope="module")
def rna():
    return _rna_model()


@pytest.fixture(scope="module")
def clustered():
    model, adata = _rna_model(n_clusters=3)
    _, inf = _one_batch(model)
    with torch.no_grad():  # cluster centres at three cells: every cluster gets some cells
        model.module.prior.means.copy_(inf[MODULE_KEYS.QZ_KEY].loc[[0, 15, 30]])
    return model, adata


def _multi_model(**kwargs):
    """The first 8 cells have RNA only, the last 6 ATAC only."""
    full = scgenvae.datasets.synthetic_multiome(
        n_obs=N_CELLS, n_genes=N_GENES, n_peaks=N_PEAKS, rng=0
    )
    cells = np.arange(N_CELLS)
    rna = full.mod["rna"][cells < N_CELLS - N_ATAC_ONLY].copy()
    atac = full.mod["atac"][cells >= N_RNA_ONLY].copy()
    mdata = md.MuData({"rna": rna, "atac": atac})
    mdata.obs["batch"] = full.obs["batch"].reindex(mdata.obs_names).to_numpy()
    MultiVAE.setup_mudata(mdata, batch_key="batch")
    model = _perturbed(MultiVAE(mdata, n_latent=3, n_hidden=8, **kwargs), 2)
    has = {}
    for m, mod in (("rna", rna), ("atac", atac)):
        totals = pd.Series(np.asarray(mod.X.sum(1)).ravel(), index=mod.obs_names)
        has[m] = totals.reindex(mdata.obs_names).fillna(0).to_numpy() > 0
    assert (~has["atac"]).sum() >= N_RNA_ONLY
    assert (~has["rna"]).sum() >= N_ATAC_ONLY
    return model, mdata, has


@pytest.fixture(scope="module")
def multi():
    return _multi_model()


@pytest.fixture(scope="module")
def multi_poisson():
    return _multi_model(atac_likelihood="poisson")


def _one_batch(model, use=None):
    (tensors, inf) = next(iter(list(model._iter_inference(batch_size=BIG, use_modalities=use))))
    return tensors, inf


@torch.inference_mode()
def _expected(model, target, *, use=None, observed_library=False, code=None, has=None):
    """Decoded means of ``target`` for every cell, by hand from the module (one minibatch)."""
    tensors, inf = _one_batch(model, use)
    gen_in = model.module._get_generative_input(tensors, inf)
    gen_in[MODULE_KEYS.Z_KEY] = inf[MODULE_KEYS.QZ_KEY].loc
    gen = model.module.generative(
        **gen_in,
        transform_batch=code,
        observed_library=observed_library,
        modalities=(target,),
    )
    seen = inf[MODULE_KEYS.OBSERVED_KEY][target]
    unseen = ~seen if observed_library else torch.ones_like(seen)
    head = model.module.modalities[target].head
    values = head.predictive_mean(gen[target], unobserved_depth=unseen).float().numpy().copy()
    if use is not None and has is not None:
        lacking = ~np.any([has[m] for m in use], axis=0)
        values[lacking] = np.nan
    return values


def _warns(use):
    """The warning of the cells lacking ``use``, or none with the joint posterior."""
    return pytest.warns(UserWarning, match="cells have no") if use else nullcontext()


def _gap_threshold(values: np.ndarray) -> float:
    """A threshold halfway between two neighbouring values near the median (no ties to round)."""
    v = np.unique(values[np.isfinite(values)])
    i = int(np.argmax(np.diff(v[len(v) // 3 : 2 * len(v) // 3]))) + len(v) // 3
    return float((v[i] + v[i + 1]) / 2)


# ---------------------------------------------------------------- latent and clusters
def test_latent_nan_rows_for_cells_without_the_modality(multi):
    model, mdata, has = multi
    joint = model.get_latent_representation()
    assert not np.isnan(joint).any()
    for m in ("rna", "atac"):
        with pytest.warns(UserWarning, match=rf"^{(~has[m]).sum()} of {N_CELLS} cells have no"):
            z = model.get_latent_representation(modality=m)
        np.testing.assert_array_equal(np.isnan(z).all(1), ~has[m])
        assert not np.isnan(z[has[m]]).any()
        _, inf = _one_batch(model, (m,))
        np.testing.assert_allclose(z[has[m]], inf[MODULE_KEYS.QZ_KEY].loc.numpy()[has[m]])


def test_latent_of_one_modality_model_has_no_nan(rna):
    model, _ = rna
    z = model.get_latent_representation(modality="rna")
    np.testing.assert_array_equal(z, model.get_latent_representation())
    assert not np.isnan(z).any()


def test_lacking_input_masks(multi, rna):
    model, _, has = multi
    _, inf = _one_batch(model)
    assert not model._lacking_input(inf, None).any()
    np.testing.assert_array_equal(model._lacking_input(inf, ("rna",)).numpy(), ~has["rna"])
    np.testing.assert_array_equal(model._lacking_input(inf, ("atac",)).numpy(), ~has["atac"])
    both = model._lacking_input(inf, ("rna", "atac")).numpy()
    np.testing.assert_array_equal(both, ~(has["rna"] | has["atac"]))
    assert both.dtype == bool
    rmodel, _ = rna
    _, inf = _one_batch(rmodel)
    out = rmodel._lacking_input(inf, ("rna",))
    assert out.dtype == torch.bool
    assert out.shape == (N_CELLS,)
    assert not out.any()


def test_cluster_probabilities_and_assignments(clustered):
    model, adata = clustered
    _, inf = _one_batch(model)
    expected = inf[MODULE_KEYS.QC_KEY].probs.numpy()
    probs = model.get_cluster_probabilities()
    assert probs.shape == (N_CELLS, 3)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        model.get_cluster_probabilities(batch_size=7), expected, rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        model.get_cluster_probabilities(indices=[9, 1, 4]),
        expected[[9, 1, 4]],
        rtol=1e-5,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        model.get_cluster_probabilities(adata[:12].copy()), expected[:12], rtol=1e-5, atol=1e-7
    )
    assert len(set(expected.argmax(1))) == 3  # every cluster has cells
    np.testing.assert_array_equal(model.get_cluster_assignments(), expected.argmax(1))
    np.testing.assert_array_equal(
        model.get_cluster_assignments(indices=[9, 1, 4], batch_size=2),
        expected.argmax(1)[[9, 1, 4]],
    )
    np.testing.assert_array_equal(
        model.get_cluster_assignments(adata[5:12].copy(), batch_size=3), expected.argmax(1)[5:12]
    )


def test_cluster_getters_need_clusters(rna):
    model, _ = rna
    for getter in (model.get_cluster_probabilities, model.get_cluster_assignments):
        with pytest.raises(
            ValueError,
            match=r"^this model has no discrete latent; create it with `n_clusters=K`\.$",
        ):
            getter()


# ---------------------------------------------------------------- decoding
def test_expression_equals_the_module_by_hand(rna, multi):
    model, adata = rna
    expected = _expected(model, "rna")
    out = model.get_normalized_expression(return_numpy=True)
    assert out.dtype == np.float32
    assert out.shape == (N_CELLS, N_GENES)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        model.get_normalized_expression(batch_size=7, return_numpy=True), expected, rtol=1e-5
    )
    mmodel, _, has = multi
    np.testing.assert_allclose(
        mmodel.get_normalized_expression(return_numpy=True), _expected(mmodel, "rna"), rtol=1e-5
    )
    with pytest.warns(UserWarning, match=rf"^{(~has['atac']).sum()} of {N_CELLS} cells have no"):
        atac = mmodel.get_normalized_expression(modality="atac", return_numpy=True)
    np.testing.assert_allclose(
        atac, _expected(mmodel, "rna", use=("atac",), has=has), rtol=1e-5, equal_nan=True
    )
    np.testing.assert_array_equal(np.isnan(atac).all(1), ~has["atac"])


def test_accessibility_equals_the_module_by_hand(multi, multi_poisson):
    for model, _, has in (multi, multi_poisson):
        joint = model.get_accessibility_estimates(return_numpy=True)
        assert joint.dtype == np.float32
        expected = _expected(model, "atac", observed_library=True)
        np.testing.assert_allclose(joint, expected, rtol=1e-5)
        with pytest.warns(UserWarning, match=rf"^{(~has['rna']).sum()} of {N_CELLS} cells have"):
            from_rna = model.get_accessibility_estimates(modality="rna", return_numpy=True)
        np.testing.assert_allclose(
            from_rna, _expected(model, "atac", use=("rna",), has=has), rtol=1e-5, equal_nan=True
        )
        np.testing.assert_array_equal(np.isnan(from_rna).all(1), ~has["rna"])
    # the observed depth matters: the joint estimate differs from that at the predicted depth
    model = multi[0]
    assert not np.allclose(
        model.get_accessibility_estimates(return_numpy=True),
        _expected(model, "atac", observed_library=False),
        rtol=1e-3,
    )


def test_minibatches_and_row_chunks_do_not_change_the_values(multi, monkeypatch):
    model, _, has = multi
    full = model.get_accessibility_estimates(return_numpy=True)
    expr = model.get_normalized_expression(return_numpy=True)
    sub = model.get_accessibility_estimates(region_list=model.feature_names["atac"][[3, 1]])
    # 25 values at a time: 1 row of 20 peaks, 2 rows of 10 genes (or 2 peaks)
    monkeypatch.setattr(outputs, "DECODE_CHUNK_VALUES", 25)
    for bs in (None, 7):
        np.testing.assert_allclose(
            model.get_accessibility_estimates(batch_size=bs, return_numpy=True), full, rtol=1e-5
        )
        np.testing.assert_allclose(
            model.get_normalized_expression(batch_size=bs, return_numpy=True), expr, rtol=1e-5
        )
        np.testing.assert_allclose(
            model.get_accessibility_estimates(
                batch_size=bs, region_list=list(sub.columns)
            ).to_numpy(),
            sub.to_numpy(),
            rtol=1e-5,
        )
    with pytest.warns(UserWarning, match=rf"^{(~has['rna']).sum()} of {N_CELLS} cells"):
        chunked = model.get_accessibility_estimates(modality="rna", batch_size=7, threshold=0.01)
    np.testing.assert_array_equal(
        np.asarray(chunked.sparse.to_coo().tocsr().getnnz(1)) == 0, ~has["rna"]
    )
    monkeypatch.setattr(outputs, "DECODE_CHUNK_VALUES", 1)  # fewer values than a row: one row
    np.testing.assert_allclose(
        model.get_accessibility_estimates(return_numpy=True), full, rtol=1e-5
    )


def test_subsets_are_slices_in_the_order_asked(rna, multi, multi_poisson):
    model, adata = rna
    full = model.get_normalized_expression(return_numpy=True)
    genes = list(adata.var_names[[7, 0, 3]])
    sub = model.get_normalized_expression(gene_list=genes, batch_size=9)
    assert list(sub.columns) == genes
    pd.testing.assert_index_equal(sub.index, adata.obs_names)
    np.testing.assert_allclose(sub.to_numpy(), full[:, [7, 0, 3]], rtol=1e-6)
    one = model.get_normalized_expression(gene_list=genes[0], return_numpy=True)
    np.testing.assert_allclose(one, full[:, [7]], rtol=1e-6)
    for mmodel, _, _ in (multi, multi_poisson):
        acc = mmodel.get_accessibility_estimates(return_numpy=True)
        peaks = mmodel.feature_names["atac"][[12, 2, 19, 5]]
        sub = mmodel.get_accessibility_estimates(region_list=list(peaks), batch_size=9)
        assert list(sub.columns) == list(peaks)
        np.testing.assert_allclose(sub.to_numpy(), acc[:, [12, 2, 19, 5]], rtol=1e-5)


def test_missing_feature_names_are_refused(rna, multi):
    model, adata = rna
    with pytest.raises(
        ValueError,
        match=r"^2 names of `gene_list` are not rna features of the model, for instance "
        r"\['nope', 'nix'\]; use names of `model.feature_names\['rna'\]`\.$",
    ):
        model.get_normalized_expression(gene_list=[adata.var_names[0], "nope", "nix"])
    with pytest.raises(ValueError, match=r"^1 names of `region_list` are not atac features"):
        multi[0].get_accessibility_estimates(region_list=["nope"])


def test_named_frames(rna, multi):
    model, adata = rna
    full = model.get_normalized_expression(return_numpy=True)
    df = model.get_normalized_expression()
    assert isinstance(df, pd.DataFrame)
    pd.testing.assert_index_equal(df.index, adata.obs_names)
    pd.testing.assert_index_equal(df.columns, adata.var_names)
    np.testing.assert_array_equal(df.to_numpy(), full)
    some = model.get_normalized_expression(indices=[7, 2, 5])
    assert list(some.index) == list(adata.obs_names[[7, 2, 5]])
    np.testing.assert_allclose(some.to_numpy(), full[[7, 2, 5]], rtol=1e-6)
    # new data: its own obs names, subset by indices
    new = adata[10:20].copy()
    new.obs_names = [f"new{i}" for i in range(10)]
    df = model.get_normalized_expression(new, indices=[3, 1], gene_list=list(adata.var_names[:2]))
    assert list(df.index) == ["new3", "new1"]
    assert list(df.columns) == list(adata.var_names[:2])
    np.testing.assert_allclose(df.to_numpy(), full[[13, 11]][:, :2], rtol=1e-5)
    mmodel, mdata, _ = multi
    acc = mmodel.get_accessibility_estimates(indices=[4, 0])
    assert list(acc.index) == list(mdata.obs_names[[4, 0]])
    pd.testing.assert_index_equal(acc.columns, mmodel.feature_names["atac"])


def test_sparse_threshold_is_the_thresholded_dense(multi, multi_poisson):
    for model, mdata, _ in (multi, multi_poisson):
        for modality, use in (("joint", None), ("rna", ("rna",))):
            kw = {"modality": modality, "batch_size": 7}
            with _warns(use):
                dense = model.get_accessibility_estimates(return_numpy=True, **kw)
            thr = _gap_threshold(dense)
            expected = np.where(np.nan_to_num(dense) >= thr, dense, 0.0)
            assert 0 < (expected > 0).sum() < expected.size
            with _warns(use):
                csr = model.get_accessibility_estimates(threshold=thr, return_numpy=True, **kw)
            assert sparse.isspmatrix_csr(csr) or isinstance(csr, sparse.csr_array)
            assert csr.dtype == np.float32
            assert csr.shape == dense.shape
            assert csr.nnz == (expected > 0).sum()
            np.testing.assert_allclose(csr.toarray(), expected, rtol=1e-5)
            # with a subset of peaks: the thresholded slice
            cols = [11, 3, 17]
            peaks = list(model.feature_names["atac"][cols])
            with _warns(use):
                sub = model.get_accessibility_estimates(threshold=thr, region_list=peaks, **kw)
            assert list(sub.columns) == peaks
            assert all(isinstance(t, pd.SparseDtype) for t in sub.dtypes)
            pd.testing.assert_index_equal(sub.index, mdata.obs_names)
            np.testing.assert_allclose(sub.sparse.to_coo().toarray(), expected[:, cols], rtol=1e-5)


def test_sparse_threshold_on_no_cells_and_high_threshold(multi):
    model, _, _ = multi
    csr = model.get_accessibility_estimates(threshold=1.0, return_numpy=True)
    assert csr.shape == (N_CELLS, N_PEAKS)
    assert csr.nnz == 0


def test_transform_batch(rna, multi):
    model, adata = rna
    cats = list(adata.obs["batch"].cat.categories)
    out = {}
    for i, b in enumerate(cats):
        out[b] = model.get_normalized_expression(transform_batch=b, return_numpy=True)
        np.testing.assert_allclose(
            out[b], _expected(model, "rna", code=torch.tensor([[i]])), rtol=1e-5
        )
    assert not np.allclose(out[cats[0]], out[cats[1]], rtol=1e-3)
    with pytest.raises(
        ValueError,
        match=r"^`transform_batch='nope'` is not a training batch; choose one of "
        r"\['batch_0', 'batch_1'\]\.$",
    ):
        model.get_normalized_expression(transform_batch="nope")
    mmodel = multi[0]
    np.testing.assert_allclose(
        mmodel.get_accessibility_estimates(transform_batch="batch_1", return_numpy=True),
        _expected(mmodel, "atac", observed_library=True, code=torch.tensor([[1]])),
        rtol=1e-5,
    )
    code = model._batch_code("batch_1")
    assert code.shape == (1, 1)
    assert code.dtype == torch.long
    assert model._batch_code(None) is None


def test_modality_choice_and_its_old_name(multi):
    model, _, _ = multi
    assert model._use("joint", ("joint", "atac")) is None
    assert model._use("atac", ("joint", "atac")) == ("atac",)
    with pytest.warns(UserWarning, match="cells have no"):
        expected = model.get_normalized_expression(modality="atac", return_numpy=True)
    with (
        pytest.warns(UserWarning, match="cells have no"),
        pytest.warns(
            FutureWarning,
            match=r"^`use_modality` is now `modality` \(as in `get_latent_representation`\); the old name will be removed\.$",
        ),
    ):
        old = model.get_normalized_expression(use_modality="atac", return_numpy=True)
    np.testing.assert_array_equal(old, expected)
    with pytest.raises(
        ValueError, match=r"^`modality='rna'` must be one of \['joint', 'atac'\]\.$"
    ):
        model.get_normalized_expression(modality="rna")
    with pytest.raises(
        ValueError, match=r"^`modality='atac'` must be one of \['joint', 'rna'\]\.$"
    ):
        model.get_accessibility_estimates(modality="atac")


def test_indices_as_mask_names_and_positions(multi):
    model, mdata, _ = multi
    full = model.get_latent_representation()
    mask = np.zeros(N_CELLS, dtype=bool)
    mask[[3, 17, 30]] = True
    np.testing.assert_allclose(
        model.get_latent_representation(indices=mask), full[mask], rtol=1e-5
    )
    names = list(mdata.obs_names[[30, 3]])
    np.testing.assert_allclose(
        model.get_latent_representation(indices=names), full[[30, 3]], rtol=1e-5
    )
    df = model.get_normalized_expression(indices=names)
    assert list(df.index) == names
    with pytest.raises(
        ValueError, match=r"^`modality='protein'` is not one of \['joint', 'rna', 'atac'\]\.$"
    ):
        model.get_latent_representation(modality="protein")


# ---------------------------------------------------------------- criticism
def _seed(rng: int) -> int:
    """The torch seed the criticism getters draw from ``rng``."""
    return int(np.random.default_rng(rng).integers(2**63 - 1))


@torch.inference_mode()
def _losses(model, rng: int, *, use=None, indices=None):
    """The module's loss terms at one posterior draw of every cell, by hand (one minibatch)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(rng))
        ((tensors, inf),) = list(
            model._iter_inference(batch_size=BIG, use_modalities=use, indices=indices)
        )
    gen = model.module.generative(**model.module._get_generative_input(tensors, inf))
    return model.module.loss(tensors, inf, gen, kl_weight=1.0), inf


@pytest.mark.parametrize("which", ["rna", "clustered", "multi"])
def test_elbo_and_reconstruction_are_the_module_loss_terms(which, rna, clustered, multi):
    model = {"rna": rna, "clustered": clustered, "multi": multi}[which][0]
    losses, _ = _losses(model, 5)
    assert ("kl_c" in losses.kl_local) == (which == "clustered")
    elbo = -(sum(losses.reconstruction_loss.values()) + sum(losses.kl_local.values())).numpy()
    cells = model.get_elbo(return_mean=False, rng=5)
    assert cells.dtype == np.float64
    assert cells.shape == (N_CELLS,)
    np.testing.assert_allclose(cells, elbo, rtol=1e-5)
    mean = model.get_elbo(rng=5)
    assert isinstance(mean, float)
    np.testing.assert_allclose(mean, elbo.mean(), rtol=1e-5)
    rec = model.get_reconstruction_error(return_mean=False, rng=5)
    assert list(rec) == list(model.module.modalities)
    for m, v in losses.reconstruction_loss.items():
        np.testing.assert_allclose(rec[m], v.numpy(), rtol=1e-5)
    rec_mean = model.get_reconstruction_error(rng=5)
    for m, v in losses.reconstruction_loss.items():
        assert isinstance(rec_mean[m], float)
        np.testing.assert_allclose(rec_mean[m], v.double().mean().item(), rtol=1e-5)
    # another seed, another draw
    assert not np.allclose(model.get_elbo(return_mean=False, rng=6), cells, rtol=1e-4)


def test_elbo_of_one_modality_and_of_some_cells(multi):
    model, _, has = multi
    losses, _ = _losses(model, 2, use=("atac",), indices=[12, 3, 30])
    elbo = -(sum(losses.reconstruction_loss.values()) + sum(losses.kl_local.values())).numpy()
    out = model.get_elbo(modality="atac", indices=[12, 3, 30], return_mean=False, rng=2)
    np.testing.assert_allclose(out, elbo, rtol=1e-5)
    rec = model.get_reconstruction_error(modality="rna", return_mean=False, rng=4)
    losses, _ = _losses(model, 4, use=("rna",))
    np.testing.assert_allclose(rec["atac"], losses.reconstruction_loss["atac"].numpy(), rtol=1e-5)
    np.testing.assert_array_equal(rec["rna"] == 0, ~has["rna"])
    with pytest.raises(ValueError, match=r"`modality='both'` is not one of"):
        model.get_elbo(modality="both")


def test_marginal_ll_of_one_draw_is_the_importance_weight(rna):
    model, _ = rna
    losses, inf = _losses(model, 7)
    z, qz = inf[MODULE_KEYS.Z_KEY], inf[MODULE_KEYS.QZ_KEY]
    log_px = -sum(losses.reconstruction_loss.values())
    expected = (log_px + model.module.prior.log_prob(z) - qz.log_prob(z).sum(-1)).numpy()
    out = model.get_marginal_ll(n_mc_samples=1, return_mean=False, rng=7)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_libraries_for_decoding(multi):
    model, _, has = multi
    _, inf = _one_batch(model)
    libs = model._libraries_for_decoding(inf)
    assert list(libs) == ["rna", "atac"]
    for m, lib in libs.items():
        lib = lib.numpy()
        np.testing.assert_array_equal(np.isnan(lib), ~has[m])
        np.testing.assert_array_equal(lib[has[m]], inf[MODULE_KEYS.LIBRARY_KEY][m].numpy()[has[m]])
        assert (lib[has[m]] > 0).all()


def test_predictive_sample_counts_and_argument_checks(rna, multi):
    model, adata = rna
    full = model.posterior_predictive_sample(n_samples=np.int64(2), rng=1)
    assert sparse.issparse(full)
    assert full.shape == (2 * N_CELLS, N_GENES)
    assert full.dtype == np.float32
    genes = list(adata.var_names[[6, 1, 4]])
    sub = model.posterior_predictive_sample(n_samples=2, gene_list=genes, rng=1)
    # columns in the model's order, whatever the order asked
    np.testing.assert_array_equal(sub.toarray(), full.toarray()[:, [1, 4, 6]])
    for bad in (0, -1, True, 2.0):
        with pytest.raises(
            ValueError, match=rf"^`n_samples` must be a positive integer, got {bad!r}\.$"
        ):
            model.posterior_predictive_sample(n_samples=bad)
    with pytest.raises(ValueError, match=r"^`n_mc_samples` must be a positive integer, got 0\.$"):
        model.get_marginal_ll(n_mc_samples=0)
    with pytest.raises(
        TypeError, match=r"^`gene_list` must be a list of feature names, got the string 'g'\.$"
    ):
        model.posterior_predictive_sample(gene_list="g")
    with pytest.raises(
        ValueError,
        match=r"^`gene_list`: 2 name\(s\) are not rna features of the model, e\.g\. \['nix', 'nope'\]; "
        r"see `model.feature_names\['rna'\]`\.$",
    ):
        model.posterior_predictive_sample(gene_list=[genes[0], "nope", "nix"])
    mmodel = multi[0]
    peaks = list(mmodel.feature_names["atac"][[5, 2]])
    draws = mmodel.posterior_predictive_sample(target="atac", gene_list=peaks, rng=0)
    assert draws.shape == (N_CELLS, 2)
    assert set(np.unique(draws.toarray())) <= {0.0, 1.0}


# ---------------------------------------------------------------- how the work is split
def _spy(monkeypatch, obj, name: str) -> list[dict]:
    """Record the keyword arguments of each call of ``obj.name`` (which still runs)."""
    calls: list[dict] = []
    original = getattr(obj, name)

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, spy)
    return calls


def _rows(calls: list[dict], key: str) -> list[int]:
    out = []
    for kw in calls:
        value = kw[key]
        out.append(next(iter(value.values())).shape[0] if isinstance(value, dict) else len(value))
    return out


def test_getters_encode_in_minibatches_of_batch_size(clustered, multi, monkeypatch):
    model, _ = clustered
    calls = _spy(monkeypatch, model.module, "inference")
    model.get_cluster_probabilities(batch_size=16)
    assert _rows(calls, "x") == [16, 16, 8]
    calls.clear()
    model.get_cluster_assignments(batch_size=16)
    assert _rows(calls, "x") == [16, 16, 8]
    calls.clear()
    model.get_elbo(batch_size=16)
    assert _rows(calls, "x") == [16, 16, 8]
    mmodel, _, _ = multi
    calls = _spy(monkeypatch, mmodel.module, "inference")
    mmodel.get_accessibility_estimates(batch_size=16, region_list=["peak_0"])
    assert _rows(calls, "x") == [16, 16, 8]
    calls.clear()
    mmodel.get_normalized_expression(batch_size=32, gene_list=["gene_0"])
    assert _rows(calls, "x") == [32, 8]


def test_decoder_runs_on_row_chunks_and_only_the_columns_asked(multi, monkeypatch):
    model, _, _ = multi
    calls = _spy(monkeypatch, model.module, "generative")
    monkeypatch.setattr(outputs, "DECODE_CHUNK_VALUES", 25)
    model.get_accessibility_estimates(region_list=list(model.feature_names["atac"][[3, 1]]))
    # Bernoulli peaks are decoded on their own: 2 columns, 12 rows (24 values) at a time
    assert _rows(calls, "z") == [12, 12, 12, 4]
    for kw in calls:
        assert kw["modalities"] == ("atac",)
        assert kw["columns"]["atac"].tolist() == [3, 1]
    calls.clear()
    model.get_accessibility_estimates()  # 20 peaks: one row at a time
    assert _rows(calls, "z") == [1] * N_CELLS
    assert all(kw["columns"] is None for kw in calls)
    calls.clear()
    # RNA shares (softmax) need every gene: 10 columns, 2 rows at a time, then the subset
    model.get_normalized_expression(gene_list=["gene_3"])
    assert _rows(calls, "z") == [2] * (N_CELLS // 2)
    assert all(kw["columns"] is None for kw in calls)
    calls.clear()
    monkeypatch.setattr(outputs, "DECODE_CHUNK_VALUES", 1)  # less than a row: still one row
    model.get_normalized_expression()
    assert _rows(calls, "z") == [1] * N_CELLS


def test_progress_bar_counts_the_decoded_values(rna, monkeypatch):
    model, _ = rna
    shown = []

    def track(loader, **kwargs):
        shown.append(kwargs["total"])
        return loader

    monkeypatch.setattr(base, "track", track)
    monkeypatch.setattr(scgenvae.settings, "progress_bar", True)
    monkeypatch.setattr(base, "PROGRESS_MIN_VALUES", 399)  # 40 cells x 10 genes = 400
    model.get_normalized_expression(batch_size=16)
    assert shown == [3]
    monkeypatch.setattr(base, "PROGRESS_MIN_VALUES", 400)
    model.get_normalized_expression(batch_size=16)
    assert shown == [3]


def test_new_data_and_its_names(rna):
    model, adata = rna
    full = model.get_normalized_expression(return_numpy=True)
    new = adata[10:20].copy()
    new.obs_names = [f"new{i}" for i in range(10)]
    df = model.get_normalized_expression(new, indices=["new3", "new1"], batch_size=1)
    assert list(df.index) == ["new3", "new1"]
    np.testing.assert_allclose(df.to_numpy(), full[[13, 11]], rtol=1e-5)
    arr = model.get_normalized_expression(new, indices=["new3", "new1"], return_numpy=True)
    np.testing.assert_allclose(arr, full[[13, 11]], rtol=1e-5)


@torch.inference_mode()
def _elbo_by_hand(model, rng: int, data=None, batch_size: int = BIG) -> np.ndarray:
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(rng))
        for tensors, inf in model._iter_inference(data, batch_size=batch_size):
            gen = model.module.generative(**model.module._get_generative_input(tensors, inf))
            losses = model.module.loss(tensors, inf, gen)
            nelbo = sum(losses.reconstruction_loss.values()) + sum(losses.kl_local.values())
            out.append(-nelbo.numpy())
    return np.concatenate(out)


def test_elbo_of_new_data_in_minibatches(rna):
    model, adata = rna
    new = adata[10:30].copy()
    out = model.get_elbo(new, batch_size=6, return_mean=False, rng=3)
    assert out.shape == (20,)
    np.testing.assert_allclose(out, _elbo_by_hand(model, 3, new, 6), rtol=1e-5)
    # the draws follow the minibatches: another split, other draws
    assert not np.allclose(out, _elbo_by_hand(model, 3, new), rtol=1e-4)


def test_untrained_model_is_refused_without_a_warning():
    adata = scgenvae.datasets.synthetic_rna(n_obs=N_CELLS, n_vars=N_GENES, rng=0)
    PoissonVAE.setup_anndata(adata)
    model = PoissonVAE(adata, n_latent=3, n_hidden=8)
    for getter in (model.get_elbo, model.get_reconstruction_error):
        with pytest.raises(RuntimeError, match="not trained|train"):
            getter()


def test_missing_names_listed_up_to_five(rna):
    model, adata = rna
    names = [f"x{i}" for i in range(6)]
    with pytest.raises(
        ValueError,
        match=r"^`gene_list`: 6 name\(s\) are not rna features of the model, e\.g\. "
        r"\['x0', 'x1', 'x2', 'x3', 'x4'\]; ",
    ):
        model.posterior_predictive_sample(gene_list=names)


def test_no_cells_give_empty_outputs(multi):
    model, _, _ = multi
    csr = model.get_accessibility_estimates(indices=[], threshold=0.5, return_numpy=True)
    assert sparse.isspmatrix_csr(csr)
    assert csr.shape == (0, N_PEAKS)
    assert csr.dtype == np.float32
    df = model.get_accessibility_estimates(indices=[], threshold=0.5)
    assert df.shape == (0, N_PEAKS)
    dense = model.get_accessibility_estimates(indices=[], return_numpy=True)
    assert dense.shape == (0, N_PEAKS)


def test_threshold_keeps_values_equal_to_it(multi_poisson):
    # Poisson peaks with a subset: the threshold is applied to the dense minibatch values
    model, _, _ = multi_poisson
    peaks = list(model.feature_names["atac"][[4, 9]])
    dense = model.get_accessibility_estimates(region_list=peaks, return_numpy=True)
    thr = float(dense[5, 1])
    csr = model.get_accessibility_estimates(region_list=peaks, threshold=thr, return_numpy=True)
    assert csr[5, 1] == dense[5, 1]
    assert csr.nnz == (dense >= np.float32(thr)).sum()


def test_sparse_decoding_skips_what_the_head_can_bound(multi, multi_poisson, monkeypatch):
    """With a threshold, the head picks the entries (Bernoulli bounds the others unseen)."""
    from scgenvae.module._heads import BernoulliHead, LikelihoodHead

    counted = []
    original = BernoulliHead.predictive_mean_at_least

    def spy(self, *args, **kwargs):
        counted.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BernoulliHead, "predictive_mean_at_least", spy)
    model, _, _ = multi
    model.get_accessibility_estimates(threshold=0.5, batch_size=16)
    assert counted == ["BernoulliHead"] * 3
    counted.clear()
    model.get_accessibility_estimates(threshold=0.5, region_list=["peak_3"], batch_size=16)
    assert counted == ["BernoulliHead"] * 3
    original_base = LikelihoodHead.predictive_mean_at_least

    def spy_base(self, *args, **kwargs):
        counted.append(type(self).__name__)
        return original_base(self, *args, **kwargs)

    monkeypatch.setattr(LikelihoodHead, "predictive_mean_at_least", spy_base)
    counted.clear()
    pmodel, _, _ = multi_poisson
    pmodel.get_accessibility_estimates(threshold=0.01, batch_size=16)
    assert counted == ["PoissonHead"] * 3
    counted.clear()
    # Poisson shares need every peak: a subset is thresholded after slicing
    pmodel.get_accessibility_estimates(threshold=0.01, region_list=["peak_3"], batch_size=16)
    assert counted == []


def test_lacking_warning_names_the_output(multi):
    model, _, has = multi
    with pytest.warns(UserWarning, match=r"their expression values are NaN"):
        model.get_normalized_expression(modality="atac")
    with pytest.warns(UserWarning, match=r"their accessibility estimates are NaN"):
        model.get_accessibility_estimates(modality="rna", threshold=0.5)


def test_missing_names_listed_up_to_three(rna):
    model, _ = rna
    with pytest.raises(
        ValueError,
        match=r"^4 names of `gene_list` are not rna features of the model, for instance "
        r"\['a', 'b', 'c'\]; ",
    ):
        model.get_normalized_expression(gene_list=["a", "b", "c", "d"])


# ---------------------------------------------------------------- getters mutated since the
# decorators went (docstrings filled after the class bodies, inference_mode as a with block)
def test_latent_sample_is_a_draw_of_the_posterior(rna):
    model, _ = rna
    _, inf = _one_batch(model)
    qz = inf[MODULE_KEYS.QZ_KEY]
    mean = model.get_latent_representation(give_mean=True)
    np.testing.assert_allclose(mean, qz.loc.numpy(), rtol=1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        drawn = model.get_latent_representation(give_mean=False, batch_size=BIG)
        torch.manual_seed(11)
        with torch.inference_mode():
            ((_, inf2),) = list(model._iter_inference(batch_size=BIG))
            by_hand = inf2[MODULE_KEYS.QZ_KEY].sample().numpy()
    assert drawn.dtype == np.float32
    np.testing.assert_allclose(drawn, by_hand, rtol=1e-6)
    assert not np.allclose(drawn, mean, rtol=1e-3)
    assert not np.isnan(drawn).any()


@torch.inference_mode()
def _marginal_by_hand(model, rng: int, k: int, batch_size: int = BIG, data=None) -> np.ndarray:
    """log-mean-exp over ``k`` importance weights (numpy), draws as the getter takes them."""
    out = []
    prior = model.module.prior
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(rng))
        for tensors, inf in model._iter_inference(data, batch_size=batch_size):
            qz = inf[MODULE_KEYS.QZ_KEY]
            weights = []
            for i in range(k):
                z = inf[MODULE_KEYS.Z_KEY] if i == 0 else qz.sample()
                at = {**inf, MODULE_KEYS.Z_KEY: z}
                gen = model.module.generative(**model.module._get_generative_input(tensors, at))
                losses = model.module.loss(tensors, at, gen, kl_weight=1.0)
                log_px = -sum(losses.reconstruction_loss.values())
                w = log_px + prior.log_prob(z) - qz.log_prob(z).sum(-1)
                weights.append(w.double().numpy())
            w = np.stack(weights)
            top = w.max(0)
            out.append(top + np.log(np.exp(w - top).mean(0)))
    return np.concatenate(out)


@pytest.mark.parametrize("which", ["rna", "clustered"])
def test_marginal_ll_is_the_log_mean_of_the_importance_weights(which, rna, clustered):
    model = {"rna": rna, "clustered": clustered}[which][0]
    out = model.get_marginal_ll(n_mc_samples=3, batch_size=16, return_mean=False, rng=4)
    assert out.dtype == np.float64
    assert out.shape == (N_CELLS,)
    expected = _marginal_by_hand(model, 4, 3, batch_size=16)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    mean = model.get_marginal_ll(n_mc_samples=3, batch_size=16, rng=4)
    assert isinstance(mean, float)
    np.testing.assert_allclose(mean, expected.mean(), rtol=1e-6)
    # the draws of the first minibatch are not those of one minibatch of every cell
    assert not np.allclose(_marginal_by_hand(model, 4, 3), expected, rtol=1e-4)
    # one draw is the first draw's weight, whatever the other draws
    np.testing.assert_allclose(
        model.get_marginal_ll(n_mc_samples=1, return_mean=False, rng=4),
        _marginal_by_hand(model, 4, 1),
        rtol=1e-6,
    )


def test_marginal_ll_of_one_modality_and_some_cells(multi):
    model, _, _ = multi
    idx = [12, 3, 30, 0]
    out = model.get_marginal_ll(
        n_mc_samples=2, indices=idx, modality="atac", return_mean=False, rng=9
    )
    prior = model.module.prior
    with torch.inference_mode(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(9))
        ((tensors, inf),) = list(
            model._iter_inference(batch_size=BIG, use_modalities=("atac",), indices=idx)
        )
        qz = inf[MODULE_KEYS.QZ_KEY]
        w = []
        for z in (inf[MODULE_KEYS.Z_KEY], qz.sample()):
            at = {**inf, MODULE_KEYS.Z_KEY: z}
            gen = model.module.generative(**model.module._get_generative_input(tensors, at))
            losses = model.module.loss(tensors, at, gen)
            log_px = -sum(losses.reconstruction_loss.values())
            w.append((log_px + prior.log_prob(z) - qz.log_prob(z).sum(-1)).double().numpy())
    w = np.stack(w)
    np.testing.assert_allclose(out, np.log(np.exp(w).mean(0)), rtol=1e-6)
    with pytest.raises(ValueError, match=r"^`modality='x'` is not one of"):
        model.get_marginal_ll(n_mc_samples=1, modality="x")


@torch.inference_mode()
def _predictive_by_hand(
    model, rng, n_samples, *, target, batch_size=BIG, use=None, code=None, data=None, indices=None
):
    blocks = [[] for _ in range(n_samples)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(rng))
        for tensors, inf in model._iter_inference(
            data, batch_size=batch_size, use_modalities=use, indices=indices
        ):
            qz = inf[MODULE_KEYS.QZ_KEY]
            gen_in = model.module._get_generative_input(tensors, inf)
            observed = inf[MODULE_KEYS.OBSERVED_KEY]
            gen_in[MODULE_KEYS.LIBRARY_KEY] = {
                m: torch.where(observed[m], lib, torch.nan)
                for m, lib in inf[MODULE_KEYS.LIBRARY_KEY].items()
            }
            for s in range(n_samples):
                gen_in[MODULE_KEYS.Z_KEY] = qz.sample()
                gen = model.module.generative(**gen_in, transform_batch=code)
                blocks[s].append(gen[target][MODULE_KEYS.PX_KEY].sample().numpy())
    return np.concatenate([np.concatenate(b) for b in blocks])


def test_predictive_sample_is_draws_of_the_module_in_sample_blocks(rna, multi):
    model, _ = rna
    out = model.posterior_predictive_sample(n_samples=3, batch_size=16, rng=2)
    assert sparse.isspmatrix_csr(out) or isinstance(out, sparse.csr_array)
    assert out.dtype == np.float32
    expected = _predictive_by_hand(model, 2, 3, target="rna", batch_size=16)
    assert expected.shape == (3 * N_CELLS, N_GENES)
    np.testing.assert_array_equal(out.toarray(), expected)
    assert (expected > 0).any()
    # another rng, other draws; the three draws of a cell differ
    other = model.posterior_predictive_sample(n_samples=3, batch_size=16, rng=3).toarray()
    assert not np.array_equal(other, expected)
    blocks = expected.reshape(3, N_CELLS, N_GENES)
    assert not np.array_equal(blocks[0], blocks[1])
    # under another batch
    code = model._batch_code("batch_1")
    np.testing.assert_array_equal(
        model.posterior_predictive_sample(transform_batch="batch_1", rng=2).toarray(),
        _predictive_by_hand(model, 2, 1, target="rna", code=code),
    )
    mmodel, _, _ = multi
    # the default target is the first modality (RNA), from the joint posterior
    np.testing.assert_array_equal(
        mmodel.posterior_predictive_sample(rng=5).toarray(),
        _predictive_by_hand(mmodel, 5, 1, target="rna"),
    )
    # peaks, from the RNA encoder alone (cells without RNA: the prior)
    atac = mmodel.posterior_predictive_sample(target="atac", modality="rna", n_samples=2, rng=5)
    np.testing.assert_array_equal(
        atac.toarray(), _predictive_by_hand(mmodel, 5, 2, target="atac", use=("rna",))
    )
    with pytest.raises(
        ValueError, match=r"^`target='protein'` is not one of \['rna', 'atac'\]\.$"
    ):
        mmodel.posterior_predictive_sample(target="protein")
    with pytest.raises(ValueError, match=r"^`modality='both'` is not one of"):
        mmodel.posterior_predictive_sample(modality="both")
    with pytest.raises(ValueError, match=r"^`transform_batch='nope'` is not a training batch"):
        mmodel.posterior_predictive_sample(transform_batch="nope")


def test_library_size_factors_observed_or_predicted(multi, rna):
    model, mdata, has = multi
    tensors, inf = _one_batch(model)
    with torch.inference_mode():
        gen_in = model.module._get_generative_input(tensors, inf)
        gen_in[MODULE_KEYS.Z_KEY] = inf[MODULE_KEYS.QZ_KEY].loc
        gen = model.module.generative(**gen_in)
    df = model.get_library_size_factors(batch_size=16)
    assert list(df.columns) == ["rna", "atac"]
    pd.testing.assert_index_equal(df.index, mdata.obs_names)
    for m in ("rna", "atac"):
        assert df[m].dtype == np.float64
        observed = inf[MODULE_KEYS.LIBRARY_KEY][m].numpy()
        predicted = gen[m][MODULE_KEYS.LIBRARY_KEY].loc.exp().numpy()
        np.testing.assert_allclose(df[m].to_numpy()[has[m]], observed[has[m]], rtol=1e-6)
        np.testing.assert_allclose(df[m].to_numpy()[~has[m]], predicted[~has[m]], rtol=1e-5)
        assert (df[m].to_numpy()[~has[m]] > 0).all()
        # the prediction is not the observed size where there is one
        assert not np.allclose(predicted[has[m]], observed[has[m]], rtol=1e-2)
    some = model.get_library_size_factors(indices=[30, 2])
    assert list(some.index) == list(mdata.obs_names[[30, 2]])
    np.testing.assert_allclose(some.to_numpy(), df.to_numpy()[[30, 2]], rtol=1e-6)
    rmodel, adata = rna
    new = adata[5:9].copy()
    new.obs_names = [f"n{i}" for i in range(4)]
    out = rmodel.get_library_size_factors(new, indices=[3, 0])
    assert list(out.columns) == ["rna"]
    assert list(out.index) == ["n3", "n0"]
    np.testing.assert_allclose(
        out["rna"].to_numpy(), np.asarray(adata.X[[8, 5]].sum(1)).ravel(), rtol=1e-6
    )


def test_region_factors_are_the_bernoulli_parameters(multi, multi_poisson):
    model, _, _ = multi
    decoder = model.module.decoders["atac"]
    df = model.get_region_factors()
    assert list(df.columns) == ["region_factor", "region_logit", "depth_response"]
    pd.testing.assert_index_equal(df.index, model.feature_names["atac"])
    logit = (decoder.head.bias + decoder.region_bias).detach().double().numpy()
    np.testing.assert_allclose(df["region_logit"].to_numpy(), logit, rtol=1e-12)
    np.testing.assert_allclose(
        df["region_factor"].to_numpy(), torch.sigmoid(torch.from_numpy(logit)).numpy(), rtol=1e-12
    )
    np.testing.assert_allclose(
        df["depth_response"].to_numpy(), decoder.region_depth.detach().double().numpy()
    )
    assert all(t == np.float64 for t in df.dtypes)
    assert len(np.unique(df["depth_response"])) == N_PEAKS  # perturbed: not all ones
    with pytest.raises(
        ValueError,
        match=r"^region factors are parameters of the Bernoulli ATAC likelihood; this model "
        r"has `atac_likelihood='poisson'`\.$",
    ):
        multi_poisson[0].get_region_factors()


@pytest.fixture(scope="module")
def covariates():
    adata = scgenvae.datasets.synthetic_rna(n_obs=N_CELLS, n_vars=N_GENES, rng=0)
    adata.obs["depth"] = np.linspace(-1.0, 1.0, N_CELLS)
    PoissonVAE.setup_anndata(
        adata,
        batch_key="batch",
        categorical_covariate_keys=["group"],
        continuous_covariate_keys=["depth"],
    )
    return _perturbed(PoissonVAE(adata, n_latent=3, n_hidden=8), 3), adata


@torch.inference_mode()
def _decoded_by_hand(model, z, *, code=None, cont_value=0.0):
    """Shares of each modality at ``z`` under batch 0 (or ``code``), covariates 0."""
    z = torch.as_tensor(z, dtype=torch.float32)
    n = len(z)
    dims = model._summary_dims()
    cats = [torch.zeros(n, 1, dtype=torch.long) for _ in range(1 + len(dims["n_cats_per_cov"]))]
    k = dims["n_continuous_cov"]
    cont = torch.full((n, k), cont_value) if k else None
    gen = model.module.generative(
        z, None, cats, cont, transform_batch=code, observed_library=False
    )
    return {
        m: model.module.modalities[m]
        .head.predictive_mean(gen[m], unobserved_depth=torch.ones(n, dtype=torch.bool))
        .numpy()
        for m in model.module.modalities
    }


def test_decode_latent_is_the_decoder_at_those_points(rna, multi, covariates):
    z = np.random.default_rng(0).normal(size=(5, 3))
    for model in (rna[0], multi[0], covariates[0]):
        out = model.decode_latent(z)
        expected = _decoded_by_hand(model, z)
        assert list(out) == list(model.module.modalities)
        for m, v in out.items():
            assert v.shape == (5, model.module.modalities[m].n_input)
            np.testing.assert_allclose(v, expected[m], rtol=1e-6)
        np.testing.assert_allclose(out["rna"].sum(1), 1.0, rtol=1e-5)
        # in blocks of 2 points: the same
        blocks = model.decode_latent(z.tolist(), batch_size=2)
        for m, v in blocks.items():
            np.testing.assert_allclose(v, out[m], rtol=1e-6)
        under = model.decode_latent(z, transform_batch="batch_1")
        code = torch.tensor([[1]])
        np.testing.assert_allclose(
            under["rna"], _decoded_by_hand(model, z, code=code)["rna"], rtol=1e-6
        )
        assert not np.allclose(under["rna"], out["rna"], rtol=1e-3)
    # the covariates are decoded at zero: not at one
    model = covariates[0]
    assert not np.allclose(
        model.decode_latent(z)["rna"], _decoded_by_hand(model, z, cont_value=1.0)["rna"]
    )
    model = multi[0]
    assert (model.decode_latent(z)["atac"] < 1).all()
    for bad in (np.zeros(3), np.zeros((2, 4)), np.zeros((2, 3, 1))):
        with pytest.raises(
            ValueError,
            match=rf"^`z` must have shape \(points, 3\), got {re.escape(str(bad.shape))}\.$",
        ):
            model.decode_latent(bad)
    with pytest.raises(ValueError, match=r"^`transform_batch='nope'` is not a training batch"):
        model.decode_latent(z, transform_batch="nope")


def test_decode_latent_of_an_untrained_model_is_refused():
    adata = scgenvae.datasets.synthetic_rna(n_obs=N_CELLS, n_vars=N_GENES, rng=0)
    PoissonVAE.setup_anndata(adata)
    model = PoissonVAE(adata, n_latent=3, n_hidden=8)
    with pytest.raises(RuntimeError, match="not trained|train"):
        model.decode_latent(np.zeros((2, 3)))


def test_expression_at_a_library_size(rna):
    model, adata = rna
    shares = model.get_normalized_expression(return_numpy=True)
    out = model.get_normalized_expression(library_size=1e4, return_numpy=True)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, shares * 1e4, rtol=1e-6)
    totals = np.asarray(adata.X.sum(1)).ravel()
    assert len(np.unique(totals)) > 1
    latent = model.get_normalized_expression(library_size="latent", return_numpy=True)
    np.testing.assert_allclose(latent, shares * totals[:, None], rtol=1e-6)
    some = model.get_normalized_expression(library_size="latent", indices=[7, 2], batch_size=1)
    assert list(some.index) == list(adata.obs_names[[7, 2]])
    np.testing.assert_allclose(some.to_numpy(), shares[[7, 2]] * totals[[7, 2], None], rtol=1e-6)
    new = adata[10:14].copy()
    new_out = model.get_normalized_expression(new, library_size="latent", indices=[3, 1])
    np.testing.assert_allclose(
        new_out.to_numpy(), shares[[13, 11]] * totals[[13, 11], None], rtol=1e-5
    )
    np.testing.assert_allclose(
        model.get_normalized_expression(library_size="latent").to_numpy(), latent, rtol=1e-6
    )


@pytest.mark.parametrize("bad", [True, "0.5", 0, 0.0, -0.2, 1.5, np.float64(1.01), [0.5]])
def test_threshold_must_be_a_number_in_the_unit_interval(multi, bad):
    model, _, _ = multi
    with pytest.raises(
        ValueError,
        match=r"^`threshold` must be a number in \(0, 1\] \(values below it are dropped\) or "
        rf"None \(dense output\), got {re.escape(repr(bad))}\.$",
    ):
        model.get_accessibility_estimates(threshold=bad)


def test_threshold_of_other_number_types(multi):
    model, _, _ = multi
    dense = model.get_accessibility_estimates(return_numpy=True)
    for thr in (1, np.float32(0.5), 0.5):
        csr = model.get_accessibility_estimates(threshold=thr, return_numpy=True)
        assert csr.nnz == (dense >= np.float32(thr)).sum()


def test_multi_expression_frames_and_arrays(multi):
    model, mdata, _ = multi
    arr = model.get_normalized_expression(return_numpy=True, batch_size=9)
    assert isinstance(arr, np.ndarray)
    df = model.get_normalized_expression(indices=[5, 1], gene_list=["gene_4", "gene_2"])
    assert isinstance(df, pd.DataFrame)
    assert list(df.index) == list(mdata.obs_names[[5, 1]])
    assert list(df.columns) == ["gene_4", "gene_2"]
    np.testing.assert_allclose(df.to_numpy(), arr[[5, 1]][:, [4, 2]], rtol=1e-5)
    code = torch.tensor([[1]])
    np.testing.assert_allclose(
        model.get_normalized_expression(transform_batch="batch_1", return_numpy=True),
        _expected(model, "rna", code=code),
        rtol=1e-5,
    )
    acc = model.get_accessibility_estimates(return_numpy=True, batch_size=9)
    assert isinstance(acc, np.ndarray)
    sub = model.get_accessibility_estimates(indices=[5, 1], region_list=["peak_7", "peak_0"])
    assert list(sub.index) == list(mdata.obs_names[[5, 1]])
    np.testing.assert_allclose(sub.to_numpy(), acc[[5, 1]][:, [7, 0]], rtol=1e-5)


def test_latent_of_new_data_in_minibatches_and_its_warning(multi, monkeypatch):
    model, mdata, has = multi
    full = model.get_latent_representation()
    new = mdata[10:30].copy()
    np.testing.assert_allclose(model.get_latent_representation(new), full[10:30], rtol=1e-5)
    calls = _spy(monkeypatch, model.module, "inference")
    n = int((~has["rna"]).sum())
    with pytest.warns(UserWarning, match="cells have no") as record:
        # the 6 cells without RNA are the last ones: 2 in the ninth minibatch, 4 in the tenth
        z = model.get_latent_representation(modality="rna", batch_size=4)
    assert _rows(calls, "x") == [4] * 10
    assert len(record) == 1
    assert str(record[0].message) == (
        f"{n} of {N_CELLS} cells have no 'rna' data (absent from the modality, or no counts): "
        "their latent representations are NaN, as they are computed from 'rna' alone. Use "
        "`modality='joint'` for an estimate from what each cell has, or pass `indices` to "
        "leave them out."
    )
    np.testing.assert_array_equal(np.isnan(z).all(1), ~has["rna"])


def test_lacking_warning_of_several_modalities_and_its_text(multi):
    model, _, _ = multi
    with pytest.warns(UserWarning, match="cells have no") as record:
        model._warn_lacking(3, 1234, ("rna", "atac"), "values")
    assert record[0].category is UserWarning
    assert str(record[0].message) == (
        "3 of 1,234 cells have no 'rna' or 'atac' data (absent from the modality, or no "
        "counts): their values are NaN, as they are computed from 'rna' or 'atac' alone. Use "
        "`modality='joint'` for an estimate from what each cell has, or pass `indices` to "
        "leave them out."
    )


def test_criticism_of_new_data_and_some_cells(rna, monkeypatch):
    model, adata = rna
    new = adata[10:30].copy()
    out = model.get_marginal_ll(new, n_mc_samples=2, batch_size=6, return_mean=False, rng=3)
    assert out.shape == (20,)
    np.testing.assert_allclose(out, _marginal_by_hand(model, 3, 2, 6, data=new), rtol=1e-6)
    rec = model.get_reconstruction_error(new, batch_size=6, return_mean=False, rng=3)["rna"]
    losses = []
    with torch.inference_mode(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(3))
        for tensors, inf in model._iter_inference(new, batch_size=6):
            gen = model.module.generative(**model.module._get_generative_input(tensors, inf))
            losses.append(model.module.loss(tensors, inf, gen).reconstruction_loss["rna"])
    np.testing.assert_allclose(rec, torch.cat(losses).numpy(), rtol=1e-5)
    some, _ = _losses(model, 8, indices=[9, 2, 31])
    np.testing.assert_allclose(
        model.get_reconstruction_error(indices=[9, 2, 31], return_mean=False, rng=8)["rna"],
        some.reconstruction_loss["rna"].numpy(),
        rtol=1e-5,
    )
    calls = _spy(monkeypatch, model.module, "inference")
    model.get_reconstruction_error(batch_size=16)
    assert _rows(calls, "x") == [16, 16, 8]
    draws = model.posterior_predictive_sample(new, indices=[4, 0], n_samples=2, rng=1)
    assert draws.shape == (4, N_GENES)
    by_hand = _predictive_by_hand(model, 1, 2, target="rna", data=new, indices=[4, 0])
    np.testing.assert_array_equal(draws.toarray(), by_hand)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.get_marginal_ll(n_mc_samples=1),
        lambda m: m.posterior_predictive_sample(),
        lambda m: m.get_library_size_factors(),
        lambda m: m.get_latent_representation(),
    ],
)
def test_untrained_model_is_refused_by_every_getter(call):
    adata = scgenvae.datasets.synthetic_rna(n_obs=N_CELLS, n_vars=N_GENES, rng=0)
    PoissonVAE.setup_anndata(adata)
    model = PoissonVAE(adata, n_latent=3, n_hidden=8)
    with pytest.raises(RuntimeError, match="not trained|train"):
        call(model)


def test_untrained_multi_model_has_no_region_factors():
    mdata = scgenvae.datasets.synthetic_multiome(
        n_obs=N_CELLS, n_genes=N_GENES, n_peaks=N_PEAKS, rng=0
    )
    MultiVAE.setup_mudata(mdata)
    model = MultiVAE(mdata, n_latent=3, n_hidden=8)
    with pytest.raises(RuntimeError, match="not trained|train"):
        model.get_region_factors()


def test_multi_getters_of_new_data(multi):
    model, mdata, _ = multi
    expr = model.get_normalized_expression(return_numpy=True)
    acc = model.get_accessibility_estimates(return_numpy=True)
    new = mdata[10:30].copy()
    df = model.get_normalized_expression(new, indices=[3, 1], gene_list=["gene_5"])
    assert list(df.index) == list(mdata.obs_names[[13, 11]])
    np.testing.assert_allclose(df.to_numpy(), expr[[13, 11]][:, [5]], rtol=1e-5)
    np.testing.assert_allclose(
        model.get_normalized_expression(new, return_numpy=True), expr[10:30], rtol=1e-5
    )
    df = model.get_accessibility_estimates(new, indices=[3, 1], region_list=["peak_9"])
    assert list(df.index) == list(mdata.obs_names[[13, 11]])
    np.testing.assert_allclose(df.to_numpy(), acc[[13, 11]][:, [9]], rtol=1e-5)
    np.testing.assert_allclose(
        model.get_accessibility_estimates(new, return_numpy=True), acc[10:30], rtol=1e-5
    )
    with pytest.raises(ValueError, match=r"^1 names of `gene_list` are not rna features"):
        model.get_normalized_expression(gene_list=["nope"])


def test_accessibility_under_the_old_modality_name(multi):
    model, _, _ = multi
    with pytest.warns(UserWarning, match="cells have no"):
        expected = model.get_accessibility_estimates(modality="rna", return_numpy=True)
    with (
        pytest.warns(UserWarning, match="cells have no"),
        pytest.warns(FutureWarning, match=r"^`use_modality` is now `modality`"),
    ):
        old = model.get_accessibility_estimates(use_modality="rna", return_numpy=True)
    np.testing.assert_array_equal(old, expected)


def test_sizes_of_new_cells_chosen_by_name(rna, monkeypatch):
    model, adata = rna
    new = adata[5:9].copy()
    new.obs_names = [f"n{i}" for i in range(4)]
    totals = np.asarray(adata.X[[8, 5]].sum(1)).ravel()
    sizes = model.get_library_size_factors(new, indices=["n3", "n0"])
    assert list(sizes.index) == ["n3", "n0"]
    np.testing.assert_allclose(sizes["rna"].to_numpy(), totals, rtol=1e-6)
    shares = model.get_normalized_expression(return_numpy=True)[[8, 5]]
    latent = model.get_normalized_expression(
        new, library_size="latent", indices=["n3", "n0"], return_numpy=True
    )
    np.testing.assert_allclose(latent, shares * totals[:, None], rtol=1e-5)
    calls = _spy(monkeypatch, model.module, "inference")
    model.get_library_size_factors(batch_size=16)
    assert _rows(calls, "x") == [16, 16, 8]


def test_documented_defaults_of_the_criticism_and_decoding_getters():
    """The defaults the docs state: 1,000 importance samples for the marginal likelihood
    (as scvi-tools), 1,024 latent points per forward pass in ``decode_latent``."""
    import inspect

    sig = inspect.signature(MultiVAE.get_marginal_ll)
    assert sig.parameters["n_mc_samples"].default == 1000
    assert inspect.signature(PoissonVAE.decode_latent).parameters["batch_size"].default == 1024
