"""Freed memory handed back to the system, in the processes of a local build (glibc only).

glibc's malloc keeps what a process frees in its heap for later allocations, and gives the system
back only a free stretch at the top of the heap (``M_TRIM_THRESHOLD``).  Memory freed below a
block still in use stays resident, however long it stays free.  The stages of a build free much
in the middle of the heap: a bundle decodes a few hundred megabytes of records, images and store
blocks, one piece after another, while small objects that live on (counters, caches, the next
records) are allocated between them.  In a 64,000-row local build the worker processes ended the
fetch with 90 to 140 MiB of their heaps free but resident, against about 20 MiB at 8,000 rows,
and that free memory was most of the difference in their peak RSS (benchmarks/store.py,
``memory``; glibc's ``mallinfo2`` read after every bundle).

``malloc_trim(0)`` gives back every whole free page of every arena, not only the top of the heap
(glibc 2.8 and later).  ``returning_freed_memory`` calls it once a second on a thread of its own
while a build runs (the runner process) and for the life of a worker process: the pages freed
since the last call leave the process's RSS; pages it needs again come back as they are touched.
The call walks the free lists of the heap, about a millisecond for a few hundred megabytes.  Where
the C library is not glibc, nothing is done.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Callable, Iterator, Optional

__all__ = ["TRIM_INTERVAL_S", "malloc_trim", "returning_freed_memory"]

TRIM_INTERVAL_S = 1.0


def _glibc_trim() -> Optional[Callable[[], None]]:
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


_TRIM = _glibc_trim()


def malloc_trim() -> bool:
    """Hand the heap's whole free pages back to the system now; False where there is no glibc."""
    if _TRIM is None:
        return False
    _TRIM()
    return True


@contextlib.contextmanager
def returning_freed_memory(interval_s: float = TRIM_INTERVAL_S) -> Iterator[None]:
    """``malloc_trim`` every ``interval_s`` seconds on a daemon thread until the block ends."""
    if _TRIM is None:
        yield
        return
    stop = threading.Event()

    def trim_until_stopped() -> None:
        while not stop.wait(interval_s):
            _TRIM()

    thread = threading.Thread(target=trim_until_stopped, name="malloc-trim", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
