"""Bad input at every public entry point: a clear error or documented handling, data untouched.

Each row of ``CASES`` builds the user's object, calls one entry point with one kind of bad (or
merely unusual) input and states what must happen: an exception whose message names the field
and the fix, a warning, or a result with a stated property. In every case the user's object
must be unchanged afterwards (:func:`assert_unchanged` against a deep copy taken before).
"""

from __future__ import annotations

import functools
import re
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import sparse

from scgenvae import cli, datasets, pl, tl
from scgenvae.model import MultiVAE, PoissonVAE

if TYPE_CHECKING:
    from collections.abc import Callable

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


# ----------------------------------------------------------------------------------------------
# the unchanged-object check
# ----------------------------------------------------------------------------------------------
def _snapshot(data: Any) -> Any:
    """A deep copy of the user's object (file bytes for a path)."""
    with warnings.catch_warnings():
        # anndata repeats its own duplicate-name notice on every copy
        warnings.filterwarnings("ignore", message=".*names are not unique", category=UserWarning)
        if isinstance(data, md.MuData):
            # not ``mdata.copy()``: it pulls the modalities' columns into the copy's obs
            return {
                "mod": {name: mod.copy() for name, mod in data.mod.items()},
                "obs": data.obs.copy(),
                "obsm": list(data.obsm),
                "uns": list(data.uns),
            }
        if isinstance(data, ad.AnnData):
            return data.to_memory() if data.isbacked else data.copy()
    if isinstance(data, Path):
        return data.read_bytes() if data.is_file() else None
    return None


def _assert_matrix(before, after, where: str) -> None:
    if before is None or after is None:
        assert before is None, where
        assert after is None, where
        return
    if hasattr(after, "to_memory"):  # backed sparse
        after = after.to_memory()
    elif type(after).__module__.startswith("h5py"):  # backed dense
        after = after[()]
    assert sparse.issparse(after) == sparse.issparse(before), f"{where}: storage changed"
    if sparse.issparse(before):
        assert after.format == before.format, f"{where}: sparse format changed"
    assert after.dtype == before.dtype, f"{where}: dtype changed"
    assert after.shape == before.shape, f"{where}: shape changed"
    b = before.toarray() if sparse.issparse(before) else np.asarray(before)
    a = after.toarray() if sparse.issparse(after) else np.asarray(after)
    if b.dtype.kind in "biuf":
        np.testing.assert_array_equal(a, b, err_msg=where)  # NaNs compare equal here
    else:
        assert (a == b).all(), where


def _assert_anndata(before: ad.AnnData, after: ad.AnnData, where: str) -> None:
    pd.testing.assert_index_equal(after.obs_names, before.obs_names)
    pd.testing.assert_index_equal(after.var_names, before.var_names)
    pd.testing.assert_frame_equal(after.obs, before.obs, obj=f"{where}.obs")
    pd.testing.assert_frame_equal(after.var, before.var, obj=f"{where}.var")
    assert list(after.obsm) == list(before.obsm), f"{where}.obsm keys changed"
    for key in before.obsm:
        _assert_matrix(before.obsm[key], after.obsm[key], f"{where}.obsm[{key!r}]")
    assert list(after.uns) == list(before.uns), f"{where}.uns keys changed"
    assert list(after.layers) == list(before.layers), f"{where}.layers keys changed"
    for key in before.layers:
        _assert_matrix(before.layers[key], after.layers[key], f"{where}.layers[{key!r}]")
    _assert_matrix(before.X, after.X, f"{where}.X")


def assert_unchanged(before: Any, after: Any) -> None:
    """``after`` (the user's object after the call) equals ``before`` (a deep copy)."""
    if isinstance(after, md.MuData):
        assert list(after.mod) == list(before["mod"]), "mdata.mod reordered or changed"
        pd.testing.assert_frame_equal(after.obs, before["obs"], obj="mdata.obs")
        assert list(after.obsm) == before["obsm"], "mdata.obsm keys changed"
        assert list(after.uns) == before["uns"], "mdata.uns keys changed"
        for name, mod in before["mod"].items():
            _assert_anndata(mod, after.mod[name], f"mdata.mod[{name!r}]")
    elif isinstance(after, ad.AnnData):
        _assert_anndata(before, after, "adata")
    elif isinstance(after, Path):
        assert (after.read_bytes() if after.is_file() else None) == before, f"{after} changed"


# ----------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------
@dataclass
class Ctx:
    """What a case may use besides its data."""

    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch


@dataclass(frozen=True)
class Case:
    """One bad input: build the user's object, call the entry point, state the outcome.

    ``raises``/``match``: the exception and a regex on its message. ``warns``/``warn_match``:
    a warning the call must give. ``stderr``: regex the CLI must print. ``check``: a
    property of ``(result, data)`` for inputs that are accepted.
    """

    id: str
    make: Callable[[Ctx], Any]
    call: Callable[[Any, Ctx], Any]
    raises: type[BaseException] | None = None
    match: str | None = None
    warns: type[Warning] | None = None
    warn_match: str | None = None
    stderr: str | None = None
    check: Callable[[Any, Any], None] | None = None


# data builders --------------------------------------------------------------------------------
def _rna(ctx: Ctx | None = None, n_obs: int = 120, n_vars: int = 30) -> ad.AnnData:
    del ctx
    return datasets.synthetic_rna(n_obs, n_vars, rng=0)


def _mdata(ctx: Ctx | None = None) -> md.MuData:
    del ctx
    return datasets.synthetic_multiome(60, 15, 30, rng=0)


