"""Issue 16, files: nothing loaded from a model file or checkpoint runs code.

Each probe plants a pickle whose payload writes a marker file, in the place of a file scgenvae
reads, and checks that loading fails with a clear message and leaves no marker.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from scgenvae.datasets import synthetic_rna
from scgenvae.model import PoissonVAE, convert_legacy_model

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


class _Payload:
    """Unpickling this object runs ``os.system``-like code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def _evil(path: Path, marker: Path) -> None:
    with path.open("wb") as f:
        pickle.dump({"state_dict": _Payload(marker), "format_version": 1}, f)


@pytest.fixture(scope="module")
def trained():
    adata = synthetic_rna(n_obs=120, n_vars=30, rng=0)
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=3, n_hidden=16)
    model.train(max_epochs=2, seed=0, **QUIET)
    return model, adata


def _save(trained, folder: Path) -> Path:
    model, _ = trained
    model.save(folder)
    return folder


def _legacy_folder(folder: Path, marker: Path) -> Path:
    folder.mkdir()
    _evil(folder / "model.pt", marker)
    return folder


def _pickle_with_matching_digest(folder: Path, marker: Path) -> Path:
    """The attacker also rewrites model.json with the digest of the crafted model.pt."""
    _evil(folder / "model.pt", marker)
    meta = json.loads((folder / "model.json").read_text())
    meta["tensors_sha256"] = hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def _object_array_in_json(folder: Path, marker: Path) -> Path:
    del marker
    meta = json.loads((folder / "model.json").read_text())
    meta["features"] = {"__ndarray__": [{"__reduce__": "os.system"}], "dtype": "|O", "shape": [1]}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize(
    ("name", "plant", "saved_first", "match"),
    [
        (
            "legacy pickle without model.json",
            _legacy_folder,
            False,
            r"first file format.*runs code when it is read.*convert_legacy_model.*trust_file=True",
        ),
        (
            "crafted model.pt with a matching digest",
            _pickle_with_matching_digest,
            True,
            r"model\.pt is not a readable tensor file",
        ),
        (
            "model.json array of arbitrary objects",
            _object_array_in_json,
            True,
            r"values other than numbers and strings",
        ),
    ],
)
def test_loading_a_crafted_model_folder_runs_no_code(
    trained, tmp_path, name, plant, saved_first, match
):
    del name
    marker = tmp_path / "marker"
    folder = tmp_path / "model"
    if saved_first:
        _save(trained, folder)
    plant(folder, marker)
    with pytest.raises(ValueError, match=match):
        PoissonVAE.load(folder, trained[1].copy())
    assert not marker.exists()


def test_resuming_from_a_crafted_checkpoint_runs_no_code(trained, tmp_path):
    model, _ = trained
    marker = tmp_path / "marker"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _evil(ckpt / "last.ckpt", marker)
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        model.train(max_epochs=1, checkpoint_dir=ckpt, **QUIET)
    assert not marker.exists()


def test_model_file_holds_tensors_only_and_json(trained, tmp_path):
    """model.pt loads with weights_only=True; model.json is plain JSON; round trip is exact."""
    model, adata = trained
    folder = _save(trained, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.pt"]
    state = torch.load(folder / "model.pt", weights_only=True)
    assert set(state) == set(model.module.state_dict())
    meta = json.loads((folder / "model.json").read_text())
    assert meta["model_class"] == "PoissonVAE"
    assert meta["features"]["rna"] == list(adata.var_names)
    loaded = PoissonVAE.load(folder, adata.copy())
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )
    assert loaded.history_["elbo_train"].shape == model.history_["elbo_train"].shape
    registry = PoissonVAE.load_registry(folder)
    np.testing.assert_array_equal(
        registry["field_registries"]["batch"]["state_registry"]["categorical_mapping"],
        model.adata_manager._registry["field_registries"]["batch"]["state_registry"][
            "categorical_mapping"
        ],
    )


def test_edited_tensor_file_is_refused(trained, tmp_path):
    folder = _save(trained, tmp_path / "m")
    state = torch.load(folder / "model.pt", weights_only=True)
    next(iter(state.values())).add_(1.0)
    torch.save(state, folder / "model.pt")
    with pytest.raises(ValueError, match=r"not the file .*model\.json was saved with"):
        PoissonVAE.load(folder, trained[1].copy())


def _old_format(model, folder: Path) -> None:
    """A model folder as scgenvae 0.1 wrote it (one pickle)."""
    folder.mkdir()
    payload = {
        "format_version": 1,
        "model_class": "PoissonVAE",
        "scgenvae_version": "0.1.0",
        "init_params": model._init_kwargs,
        "module_kwargs": model._module_kwargs,
        "setup_args": model._setup_args,
        "registry": model.adata_manager._registry,
        "features": {m: list(v) for m, v in model.feature_names.items()},
        "state_dict": model.module.state_dict(),
        "is_trained": True,
        "history": {k: v.to_dict() for k, v in model.history_.items()},
        "training_report": model.training_report,
    }
    torch.save(payload, folder / "model.pt")


def test_legacy_conversion_needs_trust_and_keeps_the_model(trained, tmp_path):
    model, adata = trained
    old, new = tmp_path / "old", tmp_path / "new"
    _old_format(model, old)
    with pytest.raises(ValueError, match="trust_file=True"):
        convert_legacy_model(old, new)
    assert not new.exists()
    PoissonVAE.convert_legacy_save(old, new, trust_file=True)
    assert (old / "model.pt").exists()  # the old folder is left as it was
    assert not (old / "model.json").exists()
    loaded = PoissonVAE.load(new, adata.copy())
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert_legacy_model(old, new, trust_file=True)


def test_save_refuses_a_file_path_and_an_existing_model(trained, tmp_path):
    model, _ = trained
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file; pass a folder"):
        model.save(tmp_path / "file")
    model.save(tmp_path / "m")
    before = (tmp_path / "m" / "model.pt").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "m")
    assert (tmp_path / "m" / "model.pt").read_bytes() == before
    model.save(tmp_path / "m", overwrite=True)
