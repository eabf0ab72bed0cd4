"""Allocator settings for training: reuse freed heap memory between steps (glibc only)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}


def _glibc():
    """The C library through ctypes when it is glibc on Linux, else ``None``."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@contextmanager
def reuse_freed_memory(*, enabled: bool = True) -> Iterator[None]:
    """Serve large allocations from freed heap memory while the block runs (glibc only).

    glibc hands out blocks above its mmap threshold (which grows to 32 MiB at most) as fresh
    mappings and unmaps them when freed, so every training step faults in and zeroes its large
    gradient buffers again. Inside the block mmap is not used and freed memory stays in the
    heap for the next step; afterwards glibc's defaults are set back and free memory is
    returned to the system. See ``scgenvae.settings.reuse_freed_memory``.
    """
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**30)
    try:
        yield
    finally:
        for param, value in _GLIBC_DEFAULTS.items():
            libc.mallopt(param, value)
        libc.malloc_trim(0)