def _with_x(transform: Callable[[ad.AnnData], Any]) -> Callable[[Ctx], ad.AnnData]:
    def make(ctx: Ctx) -> ad.AnnData:
        adata = _rna(ctx)
        adata.X = transform(adata)
        return adata

    return make


def _dense(adata: ad.AnnData) -> np.ndarray:
    return adata.X.toarray()


def _set_first(value: float) -> Callable[[ad.AnnData], Any]:
    def transform(adata: ad.AnnData):
        x = adata.X.copy()
        x.data[0] = value
        return x

    return transform


def _zero_rows(adata: ad.AnnData) -> sparse.csr_matrix:
    x = adata.X.toarray()
    x[:4] = 0
    return sparse.csr_matrix(x)


def _zero_cols(adata: ad.AnnData) -> sparse.csr_matrix:
    x = adata.X.toarray()
    x[:, :5] = 0
    return sparse.csr_matrix(x)


def _backed(*, dense: bool) -> Callable[[Ctx], ad.AnnData]:
    def make(ctx: Ctx) -> ad.AnnData:
        adata = _rna(ctx)
        if dense:
            adata.X = adata.X.toarray()
        path = ctx.tmp_path / "backed.h5ad"
        adata.write_h5ad(path)
        return ad.read_h5ad(path, backed="r")

    return make


def _obs_edit(edit: Callable[[ad.AnnData], None]) -> Callable[[Ctx], ad.AnnData]:
    def make(ctx: Ctx) -> ad.AnnData:
        adata = _rna(ctx)
        edit(adata)
        return adata

    return make


def _new_batch(adata: ad.AnnData) -> None:
    batch = adata.obs["batch"].cat.add_categories("batch_new")
    batch[:5] = "batch_new"
    adata.obs["batch"] = batch


def _tiny_batch(adata: ad.AnnData) -> None:
    batch = adata.obs["batch"].cat.add_categories("batch_tiny")
    batch[:2] = "batch_tiny"
    adata.obs["batch"] = batch


def _batch_with_nan(adata: ad.AnnData) -> None:
    batch = adata.obs["batch"].astype(object)
    batch.iloc[0] = np.nan
    adata.obs["batch"] = batch


def _mdata_edit(edit: Callable[[md.MuData], md.MuData | None]) -> Callable[[Ctx], md.MuData]:
    def make(ctx: Ctx) -> md.MuData:
        mdata = _mdata(ctx)
        out = edit(mdata)
        return mdata if out is None else out

    return make


def _unpaired(mdata: md.MuData) -> md.MuData:
    """RNA for cells 0-39, ATAC for cells 20-59: 20 paired, 40 with one modality."""
    rna, atac = mdata.mod["rna"][:40].copy(), mdata.mod["atac"][20:].copy()
    return md.MuData({"rna": rna, "atac": atac})


def _reordered(mdata: md.MuData) -> md.MuData:
    out = md.MuData({"rna": mdata.mod["rna"].copy(), "atac": mdata.mod["atac"][::-1].copy()})
    out.obs = mdata.obs.copy()
    return out


def _duplicate_rna_obs_names(mdata: md.MuData) -> md.MuData:
    rna = mdata.mod["rna"].copy()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*names are not unique", category=UserWarning)
        rna.obs_names = ["c"] * rna.n_obs
        return md.MuData({"rna": rna, "atac": mdata.mod["atac"].copy()})


def _cycling(ctx: Ctx | None = None) -> ad.AnnData:
    """Cycling cells with a clean 3-D representation of the true angle in ``obsm["X_rep"]``."""
    del ctx
    adata = datasets.synthetic_cell_cycle(150, 20, rng=0)
    angle = adata.obs["true_angle"].to_numpy()
    noise = np.random.default_rng(0).normal(scale=0.05, size=(adata.n_obs, 3))
    adata.obsm["X_rep"] = np.stack([np.cos(angle), np.sin(angle), np.zeros_like(angle)], 1) + noise
    return adata


def _cycling_with_zero_rows(ctx: Ctx | None = None) -> ad.AnnData:
    adata = _cycling(ctx)
    adata.X = _zero_rows(adata)
    return adata


@functools.cache
def _aligned_template() -> ad.AnnData:
    adata = _cycling()
    tl.align_cell_cycle(adata, use_rep="X_rep")
    return adata


def _aligned(ctx: Ctx | None = None) -> ad.AnnData:
    del ctx
    return _aligned_template().copy()


def _rep(values: Callable[[ad.AnnData], np.ndarray], n_obs: int | None = None):
    def make(ctx: Ctx) -> ad.AnnData:
        adata = _cycling(ctx)
        if n_obs is not None:
            adata = adata[:n_obs].copy()
        adata.obsm["X_rep"] = values(adata)
        return adata

    return make


# models (trained once per session; cases only query them) ------------------------------------
@functools.cache
def _rna_model() -> PoissonVAE:
    adata = _rna()
    PoissonVAE.setup_anndata(adata, batch_key="batch")
    model = PoissonVAE(adata, n_latent=3, n_hidden=16)
    model.train(max_epochs=2, seed=0, **QUIET)
    model._test_data = adata  # keep the training data alive (the model holds a weakref)
    return model


@functools.cache
def _multi_model() -> MultiVAE:
    mdata = _mdata()
    MultiVAE.setup_mudata(mdata, batch_key="batch")
    model = MultiVAE(mdata, n_latent=3, n_hidden=16)
    model.train(max_epochs=2, seed=0, **QUIET)
    model._test_data = mdata
    return model


