"""Tests for alad.evaluation.latency: timing statistics, model latency per batch size, unique parameter counts.

No speed targets are asserted: the machine may be busy.
"""

from __future__ import annotations

import time

import pytest
import torch

from alad.evaluation.latency import (
    DEFAULT_SEQ_LEN,
    count_parameters,
    cpu_description,
    measure_latency,
    model_latency,
    synthetic_inputs,
)


def test_measure_latency_sleep_and_repeats():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.001)

    stats = measure_latency(fn, warmup=2, repeats=5)
    assert len(calls) == 2 + 5
    assert stats["repeats"] == 5
    assert 0.9 <= stats["median_ms"] < 1000
    assert stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"] <= stats["max_ms"]
    assert stats["min_ms"] <= stats["mean_ms"] <= stats["max_ms"]


def test_measure_latency_min_seconds_extends_repeats():
    calls = []
    stats = measure_latency(lambda: calls.append(1) or time.sleep(0.001), warmup=0, repeats=1, min_seconds=0.01)
    assert stats["repeats"] == len(calls) >= 2  # >= 10 ms of 1 ms sleeps needs several calls


def test_measure_latency_rejects_bad_arguments():
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        measure_latency(lambda: None, warmup=-1)


def test_count_parameters_dedups_shared_and_respects_trainable_only():
    shared = torch.nn.Linear(3, 4)  # 16 parameters
    a = torch.nn.Sequential(shared, torch.nn.Linear(4, 2))  # + 10
    b = torch.nn.Sequential(shared, torch.nn.Linear(4, 1))  # + 5
    assert count_parameters(a) == 26
    assert count_parameters(a, b) == 16 + 10 + 5
    assert count_parameters(a, a) == 26
    b[1].weight.requires_grad_(False)
    assert count_parameters(b, trainable_only=True) == 16 + 1
    assert count_parameters(b) == 21
    assert count_parameters() == 0


def _tiny_bert():
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    torch.manual_seed(0)
    return BertModel(config)


def test_model_latency_tiny_bert():
    model = _tiny_bert().train()
    result = model_latency(model, batch_sizes=(1, 4), repeats=3, warmup=1)
    assert sorted(result) == [1, 4]
    for batch_size, stats in result.items():
        assert stats["median_ms"] > 0 and stats["repeats"] == 3
        assert stats["batch_size"] == batch_size and stats["seq_len"] == DEFAULT_SEQ_LEN
        assert stats["threads"] >= 1
    assert model.training  # mode restored


def test_model_latency_custom_inputs_and_synthetic_inputs():
    model = _tiny_bert()
    inputs = synthetic_inputs(model, 2, seq_len=8)
    assert inputs["input_ids"].shape == (2, 8) and set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert not (inputs["input_ids"] == model.config.pad_token_id).any()
    seen = []

    def make_inputs(batch_size):
        seen.append(batch_size)
        return {"input_ids": torch.ones(batch_size, 5, dtype=torch.long)}

    result = model_latency(model, make_inputs, batch_sizes=(1, 2), repeats=2, warmup=0)
    assert seen == [1, 2]
    assert result[2]["seq_len"] == 5 and result[2]["median_ms"] > 0


def test_compute_signature_ignores_weights_and_names_not_shapes_or_settings():
    from transformers import BertConfig, BertModel

    from alad.evaluation.latency import compute_signature

    def bert(seed: int = 0, **changes) -> BertModel:
        settings = dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
        )
        torch.manual_seed(seed)
        model = BertModel(BertConfig(**{**settings, **changes}))
        model.config._name_or_path = f"somewhere/{seed}"  # a name, not a setting
        return model

    reference = compute_signature(bert(0))
    assert compute_signature(bert(1)) == reference  # other weights, other name: the same compute
    assert compute_signature(bert(0, intermediate_size=128)) != reference  # other shapes
    assert compute_signature(bert(0, hidden_act="relu")) != reference  # other activation, same shapes
    assert compute_signature(bert(0).to(torch.float64)) != reference  # other dtype
    quantized = torch.ao.quantization.quantize_dynamic(bert(0), {torch.nn.Linear}, dtype=torch.qint8)
    assert compute_signature(quantized) != reference  # other kernels
    assert compute_signature(bert(0), [[1, 2, 3]]) != compute_signature(bert(0), [[1, 2]])  # other inputs
    other_attention = bert(0)
    current = other_attention.config._attn_implementation
    other_attention.config._attn_implementation = "sdpa" if current == "eager" else "eager"
    assert compute_signature(other_attention) != reference


def test_cpu_description_names_the_model_and_its_bf16_instructions(tmp_path):
    info = tmp_path / "cpuinfo"
    head = "processor\t: 0\nmodel name\t: Some Xeon\n"
    info.write_text(
        head + "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n\nprocessor\t: 1\nmodel name\t: Some Xeon\n"
    )
    assert cpu_description(info) == "Some Xeon (AMX, AVX512-BF16)"
    info.write_text("model name\t: Some EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_description(info) == "Some EPYC (AVX512-BF16)"
    info.write_text("model name\t: Old CPU\nflags\t\t: fpu avx2\n")
    assert cpu_description(info) == "Old CPU (no AMX or AVX512-BF16)"
    assert cpu_description(tmp_path / "missing")  # not Linux: the platform's processor string, never empty
