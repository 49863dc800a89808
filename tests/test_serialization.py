"""Tests for alad.io.serialization: atomic writes, strict reading of JSON, tensors and configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from alad.io.serialization import (
    FORMAT_VERSION,
    ArtefactError,
    atomic_write,
    check_header,
    config_from_dict,
    config_to_dict,
    file_sha256,
    load_tensors,
    read_json,
    save_tensors_atomic,
    write_json_atomic,
    write_text_atomic,
)


@dataclasses.dataclass
class _Config:
    size: int
    sizes: tuple[int, ...] = (1, 3)
    name: str = "x"


def _failing_writer(tmp: str) -> None:
    Path(tmp).write_text("half a file")
    raise RuntimeError("disk full")


def test_atomic_write_leaves_no_file_when_the_writer_raises(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, _failing_writer)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary file left behind either


def test_atomic_write_keeps_the_old_file_when_a_rewrite_fails(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        atomic_write(target, _failing_writer)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_json_round_trip(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"b": [1, 2], "a": "é"})
    assert read_json(tmp_path / "a.json") == {"a": "é", "b": [1, 2]}


def test_read_json_on_corrupt_or_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "alignment_adapter", "config": {')
    with pytest.raises(ArtefactError, match="adapter config .*bad.json is not valid JSON.*corrupt"):
        read_json(bad, "adapter config")
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ArtefactError, match="not valid JSON"):
        read_json(bad)
    with pytest.raises(ArtefactError, match="run summary not found"):
        read_json(tmp_path / "missing.json", "run summary")


def test_tensors_round_trip_and_corruption(tmp_path):
    tensors = {"w": torch.randn(4, 3), "b": torch.arange(5)}
    save_tensors_atomic(tmp_path / "t.safetensors", tensors, metadata={"kind": "x"})
    loaded = load_tensors(tmp_path / "t.safetensors")
    assert set(loaded) == {"w", "b"}
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["b"], tensors["b"])
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtefactError, match="corrupt or truncated"):
        load_tensors(tmp_path / "t.safetensors")
    with pytest.raises(ArtefactError, match="weights not found"):
        load_tensors(tmp_path / "none.safetensors")


def test_file_sha256(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_config_round_trip_turns_lists_into_tuples():
    config = _Config(size=3, sizes=(5, 7))
    data = config_to_dict(config)
    assert data == {"size": 3, "sizes": (5, 7), "name": "x"}
    assert config_from_dict(_Config, {"size": 3, "sizes": [5, 7]}, "cfg") == config


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ArtefactError, match=r"my.json has unknown fields \['bogus', 'extra'\]"):
        config_from_dict(_Config, {"size": 1, "bogus": 2, "extra": 3}, "my.json")


def test_check_header(tmp_path):
    check_header({"kind": "a", "format_version": FORMAT_VERSION}, "a", tmp_path)
    with pytest.raises(ArtefactError, match="holds a 'b', not a 'a'"):
        check_header({"kind": "b", "format_version": FORMAT_VERSION}, "a", tmp_path)
    with pytest.raises(ArtefactError, match=f"format_version 99; this alad reads version {FORMAT_VERSION}"):
        check_header({"kind": "a", "format_version": 99}, "a", tmp_path)