def _fit_rna(adata, **setup) -> np.ndarray:
    PoissonVAE.setup_anndata(adata, **setup)
    model = PoissonVAE(adata, n_latent=3, n_hidden=16)
    model.train(max_epochs=1, seed=0, **QUIET)
    return model.get_latent_representation()


def _fit_multi(mdata, **setup) -> np.ndarray:
    MultiVAE.setup_mudata(mdata, **setup)
    model = MultiVAE(mdata, n_latent=3, n_hidden=16)
    model.train(max_epochs=1, seed=0, **QUIET)
    return model.get_latent_representation()


def _saved(ctx: Ctx) -> Path:
    path = ctx.tmp_path / "model"
    _rna_model().save(path, overwrite=True)
    return path


# properties of accepted input -----------------------------------------------------------------
def _latent_of(n_obs: int) -> Callable[[Any, Any], None]:
    def check(z, data) -> None:
        del data
        assert z.shape == (n_obs, 3)
        assert np.isfinite(z).all()

    return check


def _same_latent_as_training(z, data) -> None:
    """Cells are matched by name: the reordered modality gives the trained latent."""
    del data
    np.testing.assert_allclose(z, _multi_model().get_latent_representation(), atol=1e-5)


def _zero_scores_first_cells(result, data) -> None:
    del data
    np.testing.assert_array_equal(result.obs["S_score"].to_numpy()[:4], 0.0)
    np.testing.assert_array_equal(result.obs["G2M_score"].to_numpy()[:4], 0.0)


def _is_figure(result, data) -> None:
    del data
    assert isinstance(result, Figure)


# CLI ------------------------------------------------------------------------------------------
def _file(name: str, content: bytes | Callable[[Path], None]) -> Callable[[Ctx], Path]:
    def make(ctx: Ctx) -> Path:
        path = ctx.tmp_path / name
        if callable(content):
            content(path)
        else:
            path.write_bytes(content)
        return path

    return make


def _write_good(path: Path) -> None:
    _rna(None, 40, 10).write_h5ad(path)


