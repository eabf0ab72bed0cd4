"""Issue 16: writers that own their keys, no stale checks, indices, edge cases, inherited API.

Each table lists probes of one class; every probe failed on the model layer before the redesign
(the issue's findings) and passes now.
"""

from __future__ import annotations

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

from scgenvae.datasets import synthetic_multiome, synthetic_rna
from scgenvae.model import MultiVAE, PoissonVAE

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(scope="module")
def rna():
    adata = synthetic_rna(n_obs=150, n_vars=30, rng=0)
    adata.obs_names = [f"cell{i}" for i in range(adata.n_obs)]
    return adata


def _trained(adata, **kwargs):
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=3, n_hidden=16, **kwargs)
    model.train(max_epochs=2, seed=0, **QUIET)
    return model


@pytest.fixture(scope="module")
def model(rna):
    adata = rna.copy()
    return _trained(adata), adata


# ------------------------------------------------------------------------------------ writers
def _scanpy_pca(a):
    sc.pp.pca(a, n_comps=5)
    return {"key_added": "X_pca"}, r"uns\['pca'\]\['params'\] was written by another tool"


def _user_obsm(a):
    a.obsm["X_mine"] = np.zeros((a.n_obs, 2))
    return {"key_added": "X_mine"}, r"obsm\['X_mine'\] exists and was not written by export_latent"


def _slash_key(a):
    del a
    return {"key_added": "X_a/b"}, r"`key_added='X_a/b'` cannot be written to an h5ad"


def _bare_prefix(a):
    del a
    return {"key_added": "X_"}, r"cannot be written to an h5ad"


def _uns_not_dict(a):
    a.uns["scgenvae"] = "a note"
    return {}, r"uns\['scgenvae'\] exists and is not a dictionary"


@pytest.mark.parametrize(
    "probe", [_scanpy_pca, _user_obsm, _slash_key, _bare_prefix, _uns_not_dict]
)
def test_export_latent_refuses_keys_it_does_not_own(model, probe, monkeypatch):
    m, adata = model
    target = adata.copy()
    kwargs, match = probe(target)
    before_uns = {k: dict(v) if isinstance(v, dict) else v for k, v in target.uns.items()}
    before_obsm = {k: np.array(v) for k, v in target.obsm.items()}
    # refused before any computation
    monkeypatch.setattr(m, "get_latent_representation", lambda *a, **k: pytest.fail("computed"))
    with pytest.raises(ValueError, match=match):
        m.export_latent(target, **kwargs)
    assert set(target.uns) == set(before_uns)
    for key, value in before_obsm.items():
        np.testing.assert_array_equal(target.obsm[key], value)
    if "pca" in before_uns:
        np.testing.assert_array_equal(
            target.uns["pca"]["variance_ratio"], before_uns["pca"]["variance_ratio"]
        )


def test_export_latent_merges_under_its_key_and_replaces_only_its_own(model, tmp_path):
    m, adata = model
    target = adata.copy()
    target.uns["scgenvae"] = {"note": "the user's"}
    m.export_latent(target)
    assert target.uns["scgenvae"]["note"] == "the user's"
    assert target.uns["scgenvae"]["params"]["writer"] == "scgenvae.export_latent"
    first = target.obsm["X_scgenvae"].copy()
    m.export_latent(target, give_mean=False)  # its own entry: replaced
    assert not np.array_equal(target.obsm["X_scgenvae"], first)
    assert target.uns["scgenvae"]["note"] == "the user's"
    target.write_h5ad(tmp_path / "out.h5ad")
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_array_equal(back.obsm["X_scgenvae"], target.obsm["X_scgenvae"])


def test_export_latent_refuses_a_user_cluster_column(rna):
    adata = rna.copy()
    m = _trained(adata, n_clusters=2)
    target = adata.copy()
    target.obs["scgenvae_cluster"] = "mine"
    with pytest.raises(ValueError, match=r"obs\['scgenvae_cluster'\] exists and was not written"):
        m.export_latent(target)
    assert (target.obs["scgenvae_cluster"] == "mine").all()


# ---------------------------------------------------------------------------- stale checks
def test_log_normalised_after_training_is_not_embedded_as_counts(rna):
    adata = rna.copy()
    m = _trained(adata)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    with pytest.raises(ValueError, match="non-integer values"):
        m.export_latent(adata)
    assert "X_scgenvae" not in adata.obsm
    with pytest.raises(ValueError, match="changed after the model was built"):
        m.get_latent_representation()


