"""Tests for alad.training.memory (the heap handed back to the OS)."""

from __future__ import annotations

import platform

import pytest

from alad.training import memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_trim_heap_runs_on_glibc():
    memory._libc.cache_clear()
    assert memory.trim_heap() is True


def test_trim_heap_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(memory, "_libc", lambda: None)
    assert memory.trim_heap() is False
