from __future__ import annotations

import numpy as np
import pytest
from mudata import MuData

import scgenvae
from scgenvae import datasets


def test_bundled_loaders_return_the_documented_objects():
    a549 = datasets.scicar_a549()
    assert isinstance(a549, MuData)
    assert a549.mod["rna"].shape == (2641, 1185)
    assert a549.mod["atac"].shape == (2641, 52761)
    assert set(a549.obs["Time"].astype(str)) == {"0h", "1h", "3h"}
    pbmc = datasets.pbmc_multiome_subset()
    assert pbmc.mod["rna"].shape == (1000, 45)
    fucci = datasets.fucci_ipsc()
    assert fucci.shape == (448, 101)
    assert "theta" in fucci.obs
    cb = datasets.cellbench()
    assert cb.n_obs == 499
    assert set(cb.obs["cell_line"]) == {"H1975", "H2228", "HCC827"}
    ref = datasets.tricycle_reference()
    assert ref.shape[0] == 500
    assert {"pc1.rot", "pc2.rot", "symbol"} <= set(ref.columns)


def test_missing_file_error_says_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.setenv("SCGENVAE_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data/ folder"):
        datasets.cellbench()


def test_synthetic_is_seeded():
    a = datasets.synthetic_rna(50, 20, rng=3)
    b = datasets.synthetic_rna(50, 20, rng=3)
    c = datasets.synthetic_rna(50, 20, rng=4)
    assert (a.X != b.X).nnz == 0
    assert (a.X != c.X).nnz > 0
    state = np.random.get_state()[1].copy()  # noqa: NPY002 - checks global state
    md = datasets.synthetic_multiome(40, 10, 30, rng=0)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002
    assert set(np.unique(md.mod["atac"].X.data)) <= {1.0}


def test_settings_validate_seed():
    with pytest.raises(TypeError, match="seed"):
        scgenvae.settings.seed = "zero"
