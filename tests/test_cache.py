"""Tests for alad.alignment.cache: build once, reuse, key on everything, resume, detect corruption."""

from __future__ import annotations

import json

import pytest
import torch

import alad.alignment.cache as cache_module
from alad.alignment.cache import MANIFEST, EmbeddingCache, TokenEmbeddings, _batches_by_tokens, cache_key, encode_spans
from alad.alignment.pairing import tokenize_with_spans
from alad.models.encoders import load_encoder


@pytest.fixture
def spy(monkeypatch):
    """Count calls of ``encode_spans`` (as the cache sees it) and the number of texts each call gets."""
    calls: list[int] = []
    real = cache_module.encode_spans

    def counting(encoder, spans, *args, **kwargs):
        calls.append(len(spans))
        return real(encoder, spans, *args, **kwargs)

    monkeypatch.setattr(cache_module, "encode_spans", counting)
    return calls


def _assert_same_states(a: TokenEmbeddings, b: TokenEmbeddings) -> None:
    assert len(a.states) == len(b.states)
    for x, y in zip(a.states, b.states, strict=True):
        assert torch.equal(x, y)


def test_embed_builds_then_reads(tmp_path, bert, sentences, spy):
    cache = EmbeddingCache(tmp_path, shard_size=4, max_tokens=64)
    texts = sentences[:10]
    first = cache.embed(bert, texts, show_progress=False)
    assert spy == [4, 4, 2]  # three shards built
    manifest = json.loads((first.directory / MANIFEST).read_text())
    assert [s["count"] for s in manifest["shards"]] == [4, 4, 2]
    assert manifest["kind"] == "embedding_cache"
    spy.clear()
    second = cache.embed(bert, texts, show_progress=False)
    assert spy == []  # a hit runs no model at all
    assert second.directory == first.directory
    _assert_same_states(first, second)
    assert second.texts == texts and len(second) == 10 and second.hidden_size == 32
    for text, s in zip(texts, second.spans, strict=True):
        assert s.input_ids == bert.tokenizer(text)["input_ids"]


def test_states_are_float16_and_match_a_direct_forward(tmp_path, bert, roberta, sentences):
    for encoder, width in ((bert, 32), (roberta, 48)):
        emb = EmbeddingCache(tmp_path, max_tokens=64).embed(encoder, sentences[:6], show_progress=False)
        for text, state in zip(sentences[:6], emb.states, strict=True):
            enc = encoder.tokenizer(text, return_tensors="pt")
            with torch.no_grad():
                direct = encoder.model(**enc).last_hidden_state[0]
            assert state.dtype == torch.float16
            assert state.shape == (enc["input_ids"].shape[1], width)
            torch.testing.assert_close(state.float(), direct, rtol=0, atol=1e-2)


def test_layer_selects_a_hidden_state(tmp_path, bert, sentences):
    emb = EmbeddingCache(tmp_path).embed(bert, sentences[:2], layer=1, show_progress=False)
    enc = bert.tokenizer(sentences[0], return_tensors="pt")
    with torch.no_grad():
        direct = bert.model(**enc, output_hidden_states=True).hidden_states[1][0]
    torch.testing.assert_close(emb.states[0].float(), direct, rtol=0, atol=1e-2)


def test_changes_give_a_new_key(tmp_path, bert_dir, sentences, spy):
    encoder = load_encoder(bert_dir)  # a private copy: one of its weights is changed below
    cache = EmbeddingCache(tmp_path)
    base = cache.embed(encoder, sentences[:4], show_progress=False)
    assert len(spy) == 1
    other_texts = cache.embed(encoder, sentences[:3] + ["A different text."], show_progress=False)
    other_layer = cache.embed(encoder, sentences[:4], layer=1, show_progress=False)
    assert len(spy) == 3
    with torch.no_grad():
        encoder.model.encoder.layer[0].attention.self.query.weight[0, 0] += 0.5
    other_weight = cache.embed(encoder, sentences[:4], show_progress=False)
    assert len(spy) == 4  # rebuilt, not read from the old folder
    folders = {e.directory for e in (base, other_texts, other_layer, other_weight)}
    assert len(folders) == 4 and all(f.parent == tmp_path for f in folders)
    assert other_weight.key["model_fingerprint"] != base.key["model_fingerprint"]
    assert not torch.equal(other_weight.states[0], base.states[0])


