"""Tests for alad.training.memory (the heap handed back to the OS)."""

from __future__ import annotations

import importlib.util
import json
import platform
from pathlib import Path

import pytest

from alad.training import memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_trim_heap_runs_on_glibc():
    memory._libc.cache_clear()
    assert memory.trim_heap() is True


def test_trim_heap_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(memory, "_libc", lambda: None)
    assert memory.trim_heap() is False


def test_cache_memory_benchmark_records_every_shard_of_both_variants(bert_dir, sentences, tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cache_memory.py"
    spec = importlib.util.spec_from_file_location("bench_cache_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences[:12]) + "\n", encoding="utf-8")
    args = ["--model", str(bert_dir), "--corpus", str(corpus), "--texts", "10", "--shard-texts", "4"]
    assert bench.main([*args, "--out", str(tmp_path / "out")]) == 0
    runs = json.loads((tmp_path / "out" / "cache_memory.json").read_text())["runs"]
    assert set(runs) == {"trimmed", "untrimmed"}
    assert all(len(r["rss_at_shard_start_mib"]) == 3 and r["peak_rss_mib"] > 0 for r in runs.values())
    table = (tmp_path / "out" / "cache_memory.md").read_text()
    assert "| 3 |" in table and "| peak |" in table and "--texts 10" in table