def test_changed_after_setup_is_refused_at_construction(rna):
    adata = rna.copy()
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    adata.X = adata.X * 2.5
    with pytest.raises(ValueError, match=r"adata\.X changed after `PoissonVAE\.setup_anndata"):
        PoissonVAE(adata)


def test_counts_replaced_by_new_counts_are_used(rna):
    """Still raw counts, but other ones: validated again and embedded from the new values."""
    adata = rna.copy()
    m = _trained(adata)
    z_old = m.get_latent_representation(adata)
    x = adata.X.toarray() if sparse.issparse(adata.X) else np.array(adata.X)
    adata.X = x[::-1].copy()
    z_new = m.get_latent_representation(adata)
    np.testing.assert_allclose(z_new, m.get_latent_representation(adata.copy()))
    assert not np.allclose(z_new, z_old)


def test_backed_getters_keep_the_order_asked_for(rna, tmp_path):
    """Streamed from disk in blocks, cells from several blocks still come back in order."""
    path = tmp_path / "counts.h5ad"
    rna.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    PoissonVAE.setup_anndata(backed, batch_key="batch")
    m = PoissonVAE(backed, n_latent=3, n_hidden=16)
    m.train(max_epochs=1, block_size=32, **QUIET)
    full = m.get_latent_representation()
    order = [140, 3, 77, 35, 3]
    np.testing.assert_allclose(
        m.get_latent_representation(indices=order, batch_size=4), full[order], atol=1e-6
    )


def test_backed_file_replaced_or_closed(rna, tmp_path):
    path = tmp_path / "counts.h5ad"
    rna.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    PoissonVAE.setup_anndata(backed, batch_key="batch")
    m = PoissonVAE(backed, n_latent=3, n_hidden=16)
    logged = rna.copy()
    sc.pp.log1p(logged)
    logged.write_h5ad(tmp_path / "other.h5ad")
    (tmp_path / "other.h5ad").replace(path)
    with pytest.raises(ValueError, match="backed file of the training data changed"):
        m.train(max_epochs=1, **QUIET)
    backed.file.close()
    with pytest.raises(ValueError, match="has its file closed"):
        m.train(max_epochs=1, **QUIET)


# ------------------------------------------------------------------------------------ indices
def _same(a, b):
    """Equal up to float rounding (a minibatch of other cells sums in another order)."""
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_getters_take_masks_positions_and_names(model):
    m, adata = model
    full = m.get_latent_representation()
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[[3, 7, 40]] = True
    _same(m.get_latent_representation(indices=mask), full[[3, 7, 40]])
    _same(m.get_latent_representation(indices=[3, 7, 40]), full[[3, 7, 40]])
    names = ["cell3", "cell7", "cell40"]
    _same(m.get_latent_representation(indices=names), full[[3, 7, 40]])
    _same(m.get_latent_representation(adata, indices=pd.Index(names)), full[[3, 7, 40]])
    # the order asked for is the order returned (rows were sorted within each minibatch)
    _same(m.get_latent_representation(indices=[40, 3, 7, 3]), full[[40, 3, 7, 3]])
    _same(m.get_latent_representation(indices=["cell40", "cell3"]), full[[40, 3]])
    _same(
        m.get_normalized_expression(indices=mask, library_size="latent", return_numpy=True),
        m.get_normalized_expression(library_size="latent", return_numpy=True)[[3, 7, 40]],
    )


@pytest.mark.parametrize(
    ("indices", "error", "match"),
    [
        (np.ones(10, dtype=bool), ValueError, r"boolean mask of length 10; the data has 150"),
        ([0, 150], IndexError, r"out of range \(0 to 150\) for 150 cells"),
        (["cell1", "nope"], KeyError, r"not in obs_names: \['nope'\]"),
        ([0.5, 1.5], TypeError, r"dtype float64; pass a boolean mask"),
        (np.zeros((2, 2), dtype=int), ValueError, "one-dimensional"),
    ],
)
def test_bad_indices_are_refused(model, indices, error, match):
    m, _ = model
    with pytest.raises(error, match=match):
        m.get_latent_representation(indices=indices)


# --------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("max_epochs", [0, -1, 2.5, True])
def test_train_refuses_non_positive_epochs(rna, max_epochs):
    adata = rna.copy()
    PoissonVAE.setup_anndata(adata)
    m = PoissonVAE(adata, n_latent=2, n_hidden=8)
    with pytest.raises(ValueError, match="`max_epochs` must be a positive number of epochs"):
        m.train(max_epochs=max_epochs, **QUIET)
    assert not m.is_trained


