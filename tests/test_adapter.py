"""Tests for alad.adapters: window features, padding, shapes, strict save/load, and the adapter types
(the window MLP "mlp" and the window MLP + masked self-attention "attention")."""

from __future__ import annotations

import json

import pytest
import torch

from alad.adapters import (
    ADAPTER_TYPES,
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterConfig,
    AlignmentAdapter,
    WindowAttentionAdapter,
    WindowMLPAdapter,
    get_adapter_class,
    register_adapter,
    window_features,
)
from alad.io.serialization import ArtefactError, file_sha256

STATES = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])  # [B=1, T=3, d=2]


ATTENTION = {"adapter_type": "attention", "attention_dim": 8, "attention_heads": 2}


def _adapter(window: int = 3, student_dim: int = 8, teacher_dim: int = 6, seed: int = 0, **options) -> AlignmentAdapter:
    torch.manual_seed(seed)
    config = AdapterConfig(student_dim=student_dim, teacher_dim=teacher_dim, window=window, hidden_size=16, **options)
    return AlignmentAdapter(config).eval()


def _trained_attention(window: int = 3, seed: int = 0) -> AlignmentAdapter:
    """An attention adapter whose output projection is no longer zero (as after training)."""
    adapter = _adapter(window=window, seed=seed, **ATTENTION)
    with torch.no_grad():
        adapter.attention_out.weight.normal_(0.0, 0.5)
        adapter.attention_out.bias.normal_(0.0, 0.5)
    return adapter


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


@pytest.mark.parametrize("adapter_type", ["mlp", "attention"])
def test_padding_never_leaks(adapter_type):
    adapter = _adapter(window=5) if adapter_type == "mlp" else _trained_attention(window=5)
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


@pytest.mark.parametrize("adapter_type", ["mlp", "attention"])
def test_save_load_round_trip_is_exact(tmp_path, adapter_type):
    adapter = _adapter(window=3) if adapter_type == "mlp" else _trained_attention(window=3)
    adapter.save_pretrained(tmp_path / "a", metadata={"teacher": "t", "best": {"epoch": 2}})
    header = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert header["config"]["adapter_type"] == adapter_type
    assert header["weights_sha256"] == {WEIGHTS_FILE: file_sha256(tmp_path / "a" / WEIGHTS_FILE)}
    loaded = AlignmentAdapter.from_pretrained(tmp_path / "a").eval()
    assert type(loaded) is type(adapter) is get_adapter_class(adapter_type)
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


# --------------------------------------------------------------------------------------------------
# adapter types


def test_the_registry_builds_each_type():
    assert {"mlp", "attention"} <= set(ADAPTER_TYPES)
    assert get_adapter_class("mlp") is WindowMLPAdapter and get_adapter_class("attention") is WindowAttentionAdapter
    assert type(_adapter()) is WindowMLPAdapter and AdapterConfig(student_dim=8, teacher_dim=6).adapter_type == "mlp"
    assert type(_adapter(**ATTENTION)) is WindowAttentionAdapter
    assert isinstance(_adapter(**ATTENTION), AlignmentAdapter)
    with pytest.raises(ValueError, match="adapter_type 'lstm' is not one of attention, mlp"):
        get_adapter_class("lstm")
    with pytest.raises(ValueError, match="already registered by WindowMLPAdapter"):
        register_adapter("mlp")(type("Other", (AlignmentAdapter,), {}))
    with pytest.raises(ValueError, match="is the 'attention' adapter type, but its config has adapter_type='mlp'"):
        WindowAttentionAdapter(AdapterConfig(student_dim=8, teacher_dim=6))


def test_a_new_type_needs_only_its_class_and_registration(tmp_path):
    import alad.adapters.base as base

    @register_adapter("toy-linear")
    class ToyLinear(AlignmentAdapter):
        def __init__(self, config):
            super().__init__(config)
            self.proj = torch.nn.Linear(config.student_dim, config.teacher_dim)

        def predict(self, student_states, attention_mask):
            return self.proj(student_states)

    try:
        torch.manual_seed(0)
        adapter = AlignmentAdapter(AdapterConfig(student_dim=8, teacher_dim=6, adapter_type="toy-linear")).eval()
        assert type(adapter) is ToyLinear and "toy-linear" in ADAPTER_TYPES
        loaded = AlignmentAdapter.from_pretrained(adapter.save_pretrained(tmp_path / "toy"))
        x, mask = torch.randn(2, 4, 8), torch.tensor([[1, 1, 0, 0], [1] * 4])
        assert type(loaded) is ToyLinear and torch.equal(loaded(x, mask), adapter(x, mask))
        assert torch.equal(loaded(x, mask)[0, 2:], torch.zeros(2, 6))  # the base zeroes padding for every type
    finally:
        base._REGISTRY.pop("toy-linear")


