"""Package settings: seed, verbosity, progress bar. Nothing is configured at import."""

from __future__ import annotations

import logging
from typing import Literal

logger = logging.getLogger("scgenvae")


class ScgenvaeConfig:
    """Global configuration of scgenvae.

    Attributes
    ----------
    seed
        Seed used by training when ``train(seed=None)``; ``None`` leaves torch's state alone.
    progress_bar_style
        ``"tqdm"`` or ``"rich"``; forwarded to scvi-tools' settings for the training progress bar,
        and the style of the getters' progress bars.
    progress_bar
        Show a progress bar over the minibatches of long getter loops (many minibatches, or
        wide outputs such as accessibility of every peak). Training has its own switch,
        ``train(enable_progress_bar=...)``.
    verbosity
        Setting it attaches a stream handler to the ``scgenvae`` logger (opt-in, never at import).
    reuse_freed_memory
        During ``train`` on Linux with glibc, keep memory freed by one training step for the
        next instead of unmapping it (glibc's ``mallopt``; restored, and free memory returned
        to the system, when training ends). Large gradient buffers then do not have to be
        faulted in afresh at every step (measured here: a fresh 52,000 x 256 float32 buffer
        took 37 ms to allocate and zero, a reused one 6 ms). ``False`` leaves the allocator
        alone.
    num_threads
        torch threads used by training and inference. ``None`` (default) chooses from
        measurement: each loop times a few minibatches with one thread and with all available
        cores, keeps the faster and measures again when steps slow down (a busy node makes
        several threads many times slower than one). An integer fixes the count. torch's own
        setting is restored when the loop ends.
    """

    def __init__(self) -> None:
        self._seed: int | None = 0
        self._verbosity: int = logging.WARNING
        self._handler: logging.Handler | None = None
        self.progress_bar_style: Literal["tqdm", "rich"] = "tqdm"
        self.progress_bar: bool = True
        self.reuse_freed_memory: bool = True
        self._num_threads: int | None = None

    @property
    def seed(self) -> int | None:
        return self._seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        if value is not None and not isinstance(value, int):
            msg = f"`scgenvae.settings.seed` must be an int or None, got {type(value).__name__}."
            raise TypeError(msg)
        self._seed = value

    @property
    def num_threads(self) -> int | None:
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int | None) -> None:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            msg = (
                "`scgenvae.settings.num_threads` must be a positive int, or None to choose from "
                f"measurement; got {value!r}."
            )
            raise ValueError(msg)
        self._num_threads = value

    @property
    def verbosity(self) -> int:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, level: int | str) -> None:
        if isinstance(level, str):
            level = logging.getLevelName(level.upper())
        self._verbosity = int(level)
        logger.setLevel(self._verbosity)
        if self._handler is None:
            self._handler = logging.StreamHandler()
            self._handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
            logger.addHandler(self._handler)


settings = ScgenvaeConfig()