def _write_truncated(path: Path) -> None:
    _write_good(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _write_other_h5(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)


def _fit(*extra: str) -> Callable[[Path, Ctx], int]:
    def call(path: Path, ctx: Ctx) -> int:
        out = ctx.tmp_path / "out" / "o.h5ad"
        return cli.main(["fit", str(path), "-o", str(out), "--quiet", *extra])

    return call


def _returns_2(rc, data) -> None:
    del data
    assert rc == 2


def _corrupt_bundled(ctx: Ctx) -> None:
    (ctx.tmp_path / "fucci_ipsc_dev.h5ad").write_bytes(b"version https://git-lfs.github.com\n")
    ctx.monkeypatch.setenv("SCGENVAE_DATA_DIR", str(ctx.tmp_path))


def _no_bundled(ctx: Ctx) -> None:
    ctx.monkeypatch.setenv("SCGENVAE_DATA_DIR", str(ctx.tmp_path / "nowhere"))


CASES = [
    # --- PoissonVAE.setup_anndata: values -----------------------------------------------------
    Case(
        "rna-non-integer-counts",
        _with_x(lambda a: a.X * 0.5),
        lambda a, c: PoissonVAE.setup_anndata(a),
        ValueError,
        r"adata\.X contains non-integer values.*Pass the raw counts with `layer=`",
    ),
    Case(
        "rna-negative-counts",
        _with_x(_set_first(-1.0)),
        lambda a, c: PoissonVAE.setup_anndata(a),
        ValueError,
        r"adata\.X contains negative values.*`layer=`",
    ),
    Case(
        "rna-nan-counts",
        _with_x(_set_first(np.nan)),
        lambda a, c: PoissonVAE.setup_anndata(a),
        ValueError,
        r"adata\.X contains 1 NaN or infinite values; remove or impute",
    ),
    Case(
        "rna-inf-counts-in-layer",
        _obs_edit(lambda a: a.layers["counts"].data.__setitem__(3, np.inf)),
        lambda a, c: PoissonVAE.setup_anndata(a, layer="counts"),
        ValueError,
        r"adata\.layers\['counts'\] contains 1 NaN or infinite",
    ),
    Case(
        "rna-object-dtype",
        lambda c: ad.AnnData(np.full((5, 3), "a", dtype=object)),
        lambda a, c: PoissonVAE.setup_anndata(a),
        TypeError,
        r"adata\.X has dtype object; expected a numeric matrix of counts",
    ),
    Case(
        "rna-X-is-None",
        lambda c: ad.AnnData(obs=_rna().obs, var=_rna().var),
        lambda a, c: PoissonVAE.setup_anndata(a),
        ValueError,
        r"adata\.X is empty \(None\); pass `layer=`",
    ),
    Case(
        "rna-not-anndata",
        lambda c: None,
        lambda a, c: PoissonVAE.setup_anndata(np.ones((4, 4))),
        TypeError,
        r"setup_anndata needs an AnnData, got ndarray",
    ),
    # --- dtypes and storage that must be accepted ---------------------------------------------
    Case(
        "rna-float16-dense-accepted",
        _with_x(lambda a: a.X.toarray().astype(np.float16)),
        lambda a, c: _fit_rna(a),
        check=_latent_of(120),
    ),
    Case(
        "rna-float64-csr-accepted",
        _with_x(lambda a: a.X.astype(np.float64)),
        lambda a, c: _fit_rna(a),
        check=_latent_of(120),
    ),
    Case(
        "rna-int64-csr-accepted",
        _with_x(lambda a: a.X.astype(np.int64)),
        lambda a, c: _fit_rna(a),
        check=_latent_of(120),
    ),
    Case(
        "rna-int32-dense-accepted",
        _with_x(lambda a: a.X.toarray().astype(np.int32)),
        lambda a, c: _fit_rna(a),
        check=_latent_of(120),
    ),
    Case(
        "rna-csc-accepted-without-warning",
        _with_x(lambda a: sparse.csc_matrix(a.X)),
        lambda a, c: _fit_rna(a),
        check=_latent_of(120),
    ),
    Case(
        "rna-backed-csr-accepted",
        _backed(dense=False),
        lambda a, c: _fit_rna(a, batch_key="batch"),
        check=_latent_of(120),
    ),
    Case(
        "rna-backed-dense-accepted",
        _backed(dense=True),
        lambda a, c: _fit_rna(a),
        check=_latent_of(120),
    ),
    # --- shapes -------------------------------------------------------------------------------
    Case(
        "rna-no-cells",
        lambda c: _rna()[:0].copy(),
        lambda a, c: PoissonVAE.setup_anndata(a),
        ValueError,
        r"adata is empty \(0 cells x 30 features\)",
    ),
    Case(
        "rna-no-genes",
        lambda c: _rna()[:, :0].copy(),
        lambda a, c: PoissonVAE.setup_anndata(a),
        ValueError,
        r"adata is empty \(120 cells x 0 features\)",
    ),
    Case(
        "rna-single-cell-training",
        lambda c: _rna()[:1].copy(),
        lambda a, c: (PoissonVAE.setup_anndata(a), PoissonVAE(a)),
        ValueError,
        r"adata has 1 cell\(s\); training needs at least 3.*get_latent_representation",
    ),
    Case(
        "rna-single-cell-query",
        lambda c: _rna()[:1].copy(),
        lambda a, c: _rna_model().get_latent_representation(a),
        check=_latent_of(1),
    ),
    Case(
        "rna-all-zero-cells-warn",
        _with_x(_zero_rows),
        lambda a, c: _fit_rna(a),
        warns=UserWarning,
        warn_match=r"4 of 120 cells have no counts in adata\.X.*filter_cells",
        check=_latent_of(120),
    ),
    Case(
        "rna-all-zero-genes-accepted",
        _with_x(_zero_cols),
        lambda a, c: _fit_rna(a),
        check=_latent_of(120),
    ),
    Case(
        "rna-batch-of-two-cells-warns-with-user-column",
        _obs_edit(_tiny_batch),
        lambda a, c: _fit_rna(a, batch_key="batch"),
        warns=UserWarning,
        warn_match=r"category 'batch_tiny' of adata\.obs\['batch'\] has fewer than 3 cells",
        check=_latent_of(120),
    ),
    Case(
        "rna-duplicate-var-names",
        _obs_edit(lambda a: setattr(a, "var_names", ["g"] * a.n_vars)),
        lambda a, c: PoissonVAE.setup_anndata(a),
        ValueError,
        r"adata\.var_names are not unique; call `adata\.var_names_make_unique\(\)`",
    ),
    Case(
        "rna-duplicate-obs-names-accepted",
        _obs_edit(lambda a: setattr(a, "obs_names", ["c"] * a.n_obs)),
        lambda a, c: _fit_rna(a, batch_key="batch"),
        check=_latent_of(120),
    ),
    # --- keys -----------------------------------------------------------------------------------
    Case(
        "rna-missing-layer",
        _rna,
        lambda a, c: PoissonVAE.setup_anndata(a, layer="raw"),
        KeyError,
        r"`layer='raw'` not found in adata\.layers; available: \['counts'\]",
    ),
    Case(
        "rna-misspelt-batch-key",
        _rna,
        lambda a, c: PoissonVAE.setup_anndata(a, batch_key="btach"),
        KeyError,
        r"'btach' not found in adata\.obs; available: \['batch', 'group'\]",
    ),
    Case(
        "rna-misspelt-categorical-covariate",
        _rna,
        lambda a, c: PoissonVAE.setup_anndata(a, categorical_covariate_keys=["grup"]),
        KeyError,
        r"'grup' not found in adata\.obs",
    ),
    Case(
        "rna-categorical-as-continuous-covariate",
        _rna,
        lambda a, c: PoissonVAE.setup_anndata(a, continuous_covariate_keys=["group"]),
        TypeError,
        r"continuous covariate adata\.obs\['group'\].*pass it in `categorical_covariate_keys`",
    ),
    Case(
        "rna-batch-with-missing-values",
        _obs_edit(_batch_with_nan),
        lambda a, c: PoissonVAE.setup_anndata(a, batch_key="batch"),
        ValueError,
        r"adata\.obs\['batch'\] has missing values; fill or drop them",
    ),
    # --- __init__ ---------------------------------------------------------------------------------
    Case(
        "rna-model-without-setup",
        _rna,
        lambda a, c: PoissonVAE(a),
        ValueError,
        r"not set up for PoissonVAE: call `scgenvae\.model\.PoissonVAE\.setup_anndata",
    ),
    Case(
        "rna-unknown-likelihood",
        _rna,
        lambda a, c: (PoissonVAE.setup_anndata(a), PoissonVAE(a, gene_likelihood="gauss")),
        ValueError,
        r"`gene_likelihood` must be 'poisson', 'nb' or 'zinb', got 'gauss'",
    ),
    # --- getters on new data --------------------------------------------------------------------
    Case(
        "rna-untrained-model",
        _rna,
        lambda a, c: (PoissonVAE.setup_anndata(a), PoissonVAE(a).get_latent_representation()),
        RuntimeError,
        r"train the model first",
    ),
    Case(
        "rna-batch-seen-only-at-inference",
        _obs_edit(_new_batch),
        lambda a, c: _rna_model().get_latent_representation(a),
        ValueError,
        r"adata\.obs\['batch'\] has categories not seen in training: \['batch_new'\]",
    ),
    Case(
        "rna-query-without-batch-column",
        _obs_edit(lambda a: a.obs.drop(columns="batch", inplace=True)),
        lambda a, c: _rna_model().get_latent_representation(a),
        KeyError,
        r"'batch' not found in adata\.obs; available: \['group'\]",
    ),
    Case(
        "rna-query-with-fewer-genes",
        lambda c: _rna()[:, :20].copy(),
        lambda a, c: _rna_model().get_latent_representation(a),
        ValueError,
        r"rna: the model was trained on 30 features, the data has 20.*feature_names",
    ),
    Case(
        "rna-query-with-reordered-genes",
        lambda c: _rna()[:, ::-1].copy(),
        lambda a, c: _rna_model().get_latent_representation(a),
        ValueError,
        r"other names/order\)\. Subset it to the training features",
    ),
    Case(
        "rna-unknown-latent-modality",
        _rna,
        lambda a, c: _rna_model().get_latent_representation(a, modality="atac"),
        ValueError,
        r"`modality='atac'` is not one of \['joint', 'rna'\]",
    ),
    Case(
        "rna-export-latent-into-view",
        lambda c: _rna()[:50],
        lambda a, c: _rna_model().export_latent(a),
        ValueError,
        r"`data` is a view; pass `data\.copy\(\)`",
    ),
    # --- load -------------------------------------------------------------------------------------
    Case(
        "load-missing-folder",
        _rna,
        lambda a, c: PoissonVAE.load(c.tmp_path / "nope", a),
        FileNotFoundError,
        r"no saved model in .*nope; pass the folder given to `model\.save",
    ),
    Case(
        "load-corrupt-file",
        _rna,
        lambda a, c: (
            (c.tmp_path / "m").mkdir(),
            (c.tmp_path / "m" / "model.json").write_bytes(b"oops"),
            PoissonVAE.load(c.tmp_path / "m", a),
        ),
        ValueError,
        r"model\.json is not a readable scgenvae model file",
    ),
    Case(
        "load-onto-different-genes",
        lambda c: _rna(c, 120, 25),
        lambda a, c: PoissonVAE.load(_saved(c), a),
        ValueError,
        r"rna: the saved model expects 30 features in the trained order, the data has 25",
    ),
    Case(
        "load-onto-unseen-batch",
        _obs_edit(_new_batch),
        lambda a, c: PoissonVAE.load(_saved(c), a),
        ValueError,
        r"adata\.obs\['batch'\] has categories not seen in training: \['batch_new'\]",
    ),
    Case(
        "load-then-query-different-genes",
        lambda c: _rna(c, 120, 25),
        lambda a, c: PoissonVAE.load(_saved(c), _rna()).get_latent_representation(a),
        ValueError,
        r"trained on 30 features, the data has 25",
    ),
    # --- MultiVAE -------------------------------------------------------------------------------
    Case(
        "multi-misspelt-rna-mod",
        _mdata,
        lambda m, c: MultiVAE.setup_mudata(m, rna_mod="RNA"),
        KeyError,
        r"`rna_mod='RNA'` not found in mdata\.mod; available: \['rna', 'atac'\]",
    ),
    Case(
        "multi-misspelt-atac-mod",
        _mdata,
        lambda m, c: MultiVAE.setup_mudata(m, atac_mod="peaks"),
        KeyError,
        r"`atac_mod='peaks'` not found in mdata\.mod",
    ),
    Case(
        "multi-missing-atac-layer",
        _mdata,
        lambda m, c: MultiVAE.setup_mudata(m, atac_layer="binary"),
        KeyError,
        r"`atac_layer='binary'` not found in mod\['atac'\]\.layers.*`atac_layer=None`",
    ),
    Case(
        "multi-misspelt-batch-key",
        _mdata,
        lambda m, c: MultiVAE.setup_mudata(m, batch_key="donor"),
        KeyError,
        r"'donor' not found in mdata\.obs or the modalities' obs; available",
    ),
    Case(
        "multi-not-mudata",
        lambda c: None,
        lambda m, c: MultiVAE.setup_mudata(np.ones((3, 3))),
        TypeError,
        r"MultiVAE needs a MuData .* got ndarray",
    ),
    Case(
        "multi-empty",
        _mdata_edit(lambda m: md.MuData({k: v[:0].copy() for k, v in m.mod.items()})),
        lambda m, c: MultiVAE.setup_mudata(m),
        ValueError,
        r"mod\['rna'\] is empty \(0 cells",
    ),
    Case(
        "multi-nan-in-rna",
        _mdata_edit(lambda m: m.mod["rna"].X.data.__setitem__(0, np.nan)),
        lambda m, c: MultiVAE.setup_mudata(m),
        ValueError,
        r"RNA \('rna', layer None\) contains 1 NaN or infinite values",
    ),
    Case(
        "multi-negative-atac",
        _mdata_edit(lambda m: m.mod["atac"].X.data.__setitem__(0, -1.0)),
        lambda m, c: MultiVAE.setup_mudata(m),
        ValueError,
        r"ATAC \('atac', layer None\) contains negative values",
    ),
    Case(
        "multi-duplicate-var-names",
        _mdata_edit(lambda m: setattr(m.mod["rna"], "var_names", ["g"] * m.mod["rna"].n_vars)),
        lambda m, c: MultiVAE.setup_mudata(m),
        ValueError,
        r"mod\['rna'\]\.var_names are not unique; call .*var_names_make_unique",
    ),
    Case(
        "multi-duplicate-obs-names",
        _mdata_edit(_duplicate_rna_obs_names),
        lambda m, c: MultiVAE.setup_mudata(m),
        ValueError,
        r"mod\['rna'\]\.obs_names are not unique \(for instance \['c'\]\); call `mdata\.mod\['rna'\]\.obs_names_make_unique",
    ),
    Case(
        "multi-unpaired-cells-accepted",
        _mdata_edit(_unpaired),
        lambda m, c: _fit_multi(m),
        check=_latent_of(60),
    ),
    Case(
        "multi-unpaired-batch-from-modalities",
        _mdata_edit(_unpaired),
        lambda m, c: _fit_multi(m, batch_key="batch"),
        check=_latent_of(60),
    ),
    Case(
        "multi-reordered-cells-matched-by-name",
        _mdata_edit(_reordered),
        lambda m, c: _multi_model().get_latent_representation(m),
        check=_same_latent_as_training,
    ),
    Case(
        "multi-non-binary-atac-warns",
        _mdata_edit(lambda m: setattr(m.mod["atac"], "X", m.mod["atac"].X * 3)),
        lambda m, c: _fit_multi(m),
        warns=UserWarning,
        warn_match=r"ATAC values are not binary; binarising.*atac_likelihood='poisson'",
        check=_latent_of(60),
    ),
    Case(
        "multi-n-sampled-peaks-zero",
        _mdata,
        lambda m, c: (MultiVAE.setup_mudata(m), MultiVAE(m, n_sampled_peaks=0)),
        ValueError,
        r"`n_sampled_peaks` must be a positive number of peaks or None \(score all peaks\)",
    ),
    Case(
        "multi-getter-wrong-modality",
        _mdata,
        lambda m, c: _multi_model().get_accessibility_estimates(m, modality="atac"),
        ValueError,
        r"`modality='atac'` must be one of \['joint', 'rna'\]",
    ),
    Case(
        "multi-getter-unknown-transform-batch",
        _mdata,
        lambda m, c: _multi_model().get_normalized_expression(m, transform_batch="batch_9"),
        ValueError,
        r"`transform_batch='batch_9'` is not a training batch; choose one of",
    ),
    Case(
        "multi-getter-other-peaks",
        _mdata_edit(
            lambda m: md.MuData({"rna": m.mod["rna"].copy(), "atac": m.mod["atac"][:, :20].copy()})
        ),
        lambda m, c: _multi_model().get_accessibility_estimates(m),
        ValueError,
        r"atac: the model was trained on 30 features, the data has 20",
    ),
    # --- tl -------------------------------------------------------------------------------------
    Case(
        "score-no-markers",
        _rna,
        lambda a, c: tl.score_cell_cycle(a),
        ValueError,
        r"too few cell-cycle markers to score: found 0 of 43 S genes.*`gene_symbols`",
    ),
    Case(
        "score-missing-layer",
        _cycling,
        lambda a, c: tl.score_cell_cycle(a, layer="raw"),
        KeyError,
        r"`layer='raw'` not found in adata\.layers; available: \['counts'\]",
    ),
    Case(
        "score-missing-gene-symbols",
        _cycling,
        lambda a, c: tl.score_cell_cycle(a, gene_symbols="symbol"),
        KeyError,
        r"`gene_symbols='symbol'` not found in adata\.var; available: \['kind'\]",
    ),
    Case(
        "score-view",
        lambda c: _cycling()[:50],
        lambda a, c: tl.score_cell_cycle(a),
        ValueError,
        r"`adata` is a view; pass `adata\.copy\(\)`",
    ),
    Case(
        "score-no-cells",
        lambda c: _cycling()[:0].copy(),
        lambda a, c: tl.score_cell_cycle(a),
        ValueError,
        r"`adata` has no cells",
    ),
    Case(
        "score-all-zero-cells-copy",
        _cycling_with_zero_rows,
        lambda a, c: tl.score_cell_cycle(a, copy=True),
        warns=UserWarning,
        warn_match=r"Some cells have zero counts",
        check=_zero_scores_first_cells,
    ),
    Case(
        "align-missing-rep",
        _cycling,
        lambda a, c: tl.align_cell_cycle(a, use_rep="X_pca"),
        KeyError,
        r"`use_rep='X_pca'` not found in \.obsm \(available: \['X_rep'\]\).*`model=`",
    ),
    Case(
        "align-one-dimensional-rep",
        _rep(lambda a: a.obsm["X_rep"][:, :1]),
        lambda a, c: tl.align_cell_cycle(a, use_rep="X_rep"),
        ValueError,
        r"obsm\['X_rep'\] has 1 dimension; a cycle needs at least 2",
    ),
    Case(
        "align-constant-rep",
        _rep(lambda a: np.zeros((a.n_obs, 3))),
        lambda a, c: tl.align_cell_cycle(a, use_rep="X_rep"),
        ValueError,
        r"obsm\['X_rep'\] is the same for every cell",
    ),
    Case(
        "align-too-few-cells",
        _rep(lambda a: a.obsm["X_rep"], n_obs=6),
        lambda a, c: tl.align_cell_cycle(a, use_rep="X_rep"),
        ValueError,
        r"only 6 cells have both a representation and scores; need >= 10",
    ),
    Case(
        "align-unknown-init",
        _cycling,
        lambda a, c: tl.align_cell_cycle(a, use_rep="X_rep", init="random"),
        ValueError,
        r"`init` must be 'markers' or 'pca', got 'random'",
    ),
    Case(
        "align-missing-library-key",
        _cycling,
        lambda a, c: tl.align_cell_cycle(a, use_rep="X_rep", library_key="n_counts", copy=True),
        KeyError,
        r"`library_key='n_counts'` not found in obs",
    ),
    Case(
        "traversal-without-alignment",
        _rna,
        lambda a, c: tl.latent_traversal(_rna_model(), a),
        KeyError,
        r"adata\.uns\['cell_cycle'\] has no fitted cycle; run `scgenvae\.tl\.align_cell_cycle",
    ),
    Case(
        "traversal-axis-out-of-range",
        _rna,
        lambda a, c: tl.latent_traversal(_rna_model(), a, along=7),
        ValueError,
        r"`along=7` is not a latent dimension of this model \(0\.\.2\)",
    ),
    Case(
        "traversal-non-integer-steps",
        _rna,
        lambda a, c: tl.latent_traversal(_rna_model(), a, along=0, n_steps=2.5),
        ValueError,
        r"`n_steps` must be an integer of at least 2, got 2\.5",
    ),
    Case(
        "traversal-bad-quantiles",
        _rna,
        lambda a, c: tl.latent_traversal(_rna_model(), a, along=0, quantiles=(0.9, 1.5)),
        ValueError,
        r"`quantiles` must be two increasing numbers in \[0, 1\]",
    ),
    # --- pl -------------------------------------------------------------------------------------
    Case(
        "pl-cell-cycle-without-alignment",
        _rna,
        lambda a, c: pl.cell_cycle(a),
        KeyError,
        r"adata\.uns\['cell_cycle'\] not found; run `scgenvae\.tl\.align_cell_cycle",
    ),
    Case(
        "pl-cell-cycle-missing-basis",
        _aligned,
        lambda a, c: pl.cell_cycle(a, basis="X_umap"),
        KeyError,
        r"`basis='X_umap'` not found in adata\.obsm.*sc\.tl\.umap",
    ),
    Case(
        "pl-angle-vs-genes-unknown-gene",
        _aligned,
        lambda a, c: pl.angle_vs_genes(a, ["NOPE1"]),
        KeyError,
        r"genes not found in var_names: \['NOPE1'\]",
    ),
    Case(
        "pl-angle-vs-genes-missing-layer",
        _aligned,
        lambda a, c: pl.angle_vs_genes(a, ["PCNA"], layer="raw"),
        KeyError,
        r"`layer='raw'` not found in adata\.layers",
    ),
    Case(
        "pl-angle-vs-genes-absent-phase-key-accepted",
        _aligned,
        lambda a, c: pl.angle_vs_genes(a, ["PCNA"], phase_key="no_such_column"),
        check=_is_figure,
    ),
    Case(
        "pl-cluster-probabilities-without-latent",
        _rna,
        lambda a, c: pl.cluster_probabilities(a),
        KeyError,
        r"obsm\['X_umap'\] not found; run `model\.export_latent\(adata\)`",
    ),
    Case(
        "pl-traversal-heatmap-unknown-modality",
        lambda c: tl.latent_traversal(_rna_model(), _rna(), along=0, n_steps=5),
        lambda t, c: pl.traversal_heatmap(t, modality="atac"),
        ValueError,
        r"`modality='atac'` has no features in the traversal; available: \['rna'\]",
    ),
    Case(
        "pl-traversal-heatmap-sparse-input-accepted",
        _rna,
        lambda a, c: pl.traversal_heatmap(a, genes=["gene_0", "gene_1"], sort_by_peak=False),
        check=_is_figure,
    ),
    # --- datasets ---------------------------------------------------------------------------------
    Case(
        "synthetic-rna-no-cells",
        lambda c: None,
        lambda _, c: datasets.synthetic_rna(0, 10),
        ValueError,
        r"`n_obs` must be a positive integer, got 0",
    ),
    Case(
        "synthetic-rna-negative-genes",
        lambda c: None,
        lambda _, c: datasets.synthetic_rna(10, -3),
        ValueError,
        r"`n_vars` must be a positive integer, got -3",
    ),
    Case(
        "synthetic-rna-fractional-cells",
        lambda c: None,
        lambda _, c: datasets.synthetic_rna(10.5, 10),
        ValueError,
        r"`n_obs` must be a positive integer, got 10\.5",
    ),
    Case(
        "synthetic-multiome-density-above-one",
        lambda c: None,
        lambda _, c: datasets.synthetic_multiome(10, 5, 5, peak_density=1.5),
        ValueError,
        r"`peak_density` must be in \(0, 1\), got 1\.5",
    ),
    Case(
        "synthetic-cell-cycle-fractions",
        lambda c: None,
        lambda _, c: datasets.synthetic_cell_cycle(10, 3, s_fraction=0.7, g2m_fraction=0.5),
        ValueError,
        r"`s_fraction` and `g2m_fraction` must be positive and sum to less than 1",
    ),
    Case(
        "synthetic-cell-cycle-negative-depth",
        lambda c: None,
        lambda _, c: datasets.synthetic_cell_cycle(10, 3, depth=-1.0),
        ValueError,
        r"`depth` must be positive",
    ),
    Case(
        "bundled-file-missing",
        _no_bundled,
        lambda _, c: datasets.fucci_ipsc(),
        FileNotFoundError,
        r"bundled data file 'fucci_ipsc_dev\.h5ad' not found .* SCGENVAE_DATA_DIR",
    ),
    Case(
        "bundled-file-corrupt",
        _corrupt_bundled,
        lambda _, c: datasets.fucci_ipsc(),
        ValueError,
        r"fucci_ipsc_dev\.h5ad cannot be read .* Replace it with a fresh copy",
    ),
    # --- CLI ------------------------------------------------------------------------------------
    Case(
        "cli-missing-file",
        lambda c: c.tmp_path / "nope.h5ad",
        _fit(),
        SystemExit,
        r"input file .*nope\.h5ad does not exist",
    ),
    Case(
        "cli-truncated-file",
        _file("trunc.h5ad", _write_truncated),
        _fit(),
        SystemExit,
        r"could not read .*trunc\.h5ad as h5ad: it is not an HDF5 file, or it is truncated",
    ),
    Case(
        "cli-text-file",
        _file("text.h5ad", b"cell,gene\n1,2\n"),
        _fit(),
        SystemExit,
        r"could not read .*text\.h5ad as h5ad: it is not an HDF5 file",
    ),
    Case(
        "cli-empty-h5mu",
        _file("empty.h5mu", b""),
        _fit(),
        SystemExit,
        r"could not read .*empty\.h5mu as h5mu: it is not an HDF5 file",
    ),
    Case(
        "cli-hdf5-but-not-anndata",
        _file("other.h5ad", _write_other_h5),
        _fit(),
        SystemExit,
        r"lacks 'obs' and 'var' groups, so it was not written by anndata",
    ),
    Case(
        "cli-input-is-folder",
        lambda c: c.tmp_path,
        _fit(),
        SystemExit,
        r"input .* is a folder; pass an \.h5ad or \.h5mu file",
    ),
    Case(
        "cli-output-is-folder",
        _file("good.h5ad", _write_good),
        lambda p, c: cli.main(["fit", str(p), "-o", str(c.tmp_path), "--quiet"]),
        SystemExit,
        r"`--output .*` is a folder; pass a file name",
    ),
    Case(
        "cli-negative-epochs",
        _file("good.h5ad", _write_good),
        _fit("--max-epochs", "-1"),
        SystemExit,
        r"^2$",
        stderr=r"argument --max-epochs: must be a positive integer, got '-1'",
    ),
    Case(
        "cli-misspelt-batch-key",
        _file("good.h5ad", _write_good),
        _fit("--batch-key", "btach", "--max-epochs", "1"),
        stderr=r"scgenvae fit: error: .*'btach' not found in adata\.obs; available",
        check=_returns_2,
    ),
    Case(
        "cli-missing-layer",
        _file("good.h5ad", _write_good),
        _fit("--layer", "raw", "--max-epochs", "1"),
        stderr=r"`layer='raw'` not found in adata\.layers",
        check=_returns_2,
    ),
    Case(
        "cli-misspelt-rna-mod",
        _file("good.h5mu", lambda p: datasets.synthetic_multiome(30, 8, 10, rng=0).write_h5mu(p)),
        lambda p, c: cli.main(
            ["fit", str(p), "-o", str(c.tmp_path / "o.h5mu"), "--rna-mod", "RNA", "--quiet"]
        ),
        stderr=r"`rna_mod='RNA'` not found in mdata\.mod",
        check=_returns_2,
    ),
]


def test_table_is_large_and_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 34


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch, capsys):
    ctx = Ctx(tmp_path=tmp_path, monkeypatch=monkeypatch)
    data = case.make(ctx)
    before = _snapshot(data)
    raises = pytest.raises(case.raises, match=case.match) if case.raises else nullcontext()
    warns = pytest.warns(case.warns, match=case.warn_match) if case.warns else nullcontext()
    result = None
    with warns, raises:
        result = case.call(data, ctx)
    if case.stderr is not None:
        err = capsys.readouterr().err
        assert re.search(case.stderr, err), err
    if case.check is not None:
        case.check(result, data)
    assert_unchanged(before, data)
    if isinstance(data, ad.AnnData) and data.isbacked:
        data.file.close()


def test_assert_unchanged_detects_changes():
    """The helper itself catches each kind of change (a check that cannot fail is no check)."""
    base = _rna(None, 20, 5)
    base.obsm["X_a"] = np.zeros((20, 2))
    edits = [
        lambda a: a.obs.__setitem__("new", 1),
        lambda a: a.var.__setitem__("new", 1),
        lambda a: a.obsm.__setitem__("X_b", np.zeros((20, 2))),
        lambda a: a.obsm["X_a"].__setitem__((0, 0), 1.0),
        lambda a: a.uns.__setitem__("k", 1),
        lambda a: a.layers.__setitem__("extra", a.X.copy()),
        lambda a: a.X.data.__setitem__(0, a.X.data[0] + 1),
        lambda a: setattr(a, "X", a.X.tocsc()),
    ]
    for edit in edits:
        after = base.copy()
        edit(after)
        with pytest.raises(AssertionError):
            assert_unchanged(_snapshot(base), after)
    mdata = _mdata()
    after = mdata.copy()
    after.mod["rna"].X.data[0] += 1
    with pytest.raises(AssertionError):
        assert_unchanged(_snapshot(mdata), after)