def test_old_folder_without_adapter_type_loads_as_mlp(tmp_path):
    """A folder written before adapter types existed: its config has exactly these keys."""
    adapter = _adapter(window=3)
    adapter.save_pretrained(tmp_path / "old")
    for key in ("adapter_type", "attention_dim", "attention_heads"):
        _edit_header(tmp_path / "old", lambda h, key=key: h["config"].pop(key))
    header = json.loads((tmp_path / "old" / CONFIG_FILE).read_text())
    old_keys = {"activation", "dropout", "hidden_size", "student_dim", "teacher_dim", "version", "window"}
    assert set(header["config"]) == old_keys
    loaded = AlignmentAdapter.from_pretrained(tmp_path / "old")
    assert type(loaded) is WindowMLPAdapter and loaded.config.adapter_type == "mlp"
    assert list(loaded.state_dict()) == ["net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias"]
    x = torch.randn(2, 5, 8)
    assert torch.equal(loaded.eval()(x), adapter(x))
    loaded.save_pretrained(tmp_path / "again")  # the weights file is byte for byte the old one
    assert file_sha256(tmp_path / "again" / WEIGHTS_FILE) == file_sha256(tmp_path / "old" / WEIGHTS_FILE)


def test_fresh_attention_adapter_is_its_mlp():
    attention = _adapter(window=3, seed=3, **ATTENTION)
    assert torch.count_nonzero(attention.attention_out.weight) == 0
    assert torch.count_nonzero(attention.attention_out.bias) == 0
    mlp = AlignmentAdapter(AdapterConfig(student_dim=8, teacher_dim=6, window=3, hidden_size=16)).eval()
    mlp.load_state_dict({k: v for k, v in attention.state_dict().items() if k.startswith("net.")})
    x, mask = torch.randn(3, 6, 8), torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    assert torch.equal(attention(x, mask), mlp(x, mask))
    same_seed = _adapter(window=3, seed=3)  # the MLP is built first: the same seed gives the same MLP
    assert all(torch.equal(v, attention.state_dict()[k]) for k, v in same_seed.state_dict().items())
    # the block does act once W_o is trained, and W_o gets a gradient from the start
    trained = _trained_attention(window=3, seed=3)
    assert not torch.allclose(trained(x, mask), mlp(x, mask), atol=1e-3)
    attention.train()
    attention(x, mask).pow(2).sum().backward()
    assert attention.attention_out.weight.grad.abs().sum() > 0


def test_attention_reads_across_the_window():
    """An attention adapter's output at a token depends on tokens far outside its window; the MLP's does not."""
    x = torch.randn(1, 9, 8)
    far = x.clone()
    far[0, 8] += 5.0  # 8 tokens from position 0, outside a window of 3
    assert torch.equal(_adapter(window=3)(x)[0, 0], _adapter(window=3)(far)[0, 0])
    attention = _trained_attention(window=3)
    assert not torch.allclose(attention(x)[0, 0], attention(far)[0, 0], atol=1e-4)


def test_attention_masks_padded_keys():
    adapter = _trained_attention(window=3)
    x = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    out = adapter(x, mask)
    changed = x.clone()
    changed[0, 3:] = torch.randn(3, 8) * 50  # other states at the padded positions
    assert torch.equal(adapter(changed, mask), out)
    # The MLP's output at a padded position is not zero (its window reaches real tokens); perturbing it there,
    # before the attention block, must change nothing when those keys are masked, and does when they are not.
    noise = torch.zeros(2, 6, 6)
    noise[0, 3:] = torch.randn(3, 6) * 10

    def add_noise(module, inputs, output):
        return output + noise

    real = mask.bool()
    handle = adapter.net.register_forward_hook(add_noise)
    try:
        assert torch.allclose(adapter(x, mask)[real], out[real], rtol=0, atol=1e-6)
        ones = torch.ones_like(mask)
        unmasked = adapter(x, ones)
    finally:
        handle.remove()
    assert not torch.allclose(unmasked[0, :3], adapter(x, ones)[0, :3], atol=1e-3)


