"""Getter outputs a user can keep: names, subsets, sparse accessibility, NaN for missing input."""

from __future__ import annotations

import re
import warnings

import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scgenvae
from scgenvae._constants import MODULE_KEYS
from scgenvae.model import MultiVAE, PoissonVAE
from scgenvae.model import _base as base
from scgenvae.model import _outputs as outputs

N_RNA_ONLY, N_ATAC_ONLY = 30, 20


@pytest.fixture(scope="module")
def rna_model():
    adata = scgenvae.datasets.synthetic_rna(n_obs=120, n_vars=40, rng=3)
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4, n_hidden=16)
    model.train(max_epochs=2, seed=0, enable_progress_bar=False, enable_model_summary=False)
    return model, adata


@pytest.fixture(scope="module")
def unpaired():
    """MultiVAE on 200 cells: the first 30 have RNA only, the last 20 ATAC only."""
    full = scgenvae.datasets.synthetic_multiome(n_obs=200, n_genes=50, n_peaks=100, rng=2)
    cells = np.arange(200)
    rna = full.mod["rna"][cells < 200 - N_ATAC_ONLY].copy()
    atac = full.mod["atac"][cells >= N_RNA_ONLY].copy()
    mdata = md.MuData({"rna": rna, "atac": atac})
    mdata.obs["batch"] = full.obs["batch"].reindex(mdata.obs_names).to_numpy()
    MultiVAE.setup_mudata(mdata, batch_key="batch")
    model = MultiVAE(mdata, n_latent=4, n_hidden=16)
    model.train(max_epochs=3, seed=0, enable_progress_bar=False, enable_model_summary=False)
    # a cell lacks a modality when it is absent from it or has no counts there
    has = {}
    for m, mod in (("rna", rna), ("atac", atac)):
        totals = pd.Series(np.asarray(mod.X.sum(1)).ravel(), index=mod.obs_names)
        has[m] = totals.reindex(mdata.obs_names).fillna(0).to_numpy() > 0
    rna_only, atac_only = ~has["atac"], ~has["rna"]
    assert N_RNA_ONLY <= rna_only.sum() <= N_RNA_ONLY + 3
    assert N_ATAC_ONLY <= atac_only.sum() <= N_ATAC_ONLY + 3
    return model, mdata, rna_only, atac_only


# ---------------------------------------------------------------- names and subsets
def test_poissonvae_expression_is_named(rna_model):
    model, adata = rna_model
    df = model.get_normalized_expression()
    assert isinstance(df, pd.DataFrame)
    pd.testing.assert_index_equal(df.index, adata.obs_names)
    pd.testing.assert_index_equal(df.columns, adata.var_names)
    arr = model.get_normalized_expression(return_numpy=True)
    assert isinstance(arr, np.ndarray)
    np.testing.assert_array_equal(df.to_numpy(), arr)
    np.testing.assert_allclose(arr.sum(1), 1.0, rtol=1e-4)
    # only the rows asked, named by their cells, in the order asked
    some = model.get_normalized_expression(indices=[7, 2, 5])
    assert list(some.index) == list(adata.obs_names[[7, 2, 5]])
    np.testing.assert_allclose(some.to_numpy(), arr[[7, 2, 5]], rtol=1e-6)


