"""How many threads torch uses during training and inference, chosen from measurement.

torch starts with one intra-op thread per core. On a node where another process is busy, every
parallel region then waits for a thread that is not running: a PoissonVAE step at batch 128 on
2 cores, beside one busy process, was measured 17x slower with 2 threads than with 1 (6,962
against 405 cells/s; Intel Xeon, 2 cores). On an idle node the second thread is worth little
at batch 128 and more at large batches. No fixed number is right everywhere, so by default the
loops time their own minibatches: a few steps with each candidate count, the fastest kept, and
the choice measured again when the steps slow down or every half minute; more threads are not
even tried while the load average says the other processes leave too few cores free.
``scgenvae.settings.num_threads`` fixes the count instead.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from scgenvae._settings import settings

if TYPE_CHECKING:
    from collections.abc import Iterator

#: a larger thread count is kept only when it is at least this much faster than a smaller one
PREFER_FEWER = 1.1


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at most torch's own default."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, _TORCH_DEFAULT))


_TORCH_DEFAULT = torch.get_num_threads()


class ThreadTuner:
    """Choose torch's intra-op thread count by timing the steps of a loop.

    Call :meth:`before_step` and :meth:`after_step` around each step. The tuner skips
    ``warmup`` steps, times ``probe_steps`` steps with each candidate count, keeps the fastest
    (a larger count only when it is :data:`PREFER_FEWER` times faster) and probes again when the
    median of the last steps is ``slowdown`` times the probed time or ``reprobe_s`` seconds
    after the last probe. A candidate whose first probe step is 3x slower than the best so far
    is dropped at once, so that a probe never costs more than a few slow steps.

    Parameters
    ----------
    candidates
        Thread counts to try, e.g. ``(1, 2)``.
    warmup
        Steps before the first probe (allocation makes the first steps slow).
    probe_steps
        Timed steps per candidate.
    reprobe_s
        Seconds between probes.
    slowdown
        Ratio of recent to probed step time that triggers a probe.
    clock
        Time source (for tests).
    cores
        Cores the process may use (default: the largest candidate).
    load
        Function returning the 1-minute load average (default :func:`os.getloadavg`; for
        tests). A count above one is not probed while the other processes' load leaves fewer
        cores free.
    """

    def __init__(
        self,
        candidates: tuple[int, ...],
        *,
        warmup: int = 2,
        probe_steps: int = 3,
        reprobe_s: float = 30.0,
        slowdown: float = 1.5,
        clock=time.perf_counter,
        cores: int | None = None,
        load=None,
    ) -> None:
        self.candidates = tuple(sorted({int(c) for c in candidates}))
        if not self.candidates or self.candidates[0] < 1:
            msg = f"thread candidates must be positive integers, got {candidates!r}."
            raise ValueError(msg)
        self.warmup, self.probe_steps = int(warmup), int(probe_steps)
        self._cores = self.candidates[-1] if cores is None else int(cores)
        self._load = _load_average if load is None else load
        self.reprobe_s, self.slowdown = float(reprobe_s), float(slowdown)
        self._clock = clock
        self.chosen = self.candidates[0]
        self.reference: float | None = None  # probed step time of the chosen count
        self.history: list[tuple[int, float]] = []  # (threads, seconds) of every step
        self._queue: list[int] = []  # thread counts of the probe steps still to run
        self._probe: dict[int, list[float]] = {}
        self._recent: list[float] = []
        self._steps = 0
        self._probed_at = 0.0
        self._start = 0.0
        self._current = self.chosen
        self._first = True
        #: the earliest time (of ``clock``) at which a candidate dropped as hopeless is tried again
        self._next_probe: dict[int, float] = {}
        self._backoff: dict[int, float] = {}

    @property
    def probing(self) -> bool:
        return bool(self._queue)

    def _start_probe(self, now: float) -> None:
        due = [
            c
            for c in self.candidates
            if c == self.chosen or (now >= self._next_probe.get(c, -np.inf) and self._room_for(c))
        ]
        if len(due) < 2:
            return
        self._queue = [c for c in due for _ in range(self.probe_steps)]
        self._probe = {c: [] for c in due}

    def _room_for(self, threads: int) -> bool:
        """Whether the other processes leave ``threads`` cores free (1-minute load average).

        A probe of a count the node cannot give costs a step many times the normal one (17x
        measured), so it is not made while the load of the other processes (the load average
        less this process's threads) leaves fewer cores free; it is looked at again at the next
        probe. One thread is always allowed.
        """
        if threads == 1:
            return True
        others = self._load() - torch.get_num_threads()
        return others + threads <= self._cores + 0.5

    def before_step(self) -> None:
        if len(self.candidates) > 1 and self._first and self._steps == self.warmup:
            self._first = False
            self._probed_at = self._clock()
            self._start_probe(self._probed_at)
        self._current = self._queue[0] if self._queue else self.chosen
        if torch.get_num_threads() != self._current:
            torch.set_num_threads(self._current)
        self._start = self._clock()

    def after_step(self) -> None:
        now = self._clock()
        seconds = now - self._start
        self._steps += 1
        self.history.append((self._current, seconds))
        if self._queue:
            self._record_probe(seconds, now)
            return
        if len(self.candidates) == 1 or self._first:
            return
        self._recent = [*self._recent[-4:], seconds]
        slow = (
            self.reference is not None
            and len(self._recent) == 5
            and float(np.median(self._recent)) > self.slowdown * self.reference
        )
        if slow or now - self._probed_at > self.reprobe_s:
            self._recent = []
            self._probed_at = now
            self._start_probe(now)

    def _record_probe(self, seconds: float, now: float) -> None:
        threads = self._queue.pop(0)
        self._probe[threads].append(seconds)
        done = {c: float(np.median(t)) for c, t in self._probe.items() if t}
        if len(self._probe[threads]) == 1 and seconds > 3 * min(done.values()):
            # hopeless (a busy node): drop it, and wait twice as long before trying it again
            self._queue = [c for c in self._queue if c != threads]
            self._backoff[threads] = min(2 * self._backoff.get(threads, self.reprobe_s), 600.0)
            self._next_probe[threads] = now + self._backoff[threads]
        elif len(self._probe[threads]) == 1:
            self._backoff.pop(threads, None)
            self._next_probe.pop(threads, None)
        if not self._queue:
            self._choose(done, now)

    def _choose(self, done: dict[int, float], now: float) -> None:
        chosen = min(done)
        for threads in sorted(done):
            if done[threads] * PREFER_FEWER < done[chosen]:
                chosen = threads
        self.chosen, self.reference = chosen, done[chosen]
        self._probed_at = now


def _load_average() -> float:
    """The 1-minute load average (0 where the system does not report one)."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on Unix
        return 0.0


def tuner() -> ThreadTuner:
    """A tuner over 1 and all available cores, or fixed at ``settings.num_threads``."""
    if settings.num_threads is not None:
        return ThreadTuner((settings.num_threads,))
    return ThreadTuner((1, available_cores()))


@contextmanager
def restore_threads() -> Iterator[None]:
    """Put torch's thread count back as it was when the block ends."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