def test_attention_on_a_row_of_padding_only_is_zero_not_nan():
    adapter = _trained_attention()
    out = adapter(torch.randn(2, 4, 8), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    assert torch.isfinite(out).all() and torch.equal(out[1], torch.zeros(4, 6))


def test_attention_parameter_count():
    adapter = _adapter(window=3, student_dim=8, teacher_dim=6, **ATTENTION)
    mlp = (3 * 8 * 16 + 16) + (16 * 6 + 6)
    block = 2 * 6 + (6 * 3 * 8 + 3 * 8) + (8 * 6 + 6)  # LayerNorm, query/key/value, W_o
    assert adapter.num_parameters() == mlp + block


def test_copies_keep_the_type():
    import copy
    import pickle

    adapter = _trained_attention()
    for twin in (copy.deepcopy(adapter), pickle.loads(pickle.dumps(adapter))):
        x = torch.randn(1, 5, 8)
        assert type(twin) is WindowAttentionAdapter and torch.equal(twin(x), adapter(x))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"adapter_type": "lstm"}, "adapter_type 'lstm' is not one of attention, mlp"),
        ({"adapter_type": "attention", "attention_dim": 10, "attention_heads": 4}, r"attention_dim \(10\) must be "),
        ({"adapter_type": "attention", "attention_heads": 0}, "attention_heads must be a positive integer, got 0"),
        ({"adapter_type": "attention", "attention_dim": -8}, "attention_dim must be a positive integer, got -8"),
        (
            {"attention_dim": 64},
            "attention_dim=64 is only read by adapter_type 'attention'; leave it at its default 128",
        ),
        ({"attention_heads": 2}, "attention_heads=2 is only read by adapter_type 'attention'"),
    ],
)
def test_bad_type_options_fail_with_one_clear_message(options, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(student_dim=8, teacher_dim=6, **options)


def test_load_refuses_an_unknown_type_and_a_type_of_another_class(tmp_path):
    _trained_attention().save_pretrained(tmp_path / "att")
    with pytest.raises(ArtefactError, match="holds an adapter of type 'attention', not 'mlp'"):
        WindowMLPAdapter.from_pretrained(tmp_path / "att")
    assert type(WindowAttentionAdapter.from_pretrained(tmp_path / "att")) is WindowAttentionAdapter
    _edit_header(tmp_path / "att", lambda h: h["config"].update(attention_dim=16))
    with pytest.raises(ArtefactError, match="does not match its config"):
        AlignmentAdapter.from_pretrained(tmp_path / "att")
    _edit_header(tmp_path / "att", lambda h: h["config"].update(adapter_type="lstm"))
    with pytest.raises(ArtefactError, match="invalid adapter config: adapter_type 'lstm' is not one of attention, mlp"):
        AlignmentAdapter.from_pretrained(tmp_path / "att")
    _edit_header(tmp_path / "att", lambda h: h["config"].update(adapter_type="mlp"))  # attention_dim 16 now
    with pytest.raises(ArtefactError, match="attention_dim=16 is only read by adapter_type 'attention'"):
        AlignmentAdapter.from_pretrained(tmp_path / "att")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
def test_attention_adapter_on_cuda_matches_cpu_and_ignores_padding():
    adapter = _trained_attention(window=5)
    x = torch.randn(2, 7, 8)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1] * 7])
    on_cpu = adapter(x, mask)
    gpu = adapter.to("cuda")
    on_gpu = gpu(x.cuda(), mask.cuda())
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=1e-4)
    alone = gpu(x[:1, :4].cuda(), torch.ones(1, 4, device="cuda"))
    torch.testing.assert_close(on_gpu[0, :4], alone[0], rtol=0, atol=1e-4)
    assert torch.equal(on_gpu[0, 4:].cpu(), torch.zeros(3, 6))


def test_window_mlp_predict_equals_its_sequential_net_in_eval_and_training():
    from alad.adapters.base import window_features

    torch.manual_seed(0)
    adapter = AlignmentAdapter(AdapterConfig(student_dim=8, teacher_dim=6, window=3, hidden_size=16, dropout=0.5))
    states, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    adapter.eval()
    expected = adapter.net(window_features(states, mask, 3))
    assert torch.allclose(adapter.predict(states, mask), expected, atol=1e-6)
    adapter.train()
    torch.manual_seed(1)
    trained = adapter.predict(states, mask)
    torch.manual_seed(1)
    assert torch.allclose(trained, adapter.net(window_features(states, mask, 3)), atol=1e-6)  # same dropout draws
