"""Silence third-party notices at our own call sites (never globally, never at import).

A ``train()`` shows a progress bar and nothing else by default: Lightning's device lines
("GPU available: ...", "TPU available: ..."), its tips and "`Trainer.fit` stopped" line, scvi-tools'
INFO notices about our internal AnnData, and warnings that concern Lightning's or scvi-tools'
internals are held back while our code runs. ``scgenvae.settings.verbosity = "INFO"`` (or
lower) lets the log lines through again.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

#: loggers whose INFO lines concern Lightning's and scvi-tools' machinery, not the user's data
_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning", "scvi")
#: warnings (message patterns) about third-party internals that the user cannot act on
_WARNINGS = (
    r".*LeafSpec.*",
    r".*is smaller than the logging interval.*",
    r".*does not have many workers.*",
    r".*Trying to infer the `batch_size`.*",
    r".*GPU available but not used.*",
    r".*Sparse CSR tensor support is in beta.*",
    r".*Sparse invariant checks are implicitly.*",
    r".*will not pull obs/var columns from individual modalities.*",
    r".*The method obs_vector is deprecated.*",
    r".*The set_bad function will be deprecated.*",
)


@contextmanager
def quiet() -> Iterator[None]:
    """Hold back third-party INFO lines and notices about their internals while the block runs."""
    from scgenvae._settings import settings

    loud = settings.verbosity <= logging.INFO
    saved = {}
    if not loud:
        for name in _LOGGERS:
            log = logging.getLogger(name)
            saved[name] = log.level
            if log.getEffectiveLevel() < logging.WARNING:
                log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in _WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
