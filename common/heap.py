"""The allocator setting of the long-running single-process drivers (index build, add, mine and search)."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def return_large_frees(threshold: int = 1 << 20) -> bool:
    """Serve allocations of `threshold` bytes or more by mmap, so that freeing them gives the memory back (glibc
    only; elsewhere a no-op). Returns whether it was set.

    Why: a driver that reads shard after shard allocates and frees arrays of 10-20 MB. After the first such free
    glibc raises its mmap threshold (up to 32 MB), so later ones come from the heap, which fragments and is not
    trimmed: the driver's peak grew with the number of shards it had read, not with what it held (index build:
    119 -> 165 MB from 20k to 100k vectors, 115 -> 132 MB with this setting; benchmarks/speed/memory.py). Setting
    the threshold also switches that adjustment off."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):  # no mallopt (musl) or no libc to load
        return False
