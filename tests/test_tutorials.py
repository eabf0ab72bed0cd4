"""The tutorials and the README quickstart run as written.

Notebooks run top to bottom in a fresh kernel with a few epochs (``SCGENVAE_TUTORIAL_EPOCHS``);
their committed outputs come from a full run (see ``tutorials/README.md``).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))


def test_all_five_tutorials_are_present():
    names = [p.name for p in NOTEBOOKS]
    assert names == [
        "01_rna_poissonvae.ipynb",
        "02_multiome_multivae.ipynb",
        "03_cell_cycle.ipynb",
        "04_discrete_latent.ipynb",
        "05_after_the_embedding.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_shows_its_figures(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "commit the notebook after a full run"
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name} has no figure in its committed outputs"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, monkeypatch, tmp_path):
    monkeypatch.setenv("SCGENVAE_TUTORIAL_EPOCHS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError with the failing cell on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs)


def _readme_quickstart() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def _readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)


def test_every_readme_code_block_runs_in_order():
    """All Python blocks of the README, in one namespace, as a reader would paste them."""
    blocks = _readme_blocks()
    assert len(blocks) >= 2
    namespace: dict = {}
    with warnings.catch_warnings():
        # the PBMC peaks hold fragment counts: the README's default Bernoulli model says so
        warnings.filterwarnings("ignore", message="ATAC values are not binary")
        for i, code in enumerate(blocks):
            exec(compile(code, f"README.md block {i + 1}", "exec"), namespace)
    mdata, model = namespace["mdata"], namespace["model"]
    assert mdata.obsm["X_scgenvae"].shape == (mdata.n_obs, 20)
    assert namespace["atac_from_rna"].shape == mdata.mod["atac"].shape
    assert model.training_report["problems"] == []


def test_readme_quickstart_is_short_and_runs_as_written():
    code = _readme_quickstart()
    n_lines = len([ln for ln in code.splitlines() if ln.strip()])
    assert n_lines <= 10, f"the quickstart has {n_lines} lines"
    namespace: dict = {}
    exec(compile(code, "README.md quickstart", "exec"), namespace)
    adata = namespace["adata"]
    assert adata.obsm["X_scgenvae"].shape == (adata.n_obs, 10)
    assert np.isfinite(adata.obsm["X_scgenvae"]).all()
    assert "X_umap" in adata.obsm