def test_poissonvae_gene_list_is_the_subset(rna_model):
    model, adata = rna_model
    full = model.get_normalized_expression(library_size="latent", return_numpy=True)
    genes = list(adata.var_names[[9, 0, 31]])
    sub = model.get_normalized_expression(gene_list=genes, library_size="latent")
    assert list(sub.columns) == genes
    np.testing.assert_allclose(sub.to_numpy(), full[:, [9, 0, 31]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"`gene_list`.*\['nope'\].*feature_names\['rna'\]"):
        model.get_normalized_expression(gene_list=[genes[0], "nope"])


def test_multivae_outputs_are_named_and_subset(unpaired):
    model, mdata, _, _ = unpaired
    expr = model.get_normalized_expression()
    pd.testing.assert_index_equal(expr.index, mdata.obs_names)
    pd.testing.assert_index_equal(expr.columns, mdata.mod["rna"].var_names)
    acc = model.get_accessibility_estimates(indices=[3, 150])
    assert list(acc.index) == list(mdata.obs_names[[3, 150]])
    pd.testing.assert_index_equal(acc.columns, mdata.mod["atac"].var_names)

    with pytest.warns(UserWarning, match="no 'rna' data"):
        full = model.get_accessibility_estimates(modality="rna", return_numpy=True)
    peaks = list(mdata.mod["atac"].var_names[[40, 2, 77]])
    with pytest.warns(UserWarning, match="no 'rna' data"):
        sub = model.get_accessibility_estimates(modality="rna", region_list=peaks)
    assert list(sub.columns) == peaks
    np.testing.assert_allclose(sub.to_numpy(), full[:, [40, 2, 77]], rtol=1e-5, equal_nan=True)
    genes = list(mdata.mod["rna"].var_names[[4, 1]])
    sub = model.get_normalized_expression(gene_list=genes, return_numpy=True)
    np.testing.assert_allclose(sub, expr.to_numpy()[:, [4, 1]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"2 names of `region_list`.*\['chr0', 'chr1'\]"):
        model.get_accessibility_estimates(region_list=["chr0", peaks[0], "chr1"])


# ---------------------------------------------------------------- sparse accessibility
@pytest.mark.parametrize("modality", ["joint", "rna"])
def test_threshold_gives_the_thresholded_dense_matrix(unpaired, modality, recwarn):
    model, mdata, _, _ = unpaired
    dense = model.get_accessibility_estimates(modality=modality, return_numpy=True)
    csr = model.get_accessibility_estimates(modality=modality, threshold=0.2, return_numpy=True)
    assert sparse.isspmatrix_csr(csr)
    expected = np.where(np.nan_to_num(dense) >= 0.2, dense, 0.0)
    assert 0 < csr.nnz < dense.size  # a threshold inside the range of the values
    np.testing.assert_allclose(csr.toarray(), expected, rtol=1e-6)
    df = model.get_accessibility_estimates(modality=modality, threshold=0.2, batch_size=64)
    assert all(isinstance(t, pd.SparseDtype) for t in df.dtypes)
    pd.testing.assert_index_equal(df.index, mdata.obs_names)
    np.testing.assert_allclose(df.sparse.to_coo().toarray(), expected, rtol=1e-6)


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, "0.5", True])
def test_bad_threshold(unpaired, bad):
    model = unpaired[0]
    with pytest.raises(ValueError, match=r"`threshold` must be a number in \(0, 1\]"):
        model.get_accessibility_estimates(threshold=bad)


# ---------------------------------------------------------------- missing input -> NaN
def _nan_rows(x) -> np.ndarray:
    return np.isnan(np.asarray(x, dtype=float)).all(1)


@pytest.mark.parametrize(
    ("getter", "kwargs", "lacking"),
    [
        ("get_latent_representation", {"modality": "rna"}, "atac_only"),
        ("get_latent_representation", {"modality": "atac"}, "rna_only"),
        ("get_normalized_expression", {"modality": "atac"}, "rna_only"),
        ("get_accessibility_estimates", {"modality": "rna"}, "atac_only"),
    ],
)
def test_cross_modal_outputs_are_nan_without_the_input(unpaired, getter, kwargs, lacking):
    model, _, rna_only, atac_only = unpaired
    mask = {"rna_only": rna_only, "atac_only": atac_only}[lacking]
    n = int(mask.sum())
    with pytest.warns(UserWarning, match=rf"^{n} of 200 cells have no") as caught:
        out = getattr(model, getter)(**kwargs)
    assert len(caught) == 1
    out = np.asarray(out)
    np.testing.assert_array_equal(_nan_rows(out), mask)
    assert np.isfinite(out[~mask]).all()
    # the cells asked only: a subset without such cells gives no warning
    keep = np.flatnonzero(~mask)[:10]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sub = np.asarray(getattr(model, getter)(indices=keep, **kwargs))
    np.testing.assert_allclose(sub, out[keep], rtol=1e-5, atol=1e-7)


def test_joint_outputs_have_no_nan(unpaired):
    model = unpaired[0]
    for out in (
        model.get_latent_representation(),
        model.get_normalized_expression(return_numpy=True),
        model.get_accessibility_estimates(return_numpy=True),
    ):
        assert np.isfinite(out).all()


def test_sparse_rows_of_cells_without_the_input_are_empty(unpaired):
    model, _, _, atac_only = unpaired
    n = int(atac_only.sum())
    with pytest.warns(UserWarning, match=re.escape(f"{n} of 200 cells have no 'rna'")):
        csr = model.get_accessibility_estimates(modality="rna", threshold=0.01, return_numpy=True)
    per_row = np.diff(csr.indptr)
    assert (per_row[atac_only] == 0).all()
    assert (per_row[~atac_only] > 0).all()