def test_multivae_refuses_modalities_without_a_shared_cell():
    mdata = synthetic_multiome(n_obs=60, n_genes=20, n_peaks=30, rng=0)
    rna = mdata.mod["rna"][:30].copy()
    atac = mdata.mod["atac"][30:].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        unpaired = md.MuData({"rna": rna, "atac": atac})
    MultiVAE.setup_mudata(unpaired)
    with pytest.raises(ValueError, match=r"no cell of mod\['rna'\] is also in mod\['atac'\]"):
        MultiVAE(unpaired)


# ----------------------------------------------------------------------------- inherited API
def test_inherited_api_speaks_the_users_names(model, tmp_path, capsys):
    m, adata = model
    assert list(m.get_var_names()) == list(adata.var_names)
    m.view_anndata_setup()
    shown = capsys.readouterr().out
    assert adata.var_names[0] in shown
    assert "batch_key: 'batch'" in shown
    m.save(tmp_path / "m")
    PoissonVAE.view_setup_args(tmp_path / "m")
    assert "batch_key: 'batch'" in capsys.readouterr().out
    np.testing.assert_array_equal(
        np.asarray(m.get_from_registry(adata, "X").todense()),
        np.asarray(sparse.csr_matrix(adata.X).todense()),
    )
    with pytest.raises(NotImplementedError, match="does not implement it yet"):
        m.differential_abundance()
    with pytest.raises(NotImplementedError, match="getters take new data directly"):
        m.transfer_fields(adata)


def test_train_honours_or_refuses_scvi_arguments(rna):
    adata = rna.copy()
    PoissonVAE.setup_anndata(adata)
    m = PoissonVAE(adata, n_latent=2, n_hidden=8)
    m.train(max_epochs=1, plan_kwargs={"weight_decay": 0.5, "eps": 1e-4}, **QUIET)
    opt = m.trainer.optimizers[0]
    assert {g["weight_decay"] for g in opt.param_groups} == {0.5}
    assert {g["eps"] for g in opt.param_groups} == {1e-4}
    m.train(max_epochs=2, n_steps_kl_warmup=1000, **QUIET)
    plan = m.trainer.lightning_module
    assert plan.n_steps_kl_warmup == 1000
    assert plan.n_epochs_kl_warmup is None
    assert plan.kl_weight < 0.05  # 4 of 1,000 steps: the weight is still low
    m.train(
        max_epochs=1, train_size=0.8, datasplitter_kwargs={"shuffle_set_split": False}, **QUIET
    )
    np.testing.assert_array_equal(np.sort(m.validation_indices), np.arange(120, 150))
    refusals = [
        ({"plan_kwargs": {"weight_decy": 1.0}}, r"`plan_kwargs` keys \['weight_decy'\]"),
        ({"datasplitter_kwargs": {"drop_last": True}}, r"keys \['drop_last'\] do not apply"),
        ({"load_sparse_tensor": True}, "`load_sparse_tensor` is not used"),
        ({"datamodule": object()}, "`datamodule` is not supported"),
        ({"n_epochs_kl_warmup": 2, "n_steps_kl_warmup": 2}, "not both"),
    ]
    for kwargs, match in refusals:
        with pytest.raises(ValueError, match=match):
            m.train(max_epochs=1, **kwargs, **QUIET)


# -------------------------------------------------------------------------------------- quiet
def test_train_prints_nothing_by_default(rna, capfd):
    adata = rna.copy()
    PoissonVAE.setup_anndata(adata)
    m = PoissonVAE(adata, n_latent=2, n_hidden=8)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.train(max_epochs=2, enable_progress_bar=False)
    out, err = capfd.readouterr()
    assert out == ""
    assert err == ""
    others = [w for w in caught if "training check" not in str(w.message)]
    assert not others, [str(w.message) for w in others]


def test_docstrings_have_no_placeholder_left():
    """Shared parameter docs (scgenvae._docs) are filled in every public docstring."""
    import inspect
    import re

    import scgenvae

    left = []
    for mod in (scgenvae.model, scgenvae.tl, scgenvae.pl, scgenvae.datasets, scgenvae.metrics):
        for name, obj in vars(mod).items():
            if name.startswith("_"):
                continue
            members = (
                [obj, *(m for _, m in inspect.getmembers(obj))] if inspect.isclass(obj) else [obj]
            )
            for member in members:
                doc = getattr(member, "__doc__", None) or ""
                if re.search(r"^\s*\{\w+\}\s*$", doc, flags=re.M):
                    left.append(f"{name}.{getattr(member, '__name__', '?')}")
    assert not left