def test_cache_key_contents(bert, roberta, sentences):
    key = cache_key(bert, sentences[:3], -1)
    assert key["num_texts"] == 3 and key["layer"] == -1 and key["max_length"] == 64 and key["dtype"] == "float16"
    assert cache_key(bert, sentences[:3], -1) == key
    assert cache_key(roberta, sentences[:3], -1)["tokenizer_fingerprint"] != key["tokenizer_fingerprint"]
    # the corpus hash separates texts, so moving a boundary changes it
    assert cache_key(bert, ["ab", "c"], -1)["corpus_sha256"] != cache_key(bert, ["a", "bc"], -1)["corpus_sha256"]


def test_interrupted_build_resumes_at_the_missing_shards(tmp_path, bert, sentences, monkeypatch):
    texts = sentences[:5]  # shard_size 2: shards of 2, 2 and 1 texts
    clean = EmbeddingCache(tmp_path / "clean", shard_size=2).embed(bert, texts, show_progress=False)

    real = cache_module.encode_spans
    calls: list[list[int]] = []
    fail_on_call = [2]

    def failing_second(encoder, spans, *args, **kwargs):
        calls.append([s.input_ids[1] for s in spans])
        if len(calls) in fail_on_call:
            raise RuntimeError("interrupted")
        return real(encoder, spans, *args, **kwargs)

    monkeypatch.setattr(cache_module, "encode_spans", failing_second)
    cache = EmbeddingCache(tmp_path / "resumed", shard_size=2)
    with pytest.raises(RuntimeError, match="interrupted"):
        cache.embed(bert, texts, show_progress=False)
    directory = clean.directory.parent.parent / "resumed" / clean.directory.name
    manifest = json.loads((directory / MANIFEST).read_text())
    assert [s["index"] for s in manifest["shards"]] == [0]
    assert sorted(p.name for p in directory.glob("shard-*")) == ["shard-00000.safetensors"]

    calls.clear()
    fail_on_call.clear()
    resumed = cache.embed(bert, texts, show_progress=False)
    spans = tokenize_with_spans(bert.tokenizer, texts)
    assert calls == [[s.input_ids[1] for s in spans[2:4]], [spans[4].input_ids[1]]]  # only shards 1 and 2
    _assert_same_states(resumed, clean)


def test_corrupt_shard_is_detected_and_rebuilt(tmp_path, bert, sentences, spy):
    cache = EmbeddingCache(tmp_path, shard_size=2)
    texts = sentences[:6]
    first = cache.embed(bert, texts, show_progress=False)
    shard = first.directory / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-8:] = b"\x00\x01\x02\x03\x04\x05\x06\x07"  # same size, different states, rewritten in place
    shard.write_bytes(bytes(data))
    spy.clear()
    again = cache.embed(bert, texts, show_progress=False)
    assert spy == [2, 2]  # shard 1 and everything after it
    _assert_same_states(first, again)


def test_corrupt_manifest_rebuilds(tmp_path, bert, sentences, spy):
    cache = EmbeddingCache(tmp_path, shard_size=2)
    first = cache.embed(bert, sentences[:3], show_progress=False)
    (first.directory / MANIFEST).write_text("{ not json")
    spy.clear()
    again = cache.embed(bert, sentences[:3], show_progress=False)
    assert spy == [2, 1]
    _assert_same_states(first, again)


def test_other_shard_size_rebuilds(tmp_path, bert, sentences, spy):
    first = EmbeddingCache(tmp_path, shard_size=2).embed(bert, sentences[:3], show_progress=False)
    spy.clear()
    again = EmbeddingCache(tmp_path, shard_size=3).embed(bert, sentences[:3], show_progress=False)
    assert spy == [3]
    assert again.directory == first.directory
    for x, y in zip(first.states, again.states, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=2e-3)


