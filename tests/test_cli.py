from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pytest

from scgenvae import cli, datasets


def test_fit_h5ad_writes_latent(tmp_path):
    adata = datasets.synthetic_rna(120, 30, rng=0)
    src, out = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    adata.write_h5ad(src)
    rc = cli.main(
        [
            "fit",
            str(src),
            "--output",
            str(out),
            "--batch-key",
            "batch",
            "--n-latent",
            "3",
            "--max-epochs",
            "2",
            "--quiet",
            "--save-model",
            str(tmp_path / "m"),
        ]
    )
    assert rc == 0
    back = ad.read_h5ad(out)
    assert back.obsm["X_scgenvae"].shape == (120, 3)
    assert (tmp_path / "m" / "model.pt").exists()


def test_fit_h5mu_uses_multivae(tmp_path):
    mdata = datasets.synthetic_multiome(100, 20, 40, rng=0)
    src, out = tmp_path / "in.h5mu", tmp_path / "out.h5mu"
    mdata.write_h5mu(src)
    assert cli.main(["fit", str(src), "-o", str(out), "--max-epochs", "2", "--quiet"]) == 0
    back = md.read_h5mu(out)
    assert back.obsm["X_scgenvae"].shape == (100, 10)
    assert back.uns["scgenvae"]["params"]["model"] == "MultiVAE"


def test_fit_reports_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main(["fit", str(tmp_path / "nope.h5ad"), "-o", str(tmp_path / "o.h5ad")])
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(SystemExit, match="could not read"):
        cli.main(["fit", str(bad), "-o", str(tmp_path / "o.h5ad")])
    adata = datasets.synthetic_rna(50, 10, rng=0)
    adata.X = adata.X * 0.5
    src = tmp_path / "frac.h5ad"
    adata.write_h5ad(src)
    assert cli.main(["fit", str(src), "-o", str(tmp_path / "o.h5ad"), "--quiet"]) == 2
    assert "non-integer" in capsys.readouterr().err


def test_demo_writes_files(tmp_path, monkeypatch):
    import scgenvae._demo as demo

    paths = demo.run_cellbench(tmp_path, max_epochs=2, seed=0)
    assert {p.suffix for p in paths} == {".h5ad", ".png"}
    assert all(p.stat().st_size > 0 for p in paths)
    back = ad.read_h5ad(paths[0])
    assert np.isfinite(back.obsm["X_scgenvae"]).all()


def test_fit_prints_the_training_report(tmp_path, capsys):
    adata = datasets.synthetic_rna(120, 30, rng=0)
    src, out = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    adata.write_h5ad(src)
    argv = ["fit", str(src), "-o", str(out), "--batch-key", "batch", "--max-epochs", "3"]
    assert cli.main([*argv, "--n-latent", "3"]) == 0
    text = capsys.readouterr().out
    assert text.count("training ran its 3 of 3 epochs (max_epochs reached).") == 1
    assert "active latent dimensions:" in text
    assert "of 3 (variance of the posterior mean" in text
    assert "training loss" in text
