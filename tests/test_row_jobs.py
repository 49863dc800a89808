"""Row worker processes (``alad run --jobs N``) end with the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads process states from /proc (Linux)"
)

PARENT = """
import multiprocessing, os, signal, sys, time
from concurrent.futures import ProcessPoolExecutor
from alad.recipes.row_jobs import exit_with_parent

def no_watch():
    pass

def train_a_row(marker):  # stands for a long row
    open(marker, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    start = exit_with_parent if sys.argv[2] == "watch" else no_watch
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=start)
    pool.submit(train_a_row, sys.argv[1])
    while not os.path.exists(sys.argv[1]) or not open(sys.argv[1]).read():
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)  # alad run killed: no clean-up of any kind
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state  # a zombie has ended


def _orphaned_worker(tmp_path: Path, mode: str) -> int:
    script, marker = tmp_path / "parent.py", tmp_path / f"worker-{mode}.pid"
    script.write_text(PARENT)
    parent = subprocess.run([sys.executable, str(script), str(marker), mode], timeout=120, check=False)
    assert parent.returncode == -signal.SIGKILL
    return int(marker.read_text())


def test_a_worker_ends_when_its_parent_is_killed(tmp_path):
    worker = _orphaned_worker(tmp_path, "watch")
    deadline = time.monotonic() + 20
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)


def test_without_the_watch_a_worker_outlives_its_parent(tmp_path):
    worker = _orphaned_worker(tmp_path, "none")  # what alad run left behind before exit_with_parent
    try:
        time.sleep(2)
        assert _alive(worker)
    finally:
        os.kill(worker, signal.SIGKILL)
