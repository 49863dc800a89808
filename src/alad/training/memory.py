"""Resident memory: hand the heap's freed pages back to the operating system.

A long cache build runs the encoder on batches of ever-different shapes; glibc's malloc keeps the
freed activation buffers in its heap, so resident memory climbed with the shards embedded while the
memory in use stayed flat. ``benchmarks/results/cache_memory/`` (MiniLM-L6, 12,000 sentences, 12
shards): 520 -> 787 MiB at the start of the last shard without the trim, 534 MiB throughout with it;
peak 954 vs 842 MiB. Elsewhere than glibc :func:`trim_heap` does nothing.
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
