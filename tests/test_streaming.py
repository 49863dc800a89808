"""Streaming alignment from the cache: a bounded buffer (counted in tokens held), a seeded plan, exact resume."""

from __future__ import annotations

import json
import random

import pytest
import torch

import alad.alignment.trainer
from alad.adapters import AlignmentAdapter
from alad.alignment.cache import EmbeddingCache
from alad.alignment.streaming import AlignmentStream, token_batches
from alad.alignment.trainer import AlignmentData, align

SHARD = 4  # texts per cache shard: 40 sentences -> 10 shards
BUFFER = 80  # tokens: a few shards per chunk


@pytest.fixture(scope="module")
def caches(bert, roberta, sentences, tmp_path_factory):
    cache = EmbeddingCache(tmp_path_factory.mktemp("stream-cache"), shard_size=SHARD)
    return cache.build(bert, sentences, show_progress=False), cache.build(roberta, sentences, show_progress=False)


@pytest.fixture(scope="module")
def full_data(caches):
    student, teacher = caches
    from alad.alignment.cache import TokenEmbeddings

    def embeddings(cached):
        return TokenEmbeddings(cached.texts, cached.spans, cached.read_all(), cached.key, cached.directory)

    return AlignmentData.from_embeddings(embeddings(student), embeddings(teacher))


def _split(n: int) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(0).shuffle(order)
    return sorted(order[4:]), sorted(order[:4])


def test_build_reads_nothing_and_shards_read_alone(caches, full_data):
    student, _ = caches
    assert len(student.shards) == 10 and student.hidden_size == 32
    assert [student.shard_of(i) for i in (0, 3, 4, 39)] == [0, 0, 1, 9]
    part = student.read_texts(2, [9, 8])
    assert sorted(part) == [8, 9] and torch.equal(part[9], full_data.student[9])
    with pytest.raises(IndexError, match="not in cache shard 2"):
        student.read_texts(2, [12])


def test_stream_never_holds_more_than_its_buffer(caches, full_data):
    stream = AlignmentStream(*caches, specials=False, buffer_tokens=BUFFER)
    assert max(sum(stream.lengths[e["start"] : e["start"] + e["count"]]) for e in caches[0].shards) <= BUFFER
    train, val = _split(len(stream))
    for epoch in range(2):
        plan = stream.train_batches(train, 64, seed=0, epoch=epoch)
        assert sorted(i for b in plan for i in b.ids) == train  # every training text once per epoch
        assert len({id(b.chunk) for b in plan}) >= 3  # the corpus does not fit: several chunks
        for batch in plan:
            stream.ensure(batch.chunk.needed())
            x, attention, y, counted = stream.collate(batch.ids)
            expected = full_data.collate(batch.ids)
            for got, want in zip((x, attention, y, counted), expected, strict=True):
                assert torch.equal(got, want)
            assert stream.held_tokens <= BUFFER and stream.held_texts < len(stream) // 2
    for chunk in stream.eval_chunks(val):
        stream.ensure([i for b in chunk.batches for i in b])
        assert stream.held_tokens <= BUFFER
    assert 0 < stream.peak_tokens <= BUFFER
    assert stream.peak_texts <= BUFFER // min(stream.lengths)
    assert stream.counted == [int(m.sum()) for m in full_data.loss_mask]


def test_a_corpus_that_fits_is_batched_as_before_streaming(caches):
    stream = AlignmentStream(*caches, specials=False, buffer_tokens=10**9)
    train, val = _split(len(stream))
    lengths = [stream.lengths[i] for i in train]
    for epoch in range(3):
        plan = stream.train_batches(train, 64, seed=0, epoch=epoch)
        assert [b.ids for b in plan] == [[train[j] for j in b] for b in token_batches(lengths, 64, seed=epoch)]
    (chunk,) = stream.eval_chunks(val)
    assert chunk.batches == [[val[j] for j in b] for b in token_batches([stream.lengths[i] for i in val], 4096, 0)]


