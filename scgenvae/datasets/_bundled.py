"""Loaders of the real data sets bundled in the repository's ``data/`` folder (no network)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import anndata as ad

from scgenvae._files import bundled_path as _path
from scgenvae._files import tricycle_reference_table
from scgenvae._quiet import quiet

if TYPE_CHECKING:
    from pathlib import Path

    from mudata import MuData


def _unreadable(path: Path, err: Exception) -> ValueError:
    msg = (
        f"bundled data file {path} cannot be read ({type(err).__name__}: {err}); it is "
        "truncated or not the original file (a Git LFS pointer?). Replace it with a fresh copy "
        "(see data/README.md for its source)."
    )
    return ValueError(msg)


def _read_h5mu(path: Path) -> MuData:
    import mudata as md

    try:
        with quiet(), warnings.catch_warnings():
            # the bundled files were converted with h5py directly: they lack mudata's header
            warnings.filterwarnings(
                "ignore", message="The HDF5 file was not created by muon/mudata"
            )
            return md.read_h5mu(path)
    except (OSError, KeyError) as err:
        raise _unreadable(path, err) from err


def _read_h5ad(path: Path) -> ad.AnnData:
    try:
        return ad.read_h5ad(path)
    except (OSError, KeyError) as err:
        raise _unreadable(path, err) from err


def scicar_a549() -> MuData:
    """sci-CAR A549 multiome: 2,641 lung adenocarcinoma cells, RNA + ATAC, paired.

    Cells were treated with dexamethasone for 0, 1 or 3 hours (``obs["Time"]``). ``mod["rna"]``
    holds 1,185 genes as integer counts reconstructed from the packaged log-normalised values;
    ``mod["atac"]`` 52,761 peaks as binary accessibility (the ATAC normalisation cannot be
    inverted, so only binary values exist). Source: Cao et al. 2018 (Science 361:1380,
    GSE117089), as packaged in scAI (Jin et al. 2020, Genome Biology 21:25), GPL-3.
    """
    return _read_h5mu(_path("scicar_a549"))


def pbmc_multiome_subset() -> MuData:
    """1,000 PBMCs from the 10x Multiome PBMC 10k data set: 45 genes + 174 peaks, raw counts.

    The muon test subset (BSD-3; data CC BY 4.0 by 10x Genomics). No labels: marker genes such
    as CD14, MS4A1, GNLY, NKG7 and IL7R identify the main types.
    """
    return _read_h5mu(_path("pbmc_multiome_subset"))


def fucci_ipsc() -> ad.AnnData:
    """448 FUCCI iPSCs (3 donors) x 101 cyclic genes with the FUCCI phase angle ``obs["theta"]``.

    Raw UMI counts (``.X`` and ``layers["counts"]``), Ensembl var_names with symbols in
    ``var["hgnc"]``. Hsiao et al. 2020 (Genome Research 30:611, GSE121265), via peco, GPL >= 3.
    """
    return _read_h5ad(_path("fucci_ipsc"))


def cellbench() -> ad.AnnData:
    """CellBench: 499 cells of 3 lung cancer lines (``obs["cell_line"]``) by 2 protocols.

    ``obs["protocol"]`` is CEL-seq2 (274 cells) or Drop-seq (225); raw integer counts of 28,066
    genes (Ensembl ids). Tian et al. 2019 (Nature Methods 16:479, GSE118767), sc_mixology, MIT.
    """
    return _read_h5ad(_path("cellbench"))


def tricycle_neurosphere() -> ad.AnnData:
    """400 mouse neurosphere cells x 1,500 genes (fractional UMI counts), from tricycle (GPL-3).

    Zheng et al. 2022 (Genome Biology 23:41). Round the counts before fitting a count model.
    """
    return _read_h5ad(_path("tricycle_neurosphere"))


def tricycle_reference():
    """Tricycle's reference loadings: 500 mouse genes, columns `pc1.rot`, `pc2.rot`, `ensembl`, `symbol`, `SYMBOL`."""
    return tricycle_reference_table()
