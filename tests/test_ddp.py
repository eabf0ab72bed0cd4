"""Distributed data parallel training on CPU (gloo): sharding, and a two-process run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scgenvae.model import PoissonVAE
from scgenvae.model._data import MinibatchIterable


@pytest.mark.parametrize("n_cells", [200, 201])
def test_shards_cover_every_cell_once_and_have_equal_length(n_cells):
    arrays = {"X": torch.arange(n_cells, dtype=torch.float32).reshape(-1, 1)}
    shards = [
        MinibatchIterable(
            arrays,
            np.arange(n_cells),
            batch_size=32,
            shuffle=True,
            seed=3,
            epoch=lambda: 5,
            rank=rank,
            world_size=2,
        )
        for rank in (0, 1)
    ]
    cells = [np.concatenate([b["X"].numpy().ravel() for b in shard]) for shard in shards]
    assert len(shards[0]) == len(shards[1])
    assert len(cells[0]) == len(cells[1]) == -(-n_cells // 2)
    both = np.concatenate(cells)
    assert set(both) == set(range(n_cells))
    assert len(both) - len(set(both)) == n_cells % 2  # padding repeats at most one cell
    # the same epoch gives the same order (resuming), another epoch another order
    again = np.concatenate([b["X"].numpy().ravel() for b in shards[0]])
    np.testing.assert_array_equal(again, cells[0])
    shards[0].epoch = lambda: 6
    other = np.concatenate([b["X"].numpy().ravel() for b in shards[0]])
    assert not np.array_equal(other, cells[0])


def test_ddp_spawn_is_refused_with_the_alternatives(adata, quiet):
    PoissonVAE.setup_anndata(adata)
    model = PoissonVAE(adata, n_latent=4)
    with pytest.raises(ValueError, match=r"ddp_spawn.*'ddp'.*'ddp_notebook'"):
        model.train(max_epochs=1, strategy="ddp_spawn", devices=2, accelerator="cpu", **quiet)


def test_two_cpu_processes_train_the_model(adata, quiet, tmp_path):
    """Two gloo processes (forked: ``ddp_notebook``); the launching process gets the weights."""
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.train(
        max_epochs=3,
        seed=0,
        strategy="ddp_notebook",
        devices=2,
        accelerator="cpu",
        checkpoint_dir=tmp_path / "ckpt",
        checkpoint_every=1,
        **quiet,
    )
    assert model.is_trained
    after = model.module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # weights came back
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, 4)
    assert np.isfinite(z).all()
    elbo = model.history["elbo_train"]["elbo_train"].to_numpy(float)
    assert len(elbo) == 3
    assert np.isfinite(elbo).all()
    # each process saw half of the cells: one minibatch of 100 per epoch
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2
    assert ckpt["global_step"] == 3
    for key, value in ckpt["state_dict"].items():
        torch.testing.assert_close(value, after[key.removeprefix("module.")])
    model.save(tmp_path / "m")
    fresh = adata.copy()
    loaded = PoissonVAE.load(tmp_path / "m", fresh)
    np.testing.assert_array_equal(loaded.get_latent_representation(fresh), z)
