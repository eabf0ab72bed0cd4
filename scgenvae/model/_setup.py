"""What ``setup_anndata``/``setup_mudata`` hands to the model: a frozen, checked specification.

The set-up validates the user's object once and records, on the object itself (a private
Python attribute: nothing is written into its data, and a copy or a file written from it does
not carry it), a :class:`SetupSpec`: the arguments, a fingerprint of every matrix it validated
and the scans of backed matrices. A model built later checks the fingerprints, so data changed
after the set-up is never taken as validated.
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from scgenvae._constants import REGISTRY_KEYS

from ._validate import fingerprint, scan_matrix

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._validate import MatrixScan

#: name of the attribute holding the set-up specifications on the user's object
_ATTR = "_scgenvae_setup"


@dataclass(frozen=True)
class SetupSpec:
    """The validated set-up of one object for one model class.

    Parameters
    ----------
    model_class
        Name of the model class set up for.
    args
        The set-up arguments (read-only).
    fingerprints
        Description of each validated matrix -> its :func:`~scgenvae.model._validate.fingerprint`.
    scans
        Scans of backed matrices made while validating, by ``(modality, layer, counts)``.
    source_registry
        Data registry of a saved model the object is loaded onto (``None`` for training).
    """

    model_class: str
    args: Mapping[str, Any]
    fingerprints: Mapping[str, tuple]
    scans: Mapping[tuple, MatrixScan] = field(default_factory=dict)
    source_registry: dict | None = None

    def changed(self, matrices: Mapping[str, Any]) -> list[str]:
        """The matrices (by description) whose fingerprint differs from the set-up's."""
        return [
            where
            for where, mat in matrices.items()
            if self.fingerprints.get(where) != fingerprint(mat)
        ]


class Scans:
    """What is known of the matrices while building a model's data: scans and validation.

    Scans of backed matrices are made once per call chain (set-up, model build, one getter).
    ``validated`` says that the values were checked by the set-up and have not changed since
    (their fingerprints match): the build then does not check them again.
    """

    def __init__(
        self, known: Mapping[tuple, MatrixScan] | None = None, *, validated: bool = False
    ) -> None:
        self.known: dict[tuple, MatrixScan] = dict(known or {})
        self.validated = bool(validated)

    def get(self, key: tuple, mat, **kwargs) -> MatrixScan:
        """The scan of ``mat`` under ``key``, made with :func:`scan_matrix` if not known."""
        if key not in self.known:
            self.known[key] = scan_matrix(mat, **kwargs)
        return self.known[key]


def remember(
    data,
    model_class: str,
    args: dict,
    matrices: Mapping[str, Any],
    *,
    scans: Scans | None = None,
    source_registry: dict | None = None,
) -> SetupSpec:
    """Record the set-up of ``data`` for ``model_class`` on the object and return it."""
    spec = SetupSpec(
        model_class=model_class,
        args=MappingProxyType(copy.deepcopy(dict(args))),
        fingerprints=MappingProxyType({w: fingerprint(m) for w, m in matrices.items()}),
        scans=MappingProxyType(dict(scans.known) if scans is not None else {}),
        source_registry=source_registry,
    )
    specs = dict(getattr(data, _ATTR, None) or {})
    specs[model_class] = spec
    object.__setattr__(data, _ATTR, specs)
    return spec


def recall(data, model_class: str) -> SetupSpec | None:
    """The set-up of ``data`` for ``model_class``, if it was set up."""
    return (getattr(data, _ATTR, None) or {}).get(model_class)


def category_keys(args: dict) -> dict[str, str | None]:
    """Registry key -> user obs column of the single-column categorical fields."""
    return {
        REGISTRY_KEYS.BATCH_KEY: args.get("batch_key"),
        REGISTRY_KEYS.LABELS_KEY: args.get("labels_key"),
    }


_SMALL_CATEGORY = re.compile(
    r"Category (\S+) in adata\.obs\['_scvi_(\w+)'\] has fewer than 3 cells"
)


def restate_small_categories(
    caught: list[warnings.WarningMessage], manager, args: dict, *, training: bool
) -> None:
    """Re-emit warnings caught while registering, restating scvi's small-category notice.

    scvi-tools warns about categories with fewer than 3 cells naming its internal column
    (``_scvi_batch``); for training data the warning is restated with the user's column and
    category, for new data (nothing is trained on it) it is dropped.
    """
    for w in caught:
        match = _SMALL_CATEGORY.search(str(w.message))
        if match is None:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            continue
        col = category_keys(args).get(match.group(2))
        if not training or col is None:
            continue
        mapping = manager.get_state_registry(match.group(2)).categorical_mapping
        code = int(match.group(1)) if match.group(1).isdigit() else -1
        name = mapping[code] if 0 <= code < len(mapping) else match.group(1)
        warnings.warn(
            f"category {name!r} of adata.obs[{col!r}] has fewer than 3 cells; the model "
            "learns little about it (merge it into another category or drop these cells).",
            UserWarning,
            stacklevel=4,
        )
