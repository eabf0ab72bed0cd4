from __future__ import annotations

import functools

import matplotlib as mpl
import pytest
import torch

mpl.use("Agg")
# the models under test are small: one thread is as fast and immune to oversubscription
torch.set_num_threads(1)

# one loop over {option: marker}: a marked test runs only when its option is given
_OPTIONS = {"--slow": "slow"}


def pytest_addoption(parser):
    for option, marker in _OPTIONS.items():
        parser.addoption(option, action="store_true", default=False, help=f"run {marker} tests")
    parser.addoption(
        "--quality-epochs",
        type=int,
        default=None,
        metavar="N",
        help="train every model for at most N epochs, whatever the test asks: with N=1 every "
        "quality test must fail (`make check-quality-tests` runs `-m quality --quality-epochs 1`)",
    )


def pytest_collection_modifyitems(config, items):
    for option, marker in _OPTIONS.items():
        if config.getoption(option):
            continue
        skip = pytest.mark.skip(reason=f"needs {option}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _fixed_thread_count():
    """A fixed torch thread count in every training and inference loop of the suite.

    The default (``settings.num_threads=None``) chooses the count from measured step times,
    and floating-point sums differ in their last bits between counts: the tests that compare two
    seeded runs need one count, and the choice itself is tested in ``tests/test_threads.py``.
    The count fixed is torch's own default (the cores available), as before the tuner existed:
    the suite's large fits (A549 at the defaults) use both cores of a CI machine.
    """
    import scgenvae
    from scgenvae._threads import available_cores

    before = scgenvae.settings.num_threads
    scgenvae.settings.num_threads = available_cores()
    yield
    scgenvae.settings.num_threads = before


@pytest.fixture(scope="session", autouse=True)
def _cap_training_epochs(request):
    """With ``--quality-epochs N``, ``train()`` runs at most N epochs in every test.

    Session-scoped, so that it is in place before module-scoped fixtures train their models.
    """
    cap = request.config.getoption("--quality-epochs")
    if cap is None:
        yield
        return
    from scgenvae.model import BaseScgenvaeModel

    original = BaseScgenvaeModel.train

    @functools.wraps(original)
    def capped(self, max_epochs=None, *args, **kwargs):
        return original(self, cap if max_epochs is None else min(max_epochs, cap), *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BaseScgenvaeModel, "train", capped)
        yield


@pytest.fixture(scope="session")
def _synthetic_rna():
    from scgenvae.datasets import synthetic_rna

    return synthetic_rna(n_obs=200, n_vars=50, rng=0)


@pytest.fixture
def adata(_synthetic_rna):
    return _synthetic_rna.copy()


@pytest.fixture(scope="session")
def _synthetic_mdata():
    from scgenvae.datasets import synthetic_multiome

    return synthetic_multiome(n_obs=200, n_genes=50, n_peaks=100, rng=0)


@pytest.fixture
def mdata(_synthetic_mdata):
    return _synthetic_mdata.copy()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture
def quiet():
    """Trainer arguments for silent, fast tests."""
    return {"enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture
def _restore_verbosity():
    """Put scgenvae's verbosity, handler and logger level back after a test changes them."""
    import logging

    import scgenvae

    settings = scgenvae.settings
    logger = logging.getLogger("scgenvae")
    saved = (settings._verbosity, settings._handler, logger.level, list(logger.handlers))
    yield
    settings._verbosity, settings._handler = saved[0], saved[1]
    logger.handlers[:] = saved[3]
    logger.setLevel(saved[2])
