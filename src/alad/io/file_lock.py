"""An exclusive lock on a file, so two processes never build the same cache entry at once.

The lock is an advisory ``flock`` on a small ``*.lock`` file beside what it guards; the kernel
releases it when the holder exits, also after ``kill -9``, so a dead process never blocks a later
one. The lock file itself is left in place (deleting it would let two processes lock two files).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
