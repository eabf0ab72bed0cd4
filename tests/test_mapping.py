"""Reference mapping: query preparation, embedding surgery, frozen training, label transfer."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import scgenvae
from scgenvae.datasets import synthetic_multiome, synthetic_rna
from scgenvae.model import MultiVAE, PoissonVAE

TRAIN = {"enable_progress_bar": False, "seed": 0}


def _dense(x):
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


@pytest.fixture(scope="module")
def _rna_split():
    """Three batches and three groups; the reference lacks batch 2 and group 2."""
    adata = synthetic_rna(n_obs=600, n_vars=60, n_batches=3, n_groups=3, rng=0)
    in_ref = ((adata.obs["batch"] != "batch_2") & (adata.obs["group"] != "group_2")).to_numpy()
    ref = adata[in_ref].copy()
    query = adata[(adata.obs["batch"] == "batch_2").to_numpy()].copy()
    PoissonVAE.setup_anndata(ref, batch_key="batch")
    model = PoissonVAE(ref, n_latent=5, n_hidden=32)
    model.train(max_epochs=150, **TRAIN)
    return ref, query, model


@pytest.fixture
def rna_split(_rna_split):
    ref, query, model = _rna_split
    return ref, query.copy(), model


# ------------------------------------------------------------------------ prepare_query_*
def test_prepare_query_orders_pads_and_drops(rna_split, caplog):
    _, query, model = rna_split
    names = list(model.feature_names["rna"])
    rng = np.random.default_rng(0)
    kept = [n for n in rng.permutation(names) if n not in names[:6]]  # 10% missing, shuffled
    user = query[:, kept].copy()
    user.var["note"] = "x"
    extra = sparse.csr_matrix(np.ones((user.n_obs, 2), dtype=np.float32))
    from anndata import AnnData, concat

    user = concat(
        [user, AnnData(X=extra, obs=user.obs, var=pd.DataFrame(index=["extra_a", "extra_b"]))],
        axis=1,
        merge="first",
    )
    user.layers["counts"] = user.X.copy()
    before_x, before_vars = _dense(user.X).copy(), list(user.var_names)
    with caplog.at_level(logging.INFO, logger="scgenvae"):
        out = PoissonVAE.prepare_query_anndata(user, model)
    assert "6 of the reference's 60 genes" in caplog.text
    assert "2 query genes not in the reference are dropped" in caplog.text
    assert list(out.var_names) == names
    x = _dense(out.X)
    assert not x[:, :6].any()  # padded with zeros
    assert np.array_equal(x[:, 6:], _dense(query.X)[:, 6:])
    assert np.array_equal(_dense(out.layers["counts"]), x)
    assert out.obs.equals(user.obs)
    # the user's object is untouched
    assert list(user.var_names) == before_vars
    assert np.array_equal(_dense(user.X), before_x)
    assert out is not user


def test_prepare_query_refuses_under_half_shared(rna_split):
    _, query, model = rna_split
    few = query[:, query.var_names[:29]].copy()  # 29 of 60
    with pytest.raises(ValueError, match="29 of the reference's 60 genes"):
        PoissonVAE.prepare_query_anndata(few, model)
    ok = PoissonVAE.prepare_query_anndata(query[:, query.var_names[:30]].copy(), model)
    assert ok.n_vars == 60


def test_prepare_query_from_saved_folder(rna_split, tmp_path):
    _, query, model = rna_split
    model.save(tmp_path / "ref")
    out = PoissonVAE.prepare_query_anndata(query[:, ::-1].copy(), tmp_path / "ref")
    assert list(out.var_names) == list(model.feature_names["rna"])
    with pytest.raises(ValueError, match="the reference is a PoissonVAE"):
        MultiVAE.prepare_query_mudata(query, tmp_path / "ref")


def test_load_query_data_needs_prepared_features(rna_split):
    _, query, model = rna_split
    with pytest.raises(ValueError, match="prepare_query_anndata"):
        PoissonVAE.load_query_data(query[:, ::-1].copy(), model)


def _assert_same(a, b):
    """Two AnnData objects hold the same data and annotations (slots the tests use)."""
    assert list(a.obs_names) == list(b.obs_names)
    assert list(a.var_names) == list(b.var_names)
    assert a.obs.equals(b.obs)
    assert a.var.equals(b.var)
    assert np.array_equal(_dense(a.X), _dense(b.X))
    assert set(a.layers) == set(b.layers)
    assert set(a.obsm) == set(b.obsm)
    for k in a.obsm:
        assert np.array_equal(a.obsm[k], b.obsm[k])
    assert set(a.uns) == set(b.uns)
    assert set(a.obsp) == set(b.obsp)


def test_mapping_leaves_the_users_objects_unchanged(rna_split):
    ref, query, model = rna_split
    user = query[:, query.var_names[::-1][:-3]].copy()  # reordered, 3 genes missing
    user.obsm["mine"] = np.ones((user.n_obs, 2))
    user.uns["note"] = {"a": 1}
    user_before, ref_before = user.copy(), ref.copy()
    state_before = {k: v.clone() for k, v in model.module.state_dict().items()}
    batches_before = list(model.adata_manager.get_state_registry("batch").categorical_mapping)
    prepared = PoissonVAE.prepare_query_anndata(user, model)
    prepared_before = prepared.copy()
    qmodel = PoissonVAE.load_query_data(prepared, model)
    qmodel.train(max_epochs=2, **TRAIN)
    qmodel.get_latent_representation(prepared)
    qmodel.get_latent_representation(ref)
    _assert_same(user, user_before)
    _assert_same(prepared, prepared_before)  # set-up and training write nothing into it
    _assert_same(ref, ref_before)
    after = model.module.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state_before.items())
    assert list(model.adata_manager.get_state_registry("batch").categorical_mapping) == (
        batches_before
    )


def test_prepare_query_mudata_refuses_under_half_shared_peaks(multi_split):
    from scgenvae._quiet import quiet

    _, query, model = multi_split
    with quiet():
        few = query.copy()
        few.mod["atac"] = few.mod["atac"][:, :49].copy()  # 49 of 100 peaks
        few.update()
    with pytest.raises(ValueError, match="49 of the reference's 100 peaks"):
        MultiVAE.prepare_query_mudata(few, model)
    with quiet():
        half = query.copy()
        half.mod["atac"] = half.mod["atac"][:, :50].copy()
        half.update()
    assert MultiVAE.prepare_query_mudata(half, model).mod["atac"].n_vars == 100


# ------------------------------------------------------------------------ load_query_data
def test_frozen_query_training_keeps_reference_latent(rna_split):
    ref, query, model = rna_split
    z_ref = model.get_latent_representation(ref)
    state_before = {k: v.clone() for k, v in model.module.state_dict().items()}
    qmodel = PoissonVAE.load_query_data(PoissonVAE.prepare_query_anndata(query, model), model)
    batches = qmodel.adata_manager.get_state_registry("batch").categorical_mapping
    assert list(batches) == ["batch_0", "batch_1", "batch_2"]
    # the reference model is not changed
    assert len(model.adata_manager.get_state_registry("batch").categorical_mapping) == 2
    trainable = [n for n, p in qmodel.module.named_parameters() if p.requires_grad]
    assert trainable
    assert all("embeddings" in n for n in trainable)
    emb = "decoders.rna.trunk.injections.0.embeddings.0.weight"
    start = qmodel.module.state_dict()[emb].clone()
    assert torch.allclose(start[2], state_before[emb].mean(0))  # new row: the reference mean
    np.testing.assert_array_equal(qmodel.get_latent_representation(ref), z_ref)

    qmodel.train(max_epochs=5, **TRAIN)
    after = qmodel.module.state_dict()
    np.testing.assert_array_equal(qmodel.get_latent_representation(ref), z_ref)
    assert torch.equal(after[emb][:2], state_before[emb])
    assert not torch.equal(after[emb][2], start[2])  # the new row was trained
    for key, value in state_before.items():
        if key != emb and "embeddings" not in key:
            assert torch.equal(after[key], value), key
    assert "elbo_train" in qmodel.history
    assert len(qmodel.history["elbo_train"]) == 5
    assert np.isfinite(qmodel.get_latent_representation()).all()


def test_unfrozen_query_training_moves_reference_latent(rna_split):
    ref, query, model = rna_split
    z_ref = model.get_latent_representation(ref)
    qmodel = PoissonVAE.load_query_data(
        PoissonVAE.prepare_query_anndata(query, model), model, freeze=False
    )
    assert all(p.requires_grad for p in qmodel.module.parameters())
    qmodel.train(max_epochs=3, **TRAIN)
    assert not np.allclose(qmodel.get_latent_representation(ref), z_ref, atol=1e-6)
    np.testing.assert_array_equal(model.get_latent_representation(ref), z_ref)


def test_query_without_new_categories_has_nothing_to_train(rna_split):
    ref, _, model = rna_split
    again = ref.copy()
    qmodel = PoissonVAE.load_query_data(again, model)
    np.testing.assert_array_equal(
        qmodel.get_latent_representation(), model.get_latent_representation(ref)
    )
    with pytest.raises(ValueError, match="nothing to train"):
        qmodel.train(max_epochs=1, **TRAIN)


def test_query_model_from_folder_saves_and_loads(rna_split, tmp_path):
    _, query, model = rna_split
    model.save(tmp_path / "ref")
    prepared = PoissonVAE.prepare_query_anndata(query, tmp_path / "ref")
    qmodel = PoissonVAE.load_query_data(prepared, tmp_path / "ref")
    qmodel.train(max_epochs=2, **TRAIN)
    z = qmodel.get_latent_representation(prepared)
    qmodel.save(tmp_path / "query")
    again = PoissonVAE.load(tmp_path / "query", prepared.copy())
    np.testing.assert_allclose(again.get_latent_representation(prepared), z, atol=1e-6)


def test_new_covariate_category_extends_its_embedding():
    adata = synthetic_rna(n_obs=240, n_vars=30, n_batches=2, n_groups=3, rng=1)
    adata.obs["donor"] = np.where(np.arange(adata.n_obs) % 2, "d1", "d2")
    ref = adata[(adata.obs["batch"] == "batch_0").to_numpy()].copy()
    query = adata[(adata.obs["batch"] == "batch_1").to_numpy()].copy()
    query.obs["donor"] = "d3"
    PoissonVAE.setup_anndata(ref, batch_key="batch", categorical_covariate_keys=["donor"])
    model = PoissonVAE(ref, n_latent=3, n_hidden=16)
    model.train(max_epochs=2, **TRAIN)
    z_ref = model.get_latent_representation(ref)
    qmodel = PoissonVAE.load_query_data(query, model)
    # one training batch: the reference had no batch embedding; the query's batch gets one
    assert qmodel.module.n_batch == 2
    qmodel.train(max_epochs=2, **TRAIN)
    np.testing.assert_array_equal(qmodel.get_latent_representation(ref), z_ref)
    cats = qmodel.adata_manager.get_state_registry("extra_categorical_covs")
    assert list(cats.mappings["donor"]) == ["d1", "d2", "d3"]


def test_training_a_loaded_model_says_it_fine_tunes(rna_split, tmp_path, caplog):
    ref, _, model = rna_split
    model.save(tmp_path / "ref")
    loaded = PoissonVAE.load(tmp_path / "ref", ref.copy())
    with caplog.at_level(logging.INFO, logger="scgenvae"):
        loaded.train(max_epochs=1, **TRAIN)
    assert "fine-tunes all of its weights" in caplog.text


# ------------------------------------------------------------------------ MultiVAE
@pytest.fixture(scope="module")
def multi_split():
    mdata = synthetic_multiome(n_obs=300, n_genes=50, n_peaks=100, n_batches=3, rng=0)
    in_ref = (mdata.obs["batch"] != "batch_2").to_numpy()
    ref = mdata[in_ref].copy()
    query = mdata[~in_ref].copy()
    MultiVAE.setup_mudata(ref, batch_key="batch")
    model = MultiVAE(ref, n_latent=4, n_hidden=32)
    model.train(max_epochs=3, **TRAIN)
    return ref, query, model


@pytest.mark.parametrize("form", ["anndata", "mudata"])
def test_rna_only_query_on_multivae(multi_split, form):
    from mudata import MuData

    from scgenvae._quiet import quiet

    ref, query, model = multi_split
    rna = query.mod["rna"].copy()
    rna.obs["batch"] = query.obs["batch"].to_numpy()
    if form == "anndata":
        user = rna
    else:
        with quiet():
            user = MuData({"rna": rna})
        user.obs["batch"] = rna.obs["batch"].to_numpy()
    prepared = MultiVAE.prepare_query_mudata(user, model)
    assert set(prepared.mod) == {"rna", "atac"}
    assert list(prepared.mod["atac"].var_names) == list(model.feature_names["atac"])
    assert prepared.mod["atac"].X.nnz == 0  # no cell has ATAC
    if form == "mudata":
        assert set(user.mod) == {"rna"}  # the user's object is untouched
    z_ref = model.get_latent_representation(ref)
    qmodel = MultiVAE.load_query_data(prepared, model)
    qmodel.train(max_epochs=2, **TRAIN)
    np.testing.assert_array_equal(qmodel.get_latent_representation(ref), z_ref)
    z_rna = qmodel.get_latent_representation(prepared, modality="rna")
    z_joint = qmodel.get_latent_representation(prepared)
    assert z_rna.shape == (query.n_obs, 4)
    assert np.isfinite(z_rna).all()
    np.testing.assert_allclose(z_joint, z_rna, rtol=1e-5, atol=1e-6)  # joint = RNA expert
    acc = qmodel.get_accessibility_estimates(prepared, modality="rna", return_numpy=True)
    assert acc.shape == (query.n_obs, 100)
    assert np.isfinite(acc).all()
    assert ((acc >= 0) & (acc <= 1)).all()


def test_multivae_query_model_reloads_with_the_reference_depths(multi_split, tmp_path):
    _, query, model = multi_split
    rna = query.mod["rna"].copy()
    rna.obs["batch"] = query.obs["batch"].to_numpy()
    prepared = MultiVAE.prepare_query_mudata(rna, model)
    qmodel = MultiVAE.load_query_data(prepared, model)
    assert qmodel.module.library_log_means == model.module.library_log_means
    acc = qmodel.get_accessibility_estimates(prepared, modality="rna", return_numpy=True)
    qmodel.save(tmp_path / "query")
    again = MultiVAE.load(tmp_path / "query", prepared)
    # the depth centres are the reference's, not those of the data it is loaded on
    assert again.module.library_log_means == pytest.approx(model.module.library_log_means)
    np.testing.assert_allclose(
        again.get_accessibility_estimates(prepared, modality="rna", return_numpy=True),
        acc,
        rtol=1e-5,
    )


def test_paired_query_on_multivae_pads_peaks(multi_split):
    _, query, model = multi_split
    from scgenvae._quiet import quiet

    with quiet():
        user = query.copy()
        user.mod["atac"] = user.mod["atac"][:, 10:].copy()  # 10 peaks missing
        user.update()
    prepared = MultiVAE.prepare_query_mudata(user, model)
    assert prepared.mod["atac"].n_vars == 100
    assert not _dense(prepared.mod["atac"].X)[:, :10].any()
    assert user.mod["atac"].n_vars == 90
    qmodel = MultiVAE.load_query_data(prepared, model)
    assert np.isfinite(qmodel.get_latent_representation(prepared)).all()


# ------------------------------------------------------------------------ transfer_labels
@pytest.fixture(scope="module")
def mapped(_rna_split):
    ref, query, model = _rna_split
    ref = ref.copy()
    prepared = PoissonVAE.prepare_query_anndata(query, model)
    qmodel = PoissonVAE.load_query_data(prepared, model)
    qmodel.train(max_epochs=100, **TRAIN)
    model.export_latent(ref)
    qmodel.export_latent(prepared)
    return ref, prepared


def test_transfer_labels_accuracy_and_held_out_uncertainty(mapped):
    ref, query = mapped
    query = query.copy()
    assert scgenvae.tl.transfer_labels(ref, query, "group") is None
    held_out = (query.obs["group"] == "group_2").to_numpy()
    assert isinstance(query.obs["transferred"].dtype, pd.CategoricalDtype)
    hit = query.obs["transferred"].astype(str) == query.obs["group"].astype(str)
    assert hit[~held_out].mean() >= 0.8
    u = query.obs["transferred_uncertainty"].to_numpy()
    assert ((u >= 0) & (u <= 1)).all()
    assert u[held_out].mean() > 0.4
    assert u[held_out].mean() > 2 * u[~held_out].mean()
    assert np.median(u[held_out]) > np.quantile(u[~held_out], 0.75)
    assert query.uns["transferred"]["params"]["label_key"] == "group"


def test_transfer_labels_copy_keys_and_h5ad(mapped, tmp_path):
    import anndata as ad

    ref, query = mapped
    query = query.copy()
    out = scgenvae.tl.transfer_labels(ref, query, "group", key_added="cell_type", copy=True)
    assert "cell_type" not in query.obs.columns
    assert "cell_type_uncertainty" in out.obs.columns
    scgenvae.tl.transfer_labels(ref, out, "group", key_added="cell_type")  # ours: replaced
    out.write_h5ad(tmp_path / "q.h5ad")
    back = ad.read_h5ad(tmp_path / "q.h5ad")
    assert back.obs["cell_type"].equals(out.obs["cell_type"])
    query.obs["mine"] = "x"
    with pytest.raises(ValueError, match=r"obs\['mine'\] exists"):
        scgenvae.tl.transfer_labels(ref, query, "group", key_added="mine")
    query.uns["other"] = {"params": {"writer": "someone"}}
    with pytest.raises(ValueError, match=r"uns\['other'\] exists"):
        scgenvae.tl.transfer_labels(ref, query, "group", key_added="other")
    with pytest.raises(KeyError, match="label_key='nope'"):
        scgenvae.tl.transfer_labels(ref, query, "nope")


# ------------------------------------------------------------------------ PBMC multiome (slow)
@pytest.mark.slow
def test_pbmc_rna_only_query_accessibility_matches_joint_model():
    """Issue 18's bar, seed 0 (benchmarks/mapping_pbmc.py has three seeds).

    A MultiVAE reference on 80% of the bundled PBMC multiome cells, the other 20% mapped from
    their RNA alone: their imputed accessibility scores within 0.02 AUROC of a model trained on
    all cells with both modalities, and above each peak's frequency in the reference.
    """
    from scgenvae._quiet import quiet
    from scgenvae.metrics import auroc_auprc

    mdata = scgenvae.datasets.pbmc_multiome_subset()
    order = np.random.default_rng(0).permutation(mdata.n_obs)
    query_idx, ref_idx = np.sort(order[:200]), np.sort(order[200:])
    observed = _dense(mdata.mod["atac"].X[query_idx]) > 0
    with quiet():
        ref, full = mdata[ref_idx].copy(), mdata.copy()

    MultiVAE.setup_mudata(ref)
    with pytest.warns(UserWarning, match="binarising"):  # fragment counts, as users have them
        model = MultiVAE(ref)
    model.train(**TRAIN)
    prepared = MultiVAE.prepare_query_mudata(mdata.mod["rna"][query_idx].copy(), model)
    assert prepared.mod["atac"].X.nnz == 0  # nothing of the query's peaks reaches the model
    qmodel = MultiVAE.load_query_data(prepared, model)
    mapped = np.asarray(qmodel.get_accessibility_estimates(prepared, modality="rna"))

    MultiVAE.setup_mudata(full)
    with pytest.warns(UserWarning, match="binarising"):
        joint = MultiVAE(full)
    joint.train(**TRAIN)
    ref_joint = np.asarray(
        joint.get_accessibility_estimates(full, modality="rna", indices=query_idx)
    )

    frequency = (_dense(ref.mod["atac"].X) > 0).mean(0)
    auroc_mapped = auroc_auprc(observed, mapped)[0]
    auroc_joint = auroc_auprc(observed, ref_joint)[0]
    auroc_base = auroc_auprc(observed, np.broadcast_to(frequency, observed.shape))[0]
    assert auroc_mapped >= auroc_joint - 0.02, (auroc_mapped, auroc_joint)
    assert auroc_mapped > auroc_base, (auroc_mapped, auroc_base)