# ---------------------------------------------------------------- decode only what was asked
def _spy(model, monkeypatch) -> tuple[dict, list, list]:
    """Count each decoder's calls and record the widths of the decoded distributions."""
    calls = dict.fromkeys(model.module.decoders, 0)
    widths: list[dict] = []

    def hook(name):
        def count(*_):
            calls[name] += 1

        return count

    handles = [dec.register_forward_hook(hook(m)) for m, dec in model.module.decoders.items()]
    generative = model.module.generative

    def recording(*args, **kwargs):
        out = generative(*args, **kwargs)
        widths.append(
            {
                m: out[m][MODULE_KEYS.PX_KEY].batch_shape[-1]
                for m in model.module.decoders
                if m in out
            }
        )
        return out

    monkeypatch.setattr(model.module, "generative", recording)
    return calls, widths, handles


def test_only_the_asked_decoder_and_regions_run(unpaired, monkeypatch):
    model, mdata, _, _ = unpaired
    calls, widths, handles = _spy(model, monkeypatch)
    try:
        model.get_normalized_expression(return_numpy=True)
        assert calls == {"rna": 1, "atac": 0}
        assert widths == [{"rna": 50}]
        peaks = list(mdata.mod["atac"].var_names[:7])
        model.get_accessibility_estimates(region_list=peaks, return_numpy=True)
        assert calls == {"rna": 1, "atac": 1}
        assert widths[-1] == {"atac": 7}  # the Bernoulli decoder computed 7 peaks, not 100
    finally:
        for h in handles:
            h.remove()


def test_training_still_decodes_every_modality(unpaired):
    """The module's default (training, the loss) decodes all modalities and features."""
    model, _, _, _ = unpaired
    module = model.module
    z = np.zeros((3, module.n_latent), dtype=np.float32)
    import torch

    with torch.no_grad():
        gen = module.generative(torch.from_numpy(z), None, [None], observed_library=False)
    assert gen["rna"][MODULE_KEYS.PX_KEY].batch_shape[-1] == 50
    assert gen["atac"][MODULE_KEYS.PX_KEY].batch_shape[-1] == 100
    with pytest.raises(ValueError, match="cannot decode a subset"):
        module.generative(torch.from_numpy(z), None, [None], columns={"rna": torch.tensor([0, 1])})


# ---------------------------------------------------------------- progress
def test_progress_bar_on_long_loops_only(unpaired, monkeypatch, capsys):
    model = unpaired[0]
    # the default on tiny data: one minibatch, silent
    model.get_latent_representation()
    model.get_accessibility_estimates(return_numpy=True)
    assert capsys.readouterr().out == ""
    model.get_latent_representation(batch_size=8)  # 25 minibatches
    assert "MultiVAE: cells" in capsys.readouterr().out
    model.get_accessibility_estimates(batch_size=50, return_numpy=True)  # 4 narrow ones
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(base, "PROGRESS_MIN_VALUES", 10_000)  # 200 cells x 100 peaks: wide
    model.get_accessibility_estimates(batch_size=50, return_numpy=True)
    assert "MultiVAE: cells" in capsys.readouterr().out
    monkeypatch.setattr(scgenvae.settings, "progress_bar", False)
    model.get_accessibility_estimates(batch_size=50, return_numpy=True)
    model.get_latent_representation(batch_size=8)
    assert capsys.readouterr().out == ""


def test_wide_outputs_decoded_in_row_chunks_are_the_same(unpaired, monkeypatch):
    model, _, _, atac_only = unpaired
    with pytest.warns(UserWarning, match="no 'rna' data"):
        whole = model.get_accessibility_estimates(modality="rna", return_numpy=True)
    whole_sparse = model.get_accessibility_estimates(threshold=0.2, return_numpy=True)
    monkeypatch.setattr(outputs, "DECODE_CHUNK_VALUES", 7 * 100)  # 7 cells at a time
    calls = []
    generative = model.module.generative
    monkeypatch.setattr(
        model.module, "generative", lambda *a, **k: calls.append(1) or generative(*a, **k)
    )
    with pytest.warns(UserWarning, match="no 'rna' data"):
        chunked = model.get_accessibility_estimates(modality="rna", return_numpy=True)
    assert len(calls) == -(-200 // 7)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)
    np.testing.assert_array_equal(np.isnan(chunked).all(1), atac_only)
    chunked_sparse = model.get_accessibility_estimates(threshold=0.2, return_numpy=True)
    np.testing.assert_allclose(chunked_sparse.toarray(), whole_sparse.toarray(), rtol=1e-6)
