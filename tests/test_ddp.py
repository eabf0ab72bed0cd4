"""Distributed data parallel training on CPU (gloo): sharding, and a two-process run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

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


# run as a script in its own process: "ddp" starts rank 1 by running the script again, and a
# fork ("ddp_notebook") of a long-lived pytest process can inherit a busy OpenMP pool and hang
_SCRIPT = """
import sys
import torch
from scgenvae.datasets import synthetic_rna
from scgenvae.model import PoissonVAE

import scgenvae

torch.set_num_threads(1)
scgenvae.settings.verbosity = "INFO"  # Lightning's lines show which processes ran
strategy, out = sys.argv[1], sys.argv[2]
adata = synthetic_rna(n_obs=200, n_vars=50, rng=0)
PoissonVAE.setup_anndata(adata, batch_key="batch")
model = PoissonVAE(adata, n_latent=4)
model.train(
    max_epochs=3, seed=0, strategy=strategy, devices=2, accelerator="cpu",
    checkpoint_dir=f"{out}/ckpt", checkpoint_every=1,
    enable_progress_bar=False, enable_model_summary=False,
)
if model.trainer.is_global_zero:  # every rank runs this line under "ddp"
    model.save(f"{out}/model")
"""


def _run_script(script, *args, timeout=240):
    proc = subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # rank 1 of "ddp" joins the group: one kill stops both
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"distributed training hung for {timeout} s:\n{out[-3000:]}")
    return proc.returncode, out


@pytest.mark.parametrize(
    "strategy",
    [
        # the script launcher starts a second interpreter: about a minute on a busy 2-core box
        pytest.param("ddp", marks=pytest.mark.slow),
        "ddp_notebook",
    ],
)
def test_two_cpu_processes_train_the_model(adata, tmp_path, strategy):
    """Two gloo processes; the model of the launching process ends up trained."""
    script = tmp_path / "train_ddp.py"
    script.write_text(_SCRIPT)
    rc, out = _run_script(script, strategy, tmp_path)
    assert rc == 0, out[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out  # two processes really ran

    PoissonVAE.setup_anndata(adata, batch_key="batch")
    untrained = PoissonVAE(adata, n_latent=4)  # same initial weights (settings.seed)
    model = PoissonVAE.load(tmp_path / "model", adata)
    assert model.is_trained
    weights = model.module.state_dict()
    before = untrained.module.state_dict()
    assert any(not torch.equal(before[k], weights[k]) for k in before)
    z = model.get_latent_representation(adata)
    assert z.shape == (adata.n_obs, 4)
    assert np.isfinite(z).all()
    elbo = model.history["elbo_train"]["elbo_train"].to_numpy(float)
    assert len(elbo) == 3
    assert np.isfinite(elbo).all()
    # each process saw its half of the cells: one minibatch of 100 per epoch, 3 steps in all
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["global_step"]) == (2, 3)
    for key, value in ckpt["state_dict"].items():
        torch.testing.assert_close(value, weights[key.removeprefix("module.")])
