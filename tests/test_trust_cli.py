"""`scgenvae fit` refuses what it cannot or must not write, before reading or training.

Issue 16: the CLI overwrote outputs and saved models silently, wrote unreadable files for a
`--key-added` with "/", and wrote h5ad content under an .h5mu name. Each test here failed on
the code before the fix.
"""

from __future__ import annotations

import stat
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pytest

from scgenvae import cli, datasets

OLD = b"the previous output, which must survive"


def _write_input(tmp_path, kind: str):
    src = tmp_path / f"in.{kind}"
    if kind == "h5ad":
        datasets.synthetic_rna(60, 15, rng=0).write_h5ad(src)
    else:
        datasets.synthetic_multiome(60, 12, 20, rng=0).write_h5mu(src)
    return src


def _fit(*argv: str) -> int:
    return cli.main(["fit", *argv, "--n-latent", "2", "--max-epochs", "1", "--quiet"])


@pytest.fixture
def no_reading(monkeypatch):
    """Make loading the input (and so any training) fail: a refusal must come before it."""

    def fail(path):
        msg = f"read {path} although the arguments should have been refused"
        raise AssertionError(msg)

    monkeypatch.setattr(cli, "_read", fail)


def _leftovers(folder, *keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# --- refusals, before the input is read ------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "key", "match"),
    [
        ("--key-added", "X_a/b", r"`--key-added 'X_a/b'`.*cannot contain '/'.*--key-added X_a_b"),
        ("--key-added", "", r"`--key-added ''`"),
        ("--key-added", ".", r"`--key-added '.'`"),
        ("--key-added", "X_", r"`--key-added 'X_'` \(its parameters go to uns\[''\]\)"),
        ("--key-added", "X_.", r"uns\['.'\]"),
        ("--batch-key", "batch/x", r"`--batch-key 'batch/x'`"),
        ("--layer", "counts/raw", r"`--layer 'counts/raw'`"),
        ("--rna-mod", "", r"`--rna-mod ''`"),
        ("--atac-mod", "a/b", r"`--atac-mod 'a/b'`"),
    ],
)
def test_unwritable_key_refused_before_reading(tmp_path, no_reading, flag, key, match):
    src, out = _write_input(tmp_path, "h5ad"), tmp_path / "out.h5ad"
    with pytest.raises(SystemExit, match=match):
        _fit(str(src), "-o", str(out), flag, key)
    assert not out.exists()


@pytest.mark.parametrize(
    ("src", "out", "match"),
    [
        ("in.h5ad", "out.h5mu", r"the input is h5ad.*name the output .*out\.h5ad"),
        ("in.h5mu", "out.h5ad", r"the input is h5mu.*name the output .*out\.h5mu"),
        ("in.h5ad", "out", r"name the output .*out\.h5ad"),
        ("in.h5ad", "out.h5", r"name the output .*out\.h5ad"),
    ],
)
def test_output_extension_must_match_the_input(tmp_path, no_reading, src, out, match):
    src = _write_input(tmp_path, src.removeprefix("in."))
    with pytest.raises(SystemExit, match=match):
        _fit(str(src), "-o", str(tmp_path / out))
    assert _leftovers(tmp_path, src.name) == []


@pytest.mark.parametrize(
    ("existing", "argv", "match"),
    [
        ("out.h5ad", [], r"`--output .*out\.h5ad` exists; pass --overwrite"),
        (
            "m/model.pt",
            ["--save-model", "m"],
            r"`--save-model .*m` exists and is not empty; pass --overwrite",
        ),
        ("m/notes.txt", ["--save-model", "m"], r"`--save-model .*m` exists and is not empty"),
        ("m", ["--save-model", "m"], r"`--save-model .*m` is a file"),
        ("unused", ["--save-model", "out.h5ad"], r"`--save-model .*out\.h5ad` is the --output"),
    ],
)
def test_existing_file_refused_without_overwrite(tmp_path, no_reading, existing, argv, match):
    path = tmp_path / existing
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(OLD)
    argv = [str(tmp_path / a) if a in {"m", "out.h5ad"} else a for a in argv]
    src = _write_input(tmp_path, "h5ad")
    with pytest.raises(SystemExit, match=match):
        _fit(str(src), "-o", str(tmp_path / "out.h5ad"), *argv)
    assert path.read_bytes() == OLD


# --- --overwrite, atomic writes, round trip --------------------------------------------------


@pytest.mark.parametrize("kind", ["h5ad", "h5mu"])
def test_overwrite_replaces_output_and_model(tmp_path, kind):
    src = _write_input(tmp_path, kind)
    out, model = tmp_path / f"out.{kind}", tmp_path / "m" / "model.pt"
    model.parent.mkdir()
    out.write_bytes(OLD)
    model.write_bytes(OLD)
    argv = [str(src), "-o", str(out), "--save-model", str(model.parent), "--overwrite"]
    assert _fit(*argv) == 0
    back = ad.read_h5ad(out) if kind == "h5ad" else md.read_h5mu(out)
    assert back.obsm["X_scgenvae"].shape == (60, 2)
    assert model.read_bytes() != OLD
    assert model.stat().st_size > 0
    assert _leftovers(tmp_path, src.name, out.name, "m") == []


@pytest.mark.parametrize("kind", ["h5ad", "h5mu"])
@pytest.mark.parametrize("old_output", [True, False])
def test_failed_write_leaves_the_old_output_and_no_temp_file(
    tmp_path, monkeypatch, capsys, kind, old_output
):
    src = _write_input(tmp_path, kind)
    out = tmp_path / f"out.{kind}"
    if old_output:
        out.write_bytes(OLD)
    cls, name = (ad.AnnData, "write_h5ad") if kind == "h5ad" else (md.MuData, "write_h5mu")
    real = getattr(cls, name)

    def crash_midway(self, filename, *args, **kwargs):
        real(self, filename, *args, **kwargs)
        path = Path(filename)
        with path.open("r+b") as f:  # half a file, as a full disk would leave it
            f.truncate(path.stat().st_size // 2)
        msg = "No space left on device"
        raise OSError(msg)

    monkeypatch.setattr(cls, name, crash_midway)
    assert _fit(str(src), "-o", str(out), "--overwrite") == 2
    assert "No space left on device" in capsys.readouterr().err
    if old_output:
        assert out.read_bytes() == OLD
    else:
        assert not out.exists()
    assert _leftovers(tmp_path, src.name, out.name) == []


@pytest.mark.parametrize(("kind", "key"), [("h5ad", "X_my latent.v2"), ("h5mu", "X_joint")])
def test_output_round_trips_with_a_new_file_mode(tmp_path, kind, key):
    src = _write_input(tmp_path, kind)
    out = tmp_path / "sub" / f"out.{kind}"
    assert _fit(str(src), "-o", str(out), "--key-added", key) == 0
    back = ad.read_h5ad(out) if kind == "h5ad" else md.read_h5mu(out)
    assert back.obsm[key].shape == (60, 2)
    assert np.isfinite(back.obsm[key]).all()
    assert back.uns[key.removeprefix("X_")]["params"]["n_latent"] == 2
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    # the temporary file is private; the output gets the mode of any new file
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert _leftovers(out.parent, out.name) == []


def test_fit_prints_nothing_but_wrote_lines_when_quiet(tmp_path, capsys):
    src = _write_input(tmp_path, "h5ad")
    out, model = tmp_path / "out.h5ad", tmp_path / "m"
    assert _fit(str(src), "-o", str(out), "--save-model", str(model)) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {out} (latent in obsm['X_scgenvae'])",
        f"wrote the model to {model}",
    ]
