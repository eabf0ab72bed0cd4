"""The getters' warnings name the caller's line (``stacklevel``), not scgenvae's internals.

Outside the mutation harness on purpose: mutmut's trampolines add stack frames between a
getter and the line that warns, so under mutmut the original code would name a frame in the
trampoline. docs/dev/mutation.md lists the ``stacklevel`` mutants this file kills.
"""

from __future__ import annotations

import warnings

import mudata as md
import numpy as np
import pytest

import scgenvae
from scgenvae.model import MultiVAE


@pytest.fixture(scope="module")
def multi():
    """An untrained MultiVAE; of 30 cells the first 6 have RNA only, the last 6 ATAC only."""
    full = scgenvae.datasets.synthetic_multiome(n_obs=30, n_genes=8, n_peaks=12, rng=0)
    cells = np.arange(30)
    mdata = md.MuData(
        {"rna": full.mod["rna"][cells < 24].copy(), "atac": full.mod["atac"][cells >= 6].copy()}
    )
    MultiVAE.setup_mudata(mdata)
    model = MultiVAE(mdata, n_latent=2, n_hidden=8)
    model.is_trained_ = True
    return model, mdata, None


@pytest.mark.parametrize(
    ("getter", "kwargs"),
    [
        ("get_latent_representation", {"modality": "rna"}),
        ("get_normalized_expression", {"modality": "atac"}),
        ("get_normalized_expression", {"modality": "atac", "return_numpy": True}),
        ("get_accessibility_estimates", {"modality": "rna"}),
        ("get_accessibility_estimates", {"modality": "rna", "threshold": 0.5}),
        ("get_normalized_expression", {"use_modality": "joint"}),
        ("get_accessibility_estimates", {"use_modality": "joint"}),
    ],
)
def test_getter_warnings_point_at_the_calling_line(multi, getter, kwargs):
    model, _, _ = multi
    # called in the test's own frame (not through a helper of this file): one frame too many
    # names pytest's caller, one too few scgenvae
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        getattr(model, getter)(**kwargs)
    assert caught, "the call did not warn"
    assert [w.filename for w in caught] == [__file__] * len(caught)
