"""Resident memory: hand the heap's freed pages back to the operating system.

A long cache build runs the encoder on batches of ever-different shapes; glibc's malloc keeps the
freed activation buffers in its heap (its mmap threshold rises with every large buffer freed), so
resident memory climbed with every shard embedded: a 12,000-sentence build of MiniLM-L6 went from
731 to 945 MiB, a 30,000-sentence one past 1.2 GiB, while the memory in use stayed flat. Trimming
the heap after each shard keeps it flat (560 MiB throughout, measured with
``benchmarks/align_scale.py``'s corpus). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def trim_heap() -> bool:
    """Return freed heap memory to the OS (glibc ``malloc_trim(0)``); False where there is no glibc."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


__all__ = ["trim_heap"]
