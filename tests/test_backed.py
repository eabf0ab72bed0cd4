"""Out-of-core training: backed AnnData/MuData are validated and streamed block by block."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pytest
import torch
from scipy import sparse

from scgenvae.model import MultiVAE, PoissonVAE
from scgenvae.model import _data as data_mod
from scgenvae.model import _validate as validate_mod
from scgenvae.model._data import MinibatchIterable, RowSource
from scgenvae.model._health import N_CHECK_CELLS


@pytest.fixture
def backed(adata, tmp_path):
    path = tmp_path / "rna.h5ad"
    adata.write_h5ad(path)
    out = ad.read_h5ad(path, backed="r")
    yield out
    out.file.close()


def _fit(data, quiet, **train_kwargs):
    PoissonVAE.setup_anndata(data, batch_key="batch")
    model = PoissonVAE(data, n_latent=4)
    model.train(max_epochs=2, seed=0, **quiet, **train_kwargs)
    return model


def _spy_reads(monkeypatch) -> list[int]:
    """Record the number of rows of every read of a backed matrix (setup scan and loaders)."""
    sizes: list[int] = []
    real = validate_mod.read_rows

    def spy(mat, start, stop):
        if not sparse.issparse(mat) and not isinstance(mat, np.ndarray):
            sizes.append(stop - start)
        return real(mat, start, stop)

    monkeypatch.setattr(validate_mod, "read_rows", spy)
    monkeypatch.setattr(data_mod, "read_rows", spy)
    return sizes


def test_backed_trains_streamed_and_exports(backed, quiet):
    model = _fit(backed, quiet, block_size=64)
    assert model.is_streamed
    z = model.get_latent_representation()
    assert z.shape == (backed.n_obs, 4)
    assert np.isfinite(z).all()
    model.export_latent(backed)
    np.testing.assert_array_equal(backed.obsm["X_scgenvae"], z)
    assert backed.isbacked  # still backed: nothing was loaded into the object


def test_backed_with_one_block_matches_in_memory(adata, backed, quiet):
    """One block holding every cell: the streamed order is the in-memory order."""
    z_mem = _fit(adata, quiet).get_latent_representation()
    z_disk = _fit(backed, quiet).get_latent_representation()
    np.testing.assert_allclose(z_disk, z_mem, atol=1e-5)


def test_load_in_memory_switch(adata, backed, quiet):
    """`load_in_memory=True` on backed data and `False` on in-memory data give the same model."""
    z_loaded = _fit(backed, quiet, load_in_memory=True).get_latent_representation()
    z_mem = _fit(adata, quiet).get_latent_representation()
    np.testing.assert_allclose(z_loaded, z_mem, atol=1e-5)
    z_streamed = _fit(adata, quiet, load_in_memory=False, block_size=50)
    z_backed = _fit(backed, quiet, block_size=50)
    np.testing.assert_allclose(
        z_streamed.get_latent_representation(), z_backed.get_latent_representation(), atol=1e-5
    )
    assert not np.allclose(z_backed.get_latent_representation(), z_mem, atol=1e-3)


def test_block_order_visits_every_cell_once_seeded(adata):
    x = sparse.csr_matrix(adata.X)
    idx = np.random.default_rng(1).permutation(adata.n_obs)[:150]
    sources = {"X": RowSource(x)}

    def loader(seed):
        return MinibatchIterable(
            {}, idx, sources=sources, block_size=32, batch_size=16, shuffle=True, seed=seed
        )

    orders = [loader(0).order(e) for e in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == sorted(idx.tolist())  # every cell exactly once
        blocks = order // 32
        assert (np.diff(blocks) != 0).sum() == len(np.unique(blocks)) - 1  # blocks contiguous
    assert not np.array_equal(orders[0], orders[1])  # a new order each epoch
    np.testing.assert_array_equal(loader(0).order(1), orders[1])  # ... fixed by (seed, epoch)
    assert not np.array_equal(loader(1).order(0), orders[0])
    # the minibatches carry the rows of the order, and all the epoch's cells
    it = loader(0)
    rows = np.concatenate([b["X"].numpy() for b in it])
    expected = x[np.sort(idx)].toarray()
    assert rows.shape == expected.shape
    np.testing.assert_array_equal(rows[np.lexsort(rows.T)], expected[np.lexsort(expected.T)])
    assert len(it) == int(np.ceil(len(idx) / 16))


def test_sharded_streaming_covers_the_epoch(adata):
    sources = {"X": RowSource(sparse.csr_matrix(adata.X))}
    idx = np.arange(adata.n_obs)
    shards = [
        MinibatchIterable(
            {"i": torch.arange(adata.n_obs, dtype=torch.float32).reshape(-1, 1)},
            idx,
            sources=sources,
            block_size=40,
            batch_size=16,
            shuffle=True,
            seed=3,
            rank=r,
            world_size=2,
        )
        for r in range(2)
    ]
    seen = [np.concatenate([b["i"].numpy().ravel() for b in s]).astype(int) for s in shards]
    assert len(seen[0]) == len(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(idx.tolist())
    assert not set(seen[0]) & set(seen[1])


def test_streaming_never_reads_the_whole_matrix(backed, quiet, monkeypatch):
    monkeypatch.setattr(validate_mod, "SCAN_ROWS", 64)
    monkeypatch.setattr(data_mod, "DEFAULT_BLOCK_SIZE", 40)
    sizes = _spy_reads(monkeypatch)
    PoissonVAE.setup_anndata(backed, batch_key="batch")
    model = PoissonVAE(backed, n_latent=4)
    assert sizes == [64, 64, 64, 8]  # set-up: one validating scan in blocks (reused at init)
    sizes.clear()
    model.train(max_epochs=2, seed=0, block_size=48, **quiet)
    assert sizes
    assert max(sizes) <= 48
    # each block once per epoch, then the health check's sample of cells (all 200 here)
    assert sum(sizes) == 2 * backed.n_obs + min(backed.n_obs, N_CHECK_CELLS)
    sizes.clear()
    model.get_latent_representation()
    assert sizes == [40] * 5
    # and nothing loads the matrix whole behind the loaders' back
    monkeypatch.setattr(
        type(backed.X), "to_memory", lambda self: pytest.fail("backed matrix read whole")
    )
    _fit(backed, quiet, block_size=48).get_latent_representation()


def test_setup_validates_backed_blocks(adata, tmp_path, monkeypatch):
    x = adata.X.copy().astype(np.float32)
    x.data[-1] = 0.5  # a non-count in the last rows
    bad = ad.AnnData(X=x, obs=adata.obs)
    bad.write_h5ad(tmp_path / "bad.h5ad")
    backed = ad.read_h5ad(tmp_path / "bad.h5ad", backed="r")
    monkeypatch.setattr(validate_mod, "SCAN_ROWS", 64)
    with pytest.raises(ValueError, match=r"rows 192-199.*non-integer"):
        PoissonVAE.setup_anndata(backed)
    backed.file.close()


def test_backed_dense_matrix(adata, tmp_path, quiet):
    dense = ad.AnnData(X=adata.X.toarray(), obs=adata.obs)
    dense.write_h5ad(tmp_path / "dense.h5ad")
    backed = ad.read_h5ad(tmp_path / "dense.h5ad", backed="r")
    model = _fit(backed, quiet, block_size=64)
    assert model.is_streamed
    z_mem = _fit(adata, quiet, load_in_memory=False, block_size=64)
    np.testing.assert_allclose(
        model.get_latent_representation(), z_mem.get_latent_representation(), atol=1e-5
    )
    backed.file.close()


def test_backed_mudata_streams_multivae(mdata, tmp_path, quiet):
    mdata.write(tmp_path / "m.h5mu")
    backed = md.read_h5mu(tmp_path / "m.h5mu", backed=True)
    MultiVAE.setup_mudata(backed, batch_key="batch")
    model = MultiVAE(backed, n_latent=4, n_hidden=32)
    assert model.is_streamed
    model.train(max_epochs=2, seed=0, block_size=64, **quiet)
    z = model.get_latent_representation()
    assert z.shape == (mdata.n_obs, 4)
    assert np.isfinite(z).all()
    model.export_latent(backed)
    assert backed.obsm["X_scgenvae"].shape == (mdata.n_obs, 4)
    assert model.get_accessibility_estimates(modality="rna", return_numpy=True).shape == (
        mdata.n_obs,
        100,
    )
    # the same cells in memory embed the same way
    MultiVAE.setup_mudata(mdata, batch_key="batch")
    np.testing.assert_allclose(model.get_latent_representation(mdata), z, atol=1e-5)


@pytest.mark.parametrize("layout", ["csr", "csc", "dense"])
@pytest.mark.parametrize("binarize", [False, True])
def test_column_means_in_bounded_chunks_equal_numpy(layout, binarize):
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.3, size=(57, 23)).astype(np.float32)
    x = {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix, "dense": np.asarray}[layout](dense)
    exact = dense.astype(np.float64)
    expected = (exact > 0).mean(0) if binarize else exact.mean(0)
    # chunks smaller than the matrix: several passes, bounded temporaries
    got = data_mod.column_means(x, binarize=binarize, chunk=50)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got.dtype == np.float64
