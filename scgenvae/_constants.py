"""Registry and module keys: every tensor-dict key comes from here, never a string literal."""

from __future__ import annotations

from typing import NamedTuple


class _REGISTRY_KEYS_NT(NamedTuple):
    X_KEY: str = "X"
    RNA_KEY: str = "rna"
    ATAC_KEY: str = "atac"
    BATCH_KEY: str = "batch"
    LABELS_KEY: str = "labels"
    CAT_COVS_KEY: str = "extra_categorical_covs"
    CONT_COVS_KEY: str = "extra_continuous_covs"
    INDICES_KEY: str = "ind_x"


class _MODULE_KEYS_NT(NamedTuple):
    Z_KEY: str = "z"
    QZ_KEY: str = "qz"
    PZ_KEY: str = "pz"
    QZ_MODALITY_KEY: str = "qz_modality"
    QC_KEY: str = "qc"
    C_KEY: str = "c"
    PX_KEY: str = "px"
    HEAD_KEY: str = "head"
    LIBRARY_KEY: str = "library"
    OBSERVED_KEY: str = "observed"
    BATCH_INDEX_KEY: str = "batch_index"
    CAT_COVS_KEY: str = "cat_covs"
    CONT_COVS_KEY: str = "cont_covs"
    X_KEY: str = "x"
    TAU_KEY: str = "tau"


REGISTRY_KEYS = _REGISTRY_KEYS_NT()
MODULE_KEYS = _MODULE_KEYS_NT()

#: Default keys written to AnnData/MuData (see the user guide's table).
DEFAULT_LATENT_KEY = "X_scgenvae"
DEFAULT_CLUSTER_KEY = "scgenvae_cluster"
DEFAULT_CLUSTER_PROBS_KEY = "scgenvae_cluster_probs"
DEFAULT_NORMALIZED_KEY = "scgenvae_normalized"
