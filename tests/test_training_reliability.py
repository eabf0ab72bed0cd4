"""Interrupted and failing training: checkpoints and resuming, non-finite losses, safe save/load."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from scvi.module.base import LossOutput

from scgenvae.model import PoissonVAE

# a training run that checkpoints every epoch and dies (os._exit, no clean-up) in epoch 3
_KILLED_RUN = textwrap.dedent(
    """
    import os, sys
    import torch
    from lightning.pytorch import Callback
    from scgenvae.datasets import synthetic_rna
    from scgenvae.model import PoissonVAE

    torch.set_num_threads(1)

    class Crash(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.current_epoch == 3:
                os._exit(17)

    adata = synthetic_rna(n_obs=200, n_vars=50, rng=0)
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=4)
    model.train(
        max_epochs=6, seed=0, checkpoint_dir=sys.argv[1], checkpoint_every=1,
        callbacks=[Crash()], enable_progress_bar=False, enable_model_summary=False,
    )
    """
)


def _model(adata, **kwargs):
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    return PoissonVAE(adata, n_latent=4, **kwargs)


def test_resume_after_crash_matches_uninterrupted_run(adata, quiet, tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(ckpt_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 17, proc.stderr[-3000:]  # it died in epoch 3, as planned
    saved = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 2  # the checkpoint after 3 of 6 epochs
    assert not list(ckpt_dir.glob(".*tmp"))

    resumed = _model(adata.copy())
    resumed.train(max_epochs=6, seed=0, checkpoint_dir=ckpt_dir, checkpoint_every=1, **quiet)
    uninterrupted = _model(adata.copy())
    uninterrupted.train(max_epochs=6, seed=0, **quiet)

    np.testing.assert_allclose(
        resumed.get_latent_representation(),
        uninterrupted.get_latent_representation(),
        rtol=1e-6,
        atol=1e-7,
    )
    # the history covers every epoch, those before the crash included
    for key in ("elbo_train", "reconstruction_loss_train", "kl_local_train"):
        np.testing.assert_allclose(
            resumed.history[key][key].to_numpy(float),
            uninterrupted.history[key][key].to_numpy(float),
            rtol=1e-6,
        )
    assert len(resumed.history["elbo_train"]) == 6
    # the finished run left its final checkpoint
    final = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["epoch"] == 5


def test_checkpoint_every_and_continuing_a_finished_run(adata, quiet, tmp_path):
    model = _model(adata)
    model.train(max_epochs=3, seed=0, checkpoint_dir=tmp_path, checkpoint_every=2, **quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 2  # the last epoch
    # a longer run with the same folder continues where the finished one stopped
    longer = _model(adata.copy())
    longer.train(max_epochs=5, seed=0, checkpoint_dir=tmp_path, checkpoint_every=2, **quiet)
    assert len(longer.history["elbo_train"]) == 5
    with pytest.raises(ValueError, match="checkpoint_every"):
        model.train(max_epochs=1, checkpoint_dir=tmp_path, checkpoint_every=0, **quiet)


def test_checkpoint_of_another_model_is_refused(adata, quiet, tmp_path):
    _model(adata).train(max_epochs=1, seed=0, checkpoint_dir=tmp_path, **quiet)
    other = PoissonVAE(adata, n_latent=5)
    with pytest.raises(ValueError, match=r"checkpoint_dir=.*other dimensions.*delete") as err:
        other.train(max_epochs=2, seed=0, checkpoint_dir=tmp_path, **quiet)
    assert str(tmp_path) in str(err.value)
    (tmp_path / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        other.train(max_epochs=2, seed=0, checkpoint_dir=tmp_path, **quiet)


@pytest.mark.parametrize(
    ("term", "named"),
    [("kl_z", "KL term 'kl_z'"), ("rna", "reconstruction of 'rna'")],
)
def test_non_finite_loss_names_the_term(adata, quiet, term, named):
    model = _model(adata)
    loss = model.module.loss

    def broken_loss(*args, **kwargs):
        out = loss(*args, **kwargs)
        rec = dict(out.reconstruction_loss)
        kl = dict(out.kl_local)
        if term in rec:
            rec[term] = rec[term] * torch.inf
        else:
            kl[term] = kl[term] * torch.nan
        total = sum(r.mean() for r in rec.values()) + sum(k.mean() for k in kl.values())
        return LossOutput(loss=total, reconstruction_loss=rec, kl_local=kl)

    model.module.loss = broken_loss
    with pytest.raises(FloatingPointError, match=rf"non-finite {named}\..*lr=") as err:
        model.train(max_epochs=2, seed=0, **quiet)
    assert "epoch 0, step 0" in str(err.value)


def test_huge_learning_rate_stops_with_a_named_term(adata, quiet):
    model = _model(adata)
    with pytest.raises(FloatingPointError, match=r"non-finite reconstruction of 'rna'"):
        model.train(max_epochs=5, seed=0, lr=1e6, **quiet)


def test_save_is_atomic(adata, quiet, tmp_path, monkeypatch):
    model = _model(adata)
    model.train(max_epochs=1, seed=0, **quiet)
    z_before = model.get_latent_representation()
    model.save(tmp_path)
    model.train(max_epochs=2, seed=1, **quiet)  # weights change; then saving crashes midway

    def crash(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a model")
        msg = "disk full"
        raise OSError(msg)

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path, overwrite=True)
    monkeypatch.undo()
    # no temporary left, and the old pair of files still belongs together
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt"]
    fresh = adata.copy()
    loaded = PoissonVAE.load(tmp_path, fresh)
    np.testing.assert_array_equal(loaded.get_latent_representation(fresh), z_before)


def test_load_refuses_other_format_versions(adata, quiet, tmp_path):
    model = _model(adata)
    model.train(max_epochs=1, seed=0, **quiet)
    model.save(tmp_path)
    meta_file = tmp_path / "model.json"
    meta = json.loads(meta_file.read_text())
    meta["format_version"] = 99
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(
        ValueError, match=r"format version 99.*reads version 2.*scgenvae that saved"
    ):
        PoissonVAE.load(tmp_path, adata.copy())
    meta_file.write_text("garbage")
    with pytest.raises(ValueError, match=r"model\.json is not a readable scgenvae model file"):
        PoissonVAE.load(tmp_path, adata.copy())


def test_resume_reproduces_multivae_with_discrete_latent(mdata, quiet, tmp_path):
    """Sparse ATAC, mixture prior initialised at epoch 2, crash in epoch 4 (in-process)."""
    from lightning.pytorch import Callback

    from scgenvae.model import MultiVAE

    class Crash(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.current_epoch == 4:
                msg = "simulated crash"
                raise RuntimeError(msg)

    def run(**kwargs):
        data = mdata.copy()
        MultiVAE.setup_mudata(data)
        model = MultiVAE(data, n_latent=4, n_clusters=3)
        model.train(max_epochs=6, seed=0, plan_kwargs={"cluster_init_epoch": 2}, **quiet, **kwargs)
        return model

    ckpt = {"checkpoint_dir": tmp_path, "checkpoint_every": 2}
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(callbacks=[Crash()], **ckpt)
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 3
    resumed, uninterrupted = run(**ckpt), run()
    np.testing.assert_allclose(
        resumed.get_latent_representation(), uninterrupted.get_latent_representation(), atol=1e-6
    )
    np.testing.assert_allclose(
        resumed.get_cluster_probabilities(), uninterrupted.get_cluster_probabilities(), atol=1e-6
    )


def test_epoch_metrics_equal_scvi_tools_per_step_logging(mdata, quiet):
    """Metrics logged once per epoch have the values of scvi-tools' log-every-step plan."""
    from scvi.train import TrainingPlan

    from scgenvae.model import MultiVAE
    from scgenvae.model._plan import ScgenvaeTrainingPlan

    class PerStepLogging(ScgenvaeTrainingPlan):
        def training_step(self, batch, batch_idx):
            return TrainingPlan.training_step(self, batch, batch_idx)

    histories = []
    for plan in (ScgenvaeTrainingPlan, PerStepLogging):
        data = mdata.copy()
        MultiVAE.setup_mudata(data, batch_key="batch")
        model = MultiVAE(data, n_latent=4)
        model._training_plan_cls = plan
        # 3 minibatches per epoch, the last one smaller (cell-weighted means must match)
        model.train(max_epochs=3, seed=0, batch_size=len(mdata) // 3 + 7, **quiet)
        histories.append(model.history)
    ours, scvi = histories
    keys = ("elbo_train", "reconstruction_loss_train", "kl_local_train", "train_loss")
    for key in (*keys, "kl_align_train"):
        assert key in ours, key
        np.testing.assert_allclose(
            ours[key][key].to_numpy(float), scvi[key][key].to_numpy(float), rtol=1e-5
        )
        assert len(ours[key]) == 3
