"""Where the bundled data files are (shared by ``datasets`` and ``tl``; nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

_FILES = {
    "scicar_a549": "sciCAR_A549_scAI.h5mu",
    "pbmc_multiome_subset": "pbmc10k_multiome_subset.h5mu",
    "fucci_ipsc": "fucci_ipsc_dev.h5ad",
    "cellbench": "cellbench_3lines_2protocols.h5ad",
    "tricycle_neurosphere": "tricycle_neurosphere_example.h5ad",
    "tricycle_reference": "neuroRef_projection.csv.gz",
}


def data_dir() -> Path:
    """Folder of the bundled data: ``$SCGENVAE_DATA_DIR`` if set, else the repository's ``data/``."""
    env = os.environ.get("SCGENVAE_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "data"


def bundled_path(name: str) -> Path:
    """Path of the bundled file ``name`` (a key of the file table), with a clear error."""
    path = data_dir() / _FILES[name]
    if not path.exists():
        msg = (
            f"bundled data file {_FILES[name]!r} not found at {path}. Put it in the "
            "repository's data/ folder (see data/README.md for its source) or set "
            "SCGENVAE_DATA_DIR to the folder that holds it; nothing is downloaded."
        )
        raise FileNotFoundError(msg)
    return path


def tricycle_reference_table():
    """Tricycle's reference loadings (a DataFrame of 500 mouse genes)."""
    import pandas as pd

    return pd.read_csv(bundled_path("tricycle_reference"), index_col=0)
