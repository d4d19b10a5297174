"""Handing memory that was freed back to the system.

A burst of records (a full queue of batches, a sink's buffer) is decoded into dicts too big for
Python's small-object allocator, so they come from the C library's ``malloc``, in the arena of the
thread that made them. Once they are freed, glibc keeps the memory for later ``malloc`` calls rather
than returning it: the process's resident memory stays at its peak. ``malloc_trim(0)`` hands every
arena's free pages back (they are faulted in again if needed); :class:`Releaser` calls it when a
burst is over.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

RELEASE_AFTER = 10_000
"""Records that must have moved through the pipeline since the last release before the next."""


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` on a C library without it (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the symbols the process already has: its C library's
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release() -> bool:
    """Return the C library's free memory to the system; ``False`` where that cannot be done."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class Releaser:
    """Releases freed memory once enough records have moved since the last release, when asked at a
    quiet moment (:meth:`idle`)."""

    def __init__(self, after: int = RELEASE_AFTER, release: Callable[[], bool] = release):
        self.after = after
        self.moved = 0
        self.releases = 0
        self._release = release

    def count(self, records: int) -> None:
        """Records that were taken in or handed on."""
        self.moved += records

    def idle(self) -> bool:
        """The pipeline is quiet: release if enough records moved since the last time; whether it did."""
        if self.moved < self.after:
            return False
        self.moved = 0
        self.releases += 1
        self._release()
        return True
