"""Process-level tuning shared by the relay server and the clients.

Every 1 MiB chunk is several short-lived ``bytes`` objects. glibc's malloc serves blocks that large with a
fresh ``mmap`` and returns them with ``munmap``, so each chunk costs hundreds of page faults per copy: measured
here, 480,000 faults and 1.7 s of system CPU per GiB sent, about half of the whole cost. Raising the mmap
threshold above the largest chunk (and the trim threshold with it) lets freed chunk buffers be reused instead.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Above the largest WebSocket message (4 MiB) plus framing, with room for a few chunks in flight.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024


def tune_allocator() -> bool:
    """Keep chunk-sized allocations on the heap (glibc only); returns whether the setting took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The C library the interpreter already loaded (its global symbols), not ctypes.util.find_library("c"):
        # on Linux that runs ``ldconfig -p`` in a child process at every start of every client (~5 ms of CPU).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt thresholds)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
