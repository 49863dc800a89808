"""Tests for alad.adapters: window features, padding, shapes and strict save/load."""

from __future__ import annotations

import json

import pytest
import torch

from alad.adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterConfig, AlignmentAdapter, window_features
from alad.serialization import ArtefactError

STATES = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])  # [B=1, T=3, d=2]


def _adapter(window: int = 3, student_dim: int = 8, teacher_dim: int = 6, seed: int = 0) -> AlignmentAdapter:
    torch.manual_seed(seed)
    config = AdapterConfig(student_dim=student_dim, teacher_dim=teacher_dim, window=window, hidden_size=16)
    return AlignmentAdapter(config).eval()


def test_window_features_order_and_edge_padding():
    ones = torch.ones(1, 3)
    expected = torch.tensor(
        [
            [
                [0.0, 0.0, 1.0, 2.0, 3.0, 4.0],
                [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                [3.0, 4.0, 5.0, 6.0, 0.0, 0.0],
            ]
        ]
    )
    assert torch.equal(window_features(STATES, ones, 3), expected)
    assert torch.equal(window_features(STATES, ones, 1), STATES)
    five = window_features(STATES, ones, 5)
    assert five.shape == (1, 3, 10)
    assert torch.equal(five[0, 0], torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    assert torch.equal(five[0, 2], torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0, 0.0, 0.0]))


def test_window_features_zero_padding_positions():
    mask = torch.tensor([[1, 1, 0]])
    expected = torch.tensor(
        [
            [
                [0.0, 0.0, 1.0, 2.0, 3.0, 4.0],
                [1.0, 2.0, 3.0, 4.0, 0.0, 0.0],
                [3.0, 4.0, 0.0, 0.0, 0.0, 0.0],
            ]
        ]
    )
    assert torch.equal(window_features(STATES, mask, 3), expected)
    assert torch.equal(window_features(STATES, mask, 1)[0, 2], torch.zeros(2))


def test_output_shape():
    adapter = _adapter(window=5, student_dim=8, teacher_dim=6)
    out = adapter(torch.randn(2, 7, 8), torch.ones(2, 7))
    assert out.shape == (2, 7, 6)
    assert adapter(torch.randn(3, 4, 8)).shape == (3, 4, 6)  # no mask: every position is real


def test_padding_never_leaks():
    adapter = _adapter(window=5)
    short, long = torch.randn(1, 4, 8), torch.randn(1, 7, 8)
    batch = torch.randn(2, 7, 8) * 100  # padding positions hold large garbage, not zeros
    batch[0, :4], batch[1] = short[0], long[0]
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1] * 7])
    out = adapter(batch, mask)
    alone = adapter(short, torch.ones(1, 4))
    torch.testing.assert_close(out[0, :4], alone[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1], adapter(long)[0], rtol=0, atol=1e-6)
    assert torch.equal(out[0, 4:], torch.zeros(3, 6))  # padded positions predict nothing


@pytest.mark.parametrize("window", [0, 2, 4, -1])
def test_window_must_be_odd(window):
    with pytest.raises(ValueError, match=f"window must be an odd integer >= 1.*got {window}"):
        AdapterConfig(student_dim=8, teacher_dim=6, window=window)


def test_config_validation():
    with pytest.raises(ValueError, match="student_dim must be a positive integer"):
        AdapterConfig(student_dim=0, teacher_dim=6)
    with pytest.raises(ValueError, match="activation 'swish' is not one of"):
        AdapterConfig(student_dim=8, teacher_dim=6, activation="swish")
    with pytest.raises(ValueError, match="dropout must be in"):
        AdapterConfig(student_dim=8, teacher_dim=6, dropout=1.0)


def test_parameter_count():
    adapter = _adapter(window=3, student_dim=8, teacher_dim=6)
    assert adapter.num_parameters() == (3 * 8 * 16 + 16) + (16 * 6 + 6)


def test_save_load_round_trip_is_exact(tmp_path):
    adapter = _adapter(window=3)
    adapter.save_pretrained(tmp_path / "a", metadata={"teacher": "t", "best": {"epoch": 2}})
    loaded = AlignmentAdapter.from_pretrained(tmp_path / "a").eval()
    assert loaded.config == adapter.config
    assert loaded.metadata == {"teacher": "t", "best": {"epoch": 2}}
    original, restored = adapter.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    x, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1] * 5])
    assert torch.equal(adapter(x, mask), loaded(x, mask))


@pytest.fixture
def saved(tmp_path):
    directory = tmp_path / "adapter"
    _adapter(window=3).save_pretrained(directory)
    return directory


def _edit_header(directory, edit) -> None:
    header = json.loads((directory / CONFIG_FILE).read_text())
    edit(header)
    (directory / CONFIG_FILE).write_text(json.dumps(header))


def test_load_refuses_another_kind(saved):
    _edit_header(saved, lambda h: h.update(kind="embedding_cache"))
    with pytest.raises(ArtefactError, match="holds a 'embedding_cache', not a 'alignment_adapter'"):
        AlignmentAdapter.from_pretrained(saved)


def test_load_refuses_another_format_version(saved):
    _edit_header(saved, lambda h: h.update(format_version=99))
    with pytest.raises(ArtefactError, match="format_version 99; this alad reads version 1"):
        AlignmentAdapter.from_pretrained(saved)


def test_load_refuses_unknown_config_fields(saved):
    _edit_header(saved, lambda h: h["config"].update(layers=4))
    with pytest.raises(ArtefactError, match=r"unknown fields \['layers'\]"):
        AlignmentAdapter.from_pretrained(saved)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_load_refuses_corrupt_weights(saved, damage):
    weights = saved / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00\x01garbage" * 50)
    with pytest.raises(ArtefactError, match="adapter weights .* cannot be read .*corrupt or truncated"):
        AlignmentAdapter.from_pretrained(saved)


def test_load_refuses_missing_files(saved, tmp_path):
    (saved / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtefactError, match="adapter weights not found"):
        AlignmentAdapter.from_pretrained(saved)
    with pytest.raises(ArtefactError, match="adapter folder not found"):
        AlignmentAdapter.from_pretrained(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtefactError, match="adapter config not found"):
        AlignmentAdapter.from_pretrained(tmp_path / "empty")


@pytest.mark.parametrize(("key", "value"), [("window", 5), ("student_dim", 9), ("teacher_dim", 7), ("hidden_size", 8)])
def test_load_refuses_weights_that_disagree_with_the_config(saved, key, value):
    _edit_header(saved, lambda h: h["config"].update({key: value}))
    with pytest.raises(ArtefactError, match="does not match its config"):
        AlignmentAdapter.from_pretrained(saved)


def test_student_of_the_wrong_width_is_refused(saved):
    adapter = AlignmentAdapter.from_pretrained(saved)
    with pytest.raises(ValueError, match="width 12 but this adapter expects student_dim=8.*another student"):
        adapter(torch.randn(1, 4, 12))
    with pytest.raises(ValueError, match=r"must be \[batch, tokens, dim\]"):
        adapter(torch.randn(4, 8))
