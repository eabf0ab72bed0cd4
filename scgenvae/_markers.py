"""Cell-cycle marker genes bundled with scgenvae.

The lists are the 43 S-phase and 54 G2/M-phase genes of Tirosh et al. 2016 (Science 352:189,
"Dissecting the multicellular ecosystem of metastatic melanoma by single-cell RNA-seq"), in the
order distributed with Seurat (``cc.genes$s.genes`` / ``cc.genes$g2m.genes``) and with scanpy's
``regev_lab_cell_cycle_genes.txt`` (first 43 lines S, the rest G2/M; that file repeats HJURP).
Symbols are human HGNC symbols as published (2016); three have since been renamed and are
matched under their current name too (:data:`UPDATED_SYMBOLS`, as in Seurat's
``cc.genes.updated.2019``). Mouse orthologues are taken as the same symbol with only the first
letter capitalised (``MCM5`` -> ``Mcm5``).
"""

from __future__ import annotations

import numpy as np

#: Tirosh et al. 2016, S-phase genes (43).
S_GENES: tuple[str, ...] = (
    "MCM5",
    "PCNA",
    "TYMS",
    "FEN1",
    "MCM2",
    "MCM4",
    "RRM1",
    "UNG",
    "GINS2",
    "MCM6",
    "CDCA7",
    "DTL",
    "PRIM1",
    "UHRF1",
    "MLF1IP",
    "HELLS",
    "RFC2",
    "RPA2",
    "NASP",
    "RAD51AP1",
    "GMNN",
    "WDR76",
    "SLBP",
    "CCNE2",
    "UBR7",
    "POLD3",
    "MSH2",
    "ATAD2",
    "RAD51",
    "RRM2",
    "CDC45",
    "CDC6",
    "EXO1",
    "TIPIN",
    "DSCC1",
    "BLM",
    "CASP8AP2",
    "USP1",
    "CLSPN",
    "POLA1",
    "CHAF1B",
    "BRIP1",
    "E2F8",
)

#: Tirosh et al. 2016, G2/M-phase genes (54).
G2M_GENES: tuple[str, ...] = (
    "HMGB2",
    "CDK1",
    "NUSAP1",
    "UBE2C",
    "BIRC5",
    "TPX2",
    "TOP2A",
    "NDC80",
    "CKS2",
    "NUF2",
    "CKS1B",
    "MKI67",
    "TMPO",
    "CENPF",
    "TACC3",
    "FAM64A",
    "SMC4",
    "CCNB2",
    "CKAP2L",
    "CKAP2",
    "AURKB",
    "BUB1",
    "KIF11",
    "ANP32E",
    "TUBB4B",
    "GTSE1",
    "KIF20B",
    "HJURP",
    "CDCA3",
    "HN1",
    "CDC20",
    "TTK",
    "CDC25C",
    "KIF2C",
    "RANGAP1",
    "NCAPD2",
    "DLGAP5",
    "CDCA2",
    "CDCA8",
    "ECT2",
    "KIF23",
    "HMMR",
    "AURKA",
    "PSRC1",
    "ANLN",
    "LBR",
    "CKAP5",
    "CENPE",
    "CTCF",
    "NEK2",
    "G2E3",
    "GAS2L3",
    "CBX5",
    "CENPA",
)

#: Published symbol -> current HGNC symbol, for the markers renamed since 2016.
UPDATED_SYMBOLS: dict[str, str] = {"MLF1IP": "CENPU", "FAM64A": "PIMREG", "HN1": "JPT1"}


def cell_cycle_genes(organism: str = "human") -> dict[str, tuple[str, ...]]:
    """The bundled S and G2/M marker symbols for ``organism`` (``"human"`` or ``"mouse"``).

    Parameters
    ----------
    organism
        ``"human"`` (HGNC symbols) or ``"mouse"`` (the same symbols, first letter capitalised).

    Returns
    -------
    ``{"S": (...), "G2M": (...)}``, 43 and 54 symbols.
    """
    if organism == "human":
        return {"S": S_GENES, "G2M": G2M_GENES}
    if organism == "mouse":
        return {
            "S": tuple(g.capitalize() for g in S_GENES),
            "G2M": tuple(g.capitalize() for g in G2M_GENES),
        }
    msg = f"`organism` must be 'human' or 'mouse', got {organism!r}."
    raise ValueError(msg)


def phase_of(s: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Apply scanpy's rule: G1 if both scores are negative, else the larger of S and G2M."""
    out = np.where(s >= g, "S", "G2M").astype(object)
    out[(s < 0) & (g < 0)] = "G1"
    return out
