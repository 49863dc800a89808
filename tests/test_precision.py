"""Tests for alad.training.precision and its use: bf16 autocast in the cache, alignment and fine-tuning."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from tiny_tasks import write_ner_data

from alad.alignment.cache import EmbeddingCache, cache_key
from alad.alignment.trainer import AlignConfig, align
from alad.finetuning.trainer import FinetuneConfig, finetune
from alad.training.precision import PRECISIONS, autocast
from alad.validation import CHOICES


def test_autocast_contexts():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32
    with autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        autocast("cpu", "fp16")
    assert CHOICES["precision"] == PRECISIONS  # the config check and the context agree


def test_configs_check_precision_before_any_work():
    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16, got 'half'"):
        AlignConfig(precision="half")
    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16"):
        FinetuneConfig(precision="fp16")


def test_bf16_cache_is_keyed_apart_and_close_to_fp32(tmp_path, bert, sentences):
    texts = sentences[:8]
    key = cache_key(bert, texts, -1)
    assert "precision" not in key  # fp32 caches keep the keys they had before the option
    assert cache_key(bert, texts, -1, "bf16") == {**key, "precision": "bf16"}
    cache = EmbeddingCache(tmp_path, max_tokens=64)
    full = cache.embed(bert, texts, show_progress=False)
    half = cache.embed(bert, texts, show_progress=False, precision="bf16")
    assert half.directory != full.directory
    for x, y in zip(full.states, half.states, strict=True):
        assert x.dtype == y.dtype == torch.float16 and x.shape == y.shape
        assert not torch.equal(x, y)  # really computed in bfloat16
        assert torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).min() > 0.99


def test_alignment_in_bf16_learns_like_fp32(tmp_path, bert, roberta, sentences):
    settings = dict(
        student=bert, teacher=roberta, texts=sentences, cache_dir=str(tmp_path / "cache"), windows=(3,), epochs=3,
        batch_tokens=64, hidden_size=32, lr=3e-3, show_progress=False,
    )  # fmt: skip
    full = align(tmp_path / "fp32", **settings)
    half = align(tmp_path / "bf16", precision="bf16", **settings)
    assert json.loads((tmp_path / "bf16" / "run_config.json").read_text())["config"]["precision"] == "bf16"
    cos_full, cos_half = (s["windows"]["3"]["val_cosine"] for s in (full, half))
    first = half["windows"]["3"]["history"][0]["val_cosine"]
    assert cos_half > first  # it learns
    assert abs(cos_half - cos_full) < 0.02


def test_finetuning_in_bf16_trains_and_evaluates(tmp_path, bert_dir):
    data = write_ner_data(tmp_path / "data")
    config = FinetuneConfig(
        task="ner", student=str(bert_dir), data=f"conll2003:{data}", eval_split="dev", epochs=2, batch_size=8,
        max_train=None,
    )  # fmt: skip
    full = finetune(tmp_path / "fp32", config, show_progress=False)
    half = finetune(tmp_path / "bf16", dataclasses.replace(config, precision="bf16"), show_progress=False)
    assert half["training"]["steps"] == full["training"]["steps"]
    losses = half["training"]["loss_curve"]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert half["training"]["final_loss"] != full["training"]["final_loss"]  # bf16 really used
    assert abs(half["training"]["final_loss"] - full["training"]["final_loss"]) < 0.1 * full["training"]["final_loss"]