def test_texts_longer_than_the_model_accepts_are_refused(tmp_path, bert, sentences):
    long_text = " ".join(sentences)
    with pytest.raises(ValueError, match=r"longer than .* accepts \(64 tokens\).*text #1.*alad.segment_texts"):
        EmbeddingCache(tmp_path).embed(bert, [sentences[0], long_text], show_progress=False)
    spans = tokenize_with_spans(bert.tokenizer, [long_text])
    with pytest.raises(ValueError, match="split them first"):
        encode_spans(bert, spans)


def test_too_long_text_is_reported_by_corpus_index_before_any_shard_is_built(tmp_path, bert, sentences, spy):
    texts = sentences[:3] + [" ".join(sentences)]
    with pytest.raises(ValueError, match=r"1 texts are longer .*text #3 with \d+;"):
        EmbeddingCache(tmp_path, shard_size=2).embed(bert, texts, show_progress=False)
    assert spy == []  # nothing was computed for a corpus that cannot be cached whole
    assert not list(tmp_path.glob("*/shard-*"))


def test_empty_corpus_and_bad_shard_size(tmp_path, bert):
    with pytest.raises(ValueError, match="corpus is empty"):
        EmbeddingCache(tmp_path).embed(bert, [], show_progress=False)
    with pytest.raises(ValueError, match="shard_size must be >= 1"):
        EmbeddingCache(tmp_path, shard_size=0)


def test_batches_by_tokens_respects_the_budget():
    lengths = [5, 9, 3, 9, 2, 7, 12]
    batches = _batches_by_tokens(lengths, max_tokens=18)
    assert sorted(i for b in batches for i in b) == list(range(7))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert width * len(batch) <= 18 or len(batch) == 1
    assert batches[0] == [6]  # longest first; 12 + 9 padded to 24 > 18


def test_text_pairs_are_encoded_as_pair_inputs(tmp_path, bert, roberta, sentences):
    pairs = [(f"question {i} ?", text) for i, text in enumerate(sentences[:5])]
    for encoder in (bert, roberta):
        emb = EmbeddingCache(tmp_path, max_tokens=64).embed(encoder, pairs, show_progress=False)
        assert emb.key["text_pairs"] == "one input, no segment ids" and emb.texts == pairs
        for pair, state in zip(pairs, emb.states, strict=True):
            # as alad's QA models run: one input with the pair's separators, ids and attention mask only
            enc = encoder.tokenizer(*pair, return_tensors="pt")
            with torch.no_grad():
                direct = encoder.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            torch.testing.assert_close(state.float(), direct.last_hidden_state[0], atol=2e-3, rtol=2e-3)


def test_pair_corpus_has_its_own_key(bert):
    pair = [("a cat", "sat on the mat")]
    joined = ["a cat sat on the mat"]
    assert cache_key(bert, pair, -1)["corpus_sha256"] != cache_key(bert, joined, -1)["corpus_sha256"]
    assert (
        cache_key(bert, pair, -1)["corpus_sha256"]
        != cache_key(bert, [("a cat sat", "on the mat")], -1)["corpus_sha256"]
    )
    assert "text_pairs" not in cache_key(bert, joined, -1)


def test_build_trims_the_heap_after_every_shard(tmp_path, bert, sentences, monkeypatch):
    """Freed encoder activations go back to the OS shard by shard (resident memory stays flat)."""
    trims = []
    monkeypatch.setattr(cache_module, "trim_heap", lambda: trims.append(1) or True)
    EmbeddingCache(tmp_path, shard_size=4, max_tokens=64).build(bert, sentences[:10], show_progress=False)
    assert len(trims) == 3  # three shards


def test_encode_spans_returns_views_of_one_tensor_equal_to_one_text_at_a_time(bert, sentences):
    spans = tokenize_with_spans(bert.tokenizer, sentences[:6])
    together = encode_spans(bert, spans, max_tokens=64)
    alone = [encode_spans(bert, [s])[0] for s in spans]
    assert len({t.untyped_storage().data_ptr() for t in together}) == 1  # one allocation for all texts
    for a, b in zip(together, alone, strict=True):
        assert a.dtype == torch.float16 and a.shape == b.shape
        assert torch.allclose(a.float(), b.float(), atol=2e-3)