def test_the_plan_is_seeded_and_per_process(caches):
    stream = AlignmentStream(*caches, specials=False, buffer_tokens=BUFFER)
    train, _ = _split(len(stream))
    first = [b.ids for b in stream.train_batches(train, 64, seed=0, epoch=0)]
    assert first == [b.ids for b in stream.train_batches(train, 64, seed=0, epoch=0)]
    assert first != [b.ids for b in stream.train_batches(train, 64, seed=0, epoch=1)]
    assert first != [b.ids for b in stream.train_batches(train, 64, seed=1, epoch=0)]
    chunk = stream.train_batches(train, 64, seed=0, epoch=0)[0].chunk
    halves = chunk.needed(0, 2), chunk.needed(1, 2)
    assert not halves[0] & halves[1] and halves[0] | halves[1] == chunk.needed()


def test_buffer_must_be_positive(caches):
    with pytest.raises(ValueError, match="buffer_tokens must be >= 1"):
        AlignmentStream(*caches, specials=False, buffer_tokens=0)
    with pytest.raises(ValueError, match="--buffer-tokens must be"):
        alad.alignment.trainer.AlignConfig(buffer_tokens=0)


@pytest.fixture
def streamed_settings(bert, roberta, sentences, tmp_path, monkeypatch):
    monkeypatch.setattr(alad.alignment.trainer, "SHARD_TEXTS", SHARD)
    streams = []

    class Spy(AlignmentStream):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            streams.append(self)

    monkeypatch.setattr(alad.alignment.trainer, "AlignmentStream", Spy)
    settings = {
        "student": bert,
        "teacher": roberta,
        "texts": sentences,
        "cache_dir": str(tmp_path / "cache"),
        "windows": (1, 3),
        "epochs": 2,
        "batch_tokens": 64,
        "hidden_size": 32,
        "lr": 3e-3,
        "buffer_tokens": BUFFER,
        "show_progress": False,
    }
    return settings, streams


def test_streamed_align_stays_in_its_buffer_and_resumes_mid_epoch_exactly(streamed_settings, tmp_path):
    settings, streams = streamed_settings
    reference = align(tmp_path / "reference", **settings)
    assert streams[-1].peak_tokens <= BUFFER and streams[-1].loads > 10  # shards were read again and again
    for window in ("1", "3"):
        assert reference["windows"][window]["val_cosine"] > reference["windows"][window]["val_cosine_init"] + 0.05
    out = tmp_path / "resumed"
    for stop in (3, 13):
        assert align(out, **settings, stop_after_steps=stop) == {"interrupted_at_step": stop}
        assert streams[-1].peak_tokens <= BUFFER
    align(out, **settings)
    for window in (1, 3):
        expected = AlignmentAdapter.from_pretrained(tmp_path / "reference" / f"w{window}").state_dict()
        got = AlignmentAdapter.from_pretrained(out / f"w{window}").state_dict()
        assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert json.loads((out / "summary.json").read_text()) == json.loads(
        (tmp_path / "reference" / "summary.json").read_text()
    )
    # another buffer is another batch order: a resume with it is refused as other settings
    with pytest.raises(ValueError, match=r"other settings \(buffer_tokens differ\)"):
        align(out, **{**settings, "buffer_tokens": 10**6}, stop_after_steps=1)


def test_tokenising_in_chunks_changes_nothing(bert, sentences, monkeypatch):
    import alad.alignment.pairing as ta

    pairs = [(a, b) for a, b in zip(sentences[::2], sentences[1::2], strict=True)]
    for texts in (sentences, pairs):
        whole = ta.tokenize_with_spans(bert.tokenizer, texts)
        monkeypatch.setattr(ta, "TOKENIZE_CHUNK", 3)
        chunked = ta.tokenize_with_spans(bert.tokenizer, texts)
        monkeypatch.undo()
        assert len(whole) == len(chunked) == len(texts)
        for a, b in zip(whole, chunked, strict=True):
            assert a.input_ids == b.input_ids
            assert torch.equal(a.offsets, b.offsets) and torch.equal(a.special, b.special)
